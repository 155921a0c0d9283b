import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { CaManager, type BundleStore } from '../../../src/server/ca/manager.js';
import { diskKeyStore, memoryKeyStore } from '../../../src/server/ca/keys.js';
import { loadUpstream } from '../../../src/server/ca/certs.js';
import type { StoredBundle } from '../../../src/server/datastore/types.js';
import { tempDir } from '../../support/tmp.js';

// The bundle store is the datastore's two bundle methods; a Map keeps these unit tests independent of SQL.
function mapStore(): BundleStore & { writes: number } {
  const m = new Map<string, StoredBundle>();
  return {
    writes: 0,
    async getBundle(td) { return m.get(td); },
    async setBundle(b) { this.writes++; m.set(b.trustDomain, b); return b; },
  };
}

function fakeClock(start = Date.parse('2026-01-01T00:00:00Z')) {
  let t = start;
  return { now: () => new Date(t), advance: (s: number) => { t += s * 1000; } };
}

const x509Keys = (b: StoredBundle) => (JSON.parse(b.bundleJson).keys as { use: string; x5c?: string[]; kid?: string }[]).filter((k) => k.use === 'x509-svid');
const jwtKeys = (b: StoredBundle) => (JSON.parse(b.bundleJson).keys as { use: string; kid?: string }[]).filter((k) => k.use === 'jwt-svid');

const cleanups: (() => void)[] = [];
afterEach(() => { while (cleanups.length) cleanups.pop()?.(); });

