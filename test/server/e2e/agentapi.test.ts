import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentEvent, BatchNewX509SvidResponse, FetchBundlesResponse, NewJwtSvidResponse, RenewAgentResponse, SyncEntriesResponse } from '../../../src/api/agent-api.js';
import { Bundle, BundleSet } from '../../../src/spiffe/bundle.js';
import { TrustDomain } from '../../../src/spiffe/id.js';
import { verifyX509Svid } from '../../../src/spiffe/x509svid.js';
import { validateJwtSvid } from '../../../src/spiffe/jwtsvid.js';
import { createCsr } from '../../../src/agent/csr.js';
import {
  agentClient, attest, attestWithToken, createJoinToken, newKey, startTestServer, TD, unary, type AgentClient, type TestServer,
} from './helpers.js';

let ts: TestServer;
const clients: AgentClient[] = [];
const client = (...a: Parameters<typeof agentClient>): AgentClient => { const c = agentClient(...a); clients.push(c); return c; };

beforeAll(async () => { ts = await startTestServer({ agentApi: { attestationRateLimit: { perSecond: 100, burst: 100 } } }); });
afterAll(async () => { for (const c of clients) c.close(); await ts.stop(); });

const bundles = (): BundleSet => new BundleSet(Bundle.parse(TrustDomain.parse(TD), ts.server.ca.bundle().bundleJson));

describe('AttestAgent with a join token', () => {
  it('issues an agent SVID for the CSR key over TLS, records the node and audits it', async () => {
    const token = await createJoinToken(ts.server);
    const k = newKey();
    const res = await attest(client(ts.server), { params: { joinToken: { token }, csr: k.csr } });
    expect(res).toHaveLength(1);
    const r = res[0]?.result;
    expect(r?.spiffeId).toBe(`spiffe://${TD}/agent/join_token/${token}`);
    expect(r?.canRenew).toBe(true);
    const v = verifyX509Svid(r!.svidChain, bundles());
    expect(v.id.toString()).toBe(r?.spiffeId);
    expect(v.leaf.publicKey.export({ format: 'der', type: 'spki' }).equals(k.publicKey.export({ format: 'der', type: 'spki' }))).toBe(true);
    // TTL: the default 1 h (plus the 10 s backdating).
    const life = (Date.parse(v.leaf.validTo) - Date.parse(v.leaf.validFrom)) / 1000;
    expect(life).toBeGreaterThanOrEqual(3600);
    expect(life).toBeLessThanOrEqual(3611);
    expect(Bundle.parse(TrustDomain.parse(TD), r!.bundle).x509Authorities()).toHaveLength(1);
    const node = await ts.server.store.getNode(r!.spiffeId);
    expect(node?.attestationType).toBe('join_token');
    expect(node?.serialNumber).toBe(BigInt(`0x${v.leaf.serialNumber}`).toString(16));
    expect(ts.audit.some((a) => a.action === 'attest_agent' && a.result === 'ok' && a.subject === r!.spiffeId)).toBe(true);
  });

  it('refuses a used, unknown or expired token with PERMISSION_DENIED and writes no node', async () => {
    const a = await attestWithToken(ts.server);
    const before = (await ts.server.store.listNodes()).length;
    await expect(attest(client(ts.server), { params: { joinToken: { token: a.token }, csr: newKey().csr } }))
      .rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/unknown, already used or expired/) });
    await expect(attest(client(ts.server), { params: { joinToken: { token: 'never-issued' }, csr: newKey().csr } }))
      .rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    const expired = crypto.randomBytes(8).toString('hex');
    await ts.server.store.createJoinToken({ token: expired, expiresAt: new Date(Date.now() - 1000) });
    await expect(attest(client(ts.server), { params: { joinToken: { token: expired }, csr: newKey().csr } }))
      .rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    expect((await ts.server.store.listNodes()).length).toBe(before);
    expect(ts.audit.some((r) => r.action === 'attest_agent' && r.result === 'denied')).toBe(true);
  });

  it('refuses a malformed CSR with INVALID_ARGUMENT without burning the token', async () => {
    const token = await createJoinToken(ts.server);
    await expect(attest(client(ts.server), { params: { joinToken: { token }, csr: Buffer.from('not a csr') } }))
      .rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/params\.csr/) });
    // A CSR whose signature does not verify: flip a byte of the signature.
    const bad = Buffer.from(newKey().csr);
    bad[bad.length - 3] = (bad[bad.length - 3] as number) ^ 0xff;
    await expect(attest(client(ts.server), { params: { joinToken: { token }, csr: bad } }))
      .rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const ok = await attest(client(ts.server), { params: { joinToken: { token }, csr: newKey().csr } });
    expect(ok[0]?.result?.spiffeId).toContain(token);
  });

  it('refuses a stream that does not start with params, and TPM when TPM attestation is off', async () => {
    await expect(attest(client(ts.server), { challengeResponse: { activatedSecret: Buffer.alloc(32) } }))
      .rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/first AttestAgent message must be params/) });
    await expect(attest(client(ts.server), { params: { csr: newKey().csr } }))
      .rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(attest(client(ts.server), { params: { tpm: { ekPublic: Buffer.alloc(4), akPublic: Buffer.alloc(4), ekCertificate: Buffer.alloc(0), ekIntermediates: [] }, csr: newKey().csr } }))
      .rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION, details: expect.stringMatching(/TPM attestation is disabled/) });
  });

  it('refuses messages above the size limit with RESOURCE_EXHAUSTED', async () => {
    await expect(attest(client(ts.server), { params: { joinToken: { token: 'x' }, csr: Buffer.alloc(5 * 1024 * 1024) } }))
      .rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED });
  });
});

