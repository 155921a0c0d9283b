// What the dashboard learns from the audit stream: the last refusals, live events for the page's
// server-sent events, and per-node facts the datastore does not keep (Keylime's latest word, the SVIDs
// signed for a node since this server started). The audit records of attestations carry the node's
// precise readings; nothing of `details` is passed on except named coarse fields, and every reason is
// scrubbed of anything shaped like a coordinate pair before it is kept.
import type { AuditRecord, Auditor } from '../audit.js';

export type DashboardEventKind = 'attested' | 'refused' | 'revoked' | 'withdrawn' | 'untrusted' | 'relocated';

/** One event as the page sees it: coarse, bounded, with no field taken verbatim from `details`. */
export interface DashboardEvent {
  id: number;
  time: string;
  kind: DashboardEventKind;
  /** The audit action it came from (attest_agent, keylime, latency_witness, admin, …). */
  action: string;
  /** The node (SPIFFE ID) or, when an attestation failed before the node was known, undefined. */
  subject?: string;
  /** Where a refused attestation came from (the peer address), when that is all that is known. */
  source?: string;
  /** Attestation method, when the record names one. */
  method?: string;
  reason?: string;
}

export interface DashboardFeedOptions {
  /** Refusals kept for the page (oldest dropped first). */
  maxRefusals?: number;
  /** Events kept so a page that (re)connects sees the recent ones. */
  maxEvents?: number;
  /** Nodes whose per-node facts are remembered (oldest forgotten first). */
  maxNodes?: number;
  now?: () => Date;
}

export interface NodeFacts {
  /** Keylime's latest word on the node, as a short state. */
  keylime?: string;
  /** Distinct SPIFFE IDs signed for workloads on this node since the server started. */
  svids: Set<string>;
}

const MAX_REASON = 600;
const MAX_SVIDS_PER_NODE = 1000;
// Decimal pairs such as "48.8566, 2.3522" or "lat 48.8566": a reason never needs them on the page.
const COORDINATE_PAIR = /-?\d{1,3}\.\d{2,}\s*[,; ]\s*-?\d{1,3}\.\d{2,}/g;
const LABELLED_COORDINATE = /\b(lat|lon|lng|latitude|longitude)\b\s*[:=]?\s*-?\d{1,3}(\.\d+)?/gi;

/** A reason fit for the page: bounded, single line, without coordinate-shaped numbers. */
export function scrubReason(reason: string | undefined): string | undefined {
  if (reason === undefined) return undefined;
  let r = reason.replace(/\s+/g, ' ').replace(COORDINATE_PAIR, '[position withheld]').replace(LABELLED_COORDINATE, '$1 [withheld]');
  if (r.length > MAX_REASON) r = `${r.slice(0, MAX_REASON - 1)}…`;
  return r;
}

const REFUSABLE = new Set(['attest_agent', 'renew_agent', 'keylime', 'latency_witness', 'sign_x509_svid', 'sign_jwt_svid']);
const SPIFFE = /^spiffe:\/\//;

function str(v: unknown, max = 256): string | undefined {
  return typeof v === 'string' && v.length > 0 ? v.slice(0, max) : undefined;
}

/** Collects the dashboard's view of audit records; use `tee` to put it beside the real auditor. */
export class DashboardFeed implements Auditor {
  private readonly refusals: DashboardEvent[] = [];
  private readonly events: DashboardEvent[] = [];
  private readonly facts = new Map<string, NodeFacts>();
  private readonly listeners = new Set<(e: DashboardEvent) => void>();
  private readonly maxRefusals: number;
  private readonly maxEvents: number;
  private readonly maxNodes: number;
  private readonly now: () => Date;
  // Ids start at the clock so they keep growing across server restarts: a page whose event stream
  // reconnects to a restarted server must not take the new events for ones it has already seen.
  private nextId: number;
  /** Bumped whenever something the node list shows may have changed (the page's snapshot cache key). */
  generation = 0;

  constructor(o: DashboardFeedOptions = {}) {
    this.maxRefusals = o.maxRefusals ?? 200;
    this.maxEvents = o.maxEvents ?? 200;
    this.maxNodes = o.maxNodes ?? 100_000;
    this.now = o.now ?? (() => new Date());
    this.nextId = Date.now();
  }

  /** An auditor that records to `inner` first, then feeds the dashboard; a dashboard bug never loses an audit record. */
  static tee(inner: Auditor, feed: DashboardFeed): Auditor {
    return {
      record(rec) {
        inner.record(rec);
        try {
          feed.record(rec);
        } catch {
          // The audit log already has the record; the dashboard just misses it.
        }
      },
    };
  }

