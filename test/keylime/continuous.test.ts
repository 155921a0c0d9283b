// Continuous (pull-mode) attestation end to end: the node's quote endpoint backed by swtpm, the test
// verifier pulling quotes over mTLS and moving through Keylime's states, the tenant API, and the
// monitor turning that into pass / fail events.
import crypto from 'node:crypto';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import type { KeylimeVerifierClient } from '../../src/keylime/client.js';
import { KeylimeRequestError } from '../../src/keylime/errors.js';
import { ContinuousAttestationMonitor, type MonitorFailure } from '../../src/keylime/monitor.js';
import { startQuoteEndpoint, type QuoteEndpoint } from '../../src/keylime/quote-endpoint.js';
import { decodeQuoteString } from '../../src/keylime/quote-string.js';
import { KeylimeTenant, type EnrollAgentRequest } from '../../src/keylime/tenant.js';
import type { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { clientFor, createPki, startVerifier, type KeylimePki } from './helpers/fixture.js';
import { startTpm, type TestTpm } from './helpers/tpm.js';

const group = new ProcessGroup();
let tmp: { dir: string; cleanup: () => void };
let pki: KeylimePki;
let tpm: TestTpm;
let verifier: TestKeylimeVerifier;
let client: KeylimeVerifierClient;
let tenant: KeylimeTenant;
let endpoint: QuoteEndpoint;
let monitor: ContinuousAttestationMonitor;
const nk = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
const ZERO = '00'.repeat(32);

beforeAll(async () => {
  tmp = tempDir('terroir-keylime-continuous-');
  pki = await createPki(tmp.dir);
  tpm = await startTpm(group, tmp.dir);
  verifier = await startVerifier(pki, { quoteIntervalMs: 250, retryIntervalMs: 100, maxRetries: 2, pullTimeoutMs: 1000 });
  client = clientFor(pki, verifier, { timeoutMs: 1000, retries: 0 });
  tenant = new KeylimeTenant(client);
  endpoint = await startQuoteEndpoint({
    quoter: tpm.quoter, pubkeyPem: nk, encAlg: 'ecc', signAlg: 'ecdsa',
    cert: pki.node.certPem, key: pki.node.keyPem, clientCa: pki.pullCa.certPem,
  });
  monitor = new ContinuousAttestationMonitor(tenant, { pollIntervalMs: 150, maxAttestationAgeMs: 5000, pendingTimeoutMs: 10_000 });
  monitor.start();
});
afterAll(async () => {
  await monitor.stop();
  await endpoint.close();
  await client.close();
  await verifier.close();
  await group.stopAll();
  tmp.cleanup();
});

function enrollment(over: Partial<EnrollAgentRequest> = {}): EnrollAgentRequest {
  return {
    akPublic: tpm.akPublic, tpmPolicy: { 15: [ZERO] }, quoteEndpoint: { ip: '127.0.0.1', port: endpoint.port },
    quoteEndpointCert: pki.node.certPem, ...over,
  };
}

function nextEvent(nodeId: string, kind: 'pass' | 'fail', timeoutMs = 8000): Promise<MonitorFailure | undefined> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error(`no ${kind} event for ${nodeId} within ${timeoutMs} ms`)); }, timeoutMs);
    const onPass = (id: string): void => { if (kind === 'pass' && id === nodeId) { cleanup(); resolve(undefined); } };
    const onFail = (id: string, f: MonitorFailure): void => { if (kind === 'fail' && id === nodeId) { cleanup(); resolve(f); } };
    const cleanup = (): void => { clearTimeout(timer); monitor.off('pass', onPass); monitor.off('fail', onFail); };
    monitor.on('pass', onPass);
    monitor.on('fail', onFail);
  });
}

