// The agent's side of PCR-digest selectors (src/agent/node-attestor.ts), against a test double of the
// terroir server: a real gRPC server over TLS speaking proto/agent.proto, building real
// TPM2_MakeCredential challenges, so the agent's TPM session (swtpm through tpm2-tss) runs for real.
// The double records what the agent answers: no quote when none is asked for, the right quote when
// one is, and no answer at all to a challenge with bad selector PCRs.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  agentServiceClient, agentServiceDefinition, AGENT_API_CHANNEL_OPTIONS, pcrSelectorsQualifyingData,
  type AttestAgentRequest, type AttestAgentResponse, type ChallengeResponse,
} from '../../src/api/agent-api.js';
import { attestNode } from '../../src/agent/node-attestor.js';
import type { AgentClient } from '../../src/agent/server-conn.js';
import { openTpmCredentialSource, type TpmSession } from '../../src/agent/tpm-session.js';
import { makeCredential, objectName, parseTpm2bPublic, verifyQuote } from '../../src/tpm/index.js';
import { startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';

let swtpm: Swtpm;
let session: TpmSession;
let server: grpc.Server;
let client: AgentClient;
let work: { dir: string; cleanup: () => void };

/** What the double's next challenge carries, and what it saw. */
let challenge: { selectorPcrs: number[]; nonce: Buffer };
let seen: { answer?: ChallengeResponse; secret?: Buffer; akPublic?: Buffer; challenges: number };

beforeEach(() => {
  challenge = { selectorPcrs: [], nonce: crypto.randomBytes(32) };
  seen = { challenges: 0 };
});

/** The double's AttestAgent: a real credential challenge, then a result whatever the answer (the test inspects the answer). */
function doubleAttestAgent(call: grpc.ServerDuplexStream<AttestAgentRequest, AttestAgentResponse>): void {
  call.on('data', (m: AttestAgentRequest) => {
    if (m.params?.tpm) {
      const ek = parseTpm2bPublic(m.params.tpm.ekPublic);
      const ak = parseTpm2bPublic(m.params.tpm.akPublic);
      seen.secret = crypto.randomBytes(32);
      seen.akPublic = m.params.tpm.akPublic;
      seen.challenges++;
      const cred = makeCredential(ek, objectName(ak), seen.secret);
      call.write({ challenge: { ...cred, nonce: challenge.nonce, expiresAt: Math.floor(Date.now() / 1000) + 60, quotePcrs: [], selectorPcrs: challenge.selectorPcrs } });
    } else if (m.challengeResponse) {
      seen.answer = m.challengeResponse;
      call.write({ result: { spiffeId: 'spiffe://example.org/agent/tpm/double', svidChain: [], selectors: [], bundle: Buffer.alloc(0), canRenew: false } });
      call.end();
    }
  });
  call.on('error', () => undefined);
}

beforeAll(async () => {
  work = tempDir('terroir-pcr-agent-');
  swtpm = await startSwtpm();
  session = await openTpmCredentialSource({ tcti: swtpm.tcti, ekKind: 'rsa2048' });
  const key = path.join(work.dir, 'k.pem');
  const cert = path.join(work.dir, 'c.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert,
    '-days', '1', '-subj', '/CN=terroir server double', '-addext', 'subjectAltName=DNS:terroir-server'], { stdio: 'ignore' });
  server = new grpc.Server();
  const noop = (_c: unknown, cb?: (e: grpc.ServiceError) => void) => cb?.({ code: grpc.status.UNIMPLEMENTED } as grpc.ServiceError);
  server.addService(agentServiceDefinition(), {
    AttestAgent: doubleAttestAgent as grpc.UntypedHandleCall,
    RenewAgent: noop, SyncEntries: noop, FetchBundles: noop, BatchNewX509Svid: noop, NewJwtSvid: noop, WatchAgent: noop,
  } as grpc.UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createSsl(null, [{ cert_chain: fs.readFileSync(cert), private_key: fs.readFileSync(key) }]),
      (err, p) => (err ? reject(err) : resolve(p)));
  });
  const Client = agentServiceClient();
  // SNI and the host name check use a name (RFC 6066 allows no IP address in SNI).
  client = new Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(fs.readFileSync(cert)),
    { ...AGENT_API_CHANNEL_OPTIONS, 'grpc.ssl_target_name_override': 'terroir-server' }) as AgentClient;
});

afterAll(async () => {
  client?.close();
  await new Promise<void>((resolve) => { if (server) server.tryShutdown(() => resolve()); else resolve(); });
  await session?.close();
  await swtpm?.stop().catch((err: unknown) => {
    let alive = true;
    try { process.kill(swtpm.pid, 0); } catch { alive = false; }
    if (alive) throw err;
  });
  work?.cleanup();
});

const csr = Buffer.from([0x30, 0x00]); // the double ignores it

describe('agent: PCR-digest selectors', () => {
  it('sends no PCR quote when the challenge lists no selector PCRs (an older server)', async () => {
    await attestNode(client, { csr, tpm: session, timeoutMs: 10_000 });
    expect(seen.answer?.activatedSecret).toEqual(seen.secret);
    expect(seen.answer?.pcrQuote ?? null).toBeNull();
  });

  it('quotes exactly the selector PCRs with the activated AK, bound to the nonce, with tpm2_pcrread\'s values', async () => {
    challenge.selectorPcrs = [23, 7];
    await attestNode(client, { csr, tpm: session, timeoutMs: 10_000 });
    const q = seen.answer?.pcrQuote;
    expect(seen.answer?.activatedSecret).toEqual(seen.secret);
    expect(Object.keys(q?.pcrs ?? {}).sort()).toEqual(['23', '7']);
    const info = verifyQuote({
      akPublic: parseTpm2bPublic(seen.akPublic as Buffer), attest: q!.attest, signature: q!.signature,
      pcrs: [{ alg: 'sha256', values: new Map([[7, q!.pcrs['7']!], [23, q!.pcrs['23']!]]) }],
      expectedExtraData: pcrSelectorsQualifyingData(challenge.nonce),
    });
    expect(info.pcrSelection).toEqual([{ alg: 'sha256', pcrs: [7, 23] }]);
    const out = path.join(work.dir, 'pcrs.bin');
    execFileSync('tpm2_pcrread', ['sha256:7,23', '-o', out], { env: { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti, TSS2_LOG: 'all+NONE' }, stdio: 'ignore' });
    expect(Buffer.concat([q!.pcrs['7']!, q!.pcrs['23']!])).toEqual(fs.readFileSync(out));
  });

  it.each([
    [[7, 24], 32, /server challenge refused: the challenge asks to quote PCR 24, outside 0\.\.23/],
    [[7, 7], 32, /server challenge refused: the challenge lists a selector PCR twice/],
    [[7], 16, /server challenge refused: the challenge nonce must be 32 bytes, got 16/],
  ])('refuses a challenge with selector PCRs %j and a %i-byte nonce, and answers nothing', async (pcrs, nonceBytes, message) => {
    challenge.selectorPcrs = pcrs;
    challenge.nonce = crypto.randomBytes(nonceBytes);
    await expect(attestNode(client, { csr, tpm: session, timeoutMs: 10_000 })).rejects.toMatchObject({ code: 'protocol', message: expect.stringMatching(message) });
    expect(seen.challenges).toBe(1);
    expect(seen.answer).toBeUndefined();
  });
});