describe('rate limiting', () => {
  it('answers RESOURCE_EXHAUSTED once a source spent its burst', async () => {
    const limited = await startTestServer({ agentApi: { attestationRateLimit: { perSecond: 0.01, burst: 2 } } });
    const c = agentClient(limited.server);
    try {
      for (let i = 0; i < 2; i++) {
        await expect(attest(c, { params: { joinToken: { token: `nope${i}` }, csr: newKey().csr } })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      }
      await expect(attest(c, { params: { joinToken: { token: 'nope3' }, csr: newKey().csr } }))
        .rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/too many attestation attempts from 127\.0\.0\.1; retry in \d+ s/) });
    } finally {
      c.close();
      await limited.stop();
    }
  });
});

describe('authenticated RPCs (mTLS with the agent SVID)', () => {
  it('refuses calls without a client certificate or with a foreign one', async () => {
    await expect(unary(client(ts.server), 'SyncEntries', { knownRevision: '' }))
      .rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED, details: expect.stringMatching(/agent X\.509-SVID as TLS client certificate/) });
    // A self-made certificate claiming an agent ID: TLS does not verify it against the bundle.
    const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const dir = fs.mkdtempSync(path.join(ts.dir, 'forge-'));
    fs.writeFileSync(path.join(dir, 'k.pem'), privateKey.export({ format: 'pem', type: 'pkcs8' }));
    execFileSync('openssl', ['req', '-x509', '-new', '-key', path.join(dir, 'k.pem'), '-out', path.join(dir, 'c.pem'), '-days', '1', '-subj', '/CN=x',
      '-addext', `subjectAltName=URI:spiffe://${TD}/agent/join_token/forged`], { stdio: 'ignore' });
    const forged = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'c.pem'))).raw;
    await expect(unary(client(ts.server, { chain: [forged], key: privateKey }), 'SyncEntries', { knownRevision: '' }))
      .rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
  });

  it('syncs authorized entries by revision: full, unchanged, changed', async () => {
    const agent = await attestWithToken(ts.server);
    const c = client(ts.server, agent);
    const [e1, e2] = await ts.server.store.createEntries([
      { spiffeId: `spiffe://${TD}/w/one`, parentId: agent.id, selectors: [{ type: 'unix', value: 'uid:1000' }], federatesWith: [] },
      { spiffeId: `spiffe://${TD}/w/two`, parentId: agent.id, selectors: [{ type: 'unix', value: 'uid:1001' }], federatesWith: [], x509SvidTtl: 600 },
    ]);
    await ts.server.store.createEntries([{ spiffeId: `spiffe://${TD}/w/other`, parentId: `spiffe://${TD}/agent/join_token/someone-else`, selectors: [{ type: 'unix', value: 'uid:1' }], federatesWith: [] }]);
    const full = await unary<SyncEntriesResponse>(c, 'SyncEntries', { knownRevision: '' });
    expect(full.unchanged).toBe(false);
    expect(full.entries.map((e) => e.spiffeId).sort()).toEqual([`spiffe://${TD}/w/one`, `spiffe://${TD}/w/two`]);
    expect(full.entries.find((e) => e.spiffeId.endsWith('two'))?.x509SvidTtl).toBe(600);
    const same = await unary<SyncEntriesResponse>(c, 'SyncEntries', { knownRevision: full.revision });
    expect(same).toMatchObject({ unchanged: true, entries: [], revision: full.revision });
    // A change to someone else's entries leaves this agent's revision alone.
    await ts.server.store.createEntries([{ spiffeId: `spiffe://${TD}/w/other2`, parentId: `spiffe://${TD}/agent/join_token/someone-else`, selectors: [{ type: 'unix', value: 'uid:2' }], federatesWith: [] }]);
    expect((await unary<SyncEntriesResponse>(c, 'SyncEntries', { knownRevision: full.revision })).unchanged).toBe(true);
    await ts.server.store.deleteEntries([(e2 as { ok: true; value: { id: string } }).value.id]);
    const changed = await unary<SyncEntriesResponse>(c, 'SyncEntries', { knownRevision: full.revision });
    expect(changed.unchanged).toBe(false);
    expect(changed.entries.map((e) => e.id)).toEqual([(e1 as { ok: true; value: { id: string } }).value.id]);
  });

  it('signs X.509-SVIDs only for authorized entries, with the entry ID, DNS names and TTL, per-item errors', async () => {
    const agent = await attestWithToken(ts.server);
    const c = client(ts.server, agent);
    const [mine] = await ts.server.store.createEntries([{ spiffeId: `spiffe://${TD}/web`, parentId: agent.id, selectors: [{ type: 'unix', value: 'uid:33' }], federatesWith: [], dnsNames: ['web.example.org'], x509SvidTtl: 900 }]);
    const [theirs] = await ts.server.store.createEntries([{ spiffeId: `spiffe://${TD}/db`, parentId: `spiffe://${TD}/agent/join_token/another`, selectors: [{ type: 'unix', value: 'uid:5' }], federatesWith: [] }]);
    const mineId = (mine as { ok: true; value: { id: string } }).value.id;
    const theirsId = (theirs as { ok: true; value: { id: string } }).value.id;
    const k = newKey();
    const k2 = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const badSig = Buffer.from(newKey().csr);
    badSig[badSig.length - 3] = (badSig[badSig.length - 3] as number) ^ 0xff;
    const res = await unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params: [
      { entryId: mineId, csr: k.csr },
      { entryId: theirsId, csr: newKey().csr },
      { entryId: 'no-such-entry', csr: newKey().csr },
      { entryId: mineId, csr: createCsr(k2, `spiffe://${TD}/admin`) },
      { entryId: mineId, csr: badSig },
      { entryId: mineId, csr: createCsr(k2, `spiffe://${TD}/web`) },
    ] });
    expect(res.results.map((r) => r.errorCode)).toEqual([0, grpc.status.PERMISSION_DENIED, grpc.status.PERMISSION_DENIED, grpc.status.INVALID_ARGUMENT, grpc.status.INVALID_ARGUMENT, 0]);
    expect(res.results[1]?.errorMessage).toMatch(/not authorized/);
    expect(res.results[3]?.errorMessage).toMatch(/grants only spiffe:\/\/example\.org\/web/);
    const svid = res.results[0]?.svid;
    const v = verifyX509Svid(svid!.certChain, bundles());
    expect(v.id.toString()).toBe(`spiffe://${TD}/web`);
    expect(v.leaf.subjectAltName).toContain('DNS:web.example.org');
    expect(v.leaf.publicKey.export({ format: 'der', type: 'spki' }).equals(k.publicKey.export({ format: 'der', type: 'spki' }))).toBe(true);
    expect((Date.parse(v.leaf.validTo) - Date.parse(v.leaf.validFrom)) / 1000).toBeLessThanOrEqual(911);
    // openssl as an independent CSR maker: a granted DNS name passes, an IP SAN is refused.
    const dir = fs.mkdtempSync(path.join(ts.dir, 'csr-'));
    const mk = (san: string, name: string): Buffer => {
      execFileSync('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', path.join(dir, `${name}.key`),
        '-outform', 'DER', '-out', path.join(dir, `${name}.csr`), '-subj', '/CN=w', '-addext', `subjectAltName=${san}`], { stdio: 'ignore' });
      return fs.readFileSync(path.join(dir, `${name}.csr`));
    };
    const viaOpenssl = await unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params: [
      { entryId: mineId, csr: mk('DNS:web.example.org', 'dns') },
      { entryId: mineId, csr: mk('DNS:web.example.org,IP:10.0.0.1', 'ip') },
      { entryId: mineId, csr: mk('DNS:evil.example.org', 'evil') },
    ] });
    expect(viaOpenssl.results.map((r) => r.errorCode)).toEqual([0, grpc.status.INVALID_ARGUMENT, grpc.status.INVALID_ARGUMENT]);
    expect(viaOpenssl.results[1]?.errorMessage).toMatch(/asks for ip SANs/);
    expect(viaOpenssl.results[2]?.errorMessage).toMatch(/evil\.example\.org/);
    await expect(unary(c, 'BatchNewX509Svid', { params: [] })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(unary(c, 'BatchNewX509Svid', { params: Array.from({ length: 501 }, () => ({ entryId: mineId, csr: k.csr })) }))
      .rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/at most 500/) });
    expect(ts.audit.some((a) => a.action === 'sign_x509_svid' && a.caller === agent.id)).toBe(true);
  });

  it('issues JWT-SVIDs for authorized entries that validate against the bundle', async () => {
    const agent = await attestWithToken(ts.server);
    const c = client(ts.server, agent);
    const [e] = await ts.server.store.createEntries([{ spiffeId: `spiffe://${TD}/api`, parentId: agent.id, selectors: [{ type: 'unix', value: 'uid:7' }], federatesWith: [] }]);
    const id = (e as { ok: true; value: { id: string } }).value.id;
    const res = await unary<NewJwtSvidResponse>(c, 'NewJwtSvid', { entryId: id, audience: ['svc-a'] });
    const v = await validateJwtSvid(res.token, bundles(), 'svc-a');
    expect(v.id.toString()).toBe(`spiffe://${TD}/api`);
    expect(res.expiresAt - Math.floor(Date.now() / 1000)).toBeLessThanOrEqual(300);
    await expect(unary(c, 'NewJwtSvid', { entryId: id, audience: [] })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(unary(c, 'NewJwtSvid', { entryId: 'nope', audience: ['x'] })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
  });

  it('renews a join-token agent: the new SVID takes over once used, the old one is then refused', async () => {
    const agent = await attestWithToken(ts.server);
    const k = newKey();
    const res = await unary<RenewAgentResponse>(client(ts.server, agent), 'RenewAgent', { csr: k.csr });
    expect(verifyX509Svid(res.svid!.certChain, bundles()).id.toString()).toBe(agent.id);
    // Until the new SVID is used the old one keeps working (a lost response does not lock the agent out).
    await unary(client(ts.server, agent), 'SyncEntries', { knownRevision: '' });
    await unary(client(ts.server, { chain: res.svid!.certChain, key: k.privateKey }), 'SyncEntries', { knownRevision: '' });
    await expect(unary(client(ts.server, agent), 'SyncEntries', { knownRevision: '' }))
      .rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED, details: expect.stringMatching(/no longer its current one/) });
  });

  it('serves the bundle and federated bundles, never merged', async () => {
    const agent = await attestWithToken(ts.server);
    const other = JSON.parse(ts.server.ca.bundle().bundleJson) as { keys: unknown[] };
    await ts.server.store.setBundle({ trustDomain: 'partner.org', bundleJson: JSON.stringify({ keys: other.keys.slice(0, 1), spiffe_sequence: 7 }), sequence: 7n });
    const res = await unary<FetchBundlesResponse>(client(ts.server, agent), 'FetchBundles', { knownSequence: 0 });
    expect(res.trustDomain).toBe(TD);
    expect(res.sequence).toBe(Number(ts.server.ca.bundle().sequence));
    expect(Object.keys(res.federatedBundles)).toEqual(['partner.org']);
    expect(Bundle.parse(TrustDomain.parse('partner.org'), res.federatedBundles['partner.org']!).sequenceNumber).toBe(7n);
  });

  it('WatchAgent pushes READY, ENTRIES_CHANGED for this agent, then DROP_SVIDS on ban; banned and evicted agents are refused', async () => {
    const agent = await attestWithToken(ts.server);
    const c = client(ts.server, agent);
    const events: AgentEvent[] = [];
    const call = (c.WatchAgent as (r: unknown) => grpc.ClientReadableStream<AgentEvent>).call(c, {});
    const ended = new Promise<grpc.ServiceError>((resolve) => call.on('error', resolve));
    const next = (kind: string): Promise<AgentEvent> => new Promise((resolve) => {
      const found = events.find((e) => e.kind === kind);
      if (found) return resolve(found);
      const on = (e: AgentEvent): void => { if (e.kind === kind) { call.off('data', on); resolve(e); } };
      call.on('data', on);
    });
    call.on('data', (e: AgentEvent) => events.push(e));
    await next('READY');
    const t0 = Date.now();
    await ts.server.store.createEntries([{ spiffeId: `spiffe://${TD}/new`, parentId: agent.id, selectors: [{ type: 'unix', value: 'uid:9' }], federatesWith: [] }]);
    const changed = await next('ENTRIES_CHANGED');
    expect(Date.now() - t0).toBeLessThan(1000);
    const sync = await unary<SyncEntriesResponse>(c, 'SyncEntries', { knownRevision: changed.revision });
    expect(sync.unchanged).toBe(true);
    await ts.server.store.banNode(agent.id);
    const drop = await next('DROP_SVIDS');
    expect(drop.reason).toMatch(/banned/);
    expect((await ended).code).toBe(grpc.status.PERMISSION_DENIED);
    await expect(unary(c, 'SyncEntries', { knownRevision: '' })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/banned/) });
    // The banned node cannot attest again (a token made for its SPIFFE ID), and nothing changes.
    const again = crypto.randomBytes(8).toString('hex');
    await ts.server.store.createJoinToken({ token: again, expiresAt: new Date(Date.now() + 60_000), spiffeId: agent.id });
    const serial = (await ts.server.store.getNode(agent.id))?.serialNumber;
    await expect(attest(client(ts.server), { params: { joinToken: { token: again }, csr: newKey().csr } }))
      .rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/is banned/) });
    expect((await ts.server.store.getNode(agent.id))?.serialNumber).toBe(serial);

    const evicted = await attestWithToken(ts.server);
    await ts.server.store.deleteNode(evicted.id);
    await expect(unary(client(ts.server, evicted), 'SyncEntries', { knownRevision: '' }))
      .rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED, details: expect.stringMatching(/not attested \(evicted/) });
  });
});

