// What every agent API handler shares: the service options, the clock, the logger, the agent
// authenticator, the authorized-entries cache and the watch hub, plus the helpers more than one RPC
// family needs (unary wrapping and error replies, the signing gate, claim-expiry timers). Each RPC
// family lives in its own module (attest, renew, sync, sign, watch-rpc); service.ts assembles them.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { TrustDomain } from '../../spiffe/id.js';
import type { DataStore } from '../datastore/types.js';
import type { CaManager } from '../ca/manager.js';
import type { SvidIssuer } from '../ca/issuer.js';
import type { Auditor } from '../audit.js';
import { RateLimiter } from '../ratelimit.js';
import type { TpmAttestor } from '../attestation/tpm.js';
import type { KeylimeGate } from '../attestation/keylime.js';
import type { UnifiedIdentityPipeline } from '../attestation/unified.js';
import type { LatencyWitness } from '../attestation/latency-witness.js';
import type { EvidenceLog } from '../evidence/log.js';
import type { UnifiedIdentityClaims } from '../../spiffe/unified-identity.js';
import type { AgentAuthenticator, AuthenticatedAgent } from './auth.js';
import type { AuthorizedEntriesCache } from './entries.js';
import { rpcError, toRpcError, type RpcError } from './status.js';
import type { WatchHub } from './watch.js';

export interface AgentServiceOptions {
  trustDomain: TrustDomain;
  store: DataStore;
  ca: CaManager;
  issuer: SvidIssuer;
  joinTokens: boolean;
  tpm?: TpmAttestor;
  /** Keylime continuous attestation: TPM nodes are enrolled before issuance and gated afterwards. */
  keylime?: KeylimeGate;
  /** Unified Identity (flag on): the attestation pipeline and the claims-based signing rules. */
  unifiedIdentity?: UnifiedIdentityPipeline;
  /** Landmarks that probe Unified Identity nodes after attestation (unifiedIdentity.latency). */
  latencyWitness?: LatencyWitness;
  /**
   * The evidence log (evidenceLog.enabled): every attestation is recorded before anything is issued
   * on it, and SVIDs carry the index of the record they rest on. `policy`: the log index and digest
   * of the location policy set's record (flag on).
   */
  evidence?: { log: EvidenceLog; policy?: { index: number; sha256: string }; ear?: (record: import('../../evidence/record.js').AttestationRecord, index: number) => Promise<string> };
  rateLimiter: RateLimiter;
  /** Per agent: authenticated calls (default AGENT_RPC_RATE_DEFAULT). */
  rpcRateLimiter?: RateLimiter;
  /** Per agent: CSR verifications and SVID signings, X.509 and JWT (default AGENT_SIGNING_RATE_DEFAULT). */
  signingRateLimiter?: RateLimiter;
  auditor: Auditor;
  logger: Logger;
  x509SvidTtl: number;
  jwtSvidTtl: number;
  /** How long an agent has to send its first message. */
  firstMessageTimeoutMs?: number;
  watchIntervalMs: number;
  now?: () => Date;
}

export interface AgentApiContext {
  /** The service options, as given to createAgentService. */
  o: AgentServiceOptions;
  now: () => Date;
  log: Logger;
  auth: AgentAuthenticator;
  entries: AuthorizedEntriesCache;
  watchHub: WatchHub;
  claimExpiry: ClaimExpiry;
  /** Per-agent budgets, keyed by agent SPIFFE ID. */
  budgets: { rpc: RateLimiter; signing: RateLimiter };
}

const BUDGET_NAMES = { rpc: ['call', 'agentApi.rpcRateLimit', 'calls'], signing: ['signing', 'agentApi.signingRateLimit', 'CSR verifications and signings'] } as const;

