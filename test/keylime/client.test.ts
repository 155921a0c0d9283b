import https from 'node:https';
import { z } from 'zod';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { KeylimeVerifierClient } from '../../src/keylime/client.js';
import { KeylimeConfigError, KeylimeRequestError } from '../../src/keylime/errors.js';
import { KeylimeTenant } from '../../src/keylime/tenant.js';
import { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { tempDir } from '../support/tmp.js';
import { clientFor, createPki, startVerifier, type KeylimePki } from './helpers/fixture.js';

let tmp: { dir: string; cleanup: () => void };
let pki: KeylimePki;
let verifier: TestKeylimeVerifier;
const clients: KeylimeVerifierClient[] = [];

function client(opts: Parameters<typeof clientFor>[2] = {}): KeylimeVerifierClient {
  const c = clientFor(pki, verifier, opts);
  clients.push(c);
  return c;
}

async function requestError(p: Promise<unknown>): Promise<KeylimeRequestError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(KeylimeRequestError);
  return err as KeylimeRequestError;
}

beforeAll(async () => {
  tmp = tempDir('terroir-keylime-client-');
  pki = await createPki(tmp.dir);
  verifier = await startVerifier(pki);
});
afterEach(async () => {
  verifier.fault = { mode: 'none' };
  await Promise.all(clients.splice(0).map((c) => c.close()));
});
afterAll(async () => {
  await verifier.close();
  tmp.cleanup();
});

describe('configuration is checked at construction', () => {
  const base = () => ({ url: `https://localhost:${verifier.port}`, caFile: pki.files.serverCa, certFile: pki.files.clientCert, keyFile: pki.files.clientKey });
  it.each([
    ['a missing CA', { caFile: undefined }],
    ['an unreadable CA file', { caFile: '/nonexistent/ca.pem' }],
    ['a CA that is not PEM', { caFile: undefined, ca: 'hello' }],
    ['a missing client certificate', { certFile: undefined }],
    ['a missing client key', { keyFile: undefined }],
    ['a key that does not match the certificate', { keyFile: 'ROGUE_KEY' }],
    ['plain http', { url: `http://localhost:${1}` }],
    ['a URL with a path', { url: 'https://localhost:1/v2.6' }],
    ['a timeout of 0', { timeoutMs: 0 }],
    ['an unknown pinned API version', { apiVersion: '9.9' }],
  ])('refuses %s', (_name, override) => {
    const o = 'keyFile' in override && override.keyFile === 'ROGUE_KEY' ? { keyFile: pki.files.rogueKey } : override;
    expect(() => new KeylimeVerifierClient({ ...base(), ...o })).toThrow(KeylimeConfigError);
  });

  it('refuses an expired client certificate', async () => {
    const old = await pki.clientCa.issue('old', { notBefore: new Date(Date.now() - 7200_000), notAfter: new Date(Date.now() - 3600_000) });
    expect(() => new KeylimeVerifierClient({ ...base(), certFile: undefined, keyFile: undefined, cert: old.certPem, key: old.keyPem })).toThrow(/expired/);
  });
});

describe('strict mTLS', () => {
  it('negotiates the highest common 2.x version and reuses one TLS connection', async () => {
    const c = client();
    expect(await c.apiVersion()).toBe('2.6');
    const tenant = new KeylimeTenant(c);
    const before = verifier.counters.tlsSessions;
    for (let i = 0; i < 20; i++) expect(await tenant.deleteAgent(`nobody-${i}`)).toBe('not_found');
    expect(c.counters().handshakes).toBe(1);
    expect(verifier.counters.tlsSessions - before).toBe(0); // the /version connection carried all 20 calls
    expect(c.counters().requests).toBe(21);
    expect(verifier.lastTlsProtocol).toBe('TLSv1.3');
  });

  it('also works with a TLS 1.2-only verifier', async () => {
    const v12 = await startVerifier(pki, { maxTlsVersion: 'TLSv1.2' });
    try {
      expect(await client({ url: `https://localhost:${v12.port}` }).apiVersion()).toBe('2.6');
      expect(v12.lastTlsProtocol).toBe('TLSv1.2');
    } finally {
      await v12.close();
    }
  });

  it('refuses a verifier whose certificate is not from the pinned CA', async () => {
    const impostor = await TestKeylimeVerifier.start({
      cert: pki.rogueServer.certPem, key: pki.rogueServer.keyPem, clientCa: pki.clientCa.certPem, pullCert: pki.pull.certPem, pullKey: pki.pull.keyPem,
    });
    try {
      const c = client({ url: `https://localhost:${impostor.port}` });
      const err = await requestError(c.apiVersion());
      expect(err.kind).toBe('tls');
      expect(err.code).toBe('KEYLIME_TLS');
      expect(impostor.counters.requests).toBe(0);
      expect(c.counters().failures.tls).toBe(1);
      expect(c.counters().retries).toBe(0); // certificate failures are not retried
    } finally {
      await impostor.close();
    }
  });

  it('refuses a verifier certificate for another host name', async () => {
    const other = await pki.serverCa.issue('elsewhere', { dns: ['verifier.other.example'] });
    const v = await TestKeylimeVerifier.start({
      cert: other.certPem, key: other.keyPem, clientCa: pki.clientCa.certPem, pullCert: pki.pull.certPem, pullKey: pki.pull.keyPem,
    });
    try {
      const err = await requestError(client({ url: `https://localhost:${v.port}` }).apiVersion());
      expect(err.kind).toBe('tls');
      expect(err.message).toMatch(/ERR_TLS_CERT_ALTNAME_INVALID/);
      // The same server is accepted when we say which name to expect.
      expect(await client({ url: `https://localhost:${v.port}`, servername: 'verifier.other.example' }).apiVersion()).toBe('2.6');
    } finally {
      await v.close();
    }
  });

  it('a client certificate from an untrusted CA gets no session', async () => {
    const c = client({ certFile: pki.files.rogueCert, keyFile: pki.files.rogueKey });
    const before = { dropped: verifier.counters.droppedUntrustedClients, requests: verifier.counters.requests };
    const err = await requestError(c.apiVersion());
    expect(['connect', 'tls']).toContain(err.kind);
    expect(verifier.counters.droppedUntrustedClients).toBeGreaterThan(before.dropped);
    expect(verifier.counters.requests).toBe(before.requests);
  });

  it('the verifier answers /version without a client certificate but refuses /agents (403)', async () => {
    const get = (path: string): Promise<number> => new Promise((resolve, reject) => {
      https.get({ host: '127.0.0.1', servername: 'localhost', port: verifier.port, path, ca: pki.serverCa.certPem, agent: false }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      }).on('error', reject);
    });
    expect(await get('/version')).toBe(200);
    expect(await get('/v2.6/agents/node-1')).toBe(403);
  });
});