/** A raw GET to the quote endpoint with a chosen client identity. */
function getQuote(path: string, identity: { certPem: string; keyPem: string } | null = pki.pull): Promise<{ status: number; body: { results: Record<string, string> } }> {
  return new Promise((resolve, reject) => {
    https.get({
      host: '127.0.0.1', port: endpoint.port, path, ca: pki.node.certPem, agent: false,
      ...(identity !== null ? { cert: identity.certPem, key: identity.keyPem } : {}),
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

describe('the node quote endpoint', () => {
  it('serves a Keylime quote with PCR16 bound to the public key', async () => {
    const { status, body } = await getQuote('/v2.2/quotes/integrity?nonce=abcDEF0123456789abcd&mask=0x8001&partial=0&ima_ml_entry=0');
    expect(status).toBe(200);
    expect(body.results).toMatchObject({ hash_alg: 'sha256', enc_alg: 'ecc', sign_alg: 'ecdsa', pubkey: nk });
    const q = decodeQuoteString(body.results.quote as string);
    expect([...(q.pcrs[0]?.values.keys() ?? [])]).toEqual([0, 15, 16]);
    const expected = crypto.createHash('sha256').update(Buffer.alloc(32)).update(crypto.createHash('sha256').update(nk).digest()).digest();
    expect(Buffer.from(q.pcrs[0]?.values.get(16) ?? []).equals(expected)).toBe(true);
    const partial = await getQuote('/v2.2/quotes/integrity?nonce=abc&mask=0x1&partial=1');
    expect(partial.body.results.pubkey).toBeUndefined();
  });

  it.each([
    ['a nonce with symbols', '/v2.2/quotes/integrity?nonce=ab%20c&mask=0x1&partial=0', 400],
    ['a nonce of 65 characters', `/v2.2/quotes/integrity?nonce=${'a'.repeat(65)}&mask=0x1&partial=0`, 400],
    ['no nonce', '/v2.2/quotes/integrity?mask=0x1&partial=0', 400],
    ['a mask that is not hex', '/v2.2/quotes/integrity?nonce=abc&mask=0xZZ&partial=0', 400],
    ['a mask beyond PCR 23', '/v2.2/quotes/integrity?nonce=abc&mask=0x1000000&partial=0', 400],
    ['partial=2', '/v2.2/quotes/integrity?nonce=abc&mask=0x1&partial=2', 400],
    ['a negative ima_ml_entry', '/v2.2/quotes/integrity?nonce=abc&mask=0x1&ima_ml_entry=-1', 400],
    ['an unknown parameter', '/v2.2/quotes/integrity?nonce=abc&mask=0x1&evil=1', 400],
    ['a repeated parameter', '/v2.2/quotes/integrity?nonce=abc&nonce=def&mask=0x1', 400],
    ['an unsupported version', '/v9.9/quotes/integrity?nonce=abc&mask=0x1', 400],
    ['another path', '/v2.2/keys/pubkey', 404],
  ])('refuses %s', async (_name, path, code) => {
    const before = endpoint.counters().quotes;
    expect((await getQuote(path)).status).toBe(code);
    expect(endpoint.counters().quotes).toBe(before);
  });

  it('answers 503 instead of queueing without bound', async () => {
    const slow = await startQuoteEndpoint({
      quoter: { ...tpm.quoter, quote: async (pcrs, qd) => { await new Promise((r) => setTimeout(r, 300)); return tpm.quoter.quote(pcrs, qd); } },
      pubkeyPem: nk, encAlg: 'ecc', signAlg: 'ecdsa', cert: pki.node.certPem, key: pki.node.keyPem, clientCa: pki.pullCa.certPem, maxPendingQuotes: 1,
    });
    const saved = endpoint;
    endpoint = slow;
    try {
      const first = getQuote('/v2.2/quotes/integrity?nonce=one&mask=0x1');
      await new Promise((r) => setTimeout(r, 100));
      expect((await getQuote('/v2.2/quotes/integrity?nonce=two&mask=0x1')).status).toBe(503);
      expect((await first).status).toBe(200);
    } finally {
      endpoint = saved;
      await slow.close();
    }
  });

  it('requires the verifier client certificate (none, or another CA: no session)', async () => {
    await expect(getQuote('/v2.2/quotes/integrity?nonce=abc&mask=0x1', null)).rejects.toThrow();
    await expect(getQuote('/v2.2/quotes/integrity?nonce=abc&mask=0x1', pki.rogueClient)).rejects.toThrow();
  });
});

describe('continuous attestation with the test verifier', () => {
  it('enrollment: missing fields are a 400, a second enrollment a 409', async () => {
    const err = await client.call({ method: 'POST', path: '/agents/incomplete', body: { cloudagent_ip: '127.0.0.1' }, results: z.unknown(), idempotent: false })
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(KeylimeRequestError);
    expect((err as KeylimeRequestError).status).toBe(400);
    await tenant.enrollAgent('dup', enrollment({ quoteEndpoint: { ip: '127.0.0.1', port: 1 } }));
    await expect(tenant.enrollAgent('dup', enrollment())).rejects.toMatchObject({ status: 409 });
    await expect(tenant.enrollAgent('bad', enrollment({ akPublic: Buffer.alloc(10) }))).rejects.toThrow(/not a TPM2B_PUBLIC/);
    await expect(tenant.enrollAgent('bad', enrollment({ quoteEndpoint: { ip: 'a b', port: 1 } }))).rejects.toThrow(/neither an IP/);
    await expect(tenant.enrollAgent('bad', enrollment({ quoteEndpoint: { ip: '127.0.0.1', port: 70000 } }))).rejects.toThrow(/not a TCP port/);
    await expect(tenant.enrollAgent('../x', enrollment())).rejects.toThrow(/agent id/);
    expect(await tenant.deleteAgent('dup')).toMatch(/^deleted|deleting$/);
  });

  it('a good node passes; a PCR change gets it refused and the monitor emits fail', async () => {
    await tenant.enrollAgent('node-1', enrollment());
    const passed = nextEvent('node-1', 'pass');
    monitor.watch('node-1');
    expect(monitor.isTrusted('node-1')).toBe(false);
    await passed;
    expect(monitor.isTrusted('node-1')).toBe(true);
    const st = await tenant.getAgentStatus('node-1');
    expect(st.attestationCount).toBeGreaterThanOrEqual(1);
    expect(st.operationalState).toBe(3);

    const failed = nextEvent('node-1', 'fail');
    const t0 = Date.now();
    await tpm.quoter.pcrExtend(15, crypto.createHash('sha256').update('rootkit').digest());
    const failure = await failed;
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(failure).toMatchObject({ kind: 'invalid_quote', lastEventId: 'pcr_validation.invalid_pcr_15' });
    expect(monitor.isTrusted('node-1')).toBe(false);
    expect((await tenant.getAgentStatus('node-1')).operationalState).toBe(9);
  });

  it('the verifier disappearing mid-run fails the node closed; it recovers when the verifier returns', async () => {
    await tenant.enrollAgent('node-2', enrollment({ tpmPolicy: { 0: [ZERO] } }));
    const passed = nextEvent('node-2', 'pass');
    monitor.watch('node-2');
    await passed;
    const failed = nextEvent('node-2', 'fail');
    await verifier.stop();
    const failure = await failed;
    expect(failure?.kind).toBe('verifier_unreachable');
    expect(monitor.isTrusted('node-2')).toBe(false);
    expect(monitor.counters().verifierUnreachable).toBeGreaterThan(0);
    const back = nextEvent('node-2', 'pass');
    await verifier.restart();
    await back;
    expect(monitor.isTrusted('node-2')).toBe(true);
  });

  it('a node whose quote endpoint goes away reaches Failed (7) and is refused', async () => {
    const failed = nextEvent('node-2', 'fail');
    await endpoint.close();
    try {
      const failure = await failed;
      expect(failure).toMatchObject({ kind: 'failed' });
      expect((await tenant.getAgentStatus('node-2')).operationalState).toBe(7);
    } finally {
      endpoint = await startQuoteEndpoint({
        quoter: tpm.quoter, pubkeyPem: nk, encAlg: 'ecc', signAlg: 'ecdsa',
        cert: pki.node.certPem, key: pki.node.keyPem, clientCa: pki.pullCa.certPem,
      });
    }
  });

  it('eviction removes the node from the verifier; the monitor then reports it not enrolled', async () => {
    const failed = nextEvent('node-1', 'fail');
    expect(await tenant.deleteAgent('node-1')).toMatch(/^deleted|deleting$/);
    expect((await failed)?.kind).toBe('not_enrolled');
    monitor.unwatch('node-1');
    expect(await tenant.deleteAgent('node-1')).toBe('not_found');
    expect(await tenant.deleteAgent('never-enrolled')).toBe('not_found');
  });
});
