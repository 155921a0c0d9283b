// The evidence API over real mTLS: who may call it (SVIDs of the trust domain; record bodies only for
// auditors), and that what it serves checks out offline — checkpoints signed by the audit key,
// inclusion and consistency proofs against them, EARs signed by the same key.
import crypto from 'node:crypto';
import https from 'node:https';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyEar } from '../../src/evidence/ear.js';
import { decodeRecord } from '../../src/evidence/record.js';
import { evidenceRefFromCertificate } from '../../src/spiffe/evidence-ref.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { SvidIssuer } from '../../src/server/ca/issuer.js';
import { leafHash, noteVerifierFromKey, openNote, parseCheckpoint, verifyConsistency, verifyInclusion } from '../../src/translog/index.js';
import { agentClient, attest, bundleRootsPem, createJoinToken, newKey, startTestServer, TD, type TestServer } from '../server/e2e/helpers.js';

let t: TestServer;
type Identity = { id: string; chain: Buffer[]; key: crypto.KeyObject };
let reader: Identity;
let auditor: Identity;

async function attestAs(spiffeId?: string): Promise<Identity> {
  const token = crypto.randomBytes(16).toString('hex');
  await t.server.store.createJoinToken({ token, expiresAt: new Date(Date.now() + 600_000), ...(spiffeId ? { spiffeId } : {}) });
  const k = newKey();
  const c = agentClient(t.server);
  try {
    const r = (await attest(c, { params: { joinToken: { token }, csr: k.csr } }))[0]!.result!;
    return { id: r.spiffeId, chain: r.svidChain, key: k.privateKey };
  } finally {
    c.close();
  }
}

function pem(ders: Buffer[]): string {
  return ders.map((d) => new crypto.X509Certificate(d).toString()).join('');
}

/** GET over mTLS, checking the server is spiffe://<td>/spire/server. */
function get(path: string, who?: { chain: Buffer[]; key: crypto.KeyObject }, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: t.server.evidenceApiPort, path, method,
      ca: bundleRootsPem(t.server), servername: 'terroir-server',
      ...(who ? { cert: pem(who.chain), key: who.key.export({ format: 'pem', type: 'pkcs8' }) } : {}),
      checkServerIdentity: (_h, cert) => ((cert.subjectaltname ?? '').includes(`URI:spiffe://${TD}/spire/server`) ? undefined : new Error('not the server')),
      agent: false,
    }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

beforeAll(async () => {
  t = await startTestServer({ evidenceLog: { api: { enabled: true, port: 0, auditorIds: [`spiffe://${TD}/auditor`] } } });
  reader = await attestAs();
  auditor = await attestAs(`spiffe://${TD}/auditor`);
  await createJoinToken(t.server);
  await t.server.evidenceLog!.flush();
}, 60_000);

afterAll(async () => { await t?.stop(); });

describe('who may call the evidence API', () => {
  it('refuses a client without a certificate', async () => {
    await expect(get('/v1/evidence/key')).rejects.toThrow();
  });

  it('refuses an SVID of another trust domain', async () => {
    const other = await startTestServer({ trustDomain: 'other.org' });
    try {
      const k = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      const svid = new SvidIssuer({ ca: other.server.ca, maxTtlSeconds: 3600 }).mintX509(SpiffeId.parse(`spiffe://other.org/agent/x`), k.publicKey, 600);
      // Its chain does not lead to this server's roots: the handshake fails.
      await expect(get('/v1/evidence/key', { chain: svid.certChain, key: k.privateKey })).rejects.toThrow();
    } finally {
      await other.stop();
    }
  });
});

