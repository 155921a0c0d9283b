import crypto from 'node:crypto';
import { TPM_GENERATED_VALUE, TPM_ST, curveInfo, digestSize, type HashAlg } from './constants.js';
import { TpmParseError, TpmQuoteError } from './errors.js';
import { parseTpmsAttest, parseTpmtSignature, type ClockInfo, type PcrSelection, type PcrValues, type TpmsAttest, type TpmtSignature } from './attest.js';
import { publicKeyFromTpmPublic, type TpmPublic } from './public.js';

export interface VerifyQuoteOptions {
  akPublic: TpmPublic;
  /** TPMS_ATTEST bytes as signed (without the TPM2B size). */
  attest: Buffer;
  /** TPMT_SIGNATURE bytes. */
  signature: Buffer;
  /** The PCR values the quote must cover: exactly these banks and indexes, no more, no fewer. */
  pcrs: PcrValues;
  /** The qualifying data the verifier asked for (its nonce, or a hash binding the nonce to more). */
  expectedExtraData: Buffer;
  /** Reject quotes whose clockInfo.safe is NO (the TPM clock may have gone backwards). Default false. */
  requireSafeClock?: boolean;
}

export interface QuoteInfo {
  clockInfo: ClockInfo;
  firmwareVersion: bigint;
  pcrSelection: PcrSelection[];
  pcrDigest: Buffer;
  extraData: Buffer;
  qualifiedSigner: Buffer;
  /** Hash used by the signature, which is also the hash of the PCR digest. */
  hashAlg: HashAlg;
}

/**
 * Verifies a TPM2_Quote: TPM-generated magic and quote type, the AK's signature over the attest
 * bytes, extraData equal to the expected nonce, the selection equal to the supplied PCRs, and the
 * PCR digest recomputed from the supplied values. Throws TpmQuoteError whose `code` names the check
 * that failed: malformed-attest, malformed-signature, bad-magic, bad-type, signature-scheme-mismatch,
 * bad-signature, extra-data-mismatch, bad-pcr-value, pcr-selection-mismatch, pcr-digest-mismatch,
 * clock-not-safe.
 */
export function verifyQuote(opts: VerifyQuoteOptions): QuoteInfo {
  const { attest, hashAlg } = verifyQuoteBinding(opts);
  const quote = attest.quote as NonNullable<TpmsAttest['quote']>;
  return finishPcrCheck(opts, attest, quote, hashAlg);
}

/**
 * The first half of verifyQuote: TPM-generated magic, quote type, the AK's signature and extraData,
 * but not the PCRs. Enough where the quote only proves that the AK's TPM signed this data now (the
 * latency probe); never enough to trust PCR values.
 */
export function verifyQuoteBinding(opts: Pick<VerifyQuoteOptions, 'akPublic' | 'attest' | 'signature' | 'expectedExtraData'>): { attest: TpmsAttest; hashAlg: HashAlg } {
  let attest: TpmsAttest;
  try {
    attest = parseTpmsAttest(opts.attest);
  } catch (err) {
    throw new TpmQuoteError('malformed-attest', `quote rejected: ${(err as Error).message}`, { cause: err });
  }
  let sig: TpmtSignature;
  try {
    sig = parseTpmtSignature(opts.signature);
  } catch (err) {
    throw new TpmQuoteError('malformed-signature', `quote rejected: ${(err as Error).message}`, { cause: err });
  }
  if (attest.magic !== TPM_GENERATED_VALUE) {
    throw new TpmQuoteError('bad-magic', `quote rejected: magic is 0x${attest.magic.toString(16)}, not TPM_GENERATED_VALUE (the data was not produced by a TPM)`);
  }
  if (attest.type !== TPM_ST.ATTEST_QUOTE || attest.quote === undefined) {
    throw new TpmQuoteError('bad-type', `quote rejected: attestation type is 0x${attest.type.toString(16)}, not TPM_ST_ATTEST_QUOTE`);
  }
  const hashAlg = checkSignature(opts.akPublic, sig, opts.attest);

  if (!constantTimeEqual(attest.extraData, opts.expectedExtraData)) {
    throw new TpmQuoteError('extra-data-mismatch', 'quote rejected: extraData does not match the expected nonce (stale or replayed quote)');
  }
  return { attest, hashAlg };
}

