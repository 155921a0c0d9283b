// Contract test of the Keylime verifier double's POST /verify/evidence: it must refuse exactly what
// Keylime 7.14.3 refuses, in the same order, with the same answer (keylime/cloud_verifier_tornado.py,
// `_tpm_verify`; ../shared/docs/keylime-api.md). Raw HTTPS requests, so the double is checked, not the
// client. Then terroir's client against those answers: a 400 is a refused request (Keylime's failures
// named, never retried, not "unreachable").
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeylimeVerifierClient } from '../../src/keylime/client.js';
import { KeylimeRequestError } from '../../src/keylime/errors.js';
import { verifyEvidence } from '../../src/keylime/evidence.js';
import { encodeQuoteString } from '../../src/keylime/quote-string.js';
import { EVIDENCE_POLICIES, EVIDENCE_REQUIRED, type TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { clientFor, createPki, startVerifier, type KeylimePki } from './helpers/fixture.js';
import { startTpm, type TestTpm } from './helpers/tpm.js';

const group = new ProcessGroup();
let tmp: { dir: string; cleanup: () => void };
let pki: KeylimePki;
let verifier: TestKeylimeVerifier;
let client: KeylimeVerifierClient;
let tpm: TestTpm;
let good: Record<string, string>;
const nonce = 'ContractNonce0001';

beforeAll(async () => {
  tmp = tempDir('terroir-keylime-contract-');
  pki = await createPki(tmp.dir);
  [verifier, tpm] = await Promise.all([startVerifier(pki), startTpm(group, tmp.dir)]);
  client = clientFor(pki, verifier, { retries: 2, retryBaseDelayMs: 1 });
  const q = await tpm.quoter.quote([0], Buffer.from(nonce));
  const pcr0 = Buffer.from(q.pcrs[0]?.values.get(0) ?? []).toString('hex');
  good = {
    quote: encodeQuoteString(q), nonce, hash_alg: 'sha256',
    tpm_ek: tpm.ekPublic.toString('base64'), tpm_ak: tpm.akPublic.toString('base64'),
    tpm_policy: JSON.stringify({ 0: [pcr0], mask: '0x1' }),
  };
});
afterAll(async () => {
  await client?.close();
  await verifier?.close();
  await group.stopAll();
  tmp?.cleanup();
});

function post(body: unknown): Promise<{ status: number; body: unknown }> {
  return request('POST', '/v2.6/verify/evidence', typeof body === 'string' ? body : JSON.stringify(body));
}

function request(method: string, path: string, text?: string, withCert = true): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: verifier.port, path, method, servername: 'localhost', ca: pki.serverCa.certPem, agent: false,
      ...(withCert ? { cert: pki.admin.certPem, key: pki.admin.keyPem } : {}),
      headers: text === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, body: text === '' ? undefined : JSON.parse(text) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(text ?? '');
  });
}

const missing = (name: string): unknown => ({
  code: 400, status: 'Bad Request',
  results: { valid: false, claims: {}, failures: [{ type: 'default.missing_param', context: { message: `missing parameter "${name}"` } }] },
});

function without(...keys: string[]): Record<string, string> {
  const d = { ...good };
  for (const k of keys) delete d[k];
  return d;
}

