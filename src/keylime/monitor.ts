/**
 * ContinuousAttestationMonitor: polls the verifier for each enrolled node and turns Keylime's
 * status into a verdict the server can act on.
 *
 * A node is trusted only when Keylime says it is attesting (states 3–6) AND it has verified at least
 * one quote (Keylime reports PASS before any quote is checked) AND the last success is recent.
 * Failed (7), Terminated (8), Invalid Quote (9), Tenant Quote Failed (10), staleness, a node the
 * verifier does not know, and an unreachable/garbled verifier are all failures: fail closed. The
 * verdict is recomputed on every poll, so trust comes back by itself when the verifier does.
 *
 * Server wiring: on `fail` stop signing for the node and tell its agent to drop its SVIDs; before
 * signing anything for a node ask `isTrusted(nodeId)`.
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { KeylimeError, KeylimeRequestError } from './errors.js';
import { OperationalState, type AgentStatus, type KeylimeTenant } from './tenant.js';

export type MonitorFailureKind =
  | 'failed' // 7: the node stopped answering quote requests (after retries)
  | 'invalid_quote' // 9: a quote did not verify (signature, nonce, PCR policy, PCR16, clock)
  | 'tenant_quote_failed' // 10
  | 'terminated' // 8
  | 'stale' // no successful attestation within maxAttestationAgeMs
  | 'pending_timeout' // enrolled but no quote verified within pendingTimeoutMs
  | 'not_enrolled' // the verifier does not know the node (404)
  | 'verifier_unreachable' // down, slow, 5xx, garbage or oversized answers, TLS failure
  | 'unexpected_state';

export interface MonitorFailure {
  kind: MonitorFailureKind;
  message: string;
  /** Keylime's last event id, e.g. `pcr_validation.invalid_pcr_15`, when it gave one. */
  lastEventId?: string;
  status?: AgentStatus;
}

export type Verdict = 'pass' | 'pending' | 'fail';

/** A node is not (or no longer) trusted; `failure` says why. */
export class MonitorFailureError extends KeylimeError {
  constructor(readonly nodeId: string, readonly failure: MonitorFailure) {
    super('KEYLIME_NODE_UNTRUSTED', `node ${nodeId} is not trusted by Keylime: ${failure.message}`);
    this.name = 'MonitorFailureError';
  }
}

export interface MonitorEvents {
  /** The node became trusted (first verified attestation, or recovery). */
  pass: [nodeId: string, status: AgentStatus];
  /** The node is no longer trusted, or the reason changed. */
  fail: [nodeId: string, failure: MonitorFailure];
  /** Every poll that found the node passing (not only changes), with what the verifier said. */
  verified: [nodeId: string, status: AgentStatus];
}

export interface MonitorOptions {
  /** How often to ask the verifier about each node. Default 1000 ms. */
  pollIntervalMs?: number;
  /** A node whose last verified quote is older than this is failed. Default 30 s. */
  maxAttestationAgeMs?: number;
  /** A newly watched node that has not verified a quote within this is failed. Default 30 s. */
  pendingTimeoutMs?: number;
  /** Clock, for tests. */
  now?: () => number;
  logger?: Logger;
}

export interface MonitorCounters {
  polls: number;
  passes: number;
  failures: number;
  verifierUnreachable: number;
}

type StatusSource = Pick<KeylimeTenant, 'getAgentStatus'>;

interface NodeState {
  watchedAt: number;
  verdict: Verdict;
  failure?: MonitorFailure;
  lastStatus?: AgentStatus;
  lastPassAt?: number;
}

export class ContinuousAttestationMonitor extends EventEmitter<MonitorEvents> {
  private readonly nodes = new Map<string, NodeState>();
  private readonly pollIntervalMs: number;
  private readonly maxAgeMs: number;
  private readonly pendingTimeoutMs: number;
  private readonly now: () => number;
  private readonly logger: Logger | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private inFlight: Promise<void> | undefined;
  private readonly stats: MonitorCounters = { polls: 0, passes: 0, failures: 0, verifierUnreachable: 0 };

  constructor(private readonly source: StatusSource, opts: MonitorOptions = {}) {
    super();
    this.pollIntervalMs = opts.pollIntervalMs ?? 1000;
    this.maxAgeMs = opts.maxAttestationAgeMs ?? 30_000;
    this.pendingTimeoutMs = opts.pendingTimeoutMs ?? 30_000;
    this.now = opts.now ?? Date.now;
    this.logger = opts.logger?.child({ component: 'keylime-monitor' });
  }