  record(rec: AuditRecord): void {
    const d = rec.details ?? {};
    const subject = str(rec.subject) ?? (SPIFFE.test(rec.caller) ? rec.caller : undefined);
    if ((rec.action === 'sign_x509_svid' || rec.action === 'sign_jwt_svid') && rec.result === 'ok') {
      // caller is the agent; subject the workload SPIFFE ID it was signed for.
      if (SPIFFE.test(rec.caller) && rec.subject !== undefined) {
        const f = this.factsOf(rec.caller);
        if (f.svids.size < MAX_SVIDS_PER_NODE) f.svids.add(rec.subject);
      }
      return;
    }
    let kind: DashboardEventKind | undefined;
    if (rec.action === 'attest_agent' && rec.result === 'ok') {
      kind = 'attested';
      if (subject !== undefined) {
        const ui = d['unifiedIdentity'] as { keylime?: { valid?: unknown } } | undefined;
        const f = this.factsOf(subject);
        if (ui?.keylime !== undefined) f.keylime = ui.keylime.valid === true ? 'verified' : 'refused';
        f.svids.clear(); // a new agent SVID: what the old one held is gone with it
      }
    } else if (rec.action === 'admin' && rec.result === 'ok' && (d['rpc'] === 'BanAgent' || d['rpc'] === 'EvictAgent')) {
      kind = 'revoked';
      if (subject !== undefined) this.facts.delete(subject);
    } else if (rec.action === 'keylime') {
      kind = rec.result === 'denied' ? 'untrusted' : 'revoked';
      if (subject !== undefined) this.factsOf(subject).keylime = rec.result === 'denied' ? 'untrusted' : 'removed';
    } else if (rec.action === 'attest_agent' && d['withdrawn'] === true) {
      kind = 'withdrawn';
    } else if (rec.action === 'latency_witness') {
      kind = rec.result === 'ok' ? 'relocated' : d['withdrawn'] === true ? 'withdrawn' : 'refused';
    } else if (REFUSABLE.has(rec.action) && rec.result !== 'ok') {
      kind = 'refused';
    }
    if (kind === undefined) return;
    const ev: DashboardEvent = {
      id: this.nextId++,
      time: this.now().toISOString(),
      kind,
      action: rec.action,
      ...(subject !== undefined ? { subject } : {}),
      ...(subject === undefined && str(rec.caller, 128) !== undefined ? { source: str(rec.caller, 128) } : {}),
      ...(str(d['method'], 32) !== undefined ? { method: str(d['method'], 32) } : {}),
      ...(rec.reason !== undefined ? { reason: scrubReason(rec.reason) } : {}),
    };
    if (kind !== 'attested' && kind !== 'relocated') push(this.refusals, ev, this.maxRefusals);
    push(this.events, ev, this.maxEvents);
    // A plain refusal changes no node (a withdrawal comes as its own event): no snapshot rebuild for it,
    // so a storm of refused attempts costs the dashboard nothing but the ring.
    if (kind !== 'refused') this.generation++;
    for (const l of [...this.listeners]) {
      try {
        l(ev);
      } catch {
        // one broken subscriber must not starve the others
      }
    }
  }

  /**
   * An operator banned or evicted the node (the admin service audits through its own logger, so the
   * server tells the feed directly).
   */
  revoked(spiffeId: string, reason: string): void {
    this.record({ action: 'admin', caller: 'admin', subject: spiffeId, result: 'ok', reason, details: { rpc: 'BanAgent' } });
  }

  /** Newest first, at most `limit`. */
  lastRefusals(limit = this.maxRefusals): DashboardEvent[] {
    return this.refusals.slice(-limit).reverse();
  }

  /** Events after `afterId` (for a reconnecting page's Last-Event-ID), oldest first. */
  eventsAfter(afterId: number): DashboardEvent[] {
    return this.events.filter((e) => e.id > afterId);
  }

  /** The last `limit` events, newest first. */
  recentEvents(limit = this.maxEvents): DashboardEvent[] {
    return this.events.slice(-limit).reverse();
  }

  factsFor(spiffeId: string): NodeFacts | undefined {
    return this.facts.get(spiffeId);
  }

  subscribe(fn: (e: DashboardEvent) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  get subscribers(): number {
    return this.listeners.size;
  }

  private factsOf(id: string): NodeFacts {
    let f = this.facts.get(id);
    if (f === undefined) {
      if (this.facts.size >= this.maxNodes) {
        const oldest = this.facts.keys().next().value;
        if (oldest !== undefined) this.facts.delete(oldest);
      }
      f = { svids: new Set() };
      this.facts.set(id, f);
    }
    return f;
  }
}

function push<T>(ring: T[], item: T, max: number): void {
  ring.push(item);
  if (ring.length > max) ring.splice(0, ring.length - max);
}
