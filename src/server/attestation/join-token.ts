// Join-token node attestation: a one-time secret an operator generated (`terroir-server token
// generate`), consumed atomically so that exactly one agent — on any server sharing the database —
// can use it before it expires.
import { SpiffeId, type TrustDomain } from '../../spiffe/id.js';
import type { DataStore } from '../datastore/types.js';
import { AttestationError } from './errors.js';
import type { AttestationOutcome } from './types.js';

/** Tokens become a SPIFFE ID path segment, so only path-safe characters are possible. */
const TOKEN = /^[A-Za-z0-9._-]{1,256}$/;

export async function attestJoinToken(store: Pick<DataStore, 'consumeJoinToken'>, td: TrustDomain, token: string, now: Date): Promise<AttestationOutcome> {
  if (!TOKEN.test(token)) {
    throw new AttestationError('invalid_argument', 'join token is empty, longer than 256 characters or has characters other than letters, digits, ".", "_" and "-"');
  }
  const found = await store.consumeJoinToken(token, now);
  if (!found) {
    throw new AttestationError('permission_denied', 'join token is unknown, already used or expired; generate a new one with "terroir-server token generate"');
  }
  let agentId: SpiffeId;
  try {
    agentId = found.spiffeId ? SpiffeId.parse(found.spiffeId) : SpiffeId.fromSegments(td, 'agent', 'join_token', token);
  } catch (err) {
    throw new AttestationError('failed_precondition', `join token was created for an invalid SPIFFE ID: ${(err as Error).message}`, { cause: err });
  }
  if (agentId.path === '' || agentId.path === '/spire/server') {
    throw new AttestationError('failed_precondition', `join token was created for ${agentId.toString()}, which cannot be an agent ID`);
  }
  if (!agentId.memberOf(td)) {
    throw new AttestationError('failed_precondition', `join token was created for ${agentId.toString()}, outside trust domain ${td.name}`);
  }
  return { agentId, attestationType: 'join_token', selectors: [], attestationData: { joinToken: 'consumed' }, canRenew: true };
}
