/**
 * Errors raised by the Keylime integration. Each carries a stable `code` so callers (the server's
 * audit log, metrics) can branch on the kind of failure without parsing messages.
 */

export type KeylimeErrorCode =
  | 'KEYLIME_CONFIG'
  | 'KEYLIME_CONNECT'
  | 'KEYLIME_TLS'
  | 'KEYLIME_TIMEOUT'
  | 'KEYLIME_HTTP'
  | 'KEYLIME_REFUSED_REQUEST'
  | 'KEYLIME_OVERSIZED'
  | 'KEYLIME_MALFORMED'
  | 'KEYLIME_VERSION'
  | 'KEYLIME_DEVELOPMENT_STAND_IN'
  | 'KEYLIME_BUSY'
  | 'KEYLIME_EVIDENCE_REJECTED'
  | 'KEYLIME_QUOTE_FORMAT'
  | 'KEYLIME_NODE_UNTRUSTED'
  | 'KEYLIME_BAD_REQUEST';

export class KeylimeError extends Error {
  readonly code: KeylimeErrorCode;
  constructor(code: KeylimeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KeylimeError';
    this.code = code;
  }
}

/** Bad or missing configuration (CA, client certificate, key, URL). Raised at construction. */
export class KeylimeConfigError extends KeylimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('KEYLIME_CONFIG', message, options);
    this.name = 'KeylimeConfigError';
  }
}

/** Kinds of transport/protocol failure, also used as counter labels. */
export type KeylimeFailureKind = 'connect' | 'tls' | 'timeout' | 'http' | 'refused' | 'oversized' | 'malformed' | 'version' | 'stand_in' | 'busy';

/**
 * The verifier could not be reached, answered something unusable, or (kind `refused`) refused the
 * request itself as malformed. Always fail closed on this. Only `unreachable` errors are worth
 * retrying: a refused request is a configuration or protocol error and fails the same way again.
 */
export class KeylimeRequestError extends KeylimeError {
  readonly kind: KeylimeFailureKind;
  /** HTTP status when the verifier answered with one. */
  readonly status: number | undefined;
  /** Keylime's own failure list, when it gave one (a 400 names what was missing or wrong). */
  readonly failures: readonly KeylimeFailure[];
  constructor(kind: KeylimeFailureKind, message: string, options?: { cause?: unknown; status?: number; failures?: readonly KeylimeFailure[] }) {
    super(codeForKind(kind), message, options);
    this.name = 'KeylimeRequestError';
    this.kind = kind;
    this.status = options?.status;
    this.failures = options?.failures ?? [];
  }

  /** True unless the verifier answered and refused the request: the verifier is down, failing or garbled. */
  get unreachable(): boolean {
    return this.kind !== 'refused';
  }
}

function codeForKind(kind: KeylimeFailureKind): KeylimeErrorCode {
  switch (kind) {
    case 'connect': return 'KEYLIME_CONNECT';
    case 'tls': return 'KEYLIME_TLS';
    case 'timeout': return 'KEYLIME_TIMEOUT';
    case 'http': return 'KEYLIME_HTTP';
    case 'refused': return 'KEYLIME_REFUSED_REQUEST';
    case 'oversized': return 'KEYLIME_OVERSIZED';
    case 'malformed': return 'KEYLIME_MALFORMED';
    case 'version': return 'KEYLIME_VERSION';
    case 'stand_in': return 'KEYLIME_DEVELOPMENT_STAND_IN';
    case 'busy': return 'KEYLIME_BUSY';
  }
}

/** One failure as Keylime reports it: an event id (e.g. `pcr_validation.invalid_pcr_15`) and context. */
export interface KeylimeFailure {
  type: string;
  context: string;
}

/** The verifier answered and said the evidence is not valid. */
export class KeylimeEvidenceRejectedError extends KeylimeError {
  readonly failures: readonly KeylimeFailure[];
  constructor(failures: readonly KeylimeFailure[]) {
    const summary = failures.length === 0
      ? 'no failure reasons given'
      : failures.map((f) => `${f.type}: ${f.context}`).join('; ');
    super('KEYLIME_EVIDENCE_REJECTED', `Keylime rejected the evidence: ${summary}`);
    this.name = 'KeylimeEvidenceRejectedError';
    this.failures = failures;
  }
}

/** A Keylime quote string (or its PCR blob) is malformed. */
export class QuoteFormatError extends KeylimeError {
  constructor(message: string) {
    super('KEYLIME_QUOTE_FORMAT', message);
    this.name = 'QuoteFormatError';
  }
}
