// The quote checks of the test Keylime verifier. Real checks, done with src/tpm's verifier side:
// signature with the AK, extraData == nonce, PCR digest vs PCR values, hash algorithm, PCR policy,
// and (pull mode) the PCR16 key binding and TPM clock monotonicity.
import crypto from 'node:crypto';
import { decodeQuoteString, type KeylimeQuote } from '../../../src/keylime/quote-string.js';
import type { ParsedTpmPolicy } from '../../../src/keylime/policy.js';
import { TpmError, verifyQuote, type ClockInfo, type QuoteInfo, type TpmPublic } from '../../../src/tpm/index.js';

export interface Failure {
  type: string;
  context: string;
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
  let quote: KeylimeQuote;
  try {
    quote = decodeQuoteString(input.quote);
  } catch (err) {
    return { failures: [{ type: `${QUOTE}.quote_format`, context: (err as Error).message }] };
  }
  const bank = quote.pcrs.find((b) => b.alg === input.hashAlg);
  if (bank === undefined || quote.pcrs.length !== 1) {
    return { failures: [{ type: `${QUOTE}.hash_alg`, context: `expected one PCR bank ${input.hashAlg}, quote has ${quote.pcrs.map((b) => b.alg).join(', ')}` }] };
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
    if (err instanceof TpmError) return { failures: [{ type: `${QUOTE}.${err.code}`, context: err.message }] };
    throw err;
  }
  if (info.hashAlg !== input.hashAlg) {
    return { failures: [{ type: `${QUOTE}.hash_alg`, context: `quote signed with ${info.hashAlg}, expected ${input.hashAlg}` }] };
  }
  const pcrs = new Map([...bank.values].map(([k, v]) => [k, Buffer.from(v)]));
  const failures: Failure[] = [];
  for (const idx of input.policy.mask) {
    if (!pcrs.has(idx)) failures.push({ type: `pcr_validation.pcr_not_quoted_${idx}`, context: `PCR ${idx} is in the policy mask but not in the quote` });
  }
  for (const [idx, allowed] of input.policy.allowed) {
    const value = pcrs.get(idx);
    if (value !== undefined && !allowed.includes(value.toString('hex'))) {
      failures.push({ type: `pcr_validation.invalid_pcr_${idx}`, context: `PCR ${idx} is ${value.toString('hex')}, not an allowed value` });
    }
  }
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