describe('the verifier double refuses what Keylime 7.14.3 refuses (POST /verify/evidence)', () => {
  it('accepts the complete request: 200 valid:true, the request echoed as claims', async () => {
    const r = await post({ type: 'tpm', data: good });
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ code: 200, status: 'Success', results: { valid: true, claims: good, failures: [] } });
  });

  it.each(EVIDENCE_REQUIRED.map((k) => [k]))('a request without %s is a 400 naming it', async (name) => {
    expect(await post({ type: 'tpm', data: without(name) })).toEqual({ status: 400, body: missing(name) });
    expect(await post({ type: 'tpm', data: { ...good, [name]: '' } })).toEqual({ status: 400, body: missing(name) });
  });

  it('checks the required inputs in Keylime\'s order: the first missing one is named', async () => {
    expect(EVIDENCE_REQUIRED).toEqual(['quote', 'nonce', 'hash_alg', 'tpm_ek', 'tpm_ak']);
    expect((await post({ type: 'tpm', data: without('tpm_ak', 'tpm_ek') })).body).toEqual(missing('tpm_ek'));
    expect((await post({ type: 'tpm', data: without('tpm_ak', 'hash_alg') })).body).toEqual(missing('hash_alg'));
    expect((await post({ type: 'tpm', data: without('nonce', 'quote') })).body).toEqual(missing('quote'));
    // Required inputs come before the policy check.
    expect((await post({ type: 'tpm', data: without('tpm_ak', 'tpm_policy') })).body).toEqual(missing('tpm_ak'));
    expect((await post({ type: 'tpm', data: {} })).body).toEqual(missing('quote'));
  });

  it('a request with no policy at all is a 400 (default.missing_policy); any one policy is enough', async () => {
    const r = await post({ type: 'tpm', data: without('tpm_policy') });
    expect(r.status).toBe(400);
    const failures = (r.body as { results: { failures: { type: string }[] } }).results.failures;
    expect(failures.map((f) => f.type)).toEqual(['default.missing_policy']);
    expect((await post({ type: 'tpm', data: { ...good, tpm_policy: '' } })).status).toBe(400);
    expect(EVIDENCE_POLICIES).toEqual(['tpm_policy', 'runtime_policy', 'mb_policy']);
    const withRuntimeOnly = await post({ type: 'tpm', data: { ...without('tpm_policy'), runtime_policy: '{"meta":{}}' } });
    expect(withRuntimeOnly.status).toBe(200);
  });

  it('tpm_ek is required but not checked (as Keylime: the EK is the caller\'s job)', async () => {
    const r = await post({ type: 'tpm', data: { ...good, tpm_ek: 'bm90IGFuIEVL' } });
    expect(r.status).toBe(200);
    expect((r.body as { results: { valid: boolean } }).results.valid).toBe(true);
  });

  it('evidence that fails a check is 200 valid:false with the failures and empty claims, not a 400', async () => {
    const r = await post({ type: 'tpm', data: { ...good, nonce: 'SomeOtherNonce' } });
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ results: { valid: false, claims: {}, failures: [{ type: 'qoute_validation.quote_validation', context: { message: 'Quote data validation' } }] } });
    const badHash = await post({ type: 'tpm', data: { ...good, hash_alg: 'md5' } });
    expect(badHash.body).toMatchObject({ results: { valid: false, failures: [{ type: 'qoute_validation.invalid_hash_alg' }] } });
  });

  it('an AK or tpm_policy that does not parse fails the quote check: 200 valid:false invalid_quote', async () => {
    for (const data of [{ ...good, tpm_ak: Buffer.from('not a key').toString('base64') }, { ...good, tpm_policy: 'not json' }]) {
      const r = await post({ type: 'tpm', data });
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ results: { valid: false, failures: [{ type: 'qoute_validation.invalid_quote' }] } });
    }
  });

  it('a required input that is JSON null is present, then an exception: 500', async () => {
    const r = await post({ type: 'tpm', data: { ...good, tpm_ek: null } });
    expect(r).toEqual({ status: 500, body: { code: 500, status: 'Internal Server Error: Failed to process attestation data', results: {} } });
    expect((await post({ type: 'tpm', data: null })).status).toBe(500);
    expect((await post({ type: 'tpm', data: { ...good, runtime_policy: 'notjson' } })).status).toBe(500);
  });

  it('type and data come first, then the type\'s value', async () => {
    expect(await post({ data: good })).toEqual({ status: 400, body: { code: 400, status: "missing parameter 'type'", results: {} } });
    expect(await post({ type: 'tee' })).toEqual({ status: 400, body: { code: 400, status: "missing parameter 'data'", results: {} } });
    expect(await post({ type: 'TPM', data: good })).toEqual({ status: 400, body: { code: 400, status: 'invalid evidence type', results: {} } });
  });

  it('a body that is not JSON: 400 without a body (declared JSON), as Keylime\'s web framework', async () => {
    expect((await post('{"type":')).status).toBe(400);
  });
});

