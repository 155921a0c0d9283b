// Issue 14, findings 5 and 6: keys an attacker chooses must not weaken or slow the TPM checks.
// - An AK whose nameAlg is SHA-1: credential activation binds the AK to the EK through the AK's name,
//   so that binding would rest on SHA-1. Refused.
// - EK intermediates sent by the (unauthenticated) agent: each is a key the server would verify a
//   signature with. A 8192-bit RSA key (16384 in the review: ~5 ms per check, 8 per attempt) or an
//   exponent other than 65537 is refused before any signature is checked.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { TpmAkPolicyError, TpmEkCertificateError, checkAkAttributes, parseTpmtPublic, verifyEkCertificate } from '../../src/tpm/index.js';
import { fixture, manufacturerCas } from '../tpm/fixtures.js';

const data = (name: string): Buffer => fs.readFileSync(path.join(import.meta.dirname, '../data/security', name));

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

describe('AK name algorithm', () => {
  it('a real swtpm AK with its nameAlg set to SHA-1 is refused, naming why', () => {
    const raw = Buffer.from(fixture('ak-ecc-p256.pub').subarray(2));
    raw.writeUInt16BE(0x0004, 2); // TPMT_PUBLIC.nameAlg = TPM_ALG_SHA1
    const ak = parseTpmtPublic(raw);
    expect(ak.nameAlg).toBe('sha1');
    const err = thrown(() => checkAkAttributes(ak));
    expect(err).toBeInstanceOf(TpmAkPolicyError);
    expect((err as TpmAkPolicyError).problems).toContain("the name algorithm sha1 is not one of sha256, sha384, sha512 (the AK's name binds it to the EK)");
    // The same key with SHA-256 passes.
    expect(() => checkAkAttributes(parseTpmtPublic(Buffer.from(fixture('ak-ecc-p256.pub').subarray(2))))).not.toThrow();
  });
});

describe('EK intermediates from the agent', () => {
  const ekCert = fixture('ek-rsa2048.crt');

  it('an 8192-bit RSA intermediate is refused before any signature check', () => {
    const err = thrown(() => verifyEkCertificate(ekCert, manufacturerCas(), { intermediatesDer: [data('rsa8192-ca.der')] }));
    expect(err).toBeInstanceOf(TpmEkCertificateError);
    expect((err as Error).message).toBe('intermediate #0: RSA key of 8192 bits; issuer keys above 4096 bits are refused');
  });

  it('an RSA intermediate with public exponent 3 is refused', () => {
    const err = thrown(() => verifyEkCertificate(ekCert, manufacturerCas(), { intermediatesDer: [data('rsa-e3-ca.der')] }));
    expect((err as Error).message).toBe('intermediate #0: RSA public exponent 3; only 65537 is accepted');
  });

  it('the EK certificate still verifies without them', () => {
    expect(verifyEkCertificate(ekCert, manufacturerCas()).ekHash).toMatch(/^[0-9a-f]{64}$/);
  });
});