/** RESOURCE_EXHAUSTED for an agent that has spent its `kind` budget, saying when to come back. */
export function budgetExhausted(ctx: AgentApiContext, kind: 'rpc' | 'signing', agentId: string): RpcError {
  const b = ctx.budgets[kind];
  const [name, knob, what] = BUDGET_NAMES[kind];
  return rpcError(grpc.status.RESOURCE_EXHAUSTED, `agent ${agentId} has spent its ${name} budget (${b.opts.burst} ${what} at once, then ${b.opts.perSecond}/s; ${knob}): retry in ${Math.max(1, b.retryAfterSeconds(agentId))} s`);
}

/** Takes one unit of the agent's `kind` budget, or throws RESOURCE_EXHAUSTED with a retry-after. */
export function spend(ctx: AgentApiContext, kind: 'rpc' | 'signing', agentId: string): void {
  if (!ctx.budgets[kind].tryTake(agentId)) throw budgetExhausted(ctx, kind, agentId);
}

/** Unified Identity: when a node's claims expire, tell its agent to drop its SVIDs and attest again. */
export class ClaimExpiry {
  private readonly timers = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly o: Pick<AgentServiceOptions, 'unifiedIdentity'>,
    private readonly watchHub: WatchHub,
  ) {}

  schedule(agentId: string, claims: UnifiedIdentityClaims): void {
    clearTimeout(this.timers.get(agentId));
    const ui = this.o.unifiedIdentity;
    if (!ui) return;
    const expiry = ui.claimsExpiry(claims)?.getTime() ?? Date.now();
    const timer = setTimeout(() => {
      this.timers.delete(agentId);
      this.watchHub.dropNode(agentId, `Unified Identity claims expired (${ui.lifetimeKnob}); attest again`);
    }, Math.min(Math.max(0, expiry - Date.now()), 2 ** 31 - 1));
    timer.unref();
    this.timers.set(agentId, timer);
  }

  clear(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}

export function fail(ctx: AgentApiContext, callback: grpc.sendUnaryData<unknown>, err: unknown, what: string): void {
  const e = toRpcError(err);
  if (e.code === grpc.status.INTERNAL) ctx.log.error({ err, rpc: what }, 'agent API internal error');
  callback({ code: e.code, details: e.message } as grpc.ServiceError, null);
}

/** Wraps a unary handler that needs an authenticated agent; each call spends one unit of the agent's call budget. */
export function authed<Req, Res>(ctx: AgentApiContext, name: string, fn: (agent: AuthenticatedAgent, req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    ctx.auth.authenticate(call)
      .then((agent) => {
        spend(ctx, 'rpc', agent.id.toString());
        return fn(agent, call.request);
      })
      .then((res) => callback(null, res), (err: unknown) => fail(ctx, callback as grpc.sendUnaryData<unknown>, err, name));
  };
}

/** Why nothing may be signed for this node now, and by which gate; undefined when it is in good standing. */
export function standing(ctx: AgentApiContext, agent: AuthenticatedAgent): { gate: 'keylime' | 'unified_identity'; error: RpcError } | undefined {
  const { o } = ctx;
  const keylime = o.keylime?.check(agent.id.toString(), agent.node.attestationType);
  if (keylime !== undefined) return { gate: 'keylime', error: keylime };
  const why = o.unifiedIdentity?.signingRefusal(agent.node, undefined);
  return why === undefined ? undefined : { gate: 'unified_identity', error: rpcError(grpc.status.PERMISSION_DENIED, why) };
}

/** The signing gate: refuses (and audits) any signing for a node Keylime or Unified Identity does not allow now. */
export function gate(ctx: AgentApiContext, agent: AuthenticatedAgent, action: 'renew_agent' | 'sign_x509_svid' | 'sign_jwt_svid'): void {
  const refusal = standing(ctx, agent);
  if (refusal === undefined) return;
  ctx.o.auditor.record({ action, caller: agent.id.toString(), result: 'denied', reason: refusal.error.message, details: { gate: refusal.gate } });
  // Unified Identity: a node without current claims gets nothing, and its agent is told to re-attest.
  if (refusal.gate === 'unified_identity') ctx.watchHub.dropNode(agent.id.toString(), refusal.error.message);
  throw refusal.error;
}
