// verifyCsr: the EC fast path (OpenSSL's ECDSA_verify on the CSR's point, no KeyObject) must accept
// and refuse exactly what the node:crypto decoder + verify accepts and refuses, with the same codes.
import { execFileSync } from 'node:child_process';
import crypto, { type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CsrPublicKey, nativeCsrVerification, publicKeyFromCsr, verifyCsr } from '../../src/spiffe/csr.js';
import { mintCaCertificate, mintX509Svid, parseCertificate, SpiffeId, TrustDomain, X509SvidError } from '../../src/spiffe/index.js';
import { tempDir } from '../support/tmp.js';

const ECDSA_SHA256 = Buffer.from('06082a8648ce3d040302', 'hex');
const ECDSA_SHA384 = Buffer.from('06082a8648ce3d040303', 'hex');
const ECDSA_SHA1 = Buffer.from('06072a8648ce3d0401', 'hex');

function tlv(tag: number, c: Buffer): Buffer {
  const n = c.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, c]);
}
const seq = (...p: Buffer[]): Buffer => tlv(0x30, Buffer.concat(p));

/** A minimal PKCS#10 over `spki`, signed by `signer` (or carrying `signature` as given). */
function csr(spki: Buffer, signer: KeyObject, opts: { alg?: Buffer; hash?: string | null; signature?: Buffer; cn?: string } = {}): Buffer {
  const subject = seq(tlv(0x31, seq(Buffer.from('0603550403', 'hex'), tlv(0x0c, Buffer.from(opts.cn ?? 'workload')))));
  const info = seq(Buffer.from([2, 1, 0]), subject, spki, tlv(0xa0, Buffer.alloc(0)));
  const sig = opts.signature ?? crypto.sign('hash' in opts ? (opts.hash ?? null) : 'sha256', info, signer);
  return seq(info, seq(opts.alg ?? ECDSA_SHA256), tlv(0x03, Buffer.concat([Buffer.from([0]), sig])));
}

const spkiOf = (k: KeyObject): Buffer => k.export({ type: 'spki', format: 'der' });

function failCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(X509SvidError);
    return (e as X509SvidError).code;
  }
  return 'no error';
}