describe('what a reader gets', () => {
  it('the audit key, and a checkpoint it verifies', async () => {
    const key = (await get('/v1/evidence/key', reader)).body.trim();
    expect(key).toBe(t.server.auditVerifierKey);
    const cp = await get('/v1/evidence/checkpoint', reader);
    expect(cp.status).toBe(200);
    const parsed = parseCheckpoint(openNote(cp.body, [noteVerifierFromKey(key)]).text);
    expect(parsed.origin).toBe(`${TD}/terroir/evidence`);
  });

  it('an inclusion proof of its own attestation record (from its SVID) against the checkpoint', async () => {
    const ref = evidenceRefFromCertificate(reader.chain[0]!)!;
    const cp = parseCheckpoint(openNote((await get('/v1/evidence/checkpoint', reader)).body, [noteVerifierFromKey(t.server.auditVerifierKey!)]).text);
    const proof = JSON.parse((await get(`/v1/evidence/proof/inclusion?index=${ref.index}&size=${cp.size}`, reader)).body) as { hashes: string[] };
    const leaf = JSON.parse((await get(`/v1/evidence/leaves/${ref.index}`, reader)).body) as { leafHash: string; kind: string; body?: string };
    expect(leaf.kind).toBe('attestation');
    // A reader gets the leaf hash, not the body (bodies hold nodes' precise readings).
    expect(leaf.body).toBeUndefined();
    expect(() => verifyInclusion(Buffer.from(leaf.leafHash, 'base64'), ref.index, cp.size, proof.hashes.map((h) => Buffer.from(h, 'base64')), cp.root)).not.toThrow();
  });

  it('a consistency proof between two sizes', async () => {
    const log = t.server.evidenceLog!;
    const a = await log.head();
    await attestAs();
    await log.flush();
    const b = await log.head();
    const proof = JSON.parse((await get(`/v1/evidence/proof/consistency?from=${a.size}&to=${b.size}`, reader)).body) as { hashes: string[] };
    expect(() => verifyConsistency(a.size, b.size, proof.hashes.map((h) => Buffer.from(h, 'base64')), a.root, b.root)).not.toThrow();
  });

  it('the node\'s latest attestation and its EAR, signed by the audit key', async () => {
    const node = JSON.parse((await get(`/v1/evidence/nodes/${encodeURIComponent(reader.id)}`, reader)).body) as { attestation: number; issuance: number };
    expect(node.attestation).toBe(evidenceRefFromCertificate(reader.chain[0]!)!.index);
    const ear = await get(`/v1/evidence/ear/${encodeURIComponent(reader.id)}`, reader);
    expect(ear.status).toBe(200);
    expect(ear.type).toMatch(/^application\/eat\+jwt/);
    const pub = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(t.server.auditVerifierKey!.split('+').slice(2).join('+'), 'base64').subarray(1).toString('base64url') }, format: 'jwk' });
    const claims = await verifyEar(ear.body, pub);
    expect(claims.submods[reader.id]).toBeDefined();
    expect((claims as unknown as Record<string, unknown>)['terroir_evidence']).toEqual({ log: `${TD}/terroir/evidence`, index: node.attestation });
  });

  it('an EAR is never a stale "affirming": after an operator evicts the node it says contraindicated', async () => {
    const victim = await attestAs();
    const pub = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: Buffer.from(t.server.auditVerifierKey!.split('+').slice(2).join('+'), 'base64').subarray(1).toString('base64url') }, format: 'jwk' });
    const before = await verifyEar((await get(`/v1/evidence/ear/${encodeURIComponent(victim.id)}`, reader)).body, pub);
    expect(before.submods[victim.id]!.ear_status).not.toBe('contraindicated');
    const { AdminClient } = await import('../../src/api/admin-api.js');
    const c = new AdminClient(t.server.adminSocketPath!);
    try {
      await c.call('EvictAgent', { spiffeId: victim.id });
    } finally {
      c.close();
    }
    await t.server.evidenceLog!.flush();
    const after = await verifyEar((await get(`/v1/evidence/ear/${encodeURIComponent(victim.id)}`, reader)).body, pub);
    expect(after.submods[victim.id]!.ear_status).toBe('contraindicated');
    expect(JSON.stringify(after)).toMatch(/trust withdrawn after attestation record \d+.*evicted/);
  });

  it('an auditor also gets record bodies', async () => {
    const ref = evidenceRefFromCertificate(reader.chain[0]!)!;
    const leaf = JSON.parse((await get(`/v1/evidence/leaves/${ref.index}`, auditor)).body) as { leafHash: string; body: string };
    const body = Buffer.from(leaf.body, 'base64');
    expect(leafHash(body).toString('base64')).toBe(leaf.leafHash);
    expect(decodeRecord(body)).toMatchObject({ kind: 'attestation', agentId: reader.id });
  });
});

describe('bad requests change nothing and say what was wrong', () => {
  it.each([
    ['/v1/evidence/proof/inclusion?index=abc&size=1', 400, /index must be/],
    ['/v1/evidence/proof/inclusion?index=5&size=99999999', 400, /size <=/],
    ['/v1/evidence/proof/consistency?from=0&to=1', 400, /1 <= from/],
    ['/v1/evidence/leaves/99999999', 404, /no leaf/],
    ['/v1/evidence/leaves/1e3', 400, /leaf index/],
    [`/v1/evidence/ear/${encodeURIComponent('spiffe://example.org/agent/nobody')}`, 404, /no attestation/],
    ['/v1/evidence/ear/not-an-id', 400, /SPIFFE ID/],
    ['/v1/nothing', 404, /no such evidence endpoint/],
  ])('%s → %i', async (path, status, message) => {
    const size = await t.server.evidenceLog!.size();
    const r = await get(path, reader);
    expect(r.status).toBe(status);
    expect((JSON.parse(r.body) as { error: string }).error).toMatch(message);
    expect(await t.server.evidenceLog!.size()).toBe(size);
  });

  it('refuses anything but GET', async () => {
    const r = await get('/v1/evidence/checkpoint', reader, 'POST');
    expect(r.status).toBe(405);
  });
});
