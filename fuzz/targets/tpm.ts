// TPM structures an agent sends the server: TPM2B_PUBLIC (EK, AK), TPMS_ATTEST and TPMT_SIGNATURE of a
// quote, and EK certificates with their intermediates. Seeds are real swtpm output (test/data/tpm).
// Every parser must return or throw TpmError.
import {
  TpmError, checkAkAttributes, ekCertificateIdentity, ekHash, objectName, parseTpm2bPublic, parseTpmsAttest, parseTpmtPublic,
  parseTpmtSignature, publicKeyFromTpmPublic, verifyEkCertificate, verifyQuote, type HashAlg, type PcrValues,
} from '../../src/tpm/index.js';
import { splitDerCertificates } from '../../src/tpm/ekchain.js';
import { chance, mutateBytes, type FuzzTarget } from '../engine.js';
import { pemCerts, tpmFile } from './seeds.js';

const isTpmError = (e: unknown): boolean => e instanceof TpmError;

function quoteSeed(alg: 'ecc-p256' | 'rsa2048'): { akPub: Buffer; attest: Buffer; signature: Buffer; pcrs: PcrValues; nonce: Buffer } {
  const j = JSON.parse(tpmFile(`quote-${alg}.json`).toString('utf8')) as { nonce: string; pcrs: { alg: HashAlg; values: Record<string, string> }[] };
  return {
    akPub: tpmFile(`ak-${alg}.pub`),
    attest: tpmFile(`quote-${alg}.attest`),
    signature: tpmFile(`quote-${alg}.sig`),
    nonce: Buffer.from(j.nonce, 'hex'),
    pcrs: j.pcrs.map((b) => ({ alg: b.alg, values: new Map(Object.entries(b.values).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')])) })),
  };
}

const publics = (): Buffer[] => ['ak-ecc-p256.pub', 'ak-rsa2048.pub', 'ek-rsa2048.pub', 'ek-p384.pub'].map(tpmFile);

export const tpmPublic: FuzzTarget = {
  name: 'tpm-public',
  description: 'TPM2B_PUBLIC / TPMT_PUBLIC (EK and AK): parse, Name, public key, AK attribute policy, EK hash',
  async setup() {
    const seeds = publics();
    seeds.push(...seeds.map((s) => s.subarray(2)));
    return {
      generate: (r) => mutateBytes(r, seeds),
      run(b) {
        // Odd first byte pairs: the TPMT form (no size prefix) goes through parseTpmtPublic.
        const p = (b[0] ?? 0) & 1 ? parseTpmtPublic(b) : parseTpm2bPublic(b);
        objectName(p);
        try { checkAkAttributes(p); } catch (e) { if (!isTpmError(e)) throw e; }
        publicKeyFromTpmPublic(p);
        ekHash(p);
      },
      expected: isTpmError,
    };
  },
};

export const tpmAttest: FuzzTarget = {
  name: 'tpm-attest',
  description: 'TPMS_ATTEST of a quote (parseTpmsAttest)',
  async setup() {
    const seeds = [quoteSeed('ecc-p256').attest, quoteSeed('rsa2048').attest];
    return { generate: (r) => mutateBytes(r, seeds), run: (b) => parseTpmsAttest(b), expected: isTpmError };
  },
};

export const tpmSignature: FuzzTarget = {
  name: 'tpm-signature',
  description: 'TPMT_SIGNATURE (RSASSA, ECDSA) (parseTpmtSignature)',
  async setup() {
    const seeds = [quoteSeed('ecc-p256').signature, quoteSeed('rsa2048').signature];
    return { generate: (r) => mutateBytes(r, seeds), run: (b) => parseTpmtSignature(b), expected: isTpmError };
  },
};

export const tpmQuote: FuzzTarget = {
  name: 'tpm-quote',
  description: 'verifyQuote with a mutated attest or signature (parsers, signature check, PCR digest, extraData)',
  async setup() {
    const q = [quoteSeed('ecc-p256'), quoteSeed('rsa2048')].map((s) => ({ ...s, ak: parseTpm2bPublic(s.akPub) }));
    return {
      // Byte 0: which quote and which half is mutated; the rest is the mutated half.
      generate(r) {
        const which = r() & 3;
        const s = q[which & 1]!;
        return Buffer.concat([Buffer.from([which]), mutateBytes(r, [which & 2 ? s.signature : s.attest])]);
      },
      run(b) {
        const which = b[0] ?? 0;
        const s = q[which & 1]!;
        const body = b.subarray(1);
        verifyQuote({
          akPublic: s.ak, attest: which & 2 ? s.attest : body, signature: which & 2 ? body : s.signature, pcrs: s.pcrs, expectedExtraData: s.nonce,
        });
      },
      expected: isTpmError,
    };
  },
};

export const ekCertificate: FuzzTarget = {
  name: 'ek-certificate',
  description: 'EK certificates: the DER walk (ekCertificateIdentity), full validation against manufacturer CAs, and splitting concatenated intermediates',
  async setup() {
    const certs = [tpmFile('ek-rsa2048.crt'), tpmFile('ek-p384.crt')];
    const cas = pemCerts(tpmFile('manufacturer-ca.pem').toString('utf8'));
    const seeds = [...certs, ...cas, Buffer.concat(cas)];
    return {
      generate: (r) => {
        const b = mutateBytes(r, seeds);
        // Byte 0 picks the entry point; mostly the cheap DER walk.
        return Buffer.concat([Buffer.from([chance(r, 0.8) ? 0 : chance(r, 0.5) ? 1 : 2]), b]);
      },
      run(b) {
        const body = b.subarray(1);
        if (b[0] === 1) verifyEkCertificate(body, cas);
        else if (b[0] === 2) splitDerCertificates(body);
        else ekCertificateIdentity(body);
      },
      expected: isTpmError,
    };
  },
};
