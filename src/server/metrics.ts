// Prometheus metrics of the server (served as /metrics on the health listener). Everything is fed
// from outside the request paths where possible: a tee Auditor counts attestation and signing
// outcomes from the audit records the server already writes, a Proxy times datastore calls, and
// gauges (nodes, CA expiry) are computed when Prometheus scrapes. Every label value comes from a
// fixed set (or the operator's own configuration: policy names), never from a request: no SPIFFE
// ID, coordinate or free-text reason can reach a label.
import crypto from 'node:crypto';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { LOCATION_ASSURANCE_LEVELS } from '../spiffe/unified-identity.js';
import type { AuditRecord, Auditor } from './audit.js';
import type { DataStore } from './datastore/types.js';
import type { RateLimiter } from './ratelimit.js';

/** Why an attestation was refused, as a bounded label (the free-text reason stays in the audit log). */
export const REFUSAL_REASONS = [
  'nonce_replay', 'keylime_refused', 'keylime_unreachable', 'policy_denied', 'policy_undecided', 'quote_invalid',
  'rate_limited', 'join_token_invalid', 'tpm_evidence_invalid', 'banned', 'method_disabled', 'timeout', 'cancelled',
  'invalid_request', 'internal', 'other',
] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

const ATTESTATION_METHODS = new Set(['join_token', 'tpm']);
const ASSURANCES = new Set<string>(LOCATION_ASSURANCE_LEVELS);
/** Ordered: the first pattern that matches the refusal's message names its reason. */
const REASON_PATTERNS: [RegExp, RefusalReason][] = [
  [/nonce already used|replay/i, 'nonce_replay'],
  [/Keylime verifier unreachable/i, 'keylime_unreachable'],
  [/Keylime/i, 'keylime_refused'],
  [/location policy \S+ requires the mobile operator/, 'policy_undecided'],
  [/quote verification failed|pcr_quote|unified_identity\.quote/, 'quote_invalid'],
  [/join token/i, 'join_token_invalid'],
  [/is banned/, 'banned'],
  [/disabled on this server/, 'method_disabled'],
  [/activated secret|ek_public|ek_certificate|EK|AK refused|credential challenge/, 'tpm_evidence_invalid'],
];

/** The bounded reason of a refused attestation, from its gRPC status name and message. */
export function refusalReason(code: string | undefined, message: string | undefined): RefusalReason {
  if (code === 'RESOURCE_EXHAUSTED') return 'rate_limited';
  const m = message ?? '';
  const policy = /location policy \S+ (denied|could not decide)/.exec(m);
  if (policy) return policy[1] === 'denied' ? 'policy_denied' : 'policy_undecided';
  for (const [re, reason] of REASON_PATTERNS) if (re.test(m)) return reason;
  if (code === 'DEADLINE_EXCEEDED') return 'timeout';
  if (code === 'CANCELLED') return 'cancelled';
  if (code === 'INVALID_ARGUMENT') return 'invalid_request';
  if (code === 'INTERNAL') return 'internal';
  return 'other';
}

/** What a Keylime client reports per request (all retries included): see KeylimeVerifierClient's onRequest. */
export interface KeylimeRequestEvent {
  kind: string;
  result: string;
  seconds: number;
}

/** Server-side stage durations of one attestation, milliseconds (PipelineStages of unified.ts). */
export type StageDurations = object;

export interface ServerMetricsOptions {
  /**
   * The nodes gauge reads every node from the datastore; a value younger than this is served from
   * memory, an older one is served while a fresh one is computed in the background (0: computed
   * at every scrape).
   */
  nodesMaxAgeSeconds?: number;
  now?: () => Date;
}

export interface ServerMetricsSources {
  store: DataStore;
  /** Own CA: active authorities and bundle roots. */
  ca: {
    authorities(): { x509: readonly { status: string; notAfter: Date }[]; jwt: readonly { status: string; notAfter: Date }[] };
    x509Roots(): Buffer[];
  };
  /** Unified Identity on: a TPM node without (valid) claims is out of policy. */
  unifiedIdentity: boolean;
}

const KEYLIME_KINDS = new Set(['version', 'verify_evidence', 'add_agent', 'get_agent', 'list_agents', 'delete_agent', 'other']);
const KEYLIME_RESULTS = new Set(['ok', 'connect', 'tls', 'timeout', 'http', 'refused', 'oversized', 'malformed', 'version', 'stand_in', 'busy', 'error']);
const POLICY_RESULTS = new Set(['allow', 'deny', 'undecided']);
const COUNTRY = /^[A-Z]{2}$/;