function finishPcrCheck(opts: VerifyQuoteOptions, attest: TpmsAttest, quote: NonNullable<TpmsAttest['quote']>, hashAlg: HashAlg): QuoteInfo {
  const { pcrSelection, pcrDigest } = quote;
  const supplied = new Map<HashAlg, Map<number, Buffer>>();
  for (const bank of opts.pcrs) {
    if (supplied.has(bank.alg)) throw new TpmQuoteError('pcr-selection-mismatch', `quote rejected: PCR bank ${bank.alg} supplied twice`);
    for (const [idx, v] of bank.values) {
      if (v.length !== digestSize(bank.alg)) throw new TpmQuoteError('bad-pcr-value', `quote rejected: PCR ${bank.alg}:${idx} is ${v.length} bytes, a ${bank.alg} PCR has ${digestSize(bank.alg)}`);
    }
    supplied.set(bank.alg, bank.values);
  }
  const quoted = new Set<string>();
  const h = crypto.createHash(hashAlg);
  for (const sel of pcrSelection) {
    const bank = supplied.get(sel.alg);
    for (const idx of sel.pcrs) {
      const key = `${sel.alg}:${idx}`;
      const v = bank?.get(idx);
      if (v === undefined || quoted.has(key)) {
        throw new TpmQuoteError('pcr-selection-mismatch', `quote rejected: the quote covers PCR ${key} but no value was supplied for it`);
      }
      quoted.add(key);
      h.update(v);
    }
  }
  for (const [alg, values] of supplied) {
    for (const idx of values.keys()) {
      if (!quoted.has(`${alg}:${idx}`)) throw new TpmQuoteError('pcr-selection-mismatch', `quote rejected: PCR ${alg}:${idx} was supplied but the quote does not cover it`);
    }
  }
  if (!constantTimeEqual(h.digest(), pcrDigest)) {
    throw new TpmQuoteError('pcr-digest-mismatch', 'quote rejected: the PCR digest in the quote does not match the supplied PCR values');
  }
  if (opts.requireSafeClock === true && !attest.clockInfo.safe) {
    throw new TpmQuoteError('clock-not-safe', 'quote rejected: clockInfo.safe is NO (the TPM was not shut down cleanly; its clock may have gone back)');
  }
  return {
    clockInfo: attest.clockInfo,
    firmwareVersion: attest.firmwareVersion,
    pcrSelection,
    pcrDigest,
    extraData: attest.extraData,
    qualifiedSigner: attest.qualifiedSigner,
    hashAlg,
  };
}

/** Checks `sig` over `data` with the key in `pub`; returns the signature's hash. */
function checkSignature(pub: TpmPublic, sig: TpmtSignature, data: Buffer): HashAlg {
  const keyScheme = pub.parameters.scheme;
  if (sig.sigAlg === 'null' || sig.sigAlg === 'hmac') {
    throw new TpmQuoteError('signature-scheme-mismatch', `quote rejected: signature algorithm ${sig.sigAlg} cannot be verified with a public key`);
  }
  const okForType = pub.type === 'rsa' ? sig.sigAlg === 'rsassa' || sig.sigAlg === 'rsapss' : sig.sigAlg === 'ecdsa';
  if (!okForType) {
    throw new TpmQuoteError('signature-scheme-mismatch', `quote rejected: a ${sig.sigAlg} signature does not fit an ${pub.type.toUpperCase()} AK`);
  }
  if (keyScheme !== null && (keyScheme.alg !== sig.sigAlg || keyScheme.hashAlg !== sig.hashAlg)) {
    throw new TpmQuoteError('signature-scheme-mismatch', `quote rejected: signed with ${sig.sigAlg}/${sig.hashAlg}, but the AK's scheme is ${keyScheme.alg}/${keyScheme.hashAlg ?? 'none'}`);
  }
  let key;
  try {
    key = publicKeyFromTpmPublic(pub);
  } catch (err) {
    if (err instanceof TpmParseError) throw new TpmQuoteError('bad-ak', `quote rejected: ${err.message}`, { cause: err });
    throw err;
  }
  let ok = false;
  try {
    if (sig.sigAlg === 'ecdsa' && pub.type === 'ecc') {
      const n = curveInfo(pub.parameters.curve).bytes;
      if (sig.r.length > n || sig.s.length > n) throw new Error('r or s is longer than the curve order');
      const rs = Buffer.concat([leftPad(sig.r, n), leftPad(sig.s, n)]);
      ok = crypto.verify(sig.hashAlg, data, { key, dsaEncoding: 'ieee-p1363' }, rs);
    } else if (sig.sigAlg === 'rsassa') {
      ok = crypto.verify(sig.hashAlg, data, { key, padding: crypto.constants.RSA_PKCS1_PADDING }, sig.sig);
    } else if (sig.sigAlg === 'rsapss') {
      // TPMs differ in the salt length they use (digest size or the maximum): accept what the signature says.
      ok = crypto.verify(sig.hashAlg, data, { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: crypto.constants.RSA_PSS_SALTLEN_AUTO }, sig.sig);
    }
  } catch {
    ok = false;
  }
  if (!ok) throw new TpmQuoteError('bad-signature', 'quote rejected: the signature does not verify with the AK (tampered attest data or another key)');
  return sig.hashAlg;
}

function leftPad(b: Buffer, size: number): Buffer {
  return b.length >= size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

function constantTimeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

/** The digest a TPM puts in a quote for these PCR values, in selection order, with `hashAlg`. */
export function pcrDigest(selection: PcrSelection[], pcrs: PcrValues, hashAlg: HashAlg): Buffer {
  const h = crypto.createHash(hashAlg);
  for (const sel of selection) {
    const bank = pcrs.find((b) => b.alg === sel.alg);
    for (const idx of sel.pcrs) {
      const v = bank?.values.get(idx);
      if (v === undefined) throw new RangeError(`no value for PCR ${sel.alg}:${idx}`);
      h.update(v);
    }
  }
  return h.digest();
}
