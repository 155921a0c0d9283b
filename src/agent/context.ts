// What the agent's parts share (node identity, sync and signing, bundles, the quote endpoint, the
// lifecycle in agent.ts): its configuration, logger, cache, store, counters, trust bundles, and the
// node's current identity with the server connection made from it. agent.ts creates it and wires the parts.
import type { Logger } from 'pino';
import type { IdentityCache } from './cache.js';
import type { AgentConfig } from './config.js';
import type { HealthStatusWriter } from './health-status.js';
import type { TpmCredentialSource } from './node-attestor.js';
import type { AgentClient } from './server-conn.js';
import type { StoredAgentState, SvidStore } from './svid-store.js';
import type { TrustBundles } from './trust-bundles.js';

export interface AgentOptions {
  logger?: Logger;
  /** The TPM for `nodeAttestor.tpm` (opened by the caller, e.g. with openTpmCredentialSource). */
  tpm?: TpmCredentialSource;
  /** Stops the agent, also while start() still waits for a node attestation the server keeps refusing. */
  signal?: AbortSignal;
}

export class AgentStartError extends Error {
  readonly code = 'agent_start_failed';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentStartError';
  }
}

export interface AgentStats {
  /** Node attestations this process performed (0 after a restart that resumed from disk). */
  attestations: number;
  syncs: number;
  svidsSigned: number;
  /** Keylime revocation notifications about this node that the agent acted on. */
  revocations: number;
}

export const MIN_BACKOFF_MS = 500;
export const MAX_BACKOFF_MS = 30_000;

export interface AgentContext {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly cache: IdentityCache;
  readonly store: SvidStore;
  readonly stats: AgentStats;
  readonly bundles: TrustBundles;
  readonly health: HealthStatusWriter;
  /** Aborted when the agent stops: loops end, backoff waits return at once. */
  readonly halt: AbortSignal;
  /** The agent SVID and key in use, once attested or resumed. */
  state: StoredAgentState | undefined;
  /** The agent API client authenticated with the current agent SVID (opened on first use). */
  serverClient(): AgentClient;
  /** New credentials or roots: reconnect, and re-open the watch on the new channel. */
  resetClient(): void;
}
