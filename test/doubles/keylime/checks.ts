// The quote checks of the test Keylime verifier. Real checks, done with src/tpm's verifier side:
// signature with the AK, extraData == nonce, PCR digest vs PCR values, hash algorithm, PCR policy,
// and (pull mode) the PCR16 key binding and TPM clock monotonicity. Failure ids and context shapes
// are Keylime 7.14.3's (keylime/cloud_verifier_common.py process_verify_attestation, keylime/tpm/tpm_main.py
// check_quote/check_pcrs): an unreadable quote or AK is `qoute_validation.invalid_quote`, a signature,
// nonce, digest or hash mismatch `qoute_validation.quote_validation`, PCRs `pcr_validation.*`.
import crypto from 'node:crypto';
import { decodeQuoteString, type KeylimeQuote } from '../../../src/keylime/quote-string.js';
import type { ParsedTpmPolicy } from '../../../src/keylime/policy.js';
import { TpmError, verifyQuote, type ClockInfo, type QuoteInfo, type TpmPublic } from '../../../src/tpm/index.js';

export interface Failure {
  type: string;
  /** Keylime sends an object (e.g. {"message": ...}); the pull-mode checks below use plain text. */
  context: string | Record<string, unknown>;
}

/** The hash algorithms Keylime recognizes (keylime/common/algorithms.py Hash). */
const KNOWN_HASH_ALGS = new Set(['sha1', 'sha256', 'sha384', 'sha512', 'sm3_256']);

/** `qoute_validation.invalid_quote`: check_quote raised (unreadable quote, AK or policy). */
export function invalidQuote(reason: string): Failure {
  return { type: `${'qoute_validation'}.invalid_quote`, context: { message: `Quote validation failed: ${reason}` } };
}

function quoteDataValidation(error: string): Failure {
  return { type: 'qoute_validation.quote_validation', context: { message: 'Quote data validation', error } };
}

export interface QuoteCheckInput {
  quote: string;
  nonce: string;
  hashAlg: string;
  akPublic: TpmPublic;
  policy: ParsedTpmPolicy;
  /** Pull mode: the key the node bound into PCR16, and the clock of its previous quote. */
  pubkeyPem?: string;
  previousClock?: ClockInfo;
}

export interface QuoteCheckResult {
  failures: Failure[];
  info?: QuoteInfo;
  pcrs?: Map<number, Buffer>;
}

/** Keylime spells its quote failure ids "qoute_validation" in the code; the double does the same. */
const QUOTE = 'qoute_validation';

export function checkQuote(input: QuoteCheckInput): QuoteCheckResult {
  if (!KNOWN_HASH_ALGS.has(input.hashAlg)) {
    return { failures: [{ type: `${QUOTE}.invalid_hash_alg`, context: { message: `TPM Quote is using an unrecognized hash algorithm: ${input.hashAlg}`, data: input.hashAlg } }] };
  }
  let quote: KeylimeQuote;
  try {
    quote = decodeQuoteString(input.quote);
  } catch (err) {
    return { failures: [invalidQuote((err as Error).message)] };
  }
  const bank = quote.pcrs.find((b) => b.alg === input.hashAlg);
  if (bank === undefined || quote.pcrs.length !== 1) {
    return { failures: [quoteDataValidation(`Quote was expected to use ${input.hashAlg} but used ${quote.pcrs.map((b) => b.alg).join(', ')} instead`)] };
  }
  let info: QuoteInfo;
  try {
    info = verifyQuote({
      akPublic: input.akPublic,
      attest: Buffer.from(quote.attest),
      signature: Buffer.from(quote.signature),
      pcrs: quote.pcrs.map((b) => ({ alg: b.alg as 'sha256', values: new Map([...b.values].map(([k, v]) => [k, Buffer.from(v)])) })),
      expectedExtraData: Buffer.from(input.nonce, 'utf8'),
    });
  } catch (err) {
    // The TpmError code (extra-data-mismatch, bad-signature, pcr-digest-mismatch...) leads the text.
    if (err instanceof TpmError) return { failures: [quoteDataValidation(`${err.code}: ${err.message}`)] };
    throw err;
  }
  if (info.hashAlg !== input.hashAlg) {
    return { failures: [quoteDataValidation(`Quote was expected to use ${input.hashAlg} but used ${info.hashAlg} instead`)] };
  }
  const pcrs = new Map([...bank.values].map(([k, v]) => [k, Buffer.from(v)]));
  const failures: Failure[] = [];
  for (const [idx, allowed] of input.policy.allowed) {
    const value = pcrs.get(idx);
    if (value !== undefined && !allowed.includes(value.toString('hex'))) {
      failures.push({ type: `pcr_validation.invalid_pcr_${idx}`, context: { context: 'PCR value is not in allowlist', got: value.toString('hex'), expected: allowed } });
    }
  }
  const missing = [...new Set([...input.policy.mask, ...input.policy.allowed.keys()])].filter((idx) => !pcrs.has(idx)).sort((a, b) => a - b);
  if (missing.length > 0) failures.push({ type: 'pcr_validation.missing_pcrs', context: { context: 'PCRs are missing in quote', data: missing } });
  if (input.pubkeyPem !== undefined) {
    const h = info.hashAlg;
    const inner = crypto.createHash(h).update(input.pubkeyPem, 'utf8').digest();
    const expected = crypto.createHash(h).update(Buffer.alloc(inner.length)).update(inner).digest();
    const pcr16 = pcrs.get(16);
    if (pcr16 === undefined || !pcr16.equals(expected)) {
      failures.push({ type: 'pcr_validation.invalid_pcr_16', context: 'PCR 16 does not bind the node public key' });
    }
  }
  if (input.previousClock !== undefined) {
    const prev = input.previousClock;
    const cur = info.clockInfo;
    if (!cur.safe) failures.push({ type: `${QUOTE}.clock_not_safe`, context: 'TPM clockInfo.safe is NO' });
    if (cur.resetCount < prev.resetCount || cur.restartCount < prev.restartCount) {
      failures.push({ type: `${QUOTE}.clock_counters_decreased`, context: 'TPM resetCount/restartCount went backwards' });
    } else if (cur.resetCount === prev.resetCount && cur.restartCount === prev.restartCount && cur.clock <= prev.clock) {
      failures.push({ type: `${QUOTE}.clock_not_increasing`, context: `TPM clock ${cur.clock} is not after ${prev.clock}` });
    }
  }
  return { failures, info, pcrs };
}