describe('failures fail closed with a clear error and a counter, and the client recovers', () => {
  it('verifier slow: timeout, retried, then recovers', async () => {
    const c = client({ timeoutMs: 200, retries: 1 });
    await c.apiVersion();
    verifier.fault = { mode: 'slow', delayMs: 600 };
    const err = await requestError(new KeylimeTenant(c).getAgentStatus('n1'));
    expect(err.kind).toBe('timeout');
    expect(err.message).toMatch(/within 200 ms/);
    expect(c.counters().failures.timeout).toBe(2);
    expect(c.counters().retries).toBe(1);
    verifier.fault = { mode: 'none' };
    expect(await new KeylimeTenant(c).deleteAgent('n1')).toBe('not_found');
  });

  it('5xx: idempotent calls are retried, POST is not', async () => {
    const c = client();
    await c.apiVersion();
    verifier.fault = { mode: '5xx' };
    const get = await requestError(new KeylimeTenant(c).getAgentStatus('n1'));
    expect(get.kind).toBe('http');
    expect(get.status).toBe(503);
    expect(c.counters().retries).toBe(2);
    const before = verifier.counters.requests;
    const post = await requestError(c.call({ method: 'POST', path: '/agents/n1', body: {}, results: z.unknown(), idempotent: false }));
    expect(post.status).toBe(503);
    expect(verifier.counters.requests - before).toBe(1);
    expect(c.counters().failures.http).toBe(4);
    // A proxy's HTML error page is still an HTTP failure with its status (and retried), not "garbage".
    verifier.fault = { mode: '5xx', html: true };
    const html = await requestError(new KeylimeTenant(c).getAgentStatus('n1'));
    expect(html).toMatchObject({ kind: 'http', status: 502 });
    expect(c.counters().retries).toBe(4);
  });

  it.each([
    ['garbage JSON', { mode: 'garbage' as const }, 'malformed'],
    ['a body of the wrong shape', { mode: 'wrong-shape' as const }, 'malformed'],
    ['an oversized body (content-length)', { mode: 'oversized' as const, bytes: 2 * 1024 * 1024 }, 'oversized'],
    ['an oversized body (chunked)', { mode: 'oversized' as const, bytes: 2 * 1024 * 1024, chunked: true }, 'oversized'],
  ])('%s is refused', async (_name, fault, kind) => {
    const c = client({ maxResponseBytes: 64 * 1024 });
    await c.apiVersion();
    verifier.fault = fault;
    const err = await requestError(new KeylimeTenant(c).getAgentStatus('n1'));
    expect(err.kind).toBe(kind);
    expect(c.counters().failures[kind as 'malformed']).toBeGreaterThanOrEqual(1);
    verifier.fault = { mode: 'none' };
    expect(await new KeylimeTenant(c).deleteAgent('n1')).toBe('not_found');
  });

  it('verifier down: connection error; back on the same port: recovers by itself', async () => {
    const c = client({ retries: 0 });
    await c.apiVersion();
    await verifier.stop();
    try {
      const err = await requestError(new KeylimeTenant(c).getAgentStatus('n1'));
      expect(err.kind).toBe('connect');
      expect(c.counters().failures.connect).toBe(1);
    } finally {
      await verifier.restart();
    }
    expect(await new KeylimeTenant(c).deleteAgent('n1')).toBe('not_found');
  });

  it('version negotiation fails clearly when there is no common 2.x version', async () => {
    const v = await startVerifier(pki, { supportedVersions: ['1.0', '3.0'] });
    try {
      const err = await requestError(clientFor(pki, v).apiVersion());
      expect(err.kind).toBe('version');
      expect(err.message).toMatch(/no common 2\.x API version/);
    } finally {
      await v.close();
    }
  });
});

describe('the development stand-in', () => {
  it('is refused on every call unless the client allows it; the verifier is never asked anything else', async () => {
    const strict = client({ allowDevelopmentStandIn: false });
    const before = verifier.counters.requests;
    for (const call of [() => strict.apiVersion(), () => new KeylimeTenant(strict).deleteAgent('n1')]) {
      const err = await requestError(call());
      expect(err.kind).toBe('stand_in');
      expect(err.code).toBe('KEYLIME_DEVELOPMENT_STAND_IN');
      expect(err.message).toMatch(/terroir's development stand-in, not a Keylime verifier/);
    }
    // Only the two GET /version calls reached it (not retried: the answer is not a transient failure).
    expect(verifier.counters.requests - before).toBe(2);
    expect(strict.counters().failures.stand_in).toBe(2);
    expect(await client({ allowDevelopmentStandIn: true }).apiVersion()).toBe('2.6');
  });
});
