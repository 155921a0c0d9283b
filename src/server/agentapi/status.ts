// gRPC status errors for the agent API: every refusal carries a code and a message saying what was
// wrong and what to do.
import * as grpc from '@grpc/grpc-js';
import { DataStoreError } from '../datastore/types.js';
import { AttestationError } from '../attestation/errors.js';
import { CaError } from '../ca/manager.js';

export class RpcError extends Error implements Partial<grpc.StatusObject> {
  override readonly name = 'RpcError';
  readonly details: string;
  constructor(readonly code: grpc.status, message: string) {
    super(message);
    this.details = message;
  }
}

export function rpcError(code: grpc.status, message: string): RpcError {
  return new RpcError(code, message);
}

const ATTESTATION_CODES: Record<AttestationError['code'], grpc.status> = {
  invalid_argument: grpc.status.INVALID_ARGUMENT,
  permission_denied: grpc.status.PERMISSION_DENIED,
  failed_precondition: grpc.status.FAILED_PRECONDITION,
  deadline_exceeded: grpc.status.DEADLINE_EXCEEDED,
  unavailable: grpc.status.UNAVAILABLE,
};

/** Maps anything thrown in a handler to a status; unexpected errors become INTERNAL without internals. */
export function toRpcError(err: unknown): RpcError {
  if (err instanceof RpcError) return err;
  if (err instanceof AttestationError) return new RpcError(ATTESTATION_CODES[err.code], err.message);
  if (err instanceof DataStoreError) {
    if (err.code === 'unavailable') return new RpcError(grpc.status.UNAVAILABLE, `datastore unavailable: ${err.message}`);
    if (err.code === 'invalid_argument') return new RpcError(grpc.status.INVALID_ARGUMENT, err.message);
    if (err.code === 'not_found') return new RpcError(grpc.status.NOT_FOUND, err.message);
  }
  if (err instanceof CaError) return new RpcError(grpc.status.UNAVAILABLE, err.message);
  return new RpcError(grpc.status.INTERNAL, 'internal server error (see the server log)');
}