describe('the verifier double answers the rest as Keylime 7.14.3 does (keylime/web/verifier/agent_controller.py)', () => {
  it('GET /agents/ lists ids as database rows, only for an admin client certificate; an unknown version is a 404', async () => {
    expect(await request('GET', '/v2.6/agents/', undefined, false)).toMatchObject({ status: 403 });
    const listed = await request('GET', '/v2.6/agents/');
    expect(listed.status).toBe(200);
    const uuids = (listed.body as { results: { uuids: unknown[] } }).results.uuids;
    expect(uuids.every((u) => Array.isArray(u) && u.length === 1 && typeof u[0] === 'string')).toBe(true);
    expect(await request('GET', '/v2.9/agents/')).toEqual({ status: 404, body: undefined });
    expect(await request('GET', '/v2.6/agents/not-enrolled')).toMatchObject({ status: 404 });
  });
});

describe('terroir\'s client on a Keylime 400', () => {
  it('sends tpm_ek, so the strict double accepts its request', async () => {
    const verdict = await verifyEvidence(client, {
      quote: good.quote as string, nonce, akPublic: tpm.akPublic, ekPublic: tpm.ekPublic, hashAlg: 'sha256', tpmPolicy: good.tpm_policy as string,
    });
    expect(verdict.valid).toBe(true);
    const sent = (verifier.lastEvidenceBody as { data: Record<string, string> }).data;
    expect(sent.tpm_ek).toBe(tpm.ekPublic.toString('base64'));
  });

  it('a refused request is kind "refused" with Keylime\'s failures, sent once (never retried), and not an outage', async () => {
    verifier.fault = { mode: 'bad-request' };
    const before = client.counters();
    try {
      const err = await verifyEvidence(client, {
        quote: good.quote as string, nonce, akPublic: tpm.akPublic, ekPublic: tpm.ekPublic, hashAlg: 'sha256', tpmPolicy: good.tpm_policy as string,
      }).then(() => undefined, (e: unknown) => e);
      expect(err).toBeInstanceOf(KeylimeRequestError);
      const e = err as KeylimeRequestError;
      expect(e.kind).toBe('refused');
      expect(e.code).toBe('KEYLIME_REFUSED_REQUEST');
      expect(e.unreachable).toBe(false);
      expect(e.status).toBe(400);
      expect(e.failures).toEqual([{ type: 'default.missing_param', context: 'missing parameter "tpm_ek"' }]);
      expect(e.message).toMatch(/refused the request as malformed \(HTTP 400\): default\.missing_param: missing parameter "tpm_ek"/);
      const after = client.counters();
      expect(after.requests - before.requests).toBe(1);
      expect(after.retries).toBe(before.retries);
      expect(after.failures.refused).toBe(before.failures.refused + 1);
    } finally {
      verifier.fault = { mode: 'none' };
    }
  });

  it('a 5xx is an outage: retried, then reported unreachable', async () => {
    verifier.fault = { mode: '5xx' };
    const before = client.counters();
    try {
      const err = await verifyEvidence(client, {
        quote: good.quote as string, nonce, akPublic: tpm.akPublic, ekPublic: tpm.ekPublic, hashAlg: 'sha256', tpmPolicy: good.tpm_policy as string,
      }).then(() => undefined, (e: unknown) => e) as KeylimeRequestError;
      expect(err.kind).toBe('http');
      expect(err.unreachable).toBe(true);
      expect(client.counters().requests - before.requests).toBe(3);
    } finally {
      verifier.fault = { mode: 'none' };
    }
  });
});
