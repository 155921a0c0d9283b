/**
 * One-shot evidence verification: `POST /v2.x/verify/evidence`. The verifier checks the quote's
 * signature with the given AK, the hash algorithm, extraData == nonce, the PCR digest and the
 * policies, and keeps no state. Only an explicit `valid: true` with no failures is success.
 *
 * What Keylime does NOT check here (see docs/keylime.md): the EK, AK provenance (credential
 * activation), the TPM clock, PCR16. Those are the caller's job before calling this.
 */
import { z } from 'zod';
import { keylimeFailures, type KeylimeVerifierClient } from './client.js';
import { KeylimeError, KeylimeEvidenceRejectedError, type KeylimeFailure } from './errors.js';
import { tpmPolicyJson, type TpmPolicy } from './policy.js';
import { checkTpm2bPublic } from './tpm-public.js';
import { decodeQuoteString, type PcrHashAlg } from './quote-string.js';

export interface EvidenceInput {
  /** Keylime quote string (see quote-string.ts). */
  quote: string;
  /** The nonce the quote's extraData must equal, as ASCII (Keylime compares extraData with its UTF-8 bytes). */
  nonce: string;
  /** The AK as a TPM2B_PUBLIC. Keylime trusts it as given: establish its provenance first. */
  akPublic: Uint8Array;
  /**
   * The EK as a TPM2B_PUBLIC. Keylime 7.14 requires it (a request without it is a 400) but does not
   * check it: the EK's trust is the caller's job (certificate chain, credential activation).
   */
  ekPublic: Uint8Array;
  hashAlg: PcrHashAlg;
  /** PCR allowlist, or an already serialized `tpm_policy` JSON string. */
  tpmPolicy: TpmPolicy | string;
  /** Measured-boot policy (JSON string) and the UEFI event log it is checked against. */
  mbPolicy?: string;
  mbLog?: Uint8Array;
  /** Runtime (IMA) policy and the IMA measurement list (ASCII format). */
  runtimePolicy?: string;
  imaList?: string;
}

/**
 * Keylime's verdict, as kept for audit. Keylime's `claims` on success echo the whole request (quote,
 * AK, EK, policy: several KB) and add nothing the caller did not send, so they are not kept.
 */
export interface EvidenceVerdict {
  valid: true;
  failures: readonly KeylimeFailure[];
  /** The REST API version the verdict was given under. */
  apiVersion: string;
}

/** Nonces Keylime puts into extraData: ASCII alphanumerics, at most 64 (the TPM's qualifyingData limit). */
export const KEYLIME_NONCE = /^[A-Za-z0-9]{1,64}$/;

/**
 * The Keylime nonce for a binary challenge (e.g. terroir's 32-byte SHA-256 qualifying value):
 * its lower-case hex. Keylime compares extraData with the nonce's ASCII bytes, so the agent must
 * quote with `qualifyingData = Buffer.from(keylimeNonce(digest), 'ascii')` (64 bytes for SHA-256,
 * exactly the TPM's limit) and the server verifies locally against the same bytes.
 */
export function keylimeNonce(challenge: Uint8Array): string {
  if (challenge.length < 1 || challenge.length > 32) {
    throw new KeylimeError('KEYLIME_BAD_REQUEST', `a Keylime nonce holds 1..32 challenge bytes as hex (TPM qualifyingData is at most 64 bytes), got ${challenge.length}`);
  }
  return Buffer.from(challenge).toString('hex');
}

const evidenceResults = z.object({
  valid: z.boolean(),
  claims: z.unknown().optional(),
  failures: z.array(z.object({ type: z.string().max(1024), context: z.unknown() })).max(1000).default([]),
});

/**
 * Asks the verifier to judge the evidence. Resolves with the claims when, and only when, Keylime says
 * `valid: true` with no failures; throws KeylimeEvidenceRejectedError carrying every failure otherwise,
 * and KeylimeRequestError if the verifier could not give an answer or refused the request itself
 * (kind `refused`: HTTP 400, Keylime's failures attached). Treat all of them as "no".
 */
export async function verifyEvidence(client: KeylimeVerifierClient, input: EvidenceInput): Promise<EvidenceVerdict> {
  if (!KEYLIME_NONCE.test(input.nonce)) {
    throw new KeylimeError('KEYLIME_BAD_REQUEST', 'nonce must be 1..64 ASCII letters or digits (Keylime compares it byte for byte with the quote extraData)');
  }
  decodeQuoteString(input.quote); // refuse to send a malformed quote; the error says what is wrong
  checkTpm2bPublic(input.akPublic, 'akPublic');
  checkTpm2bPublic(input.ekPublic, 'ekPublic');
  const tpmPolicy = typeof input.tpmPolicy === 'string' ? input.tpmPolicy : tpmPolicyJson(input.tpmPolicy);

  const data: Record<string, string> = {
    quote: input.quote,
    nonce: input.nonce,
    hash_alg: input.hashAlg,
    tpm_ek: b64(input.ekPublic),
    tpm_ak: b64(input.akPublic),
    tpm_policy: tpmPolicy,
  };
  if (input.mbPolicy !== undefined) data.mb_policy = input.mbPolicy;
  // The API docs call this mb_list; Keylime's code reads mb_log.
  if (input.mbLog !== undefined) data.mb_log = b64(input.mbLog);
  if (input.runtimePolicy !== undefined) data.runtime_policy = input.runtimePolicy;
  if (input.imaList !== undefined) data.ima_measurement_list = input.imaList;

  const { results } = await client.call({
    method: 'POST',
    path: '/verify/evidence',
    body: { type: 'tpm', data },
    results: evidenceResults,
    // Evidence verification changes nothing on the verifier, so repeating it is safe.
    idempotent: true,
  });
  const failures = keylimeFailures(results);
  if (results.valid !== true || failures.length > 0) throw new KeylimeEvidenceRejectedError(failures);
  return { valid: true, failures, apiVersion: await client.apiVersion() };
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}
