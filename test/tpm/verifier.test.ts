import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  TpmAkPolicyError, TpmEkCertificateError, TpmParseError, TpmQuoteError, TPM_ALG, checkAkAttributes, ekHash,
  ekPublicMatchesCertificate, ekCertificateIdentity, kdfa, makeCredential, objectName, parseTpm2bPublic, parseTpmsAttest, parseTpmtPublic,
  parseTpmtSignature, publicKeyFromTpmPublic, toTpm2bPublic, verifyEkCertificate, verifyQuote, ekTemplate,
} from '../../src/tpm/index.js';
import { tempDir } from '../support/tmp.js';
import { clonePcrs, fixture, manufacturerCas, quoteFixture } from './fixtures.js';

function expectCode(fn: () => unknown, cls: new (...a: never[]) => Error, code: string): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(cls);
    expect((err as { code: string }).code).toBe(code);
    return;
  }
  throw new Error(`expected ${cls.name} ${code}, but nothing was thrown`);
}

describe('TPM2B_PUBLIC', () => {
  it('parses a real ECC AK, computes its name and key', () => {
    const pub = parseTpm2bPublic(fixture('ak-ecc-p256.pub'));
    expect(pub.type).toBe('ecc');
    expect(pub.nameAlg).toBe('sha256');
    expect(pub.objectAttributes.restricted && pub.objectAttributes.sign && pub.objectAttributes.fixedTPM).toBe(true);
    expect(pub.objectAttributes.decrypt).toBe(false);
    expect(pub.parameters.scheme).toMatchObject({ alg: 'ecdsa', hashAlg: 'sha256' });
    if (pub.type !== 'ecc') throw new Error('unreachable');
    expect(pub.parameters.curve).toBe('p256');
    expect(pub.unique.x).toHaveLength(32);
    const name = objectName(pub);
    expect(name.readUInt16BE(0)).toBe(TPM_ALG.SHA256);
    expect(name.subarray(2)).toEqual(crypto.createHash('sha256').update(fixture('ak-ecc-p256.pub').subarray(2)).digest());
    expect(publicKeyFromTpmPublic(pub).asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(toTpm2bPublic(pub)).toEqual(fixture('ak-ecc-p256.pub'));
    checkAkAttributes(pub);
  });

  it('parses a real RSA EK with its policy and symmetric definition', () => {
    const pub = parseTpm2bPublic(fixture('ek-rsa2048.pub'));
    expect(pub.type).toBe('rsa');
    expect(pub.objectAttributes.value).toBe(0x000300b2);
    expect(pub.authPolicy.toString('hex')).toBe('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa');
    expect(pub.parameters.symmetric).toEqual({ alg: 'aes', keyBits: 128, mode: 'cfb' });
    expect(publicKeyFromTpmPublic(pub).asymmetricKeyDetails?.modulusLength).toBe(2048);
    expect(ekHash(pub)).toMatch(/^[0-9a-f]{64}$/);
  });

  it('rejects truncation, trailing bytes, a size that disagrees, unknown algorithms', () => {
    const good = fixture('ak-ecc-p256.pub');
    expectCode(() => parseTpm2bPublic(good.subarray(0, good.length - 1)), TpmParseError, 'truncated');
    expectCode(() => parseTpm2bPublic(Buffer.concat([good, Buffer.from([0])])), TpmParseError, 'trailing-bytes');
    const badType = Buffer.from(good);
    badType.writeUInt16BE(0x0008, 2);
    expectCode(() => parseTpm2bPublic(badType), TpmParseError, 'unsupported-algorithm');
    const badCurve = Buffer.from(good.subarray(2));
    // type(2) nameAlg(2) attrs(4) policy(2) sym(2) scheme(2+2) -> curveID at 16
    badCurve.writeUInt16BE(0x0042, 16);
    expectCode(() => parseTpmtPublic(badCurve), TpmParseError, 'unsupported-algorithm');
    expectCode(() => parseTpm2bPublic(Buffer.from([0, 0])), TpmParseError, 'bad-size');
  });
});

describe('AK attribute policy', () => {
  it('names every missing attribute of a key that is not restricted', () => {
    const raw = Buffer.from(fixture('ak-ecc-p256.pub').subarray(2));
    const attrs = raw.readUInt32BE(4);
    raw.writeUInt32BE((attrs & ~0x10000 & ~0x2) >>> 0, 4); // clear restricted and fixedTPM
    const err = (() => { try { checkAkAttributes(parseTpmtPublic(raw)); } catch (e) { return e; } return undefined; })();
    expect(err).toBeInstanceOf(TpmAkPolicyError);
    expect((err as TpmAkPolicyError).problems).toEqual(expect.arrayContaining(['restricted is not set', 'fixedTPM is not set']));
    expect((err as Error).message).toContain('restricted is not set');
  });

  it('rejects an EK (decrypt, no signing scheme) as an AK', () => {
    const err = (() => { try { checkAkAttributes(parseTpm2bPublic(fixture('ek-rsa2048.pub'))); } catch (e) { return e as TpmAkPolicyError; } return undefined; })();
    expect(err?.problems.join('|')).toMatch(/sign is not set.*decrypt is set.*symmetric.*scheme is NULL/);
  });
});

describe('verifyQuote', () => {
  for (const alg of ['ecc-p256', 'rsa2048'] as const) {
    it(`accepts a real ${alg} quote and reports its fields`, () => {
      const f = quoteFixture(alg);
      const info = verifyQuote({ akPublic: parseTpm2bPublic(f.akPub), attest: f.attest, signature: f.signature, pcrs: f.pcrs, expectedExtraData: f.nonce, requireSafeClock: true });
      expect(info.extraData).toEqual(f.nonce);
      expect(info.clockInfo.safe).toBe(true);
      expect(info.pcrSelection).toEqual([{ alg: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 16] }, { alg: 'sha1', pcrs: [0, 16] }]);
      expect(info.pcrDigest).toHaveLength(32);
      expect(typeof info.firmwareVersion).toBe('bigint');
    });
  }

  const f = quoteFixture('ecc-p256');
  const ak = parseTpm2bPublic(f.akPub);
  const base = { akPublic: ak, attest: f.attest, signature: f.signature, pcrs: f.pcrs, expectedExtraData: f.nonce };

  it('rejects tampered attest bytes', () => {
    const attest = Buffer.from(f.attest);
    attest[attest.length - 1] = (attest[attest.length - 1] as number) ^ 1;
    expectCode(() => verifyQuote({ ...base, attest }), TpmQuoteError, 'bad-signature');
  });
  it('rejects a wrong nonce', () => {
    expectCode(() => verifyQuote({ ...base, expectedExtraData: crypto.randomBytes(32) }), TpmQuoteError, 'extra-data-mismatch');
  });
  it('rejects a wrong PCR value', () => {
    const pcrs = clonePcrs(f.pcrs);
    const v16 = pcrs[0]?.values.get(16) as Buffer;
    v16[0] = (v16[0] as number) ^ 0xff;
    expectCode(() => verifyQuote({ ...base, pcrs }), TpmQuoteError, 'pcr-digest-mismatch');
  });
  it('rejects PCR values that do not match the selection', () => {
    const fewer = clonePcrs(f.pcrs);
    fewer[0]?.values.delete(7);
    expectCode(() => verifyQuote({ ...base, pcrs: fewer }), TpmQuoteError, 'pcr-selection-mismatch');
    const more = clonePcrs(f.pcrs);
    more[0]?.values.set(9, Buffer.alloc(32));
    expectCode(() => verifyQuote({ ...base, pcrs: more }), TpmQuoteError, 'pcr-selection-mismatch');
    const short = clonePcrs(f.pcrs);
    short[0]?.values.set(0, Buffer.alloc(20));
    expectCode(() => verifyQuote({ ...base, pcrs: short }), TpmQuoteError, 'bad-pcr-value');
  });
  it('rejects a quote signed by another AK', () => {
    const other = parseTpm2bPublic(fixture('ak-rsa2048.pub'));
    expectCode(() => verifyQuote({ ...base, akPublic: other }), TpmQuoteError, 'signature-scheme-mismatch');
    const r = quoteFixture('rsa2048');
    expectCode(() => verifyQuote({ ...base, akPublic: other, signature: r.signature }), TpmQuoteError, 'bad-signature');
  });
  it('rejects data without the TPM magic or of another attestation type, even when validly signed', () => {
    const key = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = key.publicKey.export({ format: 'jwk' });
    // A TPMT_PUBLIC for this software key, shaped like the AK.
    const raw = Buffer.from(f.akPub.subarray(2));
    const x = Buffer.from(jwk.x as string, 'base64url');
    const y = Buffer.from(jwk.y as string, 'base64url');
    raw.set(x, raw.length - 2 - 32 - 2 - 32 + 2);
    raw.set(y, raw.length - 32);
    const soft = parseTpmtPublic(raw);
    const sign = (attest: Buffer): Buffer => {
      const rs = crypto.sign('sha256', attest, { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
      const w = Buffer.alloc(4);
      w.writeUInt16BE(TPM_ALG.ECDSA, 0);
      w.writeUInt16BE(TPM_ALG.SHA256, 2);
      return Buffer.concat([w, Buffer.from([0, 32]), rs.subarray(0, 32), Buffer.from([0, 32]), rs.subarray(32)]);
    };
    expect(verifyQuote({ ...base, akPublic: soft, signature: sign(f.attest) }).extraData).toEqual(f.nonce);
    const noMagic = Buffer.from(f.attest);
    noMagic.writeUInt32BE(0x12345678, 0);
    expectCode(() => verifyQuote({ ...base, akPublic: soft, attest: noMagic, signature: sign(noMagic) }), TpmQuoteError, 'bad-magic');
    const certify = Buffer.from(f.attest);
    certify.writeUInt16BE(0x8017, 4);
    expectCode(() => verifyQuote({ ...base, akPublic: soft, attest: certify, signature: sign(certify) }), TpmQuoteError, 'malformed-attest');
    const time = Buffer.from(f.attest);
    time.writeUInt16BE(0x8019, 4);
    expectCode(() => verifyQuote({ ...base, akPublic: soft, attest: time, signature: sign(time) }), TpmQuoteError, 'bad-type');
  });
  it('rejects malformed signatures and attest structures with their own codes', () => {
    expectCode(() => verifyQuote({ ...base, signature: f.signature.subarray(0, 10) }), TpmQuoteError, 'malformed-signature');
    expectCode(() => verifyQuote({ ...base, attest: f.attest.subarray(0, 20) }), TpmQuoteError, 'malformed-attest');
  });
  it('parses the signature and attest structures', () => {
    const sig = parseTpmtSignature(f.signature);
    expect(sig.sigAlg).toBe('ecdsa');
    const at = parseTpmsAttest(f.attest);
    expect(at.magic).toBe(0xff544347);
    expect(at.quote?.pcrSelection[1]).toEqual({ alg: 'sha1', pcrs: [0, 16] });
  });
});

describe('MakeCredential primitives', () => {
  it('KDFa matches an independent HMAC construction and the bit length', () => {
    const key = Buffer.alloc(32, 1);
    const out = kdfa('sha256', key, 'STORAGE', Buffer.from('u'), Buffer.from('v'), 128);
    const h = crypto.createHmac('sha256', key).update(Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.from('STORAGE\0'), Buffer.from('uv'), Buffer.from([0, 0, 0, 128])])).digest();
    expect(out).toEqual(h.subarray(0, 16));
    expect(kdfa('sha256', key, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), 384)).toHaveLength(48);
  });
  it('refuses secrets longer than the EK name hash, bad names, non-storage keys', () => {
    const ek = parseTpm2bPublic(fixture('ek-rsa2048.pub'));
    const name = objectName(parseTpm2bPublic(fixture('ak-ecc-p256.pub')));
    expect(() => makeCredential(ek, name, Buffer.alloc(33))).toThrow(/1\.\.32 bytes/);
    expect(() => makeCredential(ek, name.subarray(1), Buffer.alloc(16))).toThrow(/not a TPM object name/);
    expect(() => makeCredential(parseTpm2bPublic(fixture('ak-ecc-p256.pub')), name, Buffer.alloc(16))).toThrow(/restricted decryption key/);
    const cred = makeCredential(ek, name, Buffer.alloc(16, 5));
    expect(cred.encryptedSecret.readUInt16BE(0)).toBe(256);
    expect(cred.credentialBlob.readUInt16BE(0)).toBe(cred.credentialBlob.length - 2);
  });
});

