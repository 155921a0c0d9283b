/**
 * 100,000 random and mutated inputs to every parser of untrusted TPM data: each must return or
 * throw the module's own error type (TpmError), never another exception, never hang.
 * Mutations start from real swtpm output (test/data/tpm), so many inputs get deep into the parsers.
 */
import { describe, expect, it } from 'vitest';
import {
  TpmError, checkAkAttributes, ekCertificateIdentity, ekHash, makeCredential, objectName, parseTpm2bPublic, parseTpmsAttest, parseTpmtPublic,
  parseTpmtSignature, publicKeyFromTpmPublic, verifyEkCertificate, verifyQuote,
} from '../../src/tpm/index.js';
import { fixture, manufacturerCas, quoteFixture } from './fixtures.js';

const N = 100_000;

/** xorshift32: deterministic, so a failure reproduces. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x;
  };
}

function mutate(next: () => number, seeds: Buffer[]): Buffer {
  const mode = next() % 8;
  if (mode === 0) {
    const b = Buffer.alloc(next() % 700);
    for (let i = 0; i < b.length; i++) b[i] = next() & 0xff;
    return b;
  }
  const s = Buffer.from(seeds[next() % seeds.length] as Buffer);
  switch (mode) {
    case 1: return s.subarray(0, next() % (s.length + 1));
    case 2: { const extra = Buffer.alloc(1 + (next() % 64)); for (let i = 0; i < extra.length; i++) extra[i] = next() & 0xff; return Buffer.concat([s, extra]); }
    case 3: { // size-field style edits: overwrite a 16-bit big-endian word
      if (s.length < 2) return s;
      const at = next() % (s.length - 1);
      const choices = [0, 1, 0xffff, 0x8000, (s.readUInt16BE(at) + 1) & 0xffff, (s.readUInt16BE(at) - 1) & 0xffff];
      s.writeUInt16BE(choices[next() % choices.length] as number, at);
      return s;
    }
    case 4: { const at = next() % s.length; return Buffer.concat([s.subarray(0, at), s.subarray(at + 1 + (next() % 8))]); }
    default: { // 1..4 random bit flips or byte sets
      const n = 1 + (next() % 4);
      for (let i = 0; i < n && s.length > 0; i++) {
        const at = next() % s.length;
        s[at] = mode === 5 ? (s[at] as number) ^ (1 << (next() % 8)) : next() & 0xff;
      }
      return s;
    }
  }
}

function fuzz(name: string, seed: number, seeds: Buffer[], target: (input: Buffer) => void, n = N): void {
  it(`${name}: ${n.toLocaleString('en')} random and mutated inputs give TpmErrors only`, () => {
    const next = rng(seed);
    let accepted = 0;
    let rejected = 0;
    for (let i = 0; i < n; i++) {
      const input = mutate(next, seeds);
      try {
        target(input);
        accepted++;
      } catch (err) {
        if (!(err instanceof TpmError)) {
          throw new Error(`${name}: input #${i} (${input.toString('hex')}) raised ${String(err)}`, { cause: err });
        }
        expect(err.code.length).toBeGreaterThan(0);
        rejected++;
      }
    }
    expect(accepted + rejected).toBe(n);
    expect(rejected).toBeGreaterThan(n / 2);
  }, 120_000); // a few seconds normally; generous for a loaded CI machine
}

const publics = ['ak-ecc-p256.pub', 'ak-rsa2048.pub', 'ek-rsa2048.pub', 'ek-p384.pub'].map(fixture);
const ecc = quoteFixture('ecc-p256');
const rsa = quoteFixture('rsa2048');
const rsaAk = parseTpm2bPublic(rsa.akPub);
const rsaEk = parseTpm2bPublic(fixture('ek-rsa2048.pub'));
const p384Ek = parseTpm2bPublic(fixture('ek-p384.pub'));
const cas = manufacturerCas();

describe('parser fuzzing', () => {
  fuzz('parseTpm2bPublic (+ name, key, AK policy, ekHash)', 1, publics, (b) => {
    const p = parseTpm2bPublic(b);
    objectName(p);
    try { checkAkAttributes(p); } catch (e) { if (!(e instanceof TpmError)) throw e; }
    publicKeyFromTpmPublic(p);
    ekHash(p);
  });
  fuzz('parseTpmtPublic', 2, publics.map((p) => p.subarray(2)), (b) => { parseTpmtPublic(b); });
  fuzz('parseTpmsAttest', 3, [ecc.attest, rsa.attest], (b) => { parseTpmsAttest(b); });
  fuzz('parseTpmtSignature', 4, [ecc.signature, rsa.signature], (b) => { parseTpmtSignature(b); });
  // verifyQuote runs the parsers above plus a signature check per input: fewer inputs keep it in seconds.
  fuzz('verifyQuote (mutated attest)', 5, [rsa.attest], (b) => {
    verifyQuote({ akPublic: rsaAk, attest: b, signature: rsa.signature, pcrs: rsa.pcrs, expectedExtraData: rsa.nonce });
  }, 20_000);
  fuzz('verifyQuote (mutated signature)', 6, [rsa.signature], (b) => {
    verifyQuote({ akPublic: rsaAk, attest: rsa.attest, signature: b, pcrs: rsa.pcrs, expectedExtraData: rsa.nonce });
  }, 20_000);
  const certs = [fixture('ek-rsa2048.crt'), fixture('ek-p384.crt')];
  fuzz('ekCertificateIdentity (the DER walk of EK certificates)', 7, certs, (b) => { ekCertificateIdentity(b); });
  // Full validation hands structurally valid input to OpenSSL and checks signatures: fewer inputs.
  fuzz('verifyEkCertificate', 9, certs, (b) => { verifyEkCertificate(b, cas); }, 10_000);
  // Each accepted input costs an RSA encryption or a P-384 ECDH: 4,000 keep it to a few seconds.
  fuzz('makeCredential (mutated EK public)', 8, [fixture('ek-rsa2048.pub'), fixture('ek-p384.pub')], (b) => {
    makeCredential(parseTpm2bPublic(b), objectName(rsaAk), Buffer.alloc(16, 1));
  }, 4_000);

  it('the seeds themselves are accepted (so the mutations start from valid inputs)', () => {
    verifyQuote({ akPublic: rsaAk, attest: rsa.attest, signature: rsa.signature, pcrs: rsa.pcrs, expectedExtraData: rsa.nonce });
    verifyEkCertificate(fixture('ek-p384.crt'), cas);
    makeCredential(rsaEk, objectName(rsaAk), Buffer.alloc(16, 1));
    makeCredential(p384Ek, objectName(rsaAk), Buffer.alloc(16, 1));
  });
});
