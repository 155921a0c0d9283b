// Node attestation failures. `code` says how the agent API reports it (a gRPC status); the message
// says what was wrong so an operator can act on it.
export type AttestationErrorCode = 'invalid_argument' | 'permission_denied' | 'failed_precondition' | 'deadline_exceeded' | 'unavailable';

export class AttestationError extends Error {
  override readonly name = 'AttestationError';
  constructor(readonly code: AttestationErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}
