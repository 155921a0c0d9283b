// X.509-SVID minting and verification: the spec templates, RFC 5280 path validation against only the
// SVID's own trust domain, every leaf rule, and malformed input giving X509SvidError.
import crypto, { type KeyObject } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  Bundle, BundleSet, mintCaCertificate, mintX509Svid, parseCertificate, parseX509SvidId, publicKeyFromCsr,
  SpiffeId, TrustDomain, verifyX509Svid, X509SvidError, type X509Authority,
} from '../../src/spiffe/index.js';
import { forgeCert, forgeCsr, forgeKey, forgeRsaKey, KU, x509, type ForgedKey } from './helpers/forge.js';

const td = TrustDomain.parse('example.org');
const otherTd = TrustDomain.parse('other.test');
const wl = SpiffeId.parse('spiffe://example.org/ns/prod/sa/web');

function ecKey(curve = 'P-256'): { publicKey: KeyObject; privateKey: KeyObject } {
  return crypto.generateKeyPairSync('ec', { namedCurve: curve });
}

function selfSignedCa(trustDomain: TrustDomain, keys = ecKey(), extra: { pathLength?: number; now?: Date; ttlSeconds?: number; commonName?: string } = {}): X509Authority {
  const cert = mintCaCertificate({
    ...(extra.commonName !== undefined ? { subject: { commonName: extra.commonName } } : {}),
    trustDomain, publicKey: keys.publicKey, selfSignKey: keys.privateKey, ttlSeconds: extra.ttlSeconds ?? 86_400,
    ...(extra.pathLength !== undefined ? { pathLength: extra.pathLength } : {}), ...(extra.now ? { now: extra.now } : {}),
  });
  return { certificateDer: cert.der, privateKey: keys.privateKey };
}

function bundleOf(trustDomain: TrustDomain, ...cas: Buffer[]): Bundle {
  const b = new Bundle(trustDomain);
  for (const c of cas) b.addX509Authority(c);
  return b;
}

function failCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(X509SvidError);
    return (e as X509SvidError).code;
  }
  throw new Error('expected an X509SvidError');
}