  /** Starts watching a node (after enrolling it). Until its first verified quote it is `pending`. */
  watch(nodeId: string): void {
    if (!this.nodes.has(nodeId)) this.nodes.set(nodeId, { watchedAt: this.now(), verdict: 'pending' });
  }

  unwatch(nodeId: string): void {
    this.nodes.delete(nodeId);
  }

  verdict(nodeId: string): Verdict | undefined {
    return this.nodes.get(nodeId)?.verdict;
  }

  failure(nodeId: string): MonitorFailure | undefined {
    return this.nodes.get(nodeId)?.failure;
  }

  /**
   * The signing gate: true only if the last poll said pass and that poll is itself recent, so a
   * stalled monitor cannot keep a node trusted.
   */
  isTrusted(nodeId: string): boolean {
    const node = this.nodes.get(nodeId);
    if (node === undefined || node.verdict !== 'pass' || node.lastPassAt === undefined) return false;
    return this.now() - node.lastPassAt <= this.maxAgeMs;
  }

  /**
   * Resolves with the status at the node's next `pass` (immediately if it is trusted now); rejects
   * with a MonitorFailureError at its next `fail` or after timeoutMs. For "enroll, then issue only
   * once Keylime has verified a quote".
   */
  awaitTrusted(nodeId: string, timeoutMs: number): Promise<AgentStatus> {
    const node = this.nodes.get(nodeId);
    if (node === undefined) return Promise.reject(new MonitorFailureError(nodeId, { kind: 'not_enrolled', message: 'the node is not watched' }));
    if (this.isTrusted(nodeId) && node.lastStatus !== undefined) return Promise.resolve(node.lastStatus);
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off('pass', onPass);
        this.off('fail', onFail);
      };
      const onPass = (id: string, status: AgentStatus): void => { if (id === nodeId) { done(); resolve(status); } };
      const onFail = (id: string, failure: MonitorFailure): void => { if (id === nodeId) { done(); reject(new MonitorFailureError(nodeId, failure)); } };
      const timer = setTimeout(() => {
        done();
        reject(new MonitorFailureError(nodeId, { kind: 'pending_timeout', message: `no verified quote within ${timeoutMs} ms` }));
      }, timeoutMs);
      this.on('pass', onPass);
      this.on('fail', onFail);
    });
  }

  /**
   * Resolves once a poll shows the node passing with more verified quotes than `afterCount` (a quote
   * Keylime verified after the caller's moment); rejects at the node's next `fail` or after
   * timeoutMs. A verdict from before does not vouch for now: the node may just have been revoked,
   * and Keylime pushes its revocation notification before it records the failure.
   */
  awaitFreshQuote(nodeId: string, afterCount: number, timeoutMs: number): Promise<AgentStatus> {
    if (!this.nodes.has(nodeId)) return Promise.reject(new MonitorFailureError(nodeId, { kind: 'not_enrolled', message: 'the node is not watched' }));
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off('verified', onVerified);
        this.off('fail', onFail);
      };
      const onVerified = (id: string, status: AgentStatus): void => {
        if (id === nodeId && status.attestationCount > afterCount) { done(); resolve(status); }
      };
      const onFail = (id: string, failure: MonitorFailure): void => { if (id === nodeId) { done(); reject(new MonitorFailureError(nodeId, failure)); } };
      const timer = setTimeout(() => {
        done();
        reject(new MonitorFailureError(nodeId, { kind: 'pending_timeout', message: `no newly verified quote within ${timeoutMs} ms` }));
      }, timeoutMs);
      this.on('verified', onVerified);
      this.on('fail', onFail);
    });
  }

  /** What the verifier said at the last poll of the node, if any. */
  lastStatus(nodeId: string): AgentStatus | undefined {
    return this.nodes.get(nodeId)?.lastStatus;
  }

  counters(): MonitorCounters {
    return { ...this.stats };
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    const loop = (): void => {
      this.inFlight = this.pollOnce().finally(() => {
        this.inFlight = undefined;
        if (this.running) this.timer = setTimeout(loop, this.pollIntervalMs);
      });
    };
    loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.inFlight;
  }

  /** Polls every watched node once (also usable without start(), e.g. from a server's own scheduler). */
  async pollOnce(): Promise<void> {
    await Promise.all([...this.nodes.keys()].map((id) => this.pollNode(id)));
  }

  private async pollNode(nodeId: string): Promise<void> {
    this.stats.polls++;
    let status: AgentStatus;
    try {
      status = await this.source.getAgentStatus(nodeId);
    } catch (err) {
      const failure = this.requestFailure(err);
      if (failure.kind === 'verifier_unreachable') this.stats.verifierUnreachable++;
      this.setFail(nodeId, failure);
      return;
    }
    const node = this.nodes.get(nodeId);
    if (node === undefined) return; // unwatched while the request was in flight
    node.lastStatus = status;
    const judged = this.judge(node, status);
    if (judged === 'pass') this.setPass(nodeId, status);
    else if (judged === 'pending') node.verdict = node.verdict === 'fail' ? 'fail' : 'pending';
    else this.setFail(nodeId, judged);
  }

  private judge(node: NodeState, s: AgentStatus): 'pass' | 'pending' | MonitorFailure {
    const base = { status: s, ...(s.lastEventId !== undefined ? { lastEventId: s.lastEventId } : {}) };
    const event = s.lastEventId !== undefined ? ` (last event ${s.lastEventId})` : '';
    switch (s.operationalState) {
      case OperationalState.Failed:
        return { kind: 'failed', message: `Keylime state 7 Failed: the node stopped answering quote requests${event}`, ...base };
      case OperationalState.InvalidQuote:
        return { kind: 'invalid_quote', message: `Keylime state 9 Invalid Quote${event}`, ...base };
      case OperationalState.TenantFailed:
        return { kind: 'tenant_quote_failed', message: `Keylime state 10 Tenant Quote Failed${event}`, ...base };
      case OperationalState.Terminated:
        return { kind: 'terminated', message: 'Keylime state 8 Terminated: the node is no longer attested', ...base };
    }
    const attesting = s.operationalState >= OperationalState.GetQuote && s.operationalState <= OperationalState.ProvideVRetry;
    const enrolling = s.operationalState <= OperationalState.Saved;
    if (!attesting && !enrolling) return { kind: 'unexpected_state', message: `unknown Keylime state ${s.operationalState}`, ...base };
    if (s.attestationStatus !== undefined && s.attestationStatus !== 'PASS' && s.attestationStatus !== 'PENDING') {
      return { kind: 'failed', message: `Keylime attestation_status ${s.attestationStatus}${event}`, ...base };
    }
    const now = this.now();
    if (s.attestationCount >= 1 && s.lastSuccessfulAttestation !== undefined) {
      const ageMs = now - s.lastSuccessfulAttestation * 1000;
      if (ageMs <= this.maxAgeMs) return 'pass';
      return { kind: 'stale', message: `last verified quote is ${Math.round(ageMs / 1000)} s old (limit ${this.maxAgeMs / 1000} s)`, ...base };
    }
    if (now - node.watchedAt > this.pendingTimeoutMs) {
      return { kind: 'pending_timeout', message: `no quote verified within ${this.pendingTimeoutMs / 1000} s of enrollment`, ...base };
    }
    return 'pending';
  }

  private requestFailure(err: unknown): MonitorFailure {
    if (err instanceof KeylimeRequestError && err.kind === 'http' && err.status === 404) {
      return { kind: 'not_enrolled', message: 'the verifier does not know this node (404)' };
    }
    const reason = err instanceof Error ? err.message : String(err);
    return { kind: 'verifier_unreachable', message: `cannot get a verdict from the verifier: ${reason}` };
  }

  private setPass(nodeId: string, status: AgentStatus): void {
    const node = this.nodes.get(nodeId);
    if (node === undefined) return;
    node.lastPassAt = this.now();
    const changed = node.verdict !== 'pass';
    node.verdict = 'pass';
    node.failure = undefined;
    if (changed) {
      this.stats.passes++;
      this.logger?.info({ nodeId, attestationCount: status.attestationCount }, 'node attestation passing');
      this.emit('pass', nodeId, status);
    }
    this.emit('verified', nodeId, status);
  }

  private setFail(nodeId: string, failure: MonitorFailure): void {
    const node = this.nodes.get(nodeId);
    if (node === undefined) return;
    const changed = node.verdict !== 'fail' || node.failure?.kind !== failure.kind;
    node.verdict = 'fail';
    node.failure = failure;
    node.lastPassAt = undefined;
    if (changed) {
      this.stats.failures++;
      this.logger?.warn({ nodeId, kind: failure.kind, lastEventId: failure.lastEventId }, `node attestation failed: ${failure.message}`);
      this.emit('fail', nodeId, failure);
    }
  }
}
