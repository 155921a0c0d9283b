import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { status } from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient, type Entry } from '../../../src/api/admin-api.js';
import { createAdminService, startAdminServer } from '../../../src/server/admin/index.js';
import { Bundle, TrustDomain } from '../../../src/spiffe/index.js';
import { tempDir } from '../../support/tmp.js';
import { TD, auditRecords, caCertificate, fileMode, startAdminFixture, type AdminFixture } from './fixtures.js';

const AGENT = 'spiffe://example.org/agent/join_token/abc';
const entry = (p: string, extra: Partial<Entry> = {}): Partial<Entry> => ({
  spiffeId: `spiffe://example.org${p}`, parentId: AGENT, selectors: [{ type: 'unix', value: 'uid:1000' }], ...extra,
});

async function rpcError(p: Promise<unknown>): Promise<{ code: number; details: string }> {
  return p.then(() => { throw new Error('expected the call to fail'); }, (e: { code: number; details: string }) => e);
}

describe('admin API over a real Unix socket', () => {
  let fx: AdminFixture;
  let client: AdminClient;
  beforeAll(async () => {
    fx = await startAdminFixture();
    client = new AdminClient(fx.socketPath);
  });
  afterAll(async () => {
    client?.close();
    await fx?.close();
  });

  it('creates the socket 0600 inside a 0700 directory and answers a health check', async () => {
    expect(fileMode(fx.socketPath)).toBe(0o600);
    expect(fileMode(path.dirname(fx.socketPath))).toBe(0o700);
    expect(await client.call('Healthcheck', {})).toEqual({ status: 'SERVING', trustDomain: 'example.org' });
  });

  it('creates entries, reports per-item results and audits who did it', async () => {
    const before = fx.entriesChanged;
    const res = await client.call('BatchCreateEntry', {
      entries: [entry('/web', { x509SvidTtl: 600, dnsNames: ['web.example.org'], federatesWith: ['other.org'], hint: 'web' }), entry('/web')],
    });
    expect(res.results.map((r) => r.status.code)).toEqual([status.OK, status.ALREADY_EXISTS]);
    const created = res.results[0]!.entry!;
    expect(created).toMatchObject({ spiffeId: 'spiffe://example.org/web', x509SvidTtl: 600, jwtSvidTtl: 0, dnsNames: ['web.example.org'], federatesWith: ['other.org'] });
    expect(await client.call('GetEntry', { id: created.id })).toEqual(created);
    expect(fx.entriesChanged).toBe(before + 1);
    const audit = auditRecords(fx.logs).at(-1)!;
    expect(audit).toMatchObject({ action: 'admin', caller: `uid:${process.getuid!()}`, result: 'ok', details: { rpc: 'BatchCreateEntry' } });
    expect((audit.details as { items: unknown[] }).items).toHaveLength(2);
  });

  it('refuses bad input with INVALID_ARGUMENT and a precise message, writing nothing', async () => {
    const count = (await fx.store.listEntries()).length;
    const rev = await fx.store.entriesRevision();
    const cases: [Partial<Entry>, string][] = [
      [entry('/x', { spiffeId: 'spiffe://example.org/a//b' }), 'entries[1]: spiffeId: invalid SPIFFE ID'],
      [entry('/x', { spiffeId: 'https://example.org/x' }), 'entries[1]: spiffeId: invalid SPIFFE ID "https://example.org/x"'],
      [entry('/x', { parentId: 'spiffe://other.org/agent' }), 'entries[1]: parentId: "spiffe://other.org/agent" is not in the server\'s trust domain "example.org"'],
      [entry('/x', { selectors: [{ type: 'unix', value: '' }] }), 'entries[1]: selectors[0]: selector type and value must both be non-empty'],
      [entry('/x', { selectors: [] }), 'entries[1]: selectors: an entry needs at least one selector'],
      [entry('/x', { x509SvidTtl: -1 }), 'entries[1]: x509SvidTtl must be a whole number of seconds from 1 to 31536000'],
      [entry('/x', { jwtSvidTtl: 99_999_999 }), 'entries[1]: jwtSvidTtl must be a whole number of seconds'],
      [entry('/x', { dnsNames: ['bad name'] }), 'entries[1]: dnsNames: "bad name" is not a valid DNS name'],
      [entry('/x', { federatesWith: ['example.org'] }), 'entries[1]: federatesWith: "example.org" is the server\'s own trust domain'],
      [entry('/x', { id: 'nope' }), 'entries[1]: entry ID must be a UUID, got "nope"'],
    ];
    for (const [bad, message] of cases) {
      // A good entry first: the whole batch is refused, the good one included.
      const err = await rpcError(client.call('BatchCreateEntry', { entries: [entry('/fine'), bad] }));
      expect(err.code, message).toBe(status.INVALID_ARGUMENT);
      expect(err.details).toContain(message);
    }
    expect((await rpcError(client.call('BatchCreateEntry', { entries: [] }))).details).toBe('entries: the batch is empty');
    expect((await fx.store.listEntries()).length).toBe(count);
    expect(await fx.store.entriesRevision()).toBe(rev);
    expect(auditRecords(fx.logs).at(-1)).toMatchObject({ result: 'denied', reason: 'entries: the batch is empty' });
  });

  it('refuses a message over the size limit with RESOURCE_EXHAUSTED', async () => {
    const err = await rpcError(client.call('BatchCreateEntry', { entries: [entry('/big', { hint: 'x'.repeat(5 * 1024 * 1024) })] }));
    expect(err.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(await fx.store.listEntries({ spiffeId: 'spiffe://example.org/big' })).toEqual([]);
  });

  it('refuses a malformed protobuf request and writes nothing', async () => {
    const rev = await fx.store.entriesRevision();
    const Raw = grpc.makeGenericClientConstructor({
      BatchCreateEntry: {
        path: '/terroir.admin.v1.Admin/BatchCreateEntry', requestStream: false, responseStream: false,
        requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b,
      },
    }, 'Raw');
    const raw = new Raw(`unix:${fx.socketPath}`, grpc.credentials.createInsecure());
    // Field 1 (entries) as length-delimited, claiming 100 bytes but carrying 3.
    const garbage = Buffer.from([0x0a, 0x64, 0x01, 0x02, 0x03]);
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      (raw as unknown as { BatchCreateEntry: (req: Buffer, cb: (e: grpc.ServiceError | null) => void) => void })
        .BatchCreateEntry(garbage, (e) => resolve(e!));
    });
    raw.close();
    expect(err.code).toBe(status.INTERNAL);
    expect(err.details).toMatch(/deserializ/i);
    expect(await fx.store.entriesRevision()).toBe(rev);
  });

  it('lists with filters and pages', async () => {
    const res = await client.call('BatchCreateEntry', {
      entries: [1, 2, 3, 4, 5].map((i) => entry(`/list/${i}`, { parentId: 'spiffe://example.org/agent/lister', selectors: [{ type: 'k8s', value: `ns:${i % 2}` }, { type: 'k8s', value: 'sa:x' }] })),
    });
    expect(res.results.every((r) => r.status.code === status.OK)).toBe(true);
    const byParent = await client.call('ListEntries', { byParentId: 'spiffe://example.org/agent/lister' });
    expect(byParent.entries).toHaveLength(5);
    expect(byParent.nextPageToken).toBe('');
    const superset = await client.call('ListEntries', { bySelectors: { selectors: [{ type: 'k8s', value: 'ns:1' }], match: 'superset' } });
    expect(superset.entries.map((e) => e.spiffeId).sort()).toEqual(['/list/1', '/list/3', '/list/5'].map((p) => `spiffe://example.org${p}`));
    const exact = await client.call('ListEntries', { bySelectors: { selectors: [{ type: 'k8s', value: 'ns:1' }] } });
    expect(exact.entries).toEqual([]);
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await client.call('ListEntries', { byParentId: 'spiffe://example.org/agent/lister', pageSize: 2, pageToken: token });
      seen.push(...page.entries.map((e) => e.id));
      token = page.nextPageToken;
      pages++;
    } while (token !== '');
    expect(pages).toBe(3);
    expect(seen).toEqual(byParent.entries.map((e) => e.id));
    const bad = await rpcError(client.call('ListEntries', { bySelectors: { selectors: [{ type: 'k8s', value: 'x' }], match: 'most' as 'any' } }));
    expect(bad).toMatchObject({ code: status.INVALID_ARGUMENT, details: 'bySelectors.match must be exact, subset, superset or any, got "most"' });
  });

  it('updates masked fields only, and deletes', async () => {
    const [created] = (await client.call('BatchCreateEntry', { entries: [entry('/upd', { hint: 'keep', x509SvidTtl: 60 })] })).results;
    const id = created!.entry!.id;
    const res = await client.call('BatchUpdateEntry', {
      entries: [{ id, x509SvidTtl: 0, hint: 'ignored', selectors: [{ type: 'unix', value: 'uid:7' }] }],
      mask: { x509SvidTtl: true, selectors: true },
    });
    expect(res.results[0]!.status.code).toBe(status.OK);
    expect(await client.call('GetEntry', { id })).toMatchObject({ hint: 'keep', x509SvidTtl: 0, selectors: [{ type: 'unix', value: 'uid:7' }] });
    const missing = await client.call('BatchUpdateEntry', { entries: [{ id: '00000000-0000-4000-8000-000000000000', hint: 'x' }], mask: { hint: true } });
    expect(missing.results[0]!.status).toEqual({ code: status.NOT_FOUND, message: 'no entry with id 00000000-0000-4000-8000-000000000000' });
    expect((await rpcError(client.call('BatchUpdateEntry', { entries: [{ id }], mask: {} }))).details).toBe('entries[0]: mask: name at least one field to update');
    const del = await client.call('BatchDeleteEntry', { ids: [id, id] });
    expect(del.results.map((r) => r.status.code)).toEqual([status.OK, status.NOT_FOUND]);
    expect(del.results[1]!.entry!.id).toBe(id);
    expect((await rpcError(client.call('GetEntry', { id }))).code).toBe(status.NOT_FOUND);
  });

  it('lists, shows, bans and evicts agents', async () => {
    const node = (id: string) => ({
      spiffeId: `spiffe://example.org/agent/tpm/${id}`, attestationType: 'tpm' as const, selectors: [{ type: 'tpm', value: `ek-hash:${id}` }],
      serialNumber: 'aa', expiresAt: new Date(Date.now() + 3_600_000), attestationData: { ekHash: id },
    });
    await fx.store.createNode(node('n1'));
    await fx.store.createNode(node('n2'));
    const list = await client.call('ListAgents', {});
    expect(list.agents.map((a) => a.spiffeId)).toEqual(['n1', 'n2'].map((i) => `spiffe://example.org/agent/tpm/${i}`));
    expect(JSON.parse(list.agents[0]!.attestationDataJson)).toEqual({ ekHash: 'n1' });
    const banned = await client.call('BanAgent', { spiffeId: 'spiffe://example.org/agent/tpm/n1' });
    expect(banned.banned).toBe(true);
    expect((await client.call('ListAgents', { byBanned: 'true' })).agents.map((a) => a.spiffeId)).toEqual(['spiffe://example.org/agent/tpm/n1']);
    await client.call('EvictAgent', { spiffeId: 'spiffe://example.org/agent/tpm/n2' });
    expect(await fx.store.getNode('spiffe://example.org/agent/tpm/n2')).toBeUndefined();
    expect(fx.evicted).toEqual(['spiffe://example.org/agent/tpm/n1', 'spiffe://example.org/agent/tpm/n2']);
    expect(await rpcError(client.call('GetAgent', { spiffeId: 'spiffe://example.org/agent/tpm/n2' })))
      .toMatchObject({ code: status.NOT_FOUND, details: 'no attested agent spiffe://example.org/agent/tpm/n2' });
    expect((await rpcError(client.call('BanAgent', { spiffeId: 'not an id' }))).code).toBe(status.INVALID_ARGUMENT);
  });

  it('generates single-use join tokens with bounded TTLs and never logs them', async () => {
    const t = await client.call('GenerateJoinToken', { ttl: 120, agentSpiffeId: 'spiffe://example.org/agent/named' });
    expect(t.value).toMatch(/^[0-9a-f]{32}$/);
    expect(t.expiresAt - Date.now() / 1000).toBeGreaterThan(110);
    expect(await fx.store.consumeJoinToken(t.value)).toMatchObject({ spiffeId: 'spiffe://example.org/agent/named' });
    expect(await fx.store.consumeJoinToken(t.value)).toBeUndefined();
    expect(JSON.stringify(fx.logs)).not.toContain(t.value);
    expect(await rpcError(client.call('GenerateJoinToken', { ttl: -5 }))).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect(await rpcError(client.call('GenerateJoinToken', { ttl: 10_000_000 }))).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect(await rpcError(client.call('GenerateJoinToken', { agentSpiffeId: 'spiffe://evil.org/agent' })))
      .toMatchObject({ code: status.INVALID_ARGUMENT, details: 'spiffeId: "spiffe://evil.org/agent" is not in the server\'s trust domain "example.org"' });
  });

  it('shows the own bundle and manages federated bundles', async () => {
    const own = await client.call('GetBundle', {});
    expect(own.trustDomain).toBe('example.org');
    expect(own.x509Authorities[0]!.equals(fx.bundle.x509Authorities()[0]!)).toBe(true);
    expect(own.sequence).toBe(3);
    const other = TrustDomain.parse('other.org');
    const set = await client.call('SetFederatedBundle', { trustDomain: 'other.org', x509Authorities: [caCertificate(other)] });
    expect(set.x509Authorities).toHaveLength(1);
    const third = new Bundle(TrustDomain.parse('third.org'));
    third.addX509Authority(caCertificate(TrustDomain.parse('third.org')));
    third.sequenceNumber = 9n;
    await client.call('SetFederatedBundle', { trustDomain: 'third.org', spiffeJson: third.toJSON() });
    const list = await client.call('ListFederatedBundles', {});
    expect(list.bundles.map((b) => [b.trustDomain, b.sequence])).toEqual([['other.org', 0], ['third.org', 9]]);
    expect(await rpcError(client.call('SetFederatedBundle', { trustDomain: 'example.org', x509Authorities: [caCertificate(TD)] })))
      .toMatchObject({ code: status.INVALID_ARGUMENT });
    expect(await rpcError(client.call('SetFederatedBundle', { trustDomain: 'bad.org', spiffeJson: '{"keys": 5}' })))
      .toMatchObject({ code: status.INVALID_ARGUMENT, details: 'bundle for bad.org: bundle has no "keys" array' });
    expect(await rpcError(client.call('SetFederatedBundle', { trustDomain: 'bad.org', x509Authorities: [Buffer.from('not DER')] })))
      .toMatchObject({ code: status.INVALID_ARGUMENT });
    expect(await fx.store.getBundle('bad.org')).toBeUndefined();
    await client.call('DeleteFederatedBundle', { trustDomain: 'third.org' });
    expect(await rpcError(client.call('DeleteFederatedBundle', { trustDomain: 'third.org' }))).toMatchObject({ code: status.NOT_FOUND });
  });
});