describe('mintX509Svid / verifyX509Svid', () => {
  const ca = selfSignedCa(td, ecKey(), { commonName: 'example.org CA' });
  const bundles = new BundleSet(bundleOf(td, ca.certificateDer));
  const leafKey = ecKey();

  it('mints the spec template and verifies it', () => {
    const now = new Date('2030-01-02T03:04:05.678Z');
    const ca2030 = selfSignedCa(td, ecKey(), { now });
    const m = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: ca2030, ttlSeconds: 3600, now });
    expect(m.notAfter.toISOString()).toBe('2030-01-02T04:04:05.000Z');
    const v = parseCertificate(m.der);
    expect(v.notBefore.toISOString()).toBe('2030-01-02T03:03:55.000Z'); // backdated 10 s
    expect(v.serialHex).toBe(m.serialHex);
    expect(v.basicConstraints).toEqual({ ca: false });
    expect(v.extensions.find((e) => e.oid === '2.5.29.19')?.critical).toBe(true);
    expect(v.keyUsage).toBe(KU.digitalSignature);
    expect(v.extensions.find((e) => e.oid === '2.5.29.15')?.critical).toBe(true);
    expect(v.extKeyUsage).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    expect(v.subjectEmpty).toBe(true);
    expect(v.subjectAltName).toEqual({ critical: true, uris: [wl.toString()], dnsNames: [] });
    expect(v.spki.equals(leafKey.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    expect(m.pem).toMatch(/^-----BEGIN CERTIFICATE-----\n/);

    const r = verifyX509Svid([m.der], new BundleSet(bundleOf(td, ca2030.certificateDer)), { now: new Date('2030-01-02T03:30:00Z') });
    expect(r.id.equals(wl)).toBe(true);
    expect(r.leaf.serialNumber.toLowerCase().replace(/^0+/, '')).toBe(m.serialHex.replace(/^0+/, ''));
    expect(r.leaf.checkIssued(new crypto.X509Certificate(ca2030.certificateDer))).toBe(true);
    expect(r.chain).toHaveLength(1);
  });

  it('uses a subject and a non-critical SAN when a subject is given; DNS SANs follow the URI', () => {
    const m = mintX509Svid({
      id: wl, publicKey: leafKey.publicKey, issuer: ca, ttlSeconds: 60, subject: { country: 'DE', organization: 'terroir' },
      dnsNames: ['web.example.org'],
    });
    const v = parseCertificate(m.der);
    expect(v.subjectEmpty).toBe(false);
    expect(v.subjectAltName).toEqual({ critical: false, uris: [wl.toString()], dnsNames: ['web.example.org'] });
    expect(new crypto.X509Certificate(m.der).subject).toBe('C=DE\nO=terroir');
    expect(verifyX509Svid([m.der], bundles).id.toString()).toBe(wl.toString());
  });

  it('never lets a leaf outlive its issuer', () => {
    const shortCa = selfSignedCa(td, ecKey(), { ttlSeconds: 600 });
    const m = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: shortCa, ttlSeconds: 3600 });
    expect(m.notAfter.getTime()).toBe(parseCertificate(shortCa.certificateDer).notAfter.getTime());
  });

  it('supports P-384, RSA and Ed25519 keys', () => {
    const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const ed = crypto.generateKeyPairSync('ed25519');
    for (const caKeys of [ecKey('P-384'), rsa, ed]) {
      const c = selfSignedCa(td, caKeys);
      const b = new BundleSet(bundleOf(td, c.certificateDer));
      for (const lk of [ecKey('P-384'), rsa, ed, ecKey()]) {
        const m = mintX509Svid({ id: wl, publicKey: lk.publicKey, issuer: c, ttlSeconds: 60 });
        expect(verifyX509Svid([m.der], b).id.equals(wl)).toBe(true);
      }
    }
  });

  it('builds and validates chains through intermediates, respecting pathLen', () => {
    const root = selfSignedCa(td, ecKey(), { pathLength: 1 });
    const intKeys = ecKey();
    const intCert = mintCaCertificate({ trustDomain: td, publicKey: intKeys.publicKey, issuer: root, ttlSeconds: 7200 });
    const intermediate: X509Authority = { certificateDer: intCert.der, privateKey: intKeys.privateKey, chainDer: [] };
    const leaf = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: intermediate, ttlSeconds: 60 });
    const b = new BundleSet(bundleOf(td, root.certificateDer));
    // chainDer is what a workload presents: the leaf and the intermediate, never the root.
    expect(leaf.chainDer).toEqual([leaf.der, intCert.der]);
    expect(intCert.chainDer).toEqual([intCert.der]);
    expect(mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: root, ttlSeconds: 60 }).chainDer).toHaveLength(1);
    expect(verifyX509Svid(leaf.chainDer, b).chain).toHaveLength(2);
    expect(verifyX509Svid([leaf.der, intCert.der, root.certificateDer], b).id.equals(wl)).toBe(true);
    // Without the intermediate there is no path.
    expect(failCode(() => verifyX509Svid([leaf.der], b))).toBe('untrusted');
    // The intermediate alone in the bundle is a valid anchor too.
    expect(verifyX509Svid([leaf.der], new BundleSet(bundleOf(td, intCert.der))).id.equals(wl)).toBe(true);

    // pathLen 1 allows one intermediate (above) but not two.
    const i2k = ecKey();
    const i2 = mintCaCertificate({ trustDomain: td, publicKey: i2k.publicKey, issuer: intermediate, ttlSeconds: 3600 });
    const deep = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: { certificateDer: i2.der, privateKey: i2k.privateKey }, ttlSeconds: 60 });
    expect(failCode(() => verifyX509Svid([deep.der, i2.der, intCert.der], b))).toBe('path-length-exceeded');
    // pathLen 0: the root may sign leaves directly, but no intermediate.
    const strictRoot = selfSignedCa(td, ecKey(), { pathLength: 0 });
    const strict = new BundleSet(bundleOf(td, strictRoot.certificateDer));
    expect(verifyX509Svid([mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: strictRoot, ttlSeconds: 60 }).der], strict).id.equals(wl)).toBe(true);
    const i1k = ecKey();
    const i1 = mintCaCertificate({ trustDomain: td, publicKey: i1k.publicKey, issuer: strictRoot, ttlSeconds: 3600 });
    const below = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: { certificateDer: i1.der, privateKey: i1k.privateKey }, ttlSeconds: 60 });
    expect(failCode(() => verifyX509Svid([below.der, i1.der], strict))).toBe('path-length-exceeded');
  });

  it('uses only the bundle of the SVID\'s own trust domain', async () => {
    const foreignCa = selfSignedCa(otherTd);
    // A CA of other.test that (wrongly) signs an example.org ID: our minting refuses...
    expect(failCode(() => mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: foreignCa, ttlSeconds: 60 }))).toBe('invalid-argument');
    // ...so build the chain another way: an upstream root without a SPIFFE SAN (which may sign an
    // example.org intermediate) that only other.test's bundle trusts.
    const rootKey = await forgeKey();
    const noSanRoot = (await forgeCert({ key: rootKey, ca: true, subject: 'CN=upstream root' })).der;
    const exampleIntKeys = ecKey();
    const exampleInt = mintCaCertificate({ trustDomain: td, publicKey: exampleIntKeys.publicKey, issuer: { certificateDer: noSanRoot, privateKey: rootKey.privateKey }, ttlSeconds: 3600 });
    const leaf = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: { certificateDer: exampleInt.der, privateKey: exampleIntKeys.privateKey }, ttlSeconds: 60 });
    const set = new BundleSet(bundleOf(td, ca.certificateDer), bundleOf(otherTd, noSanRoot, foreignCa.certificateDer));
    expect(failCode(() => verifyX509Svid([leaf.der, exampleInt.der], set))).toBe('untrusted');
    // With no bundle for example.org at all:
    expect(failCode(() => verifyX509Svid([leaf.der, exampleInt.der], new BundleSet(bundleOf(otherTd, noSanRoot))))).toBe('no-bundle');
    // Control: the same chain verifies once example.org trusts that root.
    expect(verifyX509Svid([leaf.der, exampleInt.der], new BundleSet(bundleOf(td, noSanRoot))).id.equals(wl)).toBe(true);
  });

  it('refuses expired and not-yet-valid SVIDs', () => {
    const now = new Date('2030-06-01T00:00:00Z');
    const c = selfSignedCa(td, ecKey(), { now });
    const b = new BundleSet(bundleOf(td, c.certificateDer));
    const m = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: c, ttlSeconds: 60, now });
    expect(verifyX509Svid([m.der], b, { now: new Date('2030-06-01T00:00:30Z') }).id.equals(wl)).toBe(true);
    expect(failCode(() => verifyX509Svid([m.der], b, { now: new Date('2030-06-01T00:01:01Z') }))).toBe('expired');
    expect(failCode(() => verifyX509Svid([m.der], b, { now: new Date('2030-05-31T23:59:49Z') }))).toBe('not-yet-valid');
  });

  it('refuses a tampered signature or a swapped intermediate', () => {
    const m = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: ca, ttlSeconds: 60 });
    const bad = Buffer.from(m.der);
    bad[bad.length - 5] = (bad[bad.length - 5] as number) ^ 0x01;
    expect(failCode(() => verifyX509Svid([bad], bundles))).toBe('untrusted');
    // Another CA with the same name but a different key does not verify the leaf.
    const twin = selfSignedCa(td, ecKey(), { commonName: 'example.org CA' });
    expect(parseCertificate(twin.certificateDer).subjectName.equals(parseCertificate(ca.certificateDer).subjectName)).toBe(true);
    expect(failCode(() => verifyX509Svid([m.der], new BundleSet(bundleOf(td, twin.certificateDer))))).toBe('untrusted');
    // Rotation: both old and new CA (same name) in the bundle, the right one is found.
    expect(verifyX509Svid([m.der], new BundleSet(bundleOf(td, twin.certificateDer, ca.certificateDer))).id.equals(wl)).toBe(true);
  });

  it('refuses an unknown critical extension, but carries non-critical extra extensions', () => {
    const value = Buffer.concat([Buffer.from([0x0c, 0x0b]), Buffer.from('{"eu":true}')]);
    const ok = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: ca, ttlSeconds: 60, extraExtensions: [{ oid: '2.25.250341728606082657925786220697128205103', critical: false, value }] });
    const ext = parseCertificate(ok.der).extensions.find((e) => e.oid === '2.25.250341728606082657925786220697128205103');
    expect(ext).toEqual({ oid: '2.25.250341728606082657925786220697128205103', critical: false, value });
    expect(verifyX509Svid([ok.der], bundles).id.equals(wl)).toBe(true);
    const crit = mintX509Svid({ id: wl, publicKey: leafKey.publicKey, issuer: ca, ttlSeconds: 60, extraExtensions: [{ oid: '1.3.6.1.4.1.99999.1', critical: true, value: Buffer.from([0x05, 0x00]) }] });
    expect(failCode(() => verifyX509Svid([crit.der], bundles))).toBe('unhandled-critical-extension');
  });

  it('refuses bad minting requests', () => {
    const issuer = ca;
    const base = { id: wl, publicKey: leafKey.publicKey, issuer, ttlSeconds: 60 };
    expect(failCode(() => mintX509Svid({ ...base, id: SpiffeId.parse('spiffe://example.org') }))).toBe('root-path-id');
    expect(failCode(() => mintX509Svid({ ...base, ttlSeconds: 0 }))).toBe('invalid-argument');
    expect(failCode(() => mintX509Svid({ ...base, ttlSeconds: Number.NaN }))).toBe('invalid-argument');
    expect(failCode(() => mintX509Svid({ ...base, issuer: { certificateDer: ca.certificateDer, privateKey: ecKey().privateKey } }))).toBe('invalid-argument');
    expect(failCode(() => mintX509Svid({ ...base, extraExtensions: [{ oid: '2.5.29.17', critical: false, value: Buffer.from([0x30, 0]) }] }))).toBe('invalid-argument');
    expect(failCode(() => mintX509Svid({ ...base, extraExtensions: [{ oid: '1.2.x', critical: false, value: Buffer.from([0x05, 0]) }] }))).toBe('invalid-argument');
    expect(failCode(() => mintX509Svid({ ...base, extraExtensions: [{ oid: '1.2.3', critical: false, value: Buffer.from([0x04, 5, 1]) }] }))).toBe('invalid-argument');
    expect(failCode(() => mintX509Svid({ ...base, dnsNames: ['bad name'] }))).toBe('invalid-argument');
    expect(failCode(() => mintX509Svid({ ...base, serial: Buffer.alloc(4) }))).toBe('invalid-argument');
    expect(failCode(() => mintX509Svid({ ...base, publicKey: crypto.generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).publicKey }))).toBe('unsupported-key');
    expect(failCode(() => mintX509Svid({ ...base, publicKey: crypto.generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey }))).toBe('unsupported-key');
    const leafAsIssuer = mintX509Svid(base);
    expect(failCode(() => mintX509Svid({ ...base, issuer: { certificateDer: leafAsIssuer.der, privateKey: leafKey.privateKey } }))).toBe('invalid-argument');
    const expiredCa = selfSignedCa(td, ecKey(), { now: new Date('2020-01-01T00:00:00Z'), ttlSeconds: 60 });
    expect(failCode(() => mintX509Svid({ ...base, issuer: expiredCa }))).toBe('invalid-argument');
    expect(failCode(() => mintCaCertificate({ trustDomain: td, publicKey: leafKey.publicKey, ttlSeconds: 60 }))).toBe('invalid-argument');
    expect(failCode(() => mintCaCertificate({ trustDomain: td, publicKey: leafKey.publicKey, selfSignKey: ecKey().privateKey, ttlSeconds: 60 }))).toBe('invalid-argument');
  });

  it('mints CA certificates per the signing-certificate template', () => {
    const v = parseCertificate(ca.certificateDer);
    expect(v.basicConstraints).toEqual({ ca: true });
    expect(v.keyUsage).toBe(KU.keyCertSign | KU.cRLSign);
    expect(v.extensions.find((e) => e.oid === '2.5.29.15')?.critical).toBe(true);
    expect(v.subjectAltName?.uris).toEqual(['spiffe://example.org']);
    expect(v.issuerName.equals(v.subjectName)).toBe(true);
    expect(new crypto.X509Certificate(ca.certificateDer).ca).toBe(true);
  });
});

