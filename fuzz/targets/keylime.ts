// Keylime: verifier responses through the real client (its undici pool replaced by a fake that answers
// with the fuzzed status, headers and body), for version negotiation, one-shot evidence verification
// and the tenant's agent status and list; and Keylime quote strings and tpm_policy JSON, which arrive
// from nodes and operators.
import { Readable } from 'node:stream';
import {
  KeylimeError, KeylimeTenant, KeylimeVerifierClient, decodeQuoteString, encodeQuoteString, parseTpmPolicyJson, verifyEvidence, type PcrBank,
} from '../../src/keylime/index.js';
import { derToPem } from '../../src/spiffe/index.js';
import { below, chance, mutateBytes, mutateJsonText, mutateText, pick, type FuzzTarget } from '../engine.js';
import { testPki, tpmFile } from './seeds.js';

const STATUSES = [200, 200, 200, 200, 200, 201, 202, 400, 404, 500, 502, 503, 302];
const LENGTHS = ['0', '10', '1000000000', '-1', 'x'];

interface Canned {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

export const keylimeResponse: FuzzTarget = {
  name: 'keylime-response',
  description: 'Keylime verifier responses (envelope, /version, /verify/evidence results and failures, agent status and list) through KeylimeVerifierClient with a fake transport',
  async setup() {
    const pki = testPki();
    const client = new KeylimeVerifierClient({
      url: 'https://verifier.fuzz:8881', ca: derToPem(pki.caDer), cert: derToPem(pki.landmark.chain[0]!), key: pki.landmark.key.export({ format: 'pem', type: 'pkcs8' }),
      retries: 0, timeoutMs: 2000, allowDevelopmentStandIn: true,
    });
    const tenant = new KeylimeTenant(client);
    const version = { code: 200, status: 'Success', results: { current_version: '2.3', supported_versions: ['2.0', '2.1', '2.2', '2.3'] } };
    let answers: Canned[] = [];
    // The fake pool: each request takes the next canned answer (the last one repeats).
    const inner = client as unknown as { pool: { request(o: unknown): Promise<unknown>; close(): Promise<void> }; versionPromise: unknown };
    inner.pool = {
      request: async () => {
        const a = answers.length > 1 ? answers.shift()! : answers[0]!;
        return { statusCode: a.status, headers: a.headers, body: Readable.from(a.body.length > 0 ? [a.body.subarray(0, a.body.length >> 1), a.body.subarray(a.body.length >> 1)] : []) };
      },
      close: async () => undefined,
    };
    const attest = tpmFile('quote-rsa2048.attest');
    const sig = tpmFile('quote-rsa2048.sig');
    const quote = encodeQuoteString({ attest, signature: sig, pcrs: [{ alg: 'sha256', values: new Map([[16, Buffer.alloc(32)]]) }] });
    const akPublic = tpmFile('ak-rsa2048.pub');
    const ekPublic = tpmFile('ek-rsa2048.pub');
    const bodies: unknown[] = [
      version,
      { ...version, results: { ...version.results, terroir_development_stand_in: true } },
      { code: 200, status: 'Success', results: { valid: true, claims: {}, failures: [] } },
      { code: 200, status: 'Success', results: { valid: false, failures: [{ type: 'pcr_validation.invalid_pcr_15', context: { message: 'PCR 15 mismatch' } }, { type: 'x', context: 'y' }] } },
      { code: 400, status: 'Bad Request', results: { failures: [{ type: 'tpm_ek', context: { message: 'missing' } }] } },
      { code: 200, status: 'Success', results: { operational_state: 3, attestation_status: 'PASS', attestation_count: 5, last_successful_attestation: 1_700_000_000, meta_data: '{"node":"n1"}', severity_level: null, last_event_id: null } },
      { code: 200, status: 'Success', results: { uuids: ['a', ['b', 1], 'c'] } },
    ];
    const dict = ['code', 'status', 'results', 'current_version', 'supported_versions', '2.0', '2.3', '2.6', '3.0', 'valid', 'failures', 'type', 'context', 'message',
      'operational_state', 'attestation_count', 'meta_data', 'uuids', 'terroir_development_stand_in'];
    return {
      // Layout: call, /version status, answer status, content-length choice (bytes 0..3), /version body
      // length (u32), /version body, answer body. /version is mostly the real one, sometimes fuzzed too.
      generate(r) {
        const body = (): Buffer => Buffer.from(chance(r, 0.9) ? mutateJsonText(r, bodies, dict) : mutateText(r, JSON.stringify(pick(r, bodies))), 'utf8');
        const v = chance(r, 0.3) ? body() : Buffer.from(JSON.stringify(version));
        const head = Buffer.alloc(8);
        head[0] = below(r, 4);
        head[1] = v.equals(Buffer.from(JSON.stringify(version))) ? 0 : below(r, STATUSES.length);
        head[2] = below(r, STATUSES.length);
        head[3] = chance(r, 0.9) ? 0 : 1 + below(r, LENGTHS.length);
        head.writeUInt32BE(v.length, 4);
        return Buffer.concat([head, v, body()]);
      },
      async run(b) {
        if (b.length < 8) return;
        const vLen = Math.min(b.readUInt32BE(4), b.length - 8);
        const headers: Record<string, string> = b[3] === 0 ? {} : { 'content-length': LENGTHS[(b[3]! - 1) % LENGTHS.length]! };
        answers = [
          { status: STATUSES[b[1]! % STATUSES.length]!, headers: {}, body: b.subarray(8, 8 + vLen) },
          { status: STATUSES[b[2]! % STATUSES.length]!, headers, body: b.subarray(8 + vLen) },
        ];
        inner.versionPromise = undefined; // negotiate on every input
        switch (b[0]! & 3) {
          case 0: await client.apiVersion(); break;
          case 1: await verifyEvidence(client, { quote, nonce: 'abc123', akPublic, ekPublic, hashAlg: 'sha256', tpmPolicy: { 16: ['0'.repeat(64)] } }); break;
          case 2: await tenant.getAgentStatus('d432fbb3-d2f1-4a97-9ef7-75bd81c00000'); break;
          default: await tenant.listAgents();
        }
      },
      expected: (e) => e instanceof KeylimeError,
    };
  },
};

export const keylimeQuote: FuzzTarget = {
  name: 'keylime-quote',
  description: 'Keylime quote strings (r<attest>:<signature>:<PCR blob>, base64) and tpm_policy JSON (decodeQuoteString, parseTpmPolicyJson)',
  async setup() {
    const attest = tpmFile('quote-rsa2048.attest');
    const sig = tpmFile('quote-rsa2048.sig');
    const banks: PcrBank[] = [{ alg: 'sha256', values: new Map([[0, Buffer.alloc(32, 1)], [16, Buffer.alloc(32)]]) }, { alg: 'sha1', values: new Map([[10, Buffer.alloc(20, 2)]]) }];
    const q = encodeQuoteString({ attest, signature: sig, pcrs: banks });
    const blob = Buffer.from(q.split(':')[2]!, 'base64');
    const policies = [{ 0: ['0'.repeat(64)], 16: ['f'.repeat(64), '0'.repeat(64)], mask: '0x10001' }, { 10: ['a'.repeat(40)] }];
    return {
      generate(r) {
        switch (below(r, 4)) {
          case 0: return Buffer.concat([Buffer.from([0]), Buffer.from(mutateText(r, q, ['r', ':', '=', '+', '/', '-', '_']), 'utf8')]);
          case 1: { // a well-formed string around a mutated PCR blob, attest or signature
            const parts = [attest, sig, blob];
            const i = below(r, 3);
            parts[i] = mutateBytes(r, [parts[i]!]);
            return Buffer.concat([Buffer.from([0]), Buffer.from(`r${parts.map((p) => p.toString('base64')).join(':')}`, 'utf8')]);
          }
          default: return Buffer.concat([Buffer.from([1]), Buffer.from(mutateJsonText(r, policies, ['mask', '0x0', '0xffffff', '0x1000000']), 'utf8')]);
        }
      },
      run(b) {
        const text = b.subarray(1).toString('utf8');
        return b[0] === 0 ? decodeQuoteString(text) : parseTpmPolicyJson(text);
      },
      expected: (e) => e instanceof KeylimeError,
    };
  },
};
