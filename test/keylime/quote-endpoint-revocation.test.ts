// The quote endpoint's revocation notification, POST /v{ver}/notifications/revocation, over real mutual
// TLS: peers without the verifier CA's client certificate get no TLS session at all, bad bodies get a
// 400 (413/415) and reach nothing, and Keylime's own body (built as keylime/cloud_verifier_common.py
// `prepare_error` builds it) is accepted and handed on once.
import crypto from 'node:crypto';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  parseRevocationNotification, startQuoteEndpoint, type QuoteEndpoint, type RevocationNotification,
} from '../../src/keylime/quote-endpoint.js';
import { ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { createPki, type KeylimePki } from './helpers/fixture.js';
import { startTpm, type TestTpm } from './helpers/tpm.js';

const group = new ProcessGroup();
let tmp: { dir: string; cleanup: () => void };
let pki: KeylimePki;
let tpm: TestTpm;
let endpoint: QuoteEndpoint;
let plain: QuoteEndpoint;
const received: RevocationNotification[] = [];
const nk = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
const NODE = 'a'.repeat(64);

beforeAll(async () => {
  tmp = tempDir('terroir-quote-endpoint-revocation-');
  pki = await createPki(tmp.dir);
  tpm = await startTpm(group, tmp.dir);
  const common = {
    quoter: tpm.quoter, pubkeyPem: nk, encAlg: 'ecc', signAlg: 'ecdsa',
    cert: pki.node.certPem, key: pki.node.keyPem, clientCa: pki.pullCa.certPem,
  } as const;
  endpoint = await startQuoteEndpoint({ ...common, maxNotificationBytes: 4096, onRevocation: (n) => received.push(n) });
  plain = await startQuoteEndpoint(common);
}, 60_000);

afterAll(async () => {
  await endpoint?.close();
  await plain?.close();
  await group.stopAll();
  tmp?.cleanup();
});

/** The body a Keylime 7.14 verifier posts (msg is JSON text; signature empty without a revocation key). */
function keylimeBody(over: Record<string, unknown> = {}, signature = ''): string {
  const msg = {
    type: 'revocation', ip: '127.0.0.1', agent_id: NODE, port: 9002, tpm_policy: '{"15": ["0000"], "mask": "0x8000"}',
    meta_data: '{"terroir_agent": "spiffe://td/agent/tpm/aaaa"}', event_time: 'Mon Aug  3 10:00:00 2026',
    event_id: 'pcr_validation.invalid_pcr_15', severity_label: 'emergency', context: { message: 'PCR value is not in allowlist' },
    ...over,
  };
  return JSON.stringify({ msg: JSON.stringify(msg), signature });
}

interface Answer { status: number; body: string }

function post(
  ep: QuoteEndpoint, body: string | Buffer, opts: { path?: string; identity?: { certPem: string; keyPem: string } | null; headers?: Record<string, string>; chunked?: boolean } = {},
): Promise<Answer> {
  const identity = opts.identity === undefined ? pki.pull : opts.identity;
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: ep.port, method: 'POST', path: opts.path ?? '/v2.2/notifications/revocation',
      ca: pki.node.certPem, agent: false,
      headers: {
        'content-type': 'application/json',
        ...(opts.chunked ? { 'transfer-encoding': 'chunked' } : { 'content-length': String(Buffer.byteLength(body)) }),
        ...opts.headers,
      },
      ...(identity !== null ? { cert: identity.certPem, key: identity.keyPem } : {}),
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('revocation notification: who may send one', () => {
  it('a client without a certificate gets no TLS session, and nothing is received', async () => {
    const before = received.length;
    await expect(post(endpoint, keylimeBody(), { identity: null })).rejects.toThrow(/certificate|alert|socket hang up|ECONNRESET/i);
    expect(received.length).toBe(before);
  });

  it('a client whose certificate is from another CA gets no TLS session, and nothing is received', async () => {
    const before = received.length;
    await expect(post(endpoint, keylimeBody(), { identity: pki.rogueClient })).rejects.toThrow(/unknown ca|alert|socket hang up|ECONNRESET/i);
    // Keylime's admin (tenant) CA is not the pull CA either.
    await expect(post(endpoint, keylimeBody(), { identity: pki.admin })).rejects.toThrow(/unknown ca|alert|socket hang up|ECONNRESET/i);
    expect(received.length).toBe(before);
  });
});

describe('revocation notification: what is accepted', () => {
  const malformed: Array<[string, string]> = [
    ['not JSON', '{"msg": '],
    ['a JSON array', '[]'],
    ['an unexpected field', JSON.stringify({ msg: '{}', signature: '', extra: 1 })],
    ['no signature field', JSON.stringify({ msg: JSON.stringify({ type: 'revocation', agent_id: NODE }) })],
    ['msg not a string', JSON.stringify({ msg: { type: 'revocation', agent_id: NODE }, signature: '' })],
    ['msg not JSON', JSON.stringify({ msg: 'revoked!', signature: '' })],
    ['msg a JSON array', JSON.stringify({ msg: '[1]', signature: '' })],
    ['an unknown type', keylimeBody({ type: 'please_drop' })],
    ['no agent id', keylimeBody({ agent_id: undefined })],
    ['an agent id with a slash', keylimeBody({ agent_id: '../etc' })],
    ['a port that is an object', keylimeBody({ port: { n: 1 } })],
    ['a signature that is not base64', keylimeBody({}, 'not base64!')],
  ];
  it.each(malformed)('%s: 400 with the reason; nothing acts on it', async (_what, body) => {
    const before = received.length;
    const res = await post(endpoint, body);
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body)).toMatchObject({ code: 400, status: expect.stringMatching(/^Bad request: .+/) });
    expect(received.length).toBe(before);
  });

  it('an oversized body (declared, or streamed chunked) is refused with 413 before it is parsed', async () => {
    const before = received.length;
    const big = keylimeBody({ context: 'x'.repeat(10_000) });
    expect((await post(endpoint, big)).status).toBe(413);
    expect((await post(endpoint, big, { chunked: true })).status).toBe(413);
    expect(received.length).toBe(before);
  });

  it('not application/json: 415; an unknown API version: 400 as Keylime expects; another path: 404', async () => {
    const before = received.length;
    expect((await post(endpoint, keylimeBody(), { headers: { 'content-type': 'text/plain' } })).status).toBe(415);
    const v = await post(endpoint, keylimeBody(), { path: '/v9.9/notifications/revocation' });
    expect(v.status).toBe(400);
    expect(JSON.parse(v.body).status).toMatch(/API version not supported/);
    expect((await post(endpoint, keylimeBody(), { path: '/v2.2/notifications/other' })).status).toBe(404);
    expect((await post(endpoint, keylimeBody(), { path: '/v2.2/notifications/revocation?x=1' })).status).toBe(400);
    expect(received.length).toBe(before);
  });

  it('an endpoint that takes no notifications answers 405, as before', async () => {
    expect((await post(plain, keylimeBody())).status).toBe(405);
  });

  it('Keylime\'s body from the pinned verifier CA: 200 Success, handed on once with its facts', async () => {
    const before = received.length;
    const res = await post(endpoint, keylimeBody());
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ code: 200, status: 'Success', results: {} });
    expect(received.slice(before)).toEqual([{
      type: 'revocation', agentId: NODE, eventId: 'pcr_validation.invalid_pcr_15', severityLabel: 'emergency',
      eventTime: 'Mon Aug  3 10:00:00 2026', signed: false,
    }]);
    // A signed one (the verifier had a revocation key) and a comm_error are accepted too.
    const signed = crypto.randomBytes(256).toString('base64');
    expect((await post(endpoint, keylimeBody({ type: 'comm_error', event_id: undefined }, signed), { path: '/v2.1/notifications/revocation' })).status).toBe(200);
    expect(received.at(-1)).toMatchObject({ type: 'comm_error', agentId: NODE, signed: true });
    expect(endpoint.counters().notifications).toBe(2);
  });

  it('the quote endpoint still serves quotes after all of this', async () => {
    const res = await new Promise<number>((resolve, reject) => {
      https.get({
        host: '127.0.0.1', port: endpoint.port, path: '/v2.2/quotes/integrity?nonce=abc123&mask=0x8000&partial=1',
        ca: pki.node.certPem, cert: pki.pull.certPem, key: pki.pull.keyPem, agent: false,
      }, (r) => { r.resume(); resolve(r.statusCode ?? 0); }).on('error', reject);
    });
    expect(res).toBe(200);
  });

  it('parseRevocationNotification bounds what it returns', () => {
    const n = parseRevocationNotification(keylimeBody({ event_id: 'e'.repeat(5000) }));
    expect(n.eventId).toHaveLength(256);
  });
});