export class ServerMetrics {
  readonly registry = new Registry();
  private readonly attestations: Counter<'method' | 'result' | 'reason'>;
  private readonly attestationSeconds: Histogram<'method' | 'result'>;
  private readonly stageSeconds: Histogram<'stage'>;
  private readonly keylimeRequests: Counter<'kind' | 'result'>;
  private readonly keylimeSeconds: Histogram<'kind'>;
  private readonly keylimeTrustLost: Counter<'result'>;
  private readonly policyDecisions: Counter<'policy' | 'result' | 'assurance'>;
  private readonly svids: Counter<'type' | 'kind'>;
  private readonly datastoreSeconds: Histogram<'operation' | 'result'>;
  private readonly rateLimited: Counter<'limiter'>;
  private readonly nodesMaxAgeMs: number;
  private readonly now: () => Date;
  private sources: ServerMetricsSources | undefined;
  private nodeCounts: { at: number; counts: Map<string, number> } | undefined;
  private nodeRefresh: Promise<void> | undefined;
  private rootsCache: { key: string; earliest: number } | undefined;

  constructor(opts: ServerMetricsOptions = {}) {
    this.nodesMaxAgeMs = (opts.nodesMaxAgeSeconds ?? 15) * 1000;
    this.now = opts.now ?? (() => new Date());
    const registers = [this.registry];
    this.attestations = new Counter({
      name: 'terroir_server_node_attestations_total', help: 'Node attestations by method (join_token, tpm, unknown), result (ok, denied, error) and bounded refusal reason (none when accepted).',
      labelNames: ['method', 'result', 'reason'], registers,
    });
    this.attestationSeconds = new Histogram({
      name: 'terroir_server_node_attestation_duration_seconds', help: 'Wall time of a node attestation on the server, from the first message to the verdict (the agent\'s TPM work included).',
      labelNames: ['method', 'result'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers,
    });
    this.stageSeconds = new Histogram({
      name: 'terroir_server_attestation_stage_duration_seconds', help: 'Server-side stages of an accepted Unified Identity attestation: claims, quote, keylime, operator, policy.',
      labelNames: ['stage'], buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers,
    });
    this.keylimeRequests = new Counter({
      name: 'terroir_server_keylime_requests_total', help: 'Requests to the Keylime verifier by kind and result (ok, or the failure kind: connect, tls, timeout, http, refused, malformed, ...), retries folded in.',
      labelNames: ['kind', 'result'], registers,
    });
    this.keylimeSeconds = new Histogram({
      name: 'terroir_server_keylime_request_duration_seconds', help: 'Latency of Keylime verifier requests by kind (retries included).',
      labelNames: ['kind'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers,
    });
    this.keylimeTrustLost = new Counter({
      name: 'terroir_server_keylime_events_total', help: 'Keylime continuous attestation events by result: denied (the verifier stopped trusting a node), ok (a node removed from the verifier), error (the verifier could not be told).',
      labelNames: ['result'], registers,
    });
    this.policyDecisions = new Counter({
      name: 'terroir_server_location_policy_decisions_total', help: 'Location policy evaluations by policy (configured names), result (allow, deny, undecided) and the assurance granted (none when not allowed).',
      labelNames: ['policy', 'result', 'assurance'], registers,
    });
    this.svids = new Counter({
      name: 'terroir_server_svids_issued_total', help: 'SVIDs signed, by type (x509, jwt) and kind (agent, workload).',
      labelNames: ['type', 'kind'], registers,
    });
    this.datastoreSeconds = new Histogram({
      name: 'terroir_server_datastore_operation_duration_seconds', help: 'Datastore calls by operation (the DataStore method) and result (ok, error).',
      labelNames: ['operation', 'result'], buckets: [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1], registers,
    });
    this.rateLimited = new Counter({
      name: 'terroir_server_rate_limit_refusals_total', help: 'Requests refused by a rate limit: attestation (per source address), rpc and signing (per agent).',
      labelNames: ['limiter'], registers,
    });
    // Computed at scrape time: always current, costs nothing between scrapes.
    // collect() runs with `this` bound to the metric, so the collectors reach the instance through this.
    const self = (): ServerMetrics => this;
    new Gauge({
      name: 'terroir_server_nodes', help: 'Attested nodes by state (attested, out_of_policy, expired, banned), country (ISO 3166-1 alpha-2, or none) and location assurance (none without claims).',
      labelNames: ['state', 'country', 'assurance'], registers,
      async collect() {
        const counts = await self().currentNodeCounts();
        this.reset();
        if (!counts) return;
        for (const [key, n] of counts) {
          const [state, country, assurance] = key.split('|') as [string, string, string];
          this.set({ state, country, assurance }, n);
        }
      },
    });
    new Gauge({
      name: 'terroir_server_ca_expiry_timestamp_seconds', help: 'When the active CA authority expires (Unix time), by kind (x509, jwt).',
      labelNames: ['kind'], registers,
      collect() {
        this.reset();
        const auth = self().sources?.ca.authorities();
        if (!auth) return;
        for (const kind of ['x509', 'jwt'] as const) {
          const active = auth[kind].filter((a) => a.status === 'active');
          if (active.length > 0) this.set({ kind }, Math.min(...active.map((a) => a.notAfter.getTime())) / 1000);
        }
      },
    });
    new Gauge({
      name: 'terroir_server_bundle_expiry_timestamp_seconds', help: 'When the first X.509 root of the server\'s own trust bundle expires (Unix time).',
      registers,
      collect() {
        this.reset();
        const earliest = self().earliestRootExpiry();
        if (earliest !== undefined) this.set(earliest / 1000);
      },
    });
  }

  /** The running server's parts the scrape-time gauges read. */
  bind(sources: ServerMetricsSources): void {
    this.sources = sources;
  }

  /** The text exposition for one scrape. */
  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** Counts from the audit records the server writes anyway, then passes them on to `inner`. */
  auditor(inner: Auditor): Auditor {
    return {
      record: (rec) => {
        try {
          this.count(rec);
        } catch {
          // Metrics never stand between the server and its audit log.
        }
        inner.record(rec);
      },
    };
  }

  private count(rec: AuditRecord): void {
    const d = rec.details ?? {};
    switch (rec.action) {
      case 'attest_agent': {
        // The second record of a refusal that also withdrew earlier claims: the attestation is counted once.
        if (d['withdrawn'] === true) return;
        const method = typeof d['method'] === 'string' && ATTESTATION_METHODS.has(d['method']) ? d['method'] : 'unknown';
        const reason = rec.result === 'ok' ? 'none' : refusalReason(typeof d['code'] === 'string' ? d['code'] : undefined, rec.reason);
        this.attestations.inc({ method, result: rec.result, reason });
        if (typeof d['durationMs'] === 'number') this.attestationSeconds.observe({ method, result: rec.result }, d['durationMs'] / 1000);
        if (rec.result === 'ok') this.svids.inc({ type: 'x509', kind: 'agent' });
        return;
      }
      case 'renew_agent':
        if (rec.result === 'ok') this.svids.inc({ type: 'x509', kind: 'agent' });
        return;
      case 'sign_x509_svid': {
        const issued = typeof d['issued'] === 'number' ? d['issued'] : 0;
        if (issued > 0) this.svids.inc({ type: 'x509', kind: 'workload' }, issued);
        return;
      }
      case 'sign_jwt_svid':
        if (rec.result === 'ok') this.svids.inc({ type: 'jwt', kind: 'workload' });
        return;
      case 'keylime':
        this.keylimeTrustLost.inc({ result: rec.result });
        return;
      default:
    }
  }

  /** For KeylimeVerifierClient's onRequest. */
  readonly keylimeRequest = (e: KeylimeRequestEvent): void => {
    const kind = KEYLIME_KINDS.has(e.kind) ? e.kind : 'other';
    this.keylimeRequests.inc({ kind, result: KEYLIME_RESULTS.has(e.result) ? e.result : 'error' });
    this.keylimeSeconds.observe({ kind }, e.seconds);
  };

  /** One location policy evaluation (policy names come from the server's configuration). */
  readonly policyDecision = (policy: string, result: string, assurance: string | undefined): void => {
    this.policyDecisions.inc({
      policy: policy.slice(0, 64),
      result: POLICY_RESULTS.has(result) ? result : 'undecided',
      assurance: assurance !== undefined && ASSURANCES.has(assurance) ? assurance : 'none',
    });
  };

  /** The stage durations (ms) of one accepted Unified Identity attestation. */
  readonly attestationStages = (stages: StageDurations): void => {
    for (const [stage, ms] of Object.entries(stages) as [string, unknown][]) {
      if (/^[a-z_]{1,32}$/.test(stage) && typeof ms === 'number' && Number.isFinite(ms)) this.stageSeconds.observe({ stage }, ms / 1000);
    }
  };

  /** Counts the refusals of `limiter` (its tryTake answering false) under `name`. */
  countRefusals(limiter: RateLimiter, name: 'attestation' | 'rpc' | 'signing'): RateLimiter {
    const take = limiter.tryTake.bind(limiter);
    limiter.tryTake = (source: string): boolean => {
      const ok = take(source);
      if (!ok) this.rateLimited.inc({ limiter: name });
      return ok;
    };
    return limiter;
  }

  /** The same datastore, each asynchronous call timed by operation. */
  instrumentStore(store: DataStore): DataStore {
    const wrapped = new Map<PropertyKey, unknown>();
    const histogram = this.datastoreSeconds;
    return new Proxy(store, {
      get(target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown;
        if (typeof value !== 'function' || typeof prop !== 'string') return value;
        let fn = wrapped.get(prop);
        if (fn === undefined) {
          const original = value as (...args: unknown[]) => unknown;
          fn = function (this: unknown, ...args: unknown[]): unknown {
            const started = performance.now();
            const out = original.apply(target, args);
            if (!(out instanceof Promise)) return out;
            return out.then(
              (v: unknown) => { histogram.observe({ operation: prop, result: 'ok' }, (performance.now() - started) / 1000); return v; },
              (err: unknown) => { histogram.observe({ operation: prop, result: 'error' }, (performance.now() - started) / 1000); throw err; },
            );
          };
          wrapped.set(prop, fn);
        }
        return fn;
      },
    });
  }

  private async currentNodeCounts(): Promise<Map<string, number> | undefined> {
    if (!this.sources) return undefined;
    const age = this.nodeCounts ? Date.now() - this.nodeCounts.at : Infinity;
    if (age <= this.nodesMaxAgeMs && this.nodesMaxAgeMs > 0) return this.nodeCounts?.counts;
    this.nodeRefresh ??= this.refreshNodes().finally(() => { this.nodeRefresh = undefined; });
    // Stale but present: answer now, let the refresh finish for the next scrape (scrapes stay fast).
    if (this.nodeCounts && this.nodesMaxAgeMs > 0) {
      this.nodeRefresh.catch(() => undefined);
      return this.nodeCounts.counts;
    }
    await this.nodeRefresh;
    return this.nodeCounts?.counts;
  }

  private async refreshNodes(): Promise<void> {
    const src = this.sources as ServerMetricsSources;
    const nodes = await src.store.listNodes();
    const now = this.now().getTime();
    const counts = new Map<string, number>();
    for (const n of nodes) {
      const c = n.claims ?? undefined;
      const country = typeof c?.['country'] === 'string' && COUNTRY.test(c['country']) ? c['country'] : 'none';
      const assurance = typeof c?.['assurance'] === 'string' && ASSURANCES.has(c['assurance']) ? c['assurance'] : 'none';
      const validUntil = typeof c?.['validUntil'] === 'string' ? Date.parse(c['validUntil']) : NaN;
      let state: string;
      if (n.banned) state = 'banned';
      else if (n.expiresAt.getTime() <= now) state = 'expired';
      else if (src.unifiedIdentity && n.attestationType === 'tpm' && (c === undefined || !(validUntil > now))) state = 'out_of_policy';
      else state = 'attested';
      const key = `${state}|${country}|${assurance}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    this.nodeCounts = { at: Date.now(), counts };
  }

  private earliestRootExpiry(): number | undefined {
    const roots = this.sources?.ca.x509Roots();
    if (!roots || roots.length === 0) return undefined;
    // Parsed again only when the bundle's roots change.
    const key = crypto.createHash('sha256').update(Buffer.concat(roots)).digest('hex');
    if (this.rootsCache?.key !== key) {
      this.rootsCache = { key, earliest: Math.min(...roots.map((der) => Date.parse(new crypto.X509Certificate(der).validTo))) };
    }
    return this.rootsCache.earliest;
  }
}
