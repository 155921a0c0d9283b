// The one datastore test suite, run against every backend (sqlite.test.ts, postgres.test.ts).
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  DataStoreError,
  serverSpiffeId,
  type DataStore,
  type NewRegistrationEntry,
  type RegistrationEntry,
} from '../../../src/server/datastore/index.js';

export interface StoreHarness {
  store: DataStore;
  /** Another DataStore on the same database (a second server, or the same one restarted). */
  reopen(): Promise<DataStore>;
  /** Runs raw SQL against the database behind the store's back (schema tests). */
  rawExec(sql: string): Promise<void>;
  cleanup(): Promise<void>;
}

const TD = 'example.org';
const AGENT = `spiffe://${TD}/agent/join_token/abc`;
const sel = (s: string): { type: string; value: string } => {
  const i = s.indexOf(':');
  return { type: s.slice(0, i), value: s.slice(i + 1) };
};
const entry = (spiffePath: string, parentId: string, selectors: string[], extra: Partial<NewRegistrationEntry> = {}): NewRegistrationEntry => ({
  spiffeId: `spiffe://${TD}${spiffePath}`,
  parentId,
  selectors: selectors.map(sel),
  federatesWith: [],
  ...extra,
});

function values<T>(results: ({ ok: true; value: T } | { ok: false; code: string; message: string })[]): T[] {
  return results.map((r) => {
    if (!r.ok) throw new Error(`unexpected failure: ${r.code}: ${r.message}`);
    return r.value;
  });
}

