// The node list and fleet summary the dashboard serves, built from the datastore and the audit feed.
// Only named coarse fields of a node's claims are read (country, region, assurance, policies, times):
// the datastore holds no coordinates, and this whitelist keeps it that way should claims ever grow.
// A snapshot is rebuilt at most once per `maxAgeMs`, or sooner when the feed has seen a change, so
// 10,000 nodes cost one datastore scan however many pages and tabs ask.
import type { AttestedNode, DataStore } from '../datastore/types.js';
import type { DashboardFeed } from './feed.js';

export interface NodeRow {
  spiffeId: string;
  /** join_token | tpm */
  method: string;
  /** active | banned | expired */
  status: string;
  /** Keylime's latest word known to this server, or the verifier the claims name, or null. */
  keylime: string | null;
  /** The last attestation (the claims' attestedAt, else the node record's last update). */
  lastAttestation: string;
  country: string | null;
  region: string | null;
  policies: string[];
  assurance: string | null;
  /** Distinct workload SVIDs signed for this node since the server started (null: none seen). */
  svids: number | null;
  agentSvidExpiresAt: string;
}

export interface CountryStat {
  nodes: number;
  /** Nodes per assurance level. */
  assurance: Record<string, number>;
}

export interface FleetSummary {
  trustDomain: string;
  generatedAt: string;
  nodes: { total: number; active: number; banned: number; withClaims: number; withoutClaims: number };
  countries: Record<string, CountryStat>;
  policies: { name: string; nodes: number; isDefault: boolean }[];
  methods: Record<string, number>;
}

export interface Snapshot {
  rows: NodeRow[];
  summary: FleetSummary;
}

export interface NodeQuery {
  offset: number;
  limit: number;
  /** Case-insensitive substring of the SPIFFE ID, country, region or a policy name. */
  q?: string;
  country?: string;
}

export const MAX_PAGE = 500;
const MAX_POLICIES_PER_NODE = 64;
const MAX_FIELD = 128;

const text = (v: unknown, max = MAX_FIELD): string | null => (typeof v === 'string' && v.length > 0 ? v.slice(0, max) : null);

export function nodeRow(n: AttestedNode, feed: DashboardFeed | undefined, now: Date): NodeRow {
  const c = n.claims ?? {};
  const facts = feed?.factsFor(n.spiffeId);
  const policies = Array.isArray(c['satisfiedPolicies'])
    ? (c['satisfiedPolicies'] as unknown[]).filter((p): p is string => typeof p === 'string').slice(0, MAX_POLICIES_PER_NODE).map((p) => p.slice(0, MAX_FIELD))
    : [];
  const verifier = text(c['verifier']);
  return {
    spiffeId: n.spiffeId,
    method: n.attestationType,
    status: n.banned ? 'banned' : n.expiresAt.getTime() <= now.getTime() ? 'expired' : 'active',
    keylime: facts?.keylime ?? (verifier === null ? null : `verified at attestation (${verifier})`),
    lastAttestation: text(c['attestedAt'], 40) ?? n.updatedAt.toISOString(),
    country: text(c['country'], 8),
    region: text(c['region'], 16),
    policies,
    assurance: text(c['assurance'], 32),
    svids: facts === undefined || facts.svids.size === 0 ? null : facts.svids.size,
    agentSvidExpiresAt: n.expiresAt.toISOString(),
  };
}

export interface ViewOptions {
  store: Pick<DataStore, 'listNodes'>;
  trustDomain: string;
  feed?: DashboardFeed;
  /** The location policies' names (pipeline.policies.names()) and the default one. */
  policies?: () => { names: string[]; defaultPolicy?: string };
  /** How old a snapshot may be served before a background rebuild (changes the feed does not see). */
  maxAgeMs?: number;
  now?: () => Date;
}

export class DashboardView {
  private snapshot: Snapshot | undefined;
  private builtAt = 0;
  private builtGeneration = -1;
  private building: Promise<Snapshot> | undefined;
  private readonly now: () => Date;