describe('verifyCsr (EC fast path)', () => {
  const td = TrustDomain.parse('example.org');
  const caKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const ca = mintCaCertificate({ trustDomain: td, publicKey: caKeys.publicKey, selfSignKey: caKeys.privateKey, ttlSeconds: 3600 });

  it('runs on OpenSSL directly here (node exports its OpenSSL), so these tests cover the fast path', () => {
    expect(nativeCsrVerification()).toBe(true);
  });

  it('accepts P-256 and P-384 CSRs, hands over the SPKI bytes, and mints from them; refuses P-521', () => {
    const p521 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-521' });
    expect(failCode(() => verifyCsr(csr(spkiOf(p521.publicKey), p521.privateKey, { hash: 'sha512', alg: Buffer.from('06082a8648ce3d040304', 'hex') })))).toBe('unsupported-key');
    for (const [curve, hash, alg] of [['P-256', 'sha256', ECDSA_SHA256], ['P-384', 'sha384', ECDSA_SHA384]] as const) {
      const k = crypto.generateKeyPairSync('ec', { namedCurve: curve });
      const v = verifyCsr(csr(spkiOf(k.publicKey), k.privateKey, { hash, alg }));
      expect(v).toBeInstanceOf(CsrPublicKey);
      expect(v.spki.equals(spkiOf(k.publicKey))).toBe(true);
      expect(v.toKeyObject().equals(k.publicKey)).toBe(true);
      const m = mintX509Svid({ id: SpiffeId.parse('spiffe://example.org/w'), publicKey: v, issuer: { certificateDer: ca.der, privateKey: caKeys.privateKey }, ttlSeconds: 60 });
      expect(parseCertificate(m.der).spki.equals(spkiOf(k.publicKey))).toBe(true);
      // The SKI is the SHA-1 of the key bits, as for a KeyObject.
      const viaKey = mintX509Svid({ id: SpiffeId.parse('spiffe://example.org/w'), publicKey: k.publicKey, issuer: { certificateDer: ca.der, privateKey: caKeys.privateKey }, ttlSeconds: 60 });
      expect(parseCertificate(m.der).subjectKeyId?.equals(parseCertificate(viaKey.der).subjectKeyId as Buffer)).toBe(true);
    }
  });

  it('accepts a compressed point, which node:crypto decodes to the same key', () => {
    const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const full = spkiOf(k.publicKey);
    const point = full.subarray(full.length - 65);
    const compressed = crypto.ECDH.convertKey(point, 'prime256v1', undefined, undefined, 'compressed') as Buffer;
    const spki = Buffer.concat([full.subarray(2, 2 + 21), tlv(0x03, Buffer.concat([Buffer.from([0]), compressed]))]);
    const whole = seq(spki);
    expect(crypto.createPublicKey({ key: whole, format: 'der', type: 'spki' }).equals(k.publicKey)).toBe(true);
    expect(verifyCsr(csr(whole, k.privateKey)).toKeyObject().equals(k.publicKey)).toBe(true);
  });

  it('refuses a tampered CSR, a foreign signature and a non-DER signature with bad-csr-signature', () => {
    const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const good = csr(spkiOf(k.publicKey), k.privateKey);
    const bad = Buffer.from(good);
    const at = good.indexOf(Buffer.from('workload'));
    bad[at] = (bad[at] as number) ^ 0x20;
    expect(failCode(() => verifyCsr(bad))).toBe('bad-csr-signature');
    expect(failCode(() => verifyCsr(csr(spkiOf(k.publicKey), other.privateKey)))).toBe('bad-csr-signature');
    // The same signature with a trailing byte, and with r = 0: not DER / out of range.
    const info = seq(Buffer.from([2, 1, 0]), seq(tlv(0x31, seq(Buffer.from('0603550403', 'hex'), tlv(0x0c, Buffer.from('workload'))))), spkiOf(k.publicKey), tlv(0xa0, Buffer.alloc(0)));
    const sig = crypto.sign('sha256', info, k.privateKey);
    expect(verifyCsr(csr(spkiOf(k.publicKey), k.privateKey, { signature: sig })).spki.equals(spkiOf(k.publicKey))).toBe(true);
    const padded = Buffer.concat([sig.subarray(0, 1), Buffer.from([(sig[1] as number) + 1]), sig.subarray(2), Buffer.from([0])]);
    expect(failCode(() => verifyCsr(csr(spkiOf(k.publicKey), k.privateKey, { signature: padded })))).toBe('bad-csr-signature');
    expect(failCode(() => verifyCsr(csr(spkiOf(k.publicKey), k.privateKey, { signature: seq(Buffer.from([2, 1, 0]), Buffer.from([2, 1, 1])) })))).toBe('bad-csr-signature');
    expect(failCode(() => verifyCsr(csr(spkiOf(k.publicKey), k.privateKey, { signature: Buffer.from('garbage') })))).toBe('bad-csr-signature');
    // The fast path leaves no OpenSSL error behind for node:crypto to trip over.
    expect(crypto.verify('sha256', info, k.publicKey, sig)).toBe(true);
  });

  it('refuses the point at infinity and points off the curve as malformed keys', () => {
    const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const full = spkiOf(k.publicKey);
    const alg = full.subarray(2, 2 + 21);
    // With the infinity point as the key, any (r, s) built from a chosen R would "verify".
    const infinity = seq(alg, tlv(0x03, Buffer.from([0, 0])));
    expect(failCode(() => verifyCsr(csr(infinity, k.privateKey)))).toBe('malformed-csr');
    const offCurve = Buffer.from(full);
    offCurve[offCurve.length - 1] = (offCurve[offCurve.length - 1] as number) ^ 1;
    expect(failCode(() => verifyCsr(csr(offCurve, k.privateKey)))).toBe('malformed-csr');
    const short = seq(alg, tlv(0x03, Buffer.concat([Buffer.from([0]), full.subarray(full.length - 65, full.length - 1)])));
    expect(failCode(() => verifyCsr(csr(short, k.privateKey)))).toBe('malformed-csr');
    const hybrid = Buffer.from(full);
    hybrid[full.length - 65] = 6; // X9.62 hybrid form: not accepted
    expect(failCode(() => verifyCsr(csr(hybrid, k.privateKey)))).toBe('malformed-csr');
    // Still nothing left in OpenSSL's error queue.
    expect(() => crypto.createPublicKey({ key: full, format: 'der', type: 'spki' })).not.toThrow();
  });

  it('keeps the codes of the node:crypto path for other curves, key types and algorithms', () => {
    const k1 = crypto.generateKeyPairSync('ec', { namedCurve: 'secp256k1' });
    expect(failCode(() => verifyCsr(csr(spkiOf(k1.publicKey), k1.privateKey)))).toBe('unsupported-key');
    const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    expect(failCode(() => verifyCsr(csr(spkiOf(k.publicKey), k.privateKey, { alg: ECDSA_SHA1, hash: 'sha1' })))).toBe('unsupported-signature-algorithm');
    const ed = crypto.generateKeyPairSync('ed25519');
    const edCsr = csr(spkiOf(ed.publicKey), ed.privateKey, { alg: Buffer.from('06032b6570', 'hex'), hash: null });
    expect(verifyCsr(edCsr).toKeyObject().equals(ed.publicKey)).toBe(true);
    // An ECDSA signature algorithm over an Ed25519 key: a mismatch, refused as before.
    expect(failCode(() => verifyCsr(csr(spkiOf(ed.publicKey), k.privateKey)))).toBe('bad-csr-signature');
    expect(failCode(() => verifyCsr('x' as unknown as Buffer))).toBe('malformed-csr');
    expect(failCode(() => verifyCsr(Buffer.alloc(70_000, 0x30)))).toBe('malformed-csr');
  });

  it('refuses every single-bit corruption of a CSR with an X509SvidError', () => {
    const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const good = csr(spkiOf(k.publicKey), k.privateKey);
    const codes = new Set<string>();
    for (let i = 0; i < good.length; i++) {
      for (const flip of [0x01, 0x80]) {
        const bad = Buffer.from(good);
        bad[i] = (bad[i] as number) ^ flip;
        codes.add(failCode(() => verifyCsr(bad)));
      }
    }
    // A flipped bit in the key's algorithm or curve OID names a key no CSR may carry: unsupported-key.
    expect([...codes].sort()).toEqual(['bad-csr-signature', 'malformed-csr', 'unsupported-key', 'unsupported-signature-algorithm']);
  });

  it('CsrPublicKey cannot be made outside verifyCsr', () => {
    const Ctor = CsrPublicKey as unknown as new (t: symbol, spki: Buffer) => CsrPublicKey;
    expect(() => new Ctor(Symbol('verified CSR key'), Buffer.alloc(10))).toThrow(TypeError);
  });
});

describe('verifyCsr with openssl CSRs', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => ({ dir, cleanup } = tempDir('terroir-csr-')));
  afterAll(() => cleanup());

  it('verifies the CSRs openssl makes for each curve, and gives the key openssl reports', () => {
    for (const curve of ['prime256v1', 'secp384r1']) {
      const keyFile = path.join(dir, `${curve}.pem`);
      execFileSync('openssl', ['ecparam', '-name', curve, '-genkey', '-noout', '-out', keyFile]);
      const der = execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=w', '-outform', 'DER']);
      const pub = execFileSync('openssl', ['ec', '-in', keyFile, '-pubout', '-outform', 'DER'], { stdio: ['ignore', 'pipe', 'ignore'] });
      expect(verifyCsr(der).spki.equals(pub)).toBe(true);
      expect(publicKeyFromCsr(der).equals(crypto.createPublicKey({ key: pub, format: 'der', type: 'spki' }))).toBe(true);
      fs.rmSync(keyFile);
    }
  });
});