describe('join tokens naming an agent ID', () => {
  it('gives the agent that ID, which then authenticates; the server ID is refused', async () => {
    const token = crypto.randomBytes(8).toString('hex');
    await ts.server.store.createJoinToken({ token, expiresAt: new Date(Date.now() + 60_000), spiffeId: `spiffe://${TD}/host/rack1` });
    const k = newKey();
    const r = (await attest(client(ts.server), { params: { joinToken: { token }, csr: k.csr } }))[0]!.result!;
    expect(r.spiffeId).toBe(`spiffe://${TD}/host/rack1`);
    await expect(unary(client(ts.server, { chain: r.svidChain, key: k.privateKey }), 'SyncEntries', { knownRevision: '' })).resolves.toMatchObject({ unchanged: false });
    const bad = crypto.randomBytes(8).toString('hex');
    await ts.server.store.createJoinToken({ token: bad, expiresAt: new Date(Date.now() + 60_000), spiffeId: `spiffe://${TD}/spire/server` });
    await expect(attest(client(ts.server), { params: { joinToken: { token: bad }, csr: newKey().csr } }))
      .rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION, details: expect.stringMatching(/cannot be an agent ID/) });
  });
});

describe('AttestAgent stream handling', () => {
  it('finishes an attestation whose client half-closed after its last message', async () => {
    const token = await createJoinToken(ts.server);
    const c = client(ts.server);
    const call = (c.AttestAgent as () => grpc.ClientDuplexStream<unknown, { result?: { spiffeId: string } }>).call(c);
    const got = new Promise<string>((resolve, reject) => {
      call.on('data', (r) => { if (r.result) resolve(r.result.spiffeId); });
      call.on('error', reject);
    });
    call.write({ params: { joinToken: { token }, csr: newKey().csr } });
    call.end();
    expect(await got).toBe(`spiffe://${TD}/agent/join_token/${token}`);
  });

  it('ends with CANCELLED when the client half-closes before sending params', async () => {
    const c = client(ts.server);
    const call = (c.AttestAgent as () => grpc.ClientDuplexStream<unknown, unknown>).call(c);
    const err = new Promise<grpc.ServiceError>((resolve) => call.on('error', resolve));
    call.on('data', () => undefined);
    call.end();
    expect((await err).code).toBe(grpc.status.CANCELLED);
  });
});
