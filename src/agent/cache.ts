// The agent's view of what it may hand out: trust bundles, the registration entries authorized to
// this node, and an X.509-SVID (with its private key) per entry. The Workload API reads it; the
// sync loop writes it. Changes are coalesced so a burst of updates reaches workloads as one message.
import { SelectorSet, type Selector } from './selectors.js';

/** A trust domain's bundle in the forms the Workload API sends. */
export interface TrustBundle {
  /** Trust domain name, e.g. "example.org". */
  trustDomain: string;
  /** X.509 authorities, DER each. */
  x509Authorities: Buffer[];
  /** The JWT authorities as a JWK Set document (JSON bytes). */
  jwks: Buffer;
  sequence: number;
}

export interface CacheEntry {
  id: string;
  spiffeId: string;
  selectors: Selector[];
  /** Foreign trust domain names whose bundles workloads of this entry receive. */
  federatesWith: string[];
  hint: string;
  jwtSvidTtl: number;
}

export interface CachedSvid {
  spiffeId: string;
  /** DER certificates, leaf first. */
  chain: Buffer[];
  /** DER PKCS#8 private key, unencrypted. */
  key: Buffer;
  notBefore: number;
  notAfter: number;
}

/** An entry the caller gets, with its current SVID. */
export interface Identity {
  entry: CacheEntry;
  svid: CachedSvid;
}

/** The trust domain ID as the Workload API keys bundles: "spiffe://<name>". */
export function trustDomainId(name: string): string {
  return `spiffe://${name}`;
}

export type CacheListener = (generation: number) => void;

export class IdentityCache {
  private ownBundle: TrustBundle | null = null;
  private federated = new Map<string, TrustBundle>();
  private entries = new Map<string, CacheEntry>();
  private svids = new Map<string, CachedSvid>();
  private listeners = new Set<CacheListener>();
  private pending = false;
  /** Incremented on every change; lets readers reuse work done for the same generation. */
  generation = 0;

  constructor(readonly trustDomain: string) {}

  bundle(): TrustBundle | null {
    return this.ownBundle;
  }

  federatedBundle(name: string): TrustBundle | undefined {
    return this.federated.get(name);
  }

  allBundles(): TrustBundle[] {
    return this.ownBundle ? [this.ownBundle, ...this.federated.values()] : [...this.federated.values()];
  }

  entryList(): CacheEntry[] {
    return [...this.entries.values()];
  }

  entry(id: string): CacheEntry | undefined {
    return this.entries.get(id);
  }

  svid(entryId: string): CachedSvid | undefined {
    return this.svids.get(entryId);
  }

  svidCount(): number {
    return this.svids.size;
  }

  setBundles(own: TrustBundle, federated: TrustBundle[]): void {
    this.ownBundle = own;
    this.federated = new Map(federated.map((b) => [b.trustDomain, b]));
    this.changed();
  }

  /** Replaces the entry set; SVIDs of entries no longer present are withdrawn. */
  setEntries(entries: CacheEntry[]): void {
    this.entries = new Map(entries.map((e) => [e.id, e]));
    for (const id of [...this.svids.keys()]) {
      const e = this.entries.get(id);
      const s = this.svids.get(id);
      if (!e || !s || s.spiffeId !== e.spiffeId) this.svids.delete(id);
    }
    this.changed();
  }

  /** Stores freshly signed SVIDs (ignored for entries that disappeared meanwhile). */
  putSvids(svids: ReadonlyMap<string, CachedSvid>): void {
    let any = false;
    for (const [id, s] of svids) {
      const e = this.entries.get(id);
      if (!e || e.spiffeId !== s.spiffeId) continue;
      this.svids.set(id, s);
      any = true;
    }
    if (any) this.changed();
  }

  /** Removes SVIDs that have expired: an expired SVID is never served. */
  pruneExpired(now = Date.now()): void {
    let any = false;
    for (const [id, s] of this.svids) {
      if (s.notAfter <= now) {
        this.svids.delete(id);
        any = true;
      }
    }
    if (any) this.changed();
  }

  /** Drops every SVID (the server withdrew this node); streams see the withdrawal at once. */
  dropSvids(): void {
    this.svids.clear();
    this.changed();
  }

  /**
   * Identities for a caller's selectors: entries whose selectors the caller has, with a current SVID,
   * in a stable order (the first is the caller's default SVID), hints unique.
   */
  identitiesFor(selectors: SelectorSet, now = Date.now()): Identity[] {
    const out: Identity[] = [];
    for (const entry of this.entries.values()) {
      if (!selectors.satisfies(entry.selectors)) continue;
      const svid = this.svids.get(entry.id);
      if (!svid || svid.notAfter <= now) continue;
      out.push({ entry, svid });
    }
    out.sort((a, b) => (a.entry.spiffeId < b.entry.spiffeId ? -1 : a.entry.spiffeId > b.entry.spiffeId ? 1 : a.entry.id < b.entry.id ? -1 : 1));
    const hints = new Set<string>();
    return out.filter((i) => {
      if (i.entry.hint === '') return true;
      if (hints.has(i.entry.hint)) return false;
      hints.add(i.entry.hint);
      return true;
    });
  }

  /** Entries matching a caller regardless of SVIDs (for diagnostics and JWT requests). */
  entriesFor(selectors: SelectorSet): CacheEntry[] {
    return [...this.entries.values()].filter((e) => selectors.satisfies(e.selectors));
  }

  subscribe(fn: CacheListener): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    this.generation++;
    if (this.pending) return;
    this.pending = true;
    // Coalesce: updates made in the same tick reach listeners once.
    queueMicrotask(() => {
      this.pending = false;
      const gen = this.generation;
      for (const fn of this.listeners) fn(gen);
    });
  }
}
