import type { AttestationType, Selector } from '../datastore/types.js';
import type { SpiffeId } from '../../spiffe/id.js';

/** What a successful node attestation establishes about the node. */
export interface AttestationOutcome {
  agentId: SpiffeId;
  attestationType: AttestationType;
  selectors: Selector[];
  /** Evidence summary kept with the node (never secrets). */
  attestationData: Record<string, unknown>;
  /** Whether the node may renew its SVID without attesting again. */
  canRenew: boolean;
}