describe('admin socket safety', () => {
  const cleanups: (() => void | Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('refuses a group/world-writable socket directory, a non-socket file, and a live socket; replaces a stale one', async () => {
    const { dir, cleanup } = tempDir('terroir-admin-');
    cleanups.push(cleanup);
    const { openDataStore } = await import('../../../src/server/datastore/index.js');
    const store = await openDataStore({ type: 'sqlite', path: path.join(dir, 'ds.sqlite3') });
    cleanups.push(() => store.close());
    const service = createAdminService({ store, trustDomain: TD, logger: pino({ level: 'silent' }), bundleProvider: () => new Bundle(TD) });

    const open = path.join(dir, 'open');
    fs.mkdirSync(open, { mode: 0o777 });
    fs.chmodSync(open, 0o777);
    await expect(startAdminServer(path.join(open, 'api.sock'), service)).rejects.toThrow(/writable by group or others \(mode 777\)/);
    expect(fs.existsSync(path.join(open, 'api.sock'))).toBe(false);

    const priv = path.join(dir, 'priv');
    fs.mkdirSync(priv, { mode: 0o700 });
    fs.writeFileSync(path.join(priv, 'file.sock'), 'x');
    await expect(startAdminServer(path.join(priv, 'file.sock'), service)).rejects.toThrow(/exists and is not a socket/);

    // A stale socket (nobody listening) is replaced.
    const stalePath = path.join(priv, 'api.sock');
    // (bound by a process that exits without unlinking it, as a crashed server would leave it)
    execFileSync('python3', ['-c', 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', stalePath]);
    expect(fs.lstatSync(stalePath).isSocket()).toBe(true);
    const srv = await startAdminServer(stalePath, service);
    cleanups.push(() => srv.close());
    await expect(startAdminServer(stalePath, service)).rejects.toThrow(/already listening/);
    const c = new AdminClient(stalePath);
    expect((await c.call('Healthcheck', {})).status).toBe('SERVING');
    c.close();
  });
});

describe('admin API on a server with Unified Identity off', () => {
  it('saves an entry naming a location policy, but warns that it will not be signed (flag off is not a bypass)', async () => {
    const fx = await startAdminFixture({ locationPoliciesEnforced: false });
    const client = new AdminClient(fx.socketPath);
    try {
      const res = await client.call('BatchCreateEntry', { entries: [entry('/eu', { locationPolicy: 'eu-only' }), entry('/plain')] });
      expect(res.results.map((r) => r.status.code)).toEqual([status.OK, status.OK]);
      expect(res.results[0]!.status.message).toMatch(/names location policy eu-only but Unified Identity is off on this server \(UNIFIED_IDENTITY_ENABLED\): it will not be signed/);
      expect(res.results[1]!.status.message).toBe('OK');
      expect(fx.logs.some((l) => l['level'] === 40 && String(l['msg']).includes('names location policy eu-only'))).toBe(true);
    } finally {
      client.close();
      await fx.close();
    }
  });
});
