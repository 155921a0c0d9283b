/**
 * Errors of the TPM layer. Each carries a stable `code` callers can branch on; the message says
 * what was wrong and, where there is one, what to do about it.
 */

export class TpmError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A TPM structure (TPM2B_PUBLIC, TPMS_ATTEST, TPMT_SIGNATURE, ...) could not be decoded. */
export class TpmParseError extends TpmError {}

/** An attestation key does not have the attributes or scheme a verifier requires. */
export class TpmAkPolicyError extends TpmError {
  /** One entry per problem, e.g. "restricted is not set". */
  readonly problems: string[];
  constructor(problems: string[]) {
    super('ak-policy', `attestation key rejected: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

/** A quote failed verification; `code` says which check. */
export class TpmQuoteError extends TpmError {}

/** MakeCredential could not be computed for the given EK / name / secret. */
export class TpmCredentialError extends TpmError {}

/** An EK certificate failed validation; `code` says which check. */
export class TpmEkCertificateError extends TpmError {}