export function runDataStoreSuite(name: string, factory: () => Promise<StoreHarness>): void {
  describe(`DataStore (${name})`, () => {
    let h: StoreHarness;
    let store: DataStore;
    const extra: DataStore[] = [];

    beforeEach(async () => {
      h = await factory();
      store = h.store;
    });
    afterEach(async () => {
      for (const s of extra.splice(0)) await s.close();
      await store.close();
      await h.cleanup();
    });

    describe('registration entries', () => {
      it('creates a batch with per-item results, refusing duplicates and keeping the rest', async () => {
        const before = await store.entriesRevision();
        const [a] = values(await store.createEntries([entry('/w/a', AGENT, ['unix:uid:1000', 'unix:gid:10'], { x509SvidTtl: 600, dnsNames: ['a.example.org'], hint: 'a' })]));
        expect(a!.id).toMatch(/^[0-9a-f-]{36}$/);
        expect(a!.selectors).toEqual([sel('unix:gid:10'), sel('unix:uid:1000')]);
        const results = await store.createEntries([
          entry('/w/b', AGENT, ['unix:uid:1001']),
          entry('/w/a', AGENT, ['unix:gid:10', 'unix:uid:1000']), // same identity, other order
          entry('/w/c', AGENT, ['unix:uid:1002']),
        ]);
        expect(results.map((r) => r.ok)).toEqual([true, false, true]);
        expect(results[1]).toMatchObject({ ok: false, code: 'already_exists' });
        expect((await store.listEntries()).map((e) => e.spiffeId).sort()).toEqual(
          ['a', 'b', 'c'].map((x) => `spiffe://${TD}/w/${x}`));
        const got = await store.getEntry(a!.id);
        expect(got).toEqual(a);
        expect(got!.x509SvidTtl).toBe(600);
        expect(got!.dnsNames).toEqual(['a.example.org']);
        expect(got!.jwtSvidTtl).toBeUndefined();
        expect(await store.entriesRevision()).toBe(before + 2n);
      });

      it('refuses duplicates inside one batch (same id, or same identity) and keeps the first', async () => {
        const id = '11111111-2222-4333-8444-555555555555';
        const results = await store.createEntries([
          entry('/w/1', AGENT, ['unix:uid:1'], { id }),
          entry('/w/2', AGENT, ['unix:uid:2'], { id: id.toUpperCase() }),
          entry('/w/3', AGENT, ['unix:uid:3']),
          entry('/w/3', AGENT, ['unix:uid:3']),
        ]);
        expect(results.map((r) => (r.ok ? 'ok' : r.code))).toEqual(['ok', 'already_exists', 'ok', 'already_exists']);
        expect((await store.listEntries()).map((e) => e.spiffeId).sort()).toEqual([`spiffe://${TD}/w/1`, `spiffe://${TD}/w/3`]);
        expect((await store.listEntries({ selectors: { selectors: [sel('unix:uid:3')], match: 'exact' } }))).toHaveLength(1);
        const mixed = await store.createEntries([entry('/w/4', AGENT, ['unix:uid:4']), entry('/w/5', AGENT, [])], { allOrNothing: true });
        expect(mixed).toMatchObject([{ ok: false, code: 'aborted' }, { ok: false, code: 'invalid_argument' }]);
        expect(await store.listEntries()).toHaveLength(2);
      });

      it('all-or-nothing batches roll back entirely and leave the revision alone', async () => {
        values(await store.createEntries([entry('/w/a', AGENT, ['unix:uid:1'])]));
        const rev = await store.entriesRevision();
        const results = await store.createEntries(
          [entry('/w/new', AGENT, ['unix:uid:2']), entry('/w/a', AGENT, ['unix:uid:1'])], { allOrNothing: true });
        expect(results).toMatchObject([{ ok: false, code: 'aborted' }, { ok: false, code: 'already_exists' }]);
        expect(await store.listEntries()).toHaveLength(1);
        expect(await store.entriesRevision()).toBe(rev);
      });

      it('refuses structurally bad entries with invalid_argument and writes nothing', async () => {
        const rev = await store.entriesRevision();
        const results = await store.createEntries([
          entry('/w/x', AGENT, []),
          entry('/w/y', AGENT, ['unix:']),
          entry('/w/z', AGENT, ['unix:uid:1'], { x509SvidTtl: -5 }),
          entry('/w/z', AGENT, ['unix:uid:1'], { jwtSvidTtl: 1.5 }),
          { ...entry('/w/z', AGENT, ['unix:uid:1']), spiffeId: 'http://x/y' },
          { ...entry('/w/z', AGENT, ['unix:uid:1']), id: 'not-a-uuid' },
        ]);
        expect(results.every((r) => !r.ok && r.code === 'invalid_argument')).toBe(true);
        expect(results.map((r) => (r.ok ? '' : r.message))).toEqual([
          'an entry needs at least one selector',
          'selector type and value must be non-empty, got "unix:"',
          expect.stringContaining('x509SvidTtl must be a whole number of seconds'),
          expect.stringContaining('jwtSvidTtl must be a whole number of seconds'),
          'entry SPIFFE ID must start with spiffe://, got "http://x/y"',
          'entry id must be a UUID, got "not-a-uuid"',
        ]);
        expect(await store.listEntries()).toEqual([]);
        expect(await store.entriesRevision()).toBe(rev);
      });

      it('updates present fields, clears nulls, bumps the revision and reports missing or conflicting items', async () => {
        const [a, b] = values(await store.createEntries([
          entry('/w/a', AGENT, ['unix:uid:1'], { x509SvidTtl: 60, hint: 'h', admin: true }),
          entry('/w/b', AGENT, ['unix:uid:2']),
        ]));
        const results = await store.updateEntries([
          { id: a!.id, selectors: [sel('unix:uid:9')], x509SvidTtl: null, hint: 'h2', federatesWith: ['other.org'], locationPolicy: 'eu-only' },
          { id: '00000000-0000-4000-8000-000000000000', hint: 'x' },
          { id: b!.id, selectors: [sel('unix:uid:9')], spiffeId: a!.spiffeId }, // would duplicate a's new identity
        ]);
        expect(results.map((r) => (r.ok ? 'ok' : r.code))).toEqual(['ok', 'not_found', 'already_exists']);
        const updated = await store.getEntry(a!.id);
        expect(updated).toMatchObject({ hint: 'h2', admin: true, federatesWith: ['other.org'], locationPolicy: 'eu-only', selectors: [sel('unix:uid:9')] });
        expect(updated!.x509SvidTtl).toBeUndefined();
        expect(updated!.revision).toBeGreaterThan(a!.revision);
        expect(updated!.revision).toBe(await store.entriesRevision());
        expect(await store.getEntry(b!.id)).toEqual(b);
        // the selector index follows the update
        expect(await store.listEntries({ selectors: { selectors: [sel('unix:uid:1')], match: 'any' } })).toEqual([]);
        expect((await store.listEntries({ selectors: { selectors: [sel('unix:uid:9')], match: 'exact' } })).map((e) => e.id)).toEqual([a!.id]);
      });

      it('deletes with per-item results', async () => {
        const [a] = values(await store.createEntries([entry('/w/a', AGENT, ['unix:uid:1'])]));
        const rev = await store.entriesRevision();
        const results = await store.deleteEntries([a!.id, a!.id]);
        expect(results[0]).toMatchObject({ ok: true, value: { id: a!.id, spiffeId: a!.spiffeId } });
        expect(results[1]).toMatchObject({ ok: false, code: 'not_found' });
        expect(await store.getEntry(a!.id)).toBeUndefined();
        expect(await store.listEntries({ selectors: { selectors: [sel('unix:uid:1')], match: 'any' } })).toEqual([]);
        expect(await store.entriesRevision()).toBe(rev + 1n);
      });

      it('filters by SPIFFE ID, parent, hint, federation, revision and selectors (exact/subset/superset/any)', async () => {
        const other = `spiffe://${TD}/agent/other`;
        const [e1, e2, e3, e4] = values(await store.createEntries([
          entry('/w/1', AGENT, ['k8s:ns:a', 'k8s:sa:x'], { hint: 'h1', federatesWith: ['fed.org'] }),
          entry('/w/2', AGENT, ['k8s:ns:a']),
          entry('/w/3', other, ['k8s:ns:a', 'k8s:sa:x', 'k8s:pod:p']),
          entry('/w/1', other, ['unix:uid:0']),
        ]));
        const ids = (es: RegistrationEntry[]): string[] => es.map((e) => e.id).sort();
        const s = (...x: string[]): { type: string; value: string }[] => x.map(sel);
        expect(ids(await store.listEntries({ spiffeId: `spiffe://${TD}/w/1` }))).toEqual(ids([e1!, e4!]));
        expect(ids(await store.listEntries({ parentId: other }))).toEqual(ids([e3!, e4!]));
        expect(ids(await store.listEntries({ spiffeId: `spiffe://${TD}/w/1`, parentId: other }))).toEqual([e4!.id]);
        expect(ids(await store.listEntries({ hint: 'h1' }))).toEqual([e1!.id]);
        expect(ids(await store.listEntries({ federatesWith: 'fed.org' }))).toEqual([e1!.id]);
        expect(ids(await store.listEntries({ selectors: { selectors: s('k8s:sa:x', 'k8s:ns:a'), match: 'exact' } }))).toEqual([e1!.id]);
        expect(ids(await store.listEntries({ selectors: { selectors: s('k8s:ns:a', 'k8s:sa:x'), match: 'subset' } }))).toEqual(ids([e1!, e2!]));
        expect(ids(await store.listEntries({ selectors: { selectors: s('k8s:ns:a', 'k8s:sa:x'), match: 'superset' } }))).toEqual(ids([e1!, e3!]));
        expect(ids(await store.listEntries({ selectors: { selectors: s('k8s:pod:p', 'unix:uid:0'), match: 'any' } }))).toEqual(ids([e3!, e4!]));
        expect(await store.listEntries({ selectors: { selectors: s('k8s:ns:zzz'), match: 'any' } })).toEqual([]);
        const sorted = ids([e1!, e2!, e3!, e4!]);
        expect(ids(await store.listEntries({ limit: 2 }))).toEqual(sorted.slice(0, 2));
        expect(ids(await store.listEntries({ afterId: sorted[1], limit: 5 }))).toEqual(sorted.slice(2));
        const anyNs = await store.listEntries({ selectors: { selectors: s('k8s:ns:a'), match: 'superset' }, limit: 2 });
        expect(anyNs).toHaveLength(2);
        expect(anyNs.every((e) => e.selectors.some((x) => x.value === 'ns:a'))).toBe(true);
        const rev = await store.entriesRevision();
        values(await store.updateEntries([{ id: e2!.id, hint: 'later' }]));
        expect(ids(await store.listEntries({ revisionAfter: rev }))).toEqual([e2!.id]);
      });

      it('lists the entries authorized for an agent: own, via node aliases, and descendants', async () => {
        const serverId = serverSpiffeId(TD);
        const agentSelectors = [sel('tpm:ek-hash:aa'), sel('tpm:ek-issuer:CN=Mfr')];
        const [aliasOk, aliasBad, direct, viaAlias, grandchild, strangers, loop] = values(await store.createEntries([
          entry('/node/group', serverId, ['tpm:ek-issuer:CN=Mfr']), // matches (subset of agent selectors)
          entry('/node/other', serverId, ['tpm:ek-issuer:CN=Mfr', 'tpm:ek-hash:bb']), // does not match
          entry('/w/direct', AGENT, ['unix:uid:1']),
          entry('/w/via-alias', `spiffe://${TD}/node/group`, ['unix:uid:2']),
          entry('/w/grandchild', `spiffe://${TD}/w/direct`, ['unix:uid:3']),
          entry('/w/strangers', `spiffe://${TD}/node/other`, ['unix:uid:4']),
          entry('/w/direct', `spiffe://${TD}/w/grandchild`, ['unix:uid:5']), // a cycle back up the tree
        ]));
        const got = await store.listAuthorizedEntries(AGENT, agentSelectors);
        expect(got.map((e) => e.spiffeId).sort()).toEqual([direct!, viaAlias!, grandchild!, loop!].map((e) => e.spiffeId).sort());
        expect(got.map((e) => e.id)).not.toContain(aliasOk!.id);
        expect(got.map((e) => e.id)).not.toContain(aliasBad!.id);
        expect(got.map((e) => e.id)).not.toContain(strangers!.id);
        expect(await store.listAuthorizedEntries(`spiffe://${TD}/agent/nobody`, [])).toEqual([]);
        await expect(store.listAuthorizedEntries('not-an-id', [])).rejects.toMatchObject({ code: 'invalid_argument' });
      });
    });

    describe('attested nodes', () => {
      const node = (id: string, extra: Record<string, unknown> = {}) => ({
        spiffeId: `spiffe://${TD}/agent/tpm/${id}`,
        attestationType: 'tpm' as const,
        selectors: [sel(`tpm:ek-hash:${id}`)],
        serialNumber: '01',
        expiresAt: new Date(Date.now() + 3600_000),
        attestationData: { ekHash: id, ekIssuer: 'CN=Mfr' },
        ...extra,
      });

      it('creates, refuses duplicates, updates, lists with filters, bans and evicts', async () => {
        const a = await store.createNode(node('aa', { claims: { country: 'FR' } }));
        expect(a).toMatchObject({ banned: false, attestationData: { ekHash: 'aa' }, claims: { country: 'FR' } });
        await expect(store.createNode(node('aa'))).rejects.toMatchObject({ code: 'already_exists' });
        await store.createNode({ ...node('bb'), attestationType: 'join_token', expiresAt: new Date(Date.now() - 1000) });

        const u = await store.updateNode(a.spiffeId, { newSerialNumber: '02', claims: null });
        expect(u.newSerialNumber).toBe('02');
        expect(u.claims).toBeUndefined();
        expect(u.serialNumber).toBe('01');
        const rotated = await store.updateNode(a.spiffeId, { serialNumber: '02', newSerialNumber: null });
        expect(rotated.serialNumber).toBe('02');
        expect(rotated.newSerialNumber).toBeUndefined();
        await expect(store.updateNode(`spiffe://${TD}/agent/none`, { banned: true })).rejects.toMatchObject({ code: 'not_found' });

        expect((await store.listNodes()).map((n) => n.spiffeId)).toHaveLength(2);
        expect((await store.listNodes({ attestationType: 'join_token' })).map((n) => n.attestationData.ekHash)).toEqual(['bb']);
        expect((await store.listNodes({ expiresBefore: new Date() })).map((n) => n.attestationData.ekHash)).toEqual(['bb']);

        const banned = await store.banNode(a.spiffeId);
        expect(banned.banned).toBe(true);
        expect((await store.getNode(a.spiffeId))!.banned).toBe(true);
        expect((await store.listNodes({ banned: true })).map((n) => n.spiffeId)).toEqual([a.spiffeId]);
        await expect(store.banNode(`spiffe://${TD}/agent/none`)).rejects.toBeInstanceOf(DataStoreError);

        expect((await store.deleteNode(a.spiffeId))?.spiffeId).toBe(a.spiffeId);
        expect(await store.deleteNode(a.spiffeId)).toBeUndefined();
        expect(await store.getNode(a.spiffeId)).toBeUndefined();
      });
    });

    describe('join tokens and nonces', () => {
      it('consumes a join token exactly once, never after expiry, and prunes expired ones', async () => {
        await store.createJoinToken({ token: 'tok-1', expiresAt: new Date(Date.now() + 60_000), spiffeId: `spiffe://${TD}/agent/named` });
        await store.createJoinToken({ token: 'tok-2', expiresAt: new Date(Date.now() - 1) });
        await store.createJoinToken({ token: 'tok-3', expiresAt: new Date(Date.now() + 60_000) });
        await expect(store.createJoinToken({ token: 'tok-1', expiresAt: new Date() })).rejects.toMatchObject({ code: 'already_exists' });
        const first = await store.consumeJoinToken('tok-1');
        expect(first).toMatchObject({ token: 'tok-1', spiffeId: `spiffe://${TD}/agent/named` });
        expect(await store.consumeJoinToken('tok-1')).toBeUndefined();
        expect(await store.consumeJoinToken('tok-2')).toBeUndefined();
        expect(await store.consumeJoinToken('unknown')).toBeUndefined();
        await store.createJoinToken({ token: 'tok-4', expiresAt: new Date(Date.now() - 1) });
        expect(await store.pruneJoinTokens()).toBe(1);
        const t3 = await store.consumeJoinToken('tok-3');
        expect(t3?.spiffeId).toBeUndefined();
      });

      it('accepts a nonce once until it is pruned after expiry', async () => {
        const nonce = new Uint8Array(32).fill(7);
        expect(await store.consumeNonce(nonce, new Date(Date.now() + 60_000))).toBe(true);
        expect(await store.consumeNonce(nonce, new Date(Date.now() + 60_000))).toBe(false);
        expect(await store.consumeNonce(Buffer.from(nonce).toString('hex'), new Date(Date.now() - 1))).toBe(true);
        expect(await store.pruneNonces()).toBe(1);
        expect(await store.consumeNonce(nonce, new Date(Date.now() + 60_000))).toBe(false);
        await expect(store.consumeNonce('', new Date())).rejects.toMatchObject({ code: 'invalid_argument' });
      });

      it('lets exactly one of two servers on the same database win a token or a nonce', async () => {
        const second = await h.reopen();
        extra.push(second);
        for (let round = 0; round < 5; round++) {
          await store.createJoinToken({ token: `race-${round}`, expiresAt: new Date(Date.now() + 60_000) });
          const got = await Promise.all([
            store.consumeJoinToken(`race-${round}`), second.consumeJoinToken(`race-${round}`),
            second.consumeJoinToken(`race-${round}`), store.consumeJoinToken(`race-${round}`),
          ]);
          expect(got.filter((t) => t !== undefined)).toHaveLength(1);
          const nonce = `nonce-${round}`;
          const used = await Promise.all([
            store.consumeNonce(nonce, new Date(Date.now() + 60_000)), second.consumeNonce(nonce, new Date(Date.now() + 60_000)),
            second.consumeNonce(nonce, new Date(Date.now() + 60_000)), store.consumeNonce(nonce, new Date(Date.now() + 60_000)),
          ]);
          expect(used.filter(Boolean)).toHaveLength(1);
        }
      });
    });

    describe('bundles, federation and CA journal', () => {
      it('sets, replaces, lists and deletes bundles', async () => {
        const json = (n: number): string => JSON.stringify({ keys: [], spiffe_sequence: n });
        await store.setBundle({ trustDomain: TD, bundleJson: json(1), sequence: 1n });
        await store.setBundle({ trustDomain: 'other.org', bundleJson: json(5), sequence: 5n });
        await store.setBundle({ trustDomain: TD, bundleJson: json(2), sequence: 2n });
        expect(await store.getBundle(TD)).toEqual({ trustDomain: TD, bundleJson: json(2), sequence: 2n });
        expect((await store.listBundles()).map((b) => b.trustDomain)).toEqual([TD, 'other.org']);
        await expect(store.setBundle({ trustDomain: 'bad.org', bundleJson: '{nope', sequence: 0n })).rejects.toMatchObject({ code: 'invalid_argument' });
        await expect(store.setBundle({ trustDomain: 'spiffe://x', bundleJson: '{}', sequence: 0n })).rejects.toMatchObject({ code: 'invalid_argument' });
        expect(await store.getBundle('bad.org')).toBeUndefined();
        expect(await store.deleteBundle('other.org')).toBe(true);
        expect(await store.deleteBundle('other.org')).toBe(false);
        expect((await store.listBundles()).map((b) => b.trustDomain)).toEqual([TD]);
      });

      it('keeps federation relationships with validation', async () => {
        const rel = { trustDomain: 'other.org', bundleEndpointUrl: 'https://other.org:8443/bundle', profile: 'https_web' as const };
        expect(await store.createFederationRelationship(rel)).toEqual(rel);
        await expect(store.createFederationRelationship(rel)).rejects.toMatchObject({ code: 'already_exists' });
        await expect(store.createFederationRelationship({ ...rel, trustDomain: 'x.org', profile: 'https_spiffe' }))
          .rejects.toMatchObject({ code: 'invalid_argument', message: 'the https_spiffe profile needs the endpoint SPIFFE ID' });
        await expect(store.createFederationRelationship({ ...rel, trustDomain: 'y.org', bundleEndpointUrl: 'http://y.org/b' }))
          .rejects.toMatchObject({ code: 'invalid_argument' });
        const spiffe = { ...rel, profile: 'https_spiffe' as const, endpointSpiffeId: 'spiffe://other.org/spire/server' };
        expect(await store.updateFederationRelationship(spiffe)).toEqual(spiffe);
        expect(await store.getFederationRelationship('other.org')).toEqual(spiffe);
        await expect(store.updateFederationRelationship({ ...rel, trustDomain: 'none.org' })).rejects.toMatchObject({ code: 'not_found' });
        expect(await store.listFederationRelationships()).toEqual([spiffe]);
        expect(await store.deleteFederationRelationship('other.org')).toBe(true);
        expect(await store.listFederationRelationships()).toEqual([]);
      });

      it('stores the CA journal as an opaque blob', async () => {
        expect(await store.getCaJournal()).toBeUndefined();
        await store.setCaJournal(new Uint8Array([1, 2, 3]));
        await store.setCaJournal(new Uint8Array([4, 5, 0, 255]));
        expect(Array.from((await store.getCaJournal())!)).toEqual([4, 5, 0, 255]);
      });
    });

    describe('persistence and schema', () => {
      it('keeps everything across a reopen and continues the revision', async () => {
        const [a] = values(await store.createEntries([entry('/w/a', AGENT, ['unix:uid:1'])]));
        const rev = await store.entriesRevision();
        const again = await h.reopen();
        extra.push(again);
        expect(await again.getEntry(a!.id)).toEqual(a);
        expect(await again.entriesRevision()).toBe(rev);
        values(await again.createEntries([entry('/w/b', AGENT, ['unix:uid:2'])]));
        expect(await store.entriesRevision()).toBe(rev + 1n);
      });

      it('refuses to run against a schema newer than it knows', async () => {
        await h.rawExec('INSERT INTO schema_version (version, applied_at) VALUES (99, 0)');
        const err = await h.reopen().then(() => undefined, (e: unknown) => e);
        expect(err).toBeInstanceOf(DataStoreError);
        expect(err).toMatchObject({ code: 'schema_too_new', message: expect.stringContaining('version 99') });
      });
    });
  });
}