  constructor(private readonly o: ViewOptions) {
    this.now = o.now ?? (() => new Date());
  }

  /**
   * The current snapshot. After an event the feed saw, callers wait for a rebuild (the page refreshes
   * right after an event and must see it). Otherwise an old snapshot is served at once and rebuilt in
   * the background (changes the feed cannot see: renewals, another server on the same database).
   */
  async current(): Promise<Snapshot> {
    if (this.snapshot !== undefined && this.builtGeneration === (this.o.feed?.generation ?? 0)) {
      if (Date.now() - this.builtAt >= (this.o.maxAgeMs ?? 30_000)) void this.rebuild().catch(() => undefined);
      return this.snapshot;
    }
    return this.rebuild();
  }

  private rebuild(): Promise<Snapshot> {
    this.building ??= this.build().finally(() => { this.building = undefined; });
    return this.building;
  }

  private async build(): Promise<Snapshot> {
    const generation = this.o.feed?.generation ?? 0;
    const nodes = await this.o.store.listNodes();
    const now = this.now();
    const rows: NodeRow[] = [];
    for (let i = 0; i < nodes.length; i++) {
      rows.push(nodeRow(nodes[i]!, this.o.feed, now));
      // Thousands of rows: let waiting requests (event streams, the map) through between chunks.
      if (i % 2000 === 1999) await new Promise<void>((resolve) => setImmediate(resolve));
    }
    rows.sort((a, b) => (a.spiffeId < b.spiffeId ? -1 : a.spiffeId > b.spiffeId ? 1 : 0));
    const countries: Record<string, CountryStat> = {};
    const policyCounts = new Map<string, number>();
    const methods: Record<string, number> = {};
    let banned = 0;
    let withClaims = 0;
    for (const r of rows) {
      methods[r.method] = (methods[r.method] ?? 0) + 1;
      if (r.status === 'banned') { banned++; continue; }
      if (r.country !== null) {
        withClaims++;
        const s = (countries[r.country] ??= { nodes: 0, assurance: {} });
        s.nodes++;
        const a = r.assurance ?? 'unknown';
        s.assurance[a] = (s.assurance[a] ?? 0) + 1;
      }
      for (const p of r.policies) policyCounts.set(p, (policyCounts.get(p) ?? 0) + 1);
    }
    const configured = this.o.policies?.() ?? { names: [] };
    const names = [...new Set([...configured.names, ...policyCounts.keys()])].sort();
    const summary: FleetSummary = {
      trustDomain: this.o.trustDomain,
      generatedAt: now.toISOString(),
      nodes: { total: rows.length, active: rows.length - banned, banned, withClaims, withoutClaims: rows.length - banned - withClaims },
      countries,
      policies: names.map((name) => ({ name, nodes: policyCounts.get(name) ?? 0, isDefault: name === configured.defaultPolicy })),
      methods,
    };
    this.snapshot = { rows, summary };
    this.builtAt = Date.now();
    this.builtGeneration = generation;
    return this.snapshot;
  }

  /** One page of the node list (limit capped at MAX_PAGE) and how many rows match. */
  async page(q: NodeQuery): Promise<{ total: number; offset: number; limit: number; nodes: NodeRow[] }> {
    const { rows } = await this.current();
    const limit = Math.max(1, Math.min(MAX_PAGE, Math.floor(q.limit)));
    const offset = Math.max(0, Math.floor(q.offset));
    let matching = rows;
    if (q.country !== undefined && q.country !== '') matching = matching.filter((r) => r.country === q.country);
    const needle = q.q?.trim().toLowerCase();
    if (needle !== undefined && needle !== '') {
      matching = matching.filter((r) => r.spiffeId.toLowerCase().includes(needle)
        || (r.country ?? '').toLowerCase() === needle
        || (r.region ?? '').toLowerCase() === needle
        || r.policies.some((p) => p.toLowerCase() === needle)
        || r.status === needle);
    }
    return { total: matching.length, offset, limit, nodes: matching.slice(offset, offset + limit) };
  }
}
