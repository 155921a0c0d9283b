// Errors of the workload library. Each carries a stable `code` so services can branch on the reason.

export type WorkloadErrorCode =
  | 'invalid-argument'
  | 'no-endpoint'
  | 'timeout'
  | 'closed'
  | 'no-svid'
  | 'no-bundle'
  | 'bad-response'
  | 'fetch-failed'
  | 'unauthorized'
  | 'bad-file';

export class WorkloadError extends Error {
  readonly code: WorkloadErrorCode;

  constructor(code: WorkloadErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'WorkloadError';
  }
}

/** A peer was authenticated but its identity or claims are not allowed here. */
export class AuthorizationError extends WorkloadError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('unauthorized', message, options);
    this.name = 'AuthorizationError';
  }
}