describe('CA rotation', () => {
  it('prepares at half-life, activates at 5/6, keeps the old key published until it expires', async () => {
    const clock = fakeClock();
    const store = mapStore();
    const ca = await CaManager.start({
      trustDomain: 'example.org', keyType: 'ec-p256', ttlSeconds: 600, subject: { commonName: 'test CA' },
      keyStore: memoryKeyStore(), store, refreshHintSeconds: 60, now: clock.now,
    });
    const first = ca.activeX509();
    const firstJwt = ca.activeJwt();
    let b = ca.bundle();
    expect(b.sequence).toBe(1n);
    expect(x509Keys(b)).toHaveLength(1);
    expect(jwtKeys(b).map((k) => k.kid)).toEqual([firstJwt.kid]);
    const doc = JSON.parse(b.bundleJson);
    expect(doc.spiffe_refresh_hint).toBe(60);
    expect(doc.spiffe_sequence).toBe(1);

    const cert = new crypto.X509Certificate(first.certificateDer);
    expect(cert.ca).toBe(true);
    expect(cert.subjectAltName).toBe('URI:spiffe://example.org');
    expect(cert.verify(cert.publicKey)).toBe(true);

    clock.advance(200);
    expect(await ca.tick()).toBe(false);
    expect(ca.bundle().sequence).toBe(1n);

    clock.advance(120); // 320 s: past half-life -> prepared, published
    expect(await ca.tick()).toBe(true);
    b = ca.bundle();
    expect(b.sequence).toBe(2n);
    expect(x509Keys(b)).toHaveLength(2);
    expect(jwtKeys(b)).toHaveLength(2);
    expect(ca.activeX509().id).toBe(first.id);
    const prepared = ca.authorities().x509.find((a) => a.status === 'prepared');
    expect(prepared).toBeDefined();

    clock.advance(200); // 520 s: inside the last sixth -> prepared becomes active; bundle content unchanged
    expect(await ca.tick()).toBe(false);
    expect(ca.activeX509().id).toBe(prepared?.id);
    expect(ca.activeJwt().kid).not.toBe(firstJwt.kid);
    expect(ca.authorities().x509.find((a) => a.id === first.id)?.status).toBe('old');
    expect(x509Keys(ca.bundle()).map((k) => k.x5c?.[0])).toContain(first.certificateDer.toString('base64'));

    clock.advance(200); // 720 s: the first CA expired -> leaves the bundle, sequence bumps
    expect(await ca.tick()).toBe(true);
    b = ca.bundle();
    expect(b.sequence).toBeGreaterThan(2n);
    expect(x509Keys(b).map((k) => k.x5c?.[0])).not.toContain(first.certificateDer.toString('base64'));
    expect(jwtKeys(b).map((k) => k.kid)).not.toContain(firstJwt.kid);
    expect(ca.authorities().x509.some((a) => a.id === first.id)).toBe(false);
  });

  it('persists keys on disk (0600 in a 0700 directory) and resumes the same CA after a restart', async () => {
    const { dir, cleanup } = tempDir();
    cleanups.push(cleanup);
    const clock = fakeClock();
    const store = mapStore();
    const keyDir = path.join(dir, 'keys');
    const opts = {
      trustDomain: 'example.org', keyType: 'rsa-2048' as const, ttlSeconds: 3600, subject: { commonName: 'test CA' },
      keyStore: diskKeyStore(keyDir), store, refreshHintSeconds: 60, now: clock.now, journalPath: path.join(keyDir, 'journal.json'),
    };
    const ca = await CaManager.start(opts);
    const active = ca.activeX509();
    expect(active.publicKey.asymmetricKeyType).toBe('rsa');
    expect(fs.statSync(keyDir).mode & 0o777).toBe(0o700);
    const keyFiles = fs.readdirSync(keyDir).filter((f) => f.endsWith('.key.pem'));
    expect(keyFiles).toHaveLength(2);
    for (const f of keyFiles) expect(fs.statSync(path.join(keyDir, f)).mode & 0o777).toBe(0o600);

    const writes = store.writes;
    const again = await CaManager.start({ ...opts, keyStore: diskKeyStore(keyDir) });
    expect(again.activeX509().id).toBe(active.id);
    expect(again.activeJwt().kid).toBe(ca.activeJwt().kid);
    expect(store.writes).toBe(writes); // nothing changed, nothing written
    expect(again.bundle().sequence).toBe(1n);
  });

  it('with a memory key store, a restart mints a new CA but keeps the previous one published until it expires', async () => {
    const clock = fakeClock();
    const store = mapStore();
    const opts = { trustDomain: 'example.org', keyType: 'ec-p256' as const, ttlSeconds: 600, subject: { commonName: 't' }, store, refreshHintSeconds: 60, now: clock.now };
    const a = await CaManager.start({ ...opts, keyStore: memoryKeyStore() });
    const b = await CaManager.start({ ...opts, keyStore: memoryKeyStore() });
    expect(b.activeX509().id).not.toBe(a.activeX509().id);
    const ders = x509Keys(b.bundle()).map((k) => k.x5c?.[0]);
    expect(ders).toContain(a.activeX509().certificateDer.toString('base64'));
    expect(ders).toContain(b.activeX509().certificateDer.toString('base64'));
    expect(b.bundle().sequence).toBe(2n);
  });

  it('signs its CA certificates with an upstream CA from disk and publishes the upstream root', async () => {
    const { dir, cleanup } = tempDir();
    cleanups.push(cleanup);
    // openssl as an independent maker of the upstream root.
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
      '-keyout', path.join(dir, 'up.key'), '-out', path.join(dir, 'up.crt'), '-days', '2', '-subj', '/CN=upstream root',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: 'ignore' });
    const clock = fakeClock(Date.now());
    const upstream = loadUpstream(fs.readFileSync(path.join(dir, 'up.crt')), fs.readFileSync(path.join(dir, 'up.key')), undefined, clock.now());
    const store = mapStore();
    const ca = await CaManager.start({
      trustDomain: 'example.org', keyType: 'ec-p256', ttlSeconds: 3600, subject: { commonName: 'intermediate' },
      keyStore: memoryKeyStore(), store, refreshHintSeconds: 60, now: clock.now, upstream,
    });
    const ours = new crypto.X509Certificate(ca.activeX509().certificateDer);
    const root = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'up.crt')));
    expect(ours.verify(root.publicKey)).toBe(true);
    expect(ours.checkIssued(root)).toBe(true);
    expect(x509Keys(ca.bundle()).map((k) => k.x5c?.[0])).toEqual([root.raw.toString('base64')]);
    fs.writeFileSync(path.join(dir, 'ours.pem'), ours.toString());
    // openssl verifies our intermediate against the upstream root.
    const out = execFileSync('openssl', ['verify', '-CAfile', path.join(dir, 'up.crt'), path.join(dir, 'ours.pem')]).toString();
    expect(out).toContain('OK');

    const badKey = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ format: 'pem', type: 'pkcs8' });
    expect(() => loadUpstream(fs.readFileSync(path.join(dir, 'up.crt')), Buffer.from(badKey as string), undefined, clock.now()))
      .toThrow(/does not match/);
  });

  it('refuses to publish over a corrupt stored bundle, saying so', async () => {
    const store = mapStore();
    await store.setBundle({ trustDomain: 'example.org', bundleJson: '{not json', sequence: 4n });
    await expect(CaManager.start({
      trustDomain: 'example.org', keyType: 'ec-p256', ttlSeconds: 600, subject: { commonName: 't' },
      keyStore: memoryKeyStore(), store, refreshHintSeconds: 60,
    })).rejects.toMatchObject({ code: 'bundle_store_failed', message: expect.stringMatching(/not valid JSON/) });
    expect((await store.getBundle('example.org'))?.sequence).toBe(4n);
  });
});