describe('EK certificates', () => {
  it('validates the swtpm EK certificates against the manufacturer CA and reads the TPM identity', () => {
    for (const [crt, pub] of [['ek-rsa2048.crt', 'ek-rsa2048.pub'], ['ek-p384.crt', 'ek-p384.pub']] as const) {
      const info = verifyEkCertificate(fixture(crt), manufacturerCas());
      expect(info).toMatchObject({ manufacturer: 'id:00001014', model: 'swtpm', version: 'id:20191023' });
      expect(info.chain).toHaveLength(2);
      const ek = parseTpm2bPublic(fixture(pub));
      expect(info.ekHash).toBe(ekHash(ek));
      expect(info.spki).toEqual(info.publicKey.export({ type: 'spki', format: 'der' }));
      expect(info.publicKey.equals(new crypto.X509Certificate(fixture(crt)).publicKey)).toBe(true);
      expect(ekPublicMatchesCertificate(ek, fixture(crt))).toBe(true);
      // The verified certificate's info gives the same answer without parsing the certificate again.
      expect(ekPublicMatchesCertificate(ek, info)).toBe(true);
    }
    expect(ekPublicMatchesCertificate(parseTpm2bPublic(fixture('ek-rsa2048.pub')), fixture('ek-p384.crt'))).toBe(false);
    expect(ekPublicMatchesCertificate(parseTpm2bPublic(fixture('ek-rsa2048.pub')), verifyEkCertificate(fixture('ek-p384.crt'), manufacturerCas()))).toBe(false);
    expect(ekPublicMatchesCertificate(parseTpm2bPublic(fixture('ek-p384.pub')), verifyEkCertificate(fixture('ek-rsa2048.crt'), manufacturerCas()))).toBe(false);
  });

  it('reads an RSA EK key labelled id-RSAES-OAEP (a real-world quirk) as the same key', () => {
    const der = fixture('ek-rsa2048.crt');
    const rsaEncryption = Buffer.from('06092a864886f70d010101', 'hex');
    const at = der.indexOf(rsaEncryption);
    expect(at).toBeGreaterThan(0);
    const oaep = Buffer.from(der);
    oaep[at + rsaEncryption.length - 1] = 0x07;
    expect(ekPublicMatchesCertificate(parseTpm2bPublic(fixture('ek-rsa2048.pub')), oaep)).toBe(true);
    expect(ekCertificateIdentity(oaep).manufacturer).toBe('id:00001014');
  });

  it('works with only the issuing CA as trust anchor or with the issuer as an intermediate', () => {
    const [root, issuer] = manufacturerCas() as [Buffer, Buffer];
    expect(verifyEkCertificate(fixture('ek-rsa2048.crt'), [issuer]).chain).toHaveLength(2);
    expect(verifyEkCertificate(fixture('ek-rsa2048.crt'), [root], { intermediatesDer: [issuer] }).chain).toHaveLength(3);
    expectCode(() => verifyEkCertificate(fixture('ek-rsa2048.crt'), [root]), TpmEkCertificateError, 'untrusted');
  });

  it('rejects an EK certificate from another CA, even one with the same name', () => {
    const t = tempDir();
    try {
      const key = path.join(t.dir, 'k.pem');
      const crt = path.join(t.dir, 'c.pem');
      execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', crt,
        '-subj', '/CN=swtpm-localca', '-days', '2', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'], { stdio: 'ignore' });
      const other = new crypto.X509Certificate(fs.readFileSync(crt)).raw;
      expectCode(() => verifyEkCertificate(fixture('ek-rsa2048.crt'), [other]), TpmEkCertificateError, 'untrusted');
    } finally {
      t.cleanup();
    }
  });

  it('rejects expired certificates, garbage, and an empty CA bundle', () => {
    expectCode(() => verifyEkCertificate(fixture('ek-rsa2048.crt'), manufacturerCas(), { now: new Date('2001-01-01') }), TpmEkCertificateError, 'expired');
    expectCode(() => verifyEkCertificate(Buffer.from('not a certificate'), manufacturerCas()), TpmEkCertificateError, 'malformed-certificate');
    expectCode(() => verifyEkCertificate(fixture('ek-rsa2048.crt'), []), TpmEkCertificateError, 'untrusted');
  });

  it('refuses an EK certificate with an unhandled critical extension, and a CA as EK certificate', () => {
    const t = tempDir();
    try {
      const run = (args: string[]): void => { execFileSync('openssl', args, { stdio: 'ignore', cwd: t.dir }); };
      run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=test-mfr', '-days', '2',
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign']);
      run(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ek.key', '-out', 'ek.csr', '-subj', '/CN=ek']);
      fs.writeFileSync(path.join(t.dir, 'ext.cnf'), [
        '[plain]', 'basicConstraints=critical,CA:FALSE', 'subjectAltName=critical,dirName:tpm',
        '[v3]', 'basicConstraints=critical,CA:FALSE', 'subjectAltName=critical,dirName:tpm', '1.2.3.4.5=critical,ASN1:NULL',
        // openssl strips a "x." prefix from keys, so the numeric OIDs need one.
        '[tpm]', 'a.2.23.133.2.1=id:00001014', 'b.2.23.133.2.2=swtpm', 'c.2.23.133.2.3=id:20191023', '',
      ].join('\n'));
      for (const [ext, out] of [['plain', 'plain.pem'], ['v3', 'ek.pem']]) {
        run(['x509', '-req', '-in', 'ek.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-set_serial', '7', '-days', '1', '-out', out as string, '-extfile', 'ext.cnf', '-extensions', ext as string]);
      }
      const ca = new crypto.X509Certificate(fs.readFileSync(path.join(t.dir, 'ca.pem'))).raw;
      const ek = new crypto.X509Certificate(fs.readFileSync(path.join(t.dir, 'ek.pem'))).raw;
      const plain = new crypto.X509Certificate(fs.readFileSync(path.join(t.dir, 'plain.pem'))).raw;
      // The critical directoryName SAN alone is handled deliberately: accepted, identity read.
      expect(verifyEkCertificate(plain, [ca])).toMatchObject({ manufacturer: 'id:00001014', model: 'swtpm' });
      expectCode(() => verifyEkCertificate(ek, [ca]), TpmEkCertificateError, 'unhandled-critical-extension');
      expectCode(() => verifyEkCertificate(ca, [ca]), TpmEkCertificateError, 'not-an-ek');
    } finally {
      t.cleanup();
    }
  });
});

describe('EK templates', () => {
  it('produce the same TPMT_PUBLIC shape as the provisioned EKs (policy, attributes, symmetric)', () => {
    for (const [kind, file] of [['rsa2048', 'ek-rsa2048.pub'], ['ecc-p384', 'ek-p384.pub']] as const) {
      const t = parseTpmtPublic(ekTemplate(kind));
      const real = parseTpm2bPublic(fixture(file));
      expect(t.objectAttributes).toEqual(real.objectAttributes);
      expect(t.authPolicy).toEqual(real.authPolicy);
      expect(t.parameters).toEqual(real.parameters);
    }
  });
});

describe('module boundary', () => {
  it('the verifier side (src/tpm/index.ts) never reaches libtss2: no import of device.ts or native/', () => {
    const root = path.resolve(import.meta.dirname, '../../src/tpm');
    const seen = new Set<string>();
    const visit = (file: string): void => {
      if (seen.has(file)) return;
      seen.add(file);
      const src = fs.readFileSync(file, 'utf8');
      for (const m of src.matchAll(/from '(\.[^']+)'/g)) {
        const target = path.resolve(path.dirname(file), (m[1] as string).replace(/\.js$/, '.ts'));
        expect(target.startsWith(root), `${file} imports ${m[1]}`).toBe(true);
        expect(path.basename(target)).not.toBe('device.ts');
        visit(target);
      }
      expect(src).not.toMatch(/from 'koffi'/);
    };
    visit(path.join(root, 'index.ts'));
    expect(seen.size).toBeGreaterThan(8);
  });
});