describe('SPIFFE leaf rules on independently built certificates', () => {
  let caKey: ForgedKey;
  let caCert: x509.X509Certificate;
  let bundles: BundleSet;

  beforeAll(async () => {
    caKey = await forgeKey();
    caCert = (await forgeCert({ key: caKey, ca: true, subject: 'CN=forge root', uris: ['spiffe://example.org'] })).cert;
    bundles = new BundleSet(bundleOf(td, Buffer.from(caCert.rawData)));
  });

  async function leaf(o: Partial<Parameters<typeof forgeCert>[0]> = {}): Promise<Buffer> {
    return (await forgeCert({ key: await forgeKey(), issuer: { cert: caCert, key: caKey }, uris: [wl.toString()], ...o })).der;
  }

  async function failLeaf(o: Partial<Parameters<typeof forgeCert>[0]> = {}): Promise<string> {
    const der = await leaf(o);
    return failCode(() => verifyX509Svid([der], bundles));
  }

  it('control: a conforming leaf from another implementation verifies', async () => {
    expect(verifyX509Svid([await leaf()], bundles).id.equals(wl)).toBe(true);
    expect(verifyX509Svid([await leaf({ eku: ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'] })], bundles).id.equals(wl)).toBe(true);
  });

  it('refuses two URI SANs', async () => {
    const der = await leaf({ uris: [wl.toString(), 'spiffe://example.org/other'] });
    expect(failCode(() => verifyX509Svid([der], bundles))).toBe('multiple-uri-sans');
    expect(failCode(() => parseX509SvidId(der))).toBe('multiple-uri-sans');
  });

  it('refuses a leaf without URI SAN or with a non-SPIFFE URI', async () => {
    expect(await failLeaf({ uris: [] })).toBe('no-uri-san');
    expect(await failLeaf({ uris: ['https://example.org/x'] })).toBe('invalid-spiffe-id');
    expect(await failLeaf({ uris: ['spiffe://example.org/a/'] })).toBe('invalid-spiffe-id');
  });

  it('refuses a leaf whose ID is the trust domain itself', async () => {
    expect(await failLeaf({ uris: ['spiffe://example.org'] })).toBe('root-path-id');
  });

  it('refuses a CA certificate as leaf', async () => {
    const der = await leaf({ ca: true, keyUsage: KU.digitalSignature | KU.keyCertSign });
    expect(failCode(() => verifyX509Svid([der], bundles))).toBe('leaf-is-ca');
    // The trust bundle's own CA presented as an SVID.
    expect(failCode(() => verifyX509Svid([Buffer.from(caCert.rawData)], bundles))).toBe('root-path-id');
  });

  it('refuses keyCertSign or cRLSign on a leaf, and a leaf without digitalSignature', async () => {
    expect(await failLeaf({ keyUsage: KU.digitalSignature | KU.keyCertSign })).toBe('leaf-key-usage');
    expect(await failLeaf({ keyUsage: KU.digitalSignature | KU.cRLSign })).toBe('leaf-key-usage');
    expect(await failLeaf({ keyUsage: KU.keyEncipherment })).toBe('leaf-key-usage');
  });

  it('refuses an EKU without serverAuth and clientAuth', async () => {
    expect(await failLeaf({ eku: ['1.3.6.1.5.5.7.3.1'] })).toBe('leaf-ext-key-usage');
    expect(await failLeaf({ eku: ['1.3.6.1.5.5.7.3.3'] })).toBe('leaf-ext-key-usage');
  });

  it('refuses an empty subject with a non-critical SAN', async () => {
    expect(await failLeaf({ subject: '', sanCritical: false })).toBe('san-not-critical');
    expect(verifyX509Svid([await leaf({ subject: '', sanCritical: true })], bundles).id.equals(wl)).toBe(true);
  });

  it('refuses an issuer that is not a CA or may not sign certificates', async () => {
    const notCaKey = await forgeKey();
    const notCa = await forgeCert({ key: notCaKey, issuer: { cert: caCert, key: caKey }, subject: 'CN=not a ca', uris: ['spiffe://example.org/x'] });
    const below = await forgeCert({ key: await forgeKey(), issuer: { cert: notCa.cert, key: notCaKey }, uris: [wl.toString()] });
    expect(failCode(() => verifyX509Svid([below.der, notCa.der], bundles))).toBe('issuer-not-ca');

    const noSignKey = await forgeKey();
    const noSign = await forgeCert({ key: noSignKey, issuer: { cert: caCert, key: caKey }, ca: true, keyUsage: KU.cRLSign, subject: 'CN=crl only' });
    const below2 = await forgeCert({ key: await forgeKey(), issuer: { cert: noSign.cert, key: noSignKey }, uris: [wl.toString()] });
    expect(failCode(() => verifyX509Svid([below2.der, noSign.der], bundles))).toBe('issuer-key-usage');
  });

  it('refuses a broken name chain', async () => {
    const intKey = await forgeKey();
    const int = await forgeCert({ key: intKey, issuer: { cert: caCert, key: caKey }, ca: true, subject: 'CN=int' });
    const other = await forgeCert({ key: await forgeKey(), issuer: { cert: caCert, key: caKey }, ca: true, subject: 'CN=unrelated' });
    const l = await forgeCert({ key: await forgeKey(), issuer: { cert: int.cert, key: intKey }, uris: [wl.toString()] });
    expect(verifyX509Svid([l.der, int.der], bundles).id.equals(wl)).toBe(true);
    expect(failCode(() => verifyX509Svid([l.der, other.der], bundles))).toBe('name-mismatch');
  });

  it('refuses a leaf with a weak key', async () => {
    expect(await failLeaf({ key: await forgeRsaKey(1024) })).toBe('unsupported-key');
  });

  it('refuses duplicate extensions', async () => {
    const dup = new x509.KeyUsagesExtension(KU.digitalSignature, true);
    expect(await failLeaf({ extra: [dup] })).toBe('duplicate-extension');
  });
});

describe('malformed input', () => {
  const ca = selfSignedCa(td);
  const bundles = new BundleSet(bundleOf(td, ca.certificateDer));
  const good = mintX509Svid({ id: wl, publicKey: ecKey().publicKey, issuer: ca, ttlSeconds: 60 }).der;

  it('every truncation of a valid SVID is an X509SvidError', () => {
    for (let n = 0; n < good.length; n++) {
      expect(failCode(() => verifyX509Svid([good.subarray(0, n)], bundles))).toBe('malformed-certificate');
    }
    expect(failCode(() => verifyX509Svid([Buffer.concat([good, Buffer.from([0])])], bundles))).toBe('malformed-certificate');
  });

  it('random bytes and random bit flips give X509SvidError, never another exception', () => {
    let seed = 42;
    const rnd = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; };
    for (let i = 0; i < 150; i++) {
      const junk = Buffer.alloc(1 + (rnd() % 600));
      for (let j = 0; j < junk.length; j++) junk[j] = rnd() & 0xff;
      if (i % 3 === 0) junk[0] = 0x30;
      expect(() => verifyX509Svid([junk], bundles)).toThrow(X509SvidError);
      const flipped = Buffer.from(good);
      const pos = rnd() % flipped.length;
      flipped[pos] = (flipped[pos] as number) ^ (1 << (rnd() % 8));
      // Every byte is either signed, or structure whose damage the strict DER reader catches.
      expect(() => verifyX509Svid([flipped], bundles)).toThrow(X509SvidError);
    }
  });

  it('a v2 certificate with extensions is malformed', () => {
    const v2 = Buffer.from(good);
    const at = v2.indexOf(Buffer.from([0xa0, 0x03, 0x02, 0x01, 0x02]));
    v2[at + 4] = 0x01;
    expect(() => verifyX509Svid([v2], bundles)).toThrow(/extensions require a v3 certificate/);
  });

  it('empty, oversized or non-buffer chains are refused', () => {
    expect(failCode(() => verifyX509Svid([], bundles))).toBe('invalid-argument');
    expect(failCode(() => verifyX509Svid(new Array(11).fill(good), bundles))).toBe('chain-too-long');
    expect(failCode(() => verifyX509Svid(['x' as unknown as Buffer], bundles))).toBe('malformed-certificate');
    expect(failCode(() => verifyX509Svid([Buffer.alloc(70_000, 0x30)], bundles))).toBe('malformed-certificate');
  });
});

describe('publicKeyFromCsr', () => {
  it('returns the key of a CSR whose self-signature verifies', async () => {
    const k = await forgeKey();
    const csr = await forgeCsr(k);
    const pub = publicKeyFromCsr(csr);
    expect(pub.equals(k.publicKey)).toBe(true);
    // ...and the server can mint from it.
    const ca = selfSignedCa(td);
    const m = mintX509Svid({ id: wl, publicKey: pub, issuer: ca, ttlSeconds: 60 });
    expect(parseCertificate(m.der).spki.equals(k.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
  });

  it('refuses a tampered CSR, and garbage', async () => {
    const csr = await forgeCsr(await forgeKey());
    // Flip a bit inside the subject CN "workload" (covered by the signature).
    const at = csr.indexOf(Buffer.from('workload'));
    const bad = Buffer.from(csr);
    bad[at] = (bad[at] as number) ^ 0x20;
    expect(failCode(() => publicKeyFromCsr(bad))).toBe('bad-csr-signature');
    for (let n = 0; n < csr.length; n += 7) expect(failCode(() => publicKeyFromCsr(csr.subarray(0, n)))).toBe('malformed-csr');
    expect(failCode(() => publicKeyFromCsr(crypto.randomBytes(200)))).toBe('malformed-csr');
  });
});

describe('issuer checks', () => {
  it('refuses issuers with several or invalid SPIFFE IDs', async () => {
    const k = await forgeKey();
    const two = await forgeCert({ key: k, ca: true, uris: ['spiffe://example.org', 'spiffe://other.test'] });
    const bad = await forgeCert({ key: k, ca: true, uris: ['SPIFFE://Example.org'] });
    for (const der of [two.der, bad.der]) {
      expect(failCode(() => mintX509Svid({ id: wl, publicKey: ecKey().publicKey, issuer: { certificateDer: der, privateKey: k.privateKey }, ttlSeconds: 60 }))).toBe('invalid-argument');
    }
    const ok = await forgeCert({ key: k, ca: true, uris: ['spiffe://example.org'] });
    expect(mintX509Svid({ id: wl, publicKey: ecKey().publicKey, issuer: { certificateDer: ok.der, privateKey: k.privateKey }, ttlSeconds: 60 }).chainDer).toHaveLength(1);
  });
});
