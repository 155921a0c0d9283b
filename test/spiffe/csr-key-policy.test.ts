// The keys a CSR may carry are checked from the SPKI bytes before any signature work: EC P-256/P-384,
// Ed25519, RSA 2048-4096 with e = 65537. A key outside that costs microseconds to refuse, whatever
// it would have cost to verify with.
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CSR_KEY_POLICY, checkCsrKey, verifyCsr } from '../../src/spiffe/csr.js';
import { summarizeSpki, verifyX509Signature } from '../../src/spiffe/signature.js';
import { X509SvidError } from '../../src/spiffe/index.js';
import { fakeRsaCsr, rsaCsr, rsaKeyWithExponent } from '../server/e2e/expensive-csr.js';

function failure(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(X509SvidError);
    return { code: (e as X509SvidError).code, message: (e as Error).message };
  }
  return { code: 'no error', message: '' };
}

describe('CSR key policy', () => {
  it('accepts RSA 2048, 3072 and 4096 with e = 65537', () => {
    for (const bits of [2048, 3072, 4096]) {
      const k = rsaKeyWithExponent(bits, 65537);
      expect(verifyCsr(rsaCsr(k)).spki.equals(k.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    }
  });

  it('refuses RSA below 2048 or above 4096 bits, and any exponent but 65537, with unsupported-key', () => {
    expect(failure(() => verifyCsr(rsaCsr(rsaKeyWithExponent(1024, 65537)))).message).toMatch(/RSA-1024 \(RSA keys must be 2048 to 4096 bits\)/);
    expect(failure(() => verifyCsr(fakeRsaCsr(4104))).message).toMatch(/RSA-4104/);
    expect(failure(() => verifyCsr(fakeRsaCsr(16384))).code).toBe('unsupported-key');
    const e3 = crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 3 });
    expect(failure(() => verifyCsr(rsaCsr(e3))).message).toMatch(/2-bit public exponent.*must be 65537/);
    // 65537 with a leading zero byte is still 65537 (DER would not encode it so, but it is the same number).
    expect(summarizeSpki(fakeRsaCsrSpki(Buffer.from([0, 1, 0, 1])))).toMatchObject({ type: 'rsa', exponentIs65537: true });
    expect(failure(() => verifyCsr(fakeRsaCsr(2048, Buffer.from([1, 0, 0, 1])))).message).toMatch(/must be 65537/);
    expect(CSR_KEY_POLICY).toMatch(/P-256.*P-384.*Ed25519.*2048 to 4096.*65537/);
  });

  it('refuses a 3072-bit exponent without verifying: 500 refusals in far less than one verification of such a key would take x 500', () => {
    const heavy = rsaCsr(rsaKeyWithExponent(3072, 3072));
    const t0 = performance.now();
    for (let i = 0; i < 500; i++) expect(failure(() => verifyCsr(heavy)).code).toBe('unsupported-key');
    // One verification with that key is ~10 ms; 500 refusals from the SPKI take a few ms.
    expect(performance.now() - t0).toBeLessThan(500);
  });

  it('refuses P-521, secp256k1, RSA-PSS keys and unknown algorithms; accepts Ed25519', () => {
    for (const curve of ['P-521', 'secp256k1']) {
      const k = crypto.generateKeyPairSync('ec', { namedCurve: curve });
      expect(failure(() => checkCsrKey(k.publicKey.export({ type: 'spki', format: 'der' }))).message).toContain(`EC curve ${curve}`);
    }
    const pss = crypto.generateKeyPairSync('rsa-pss', { modulusLength: 2048 });
    expect(failure(() => checkCsrKey(pss.publicKey.export({ type: 'spki', format: 'der' }))).message).toMatch(/algorithm 1\.2\.840\.113549\.1\.1\.10/);
    const x = crypto.generateKeyPairSync('x25519');
    expect(failure(() => checkCsrKey(x.publicKey.export({ type: 'spki', format: 'der' }))).code).toBe('unsupported-key');
    expect(() => checkCsrKey(crypto.generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'der' }))).not.toThrow();
    expect(failure(() => checkCsrKey(Buffer.from('3003020100', 'hex'))).code).toBe('malformed-csr');
  });

  it('verifyX509Signature refuses RSA keys with an exponent over 33 bits before any arithmetic', () => {
    const k = rsaKeyWithExponent(3072, 3072);
    const data = Buffer.from('tbs');
    const sig = crypto.sign('sha256', data, k.privateKey);
    const spki = k.publicKey.export({ type: 'spki', format: 'der' });
    const t0 = performance.now();
    for (let i = 0; i < 200; i++) expect(verifyX509Signature('1.2.840.113549.1.1.11', data, sig, spki)).toBe(false);
    expect(performance.now() - t0).toBeLessThan(500);
    const ok = rsaKeyWithExponent(2048, 65537);
    expect(verifyX509Signature('1.2.840.113549.1.1.11', data, crypto.sign('sha256', data, ok.privateKey), ok.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
  });
});

/** The SPKI of fakeRsaCsr (its second element's third child), for summarizeSpki. */
function fakeRsaCsrSpki(exponent: Buffer): Buffer {
  const der = fakeRsaCsr(2048, exponent);
  // CertificationRequest > certificationRequestInfo > [version, subject, spki]: find the SPKI by its algorithm.
  const at = der.indexOf(Buffer.from('300d06092a864886f70d0101010500', 'hex'));
  const start = at - 4; // 30 82 LL LL before the algorithm
  const len = der.readUInt16BE(start + 2);
  return der.subarray(start, start + 4 + len);
}
