// The server's datastore contract. Two implementations (SQLite, PostgreSQL) satisfy it and are
// checked by one shared test suite; everything above the datastore codes against this file only.

/** A selector as SPIRE writes it: `type:value`, e.g. `{ type: 'unix', value: 'uid:1000' }`. */
export interface Selector {
  type: string;
  value: string;
}

/** A registration entry: "workloads matching these selectors, under this parent, get this SPIFFE ID". */
export interface RegistrationEntry {
  /** UUID, assigned by the datastore unless given on create. */
  id: string;
  spiffeId: string;
  /** The agent's SPIFFE ID, another entry's SPIFFE ID, or `serverSpiffeId(td)` for a node alias. */
  parentId: string;
  selectors: Selector[];
  /** Seconds; absent = the server's default. */
  x509SvidTtl?: number;
  /** Seconds; absent = the server's default. */
  jwtSvidTtl?: number;
  dnsNames?: string[];
  /** Trust domain names (`example.org`) whose bundles go with this identity. */
  federatesWith: string[];
  admin?: boolean;
  downstream?: boolean;
  hint?: string;
  storeSvid?: boolean;
  /** Name of a sovereign-location policy (Unified Identity) the workload's node must satisfy. */
  locationPolicy?: string;
  /** Bumped on every update of this entry; also the value of entriesRevision() right after that change. */
  revision: bigint;
  createdAt: Date;
}

/** What a caller supplies to create an entry (the store fills id if absent, revision and createdAt). */
export type NewRegistrationEntry = Omit<RegistrationEntry, 'id' | 'revision' | 'createdAt'> & { id?: string };

/**
 * A change to an existing entry: fields present are replaced, fields absent are kept.
 * Optional scalar fields can be cleared by passing `null`.
 */
export interface RegistrationEntryUpdate {
  id: string;
  spiffeId?: string;
  parentId?: string;
  selectors?: Selector[];
  x509SvidTtl?: number | null;
  jwtSvidTtl?: number | null;
  dnsNames?: string[] | null;
  federatesWith?: string[];
  admin?: boolean | null;
  downstream?: boolean | null;
  hint?: string | null;
  storeSvid?: boolean | null;
  locationPolicy?: string | null;
}

/** Per-item outcome of a batch operation. */
export type BatchResult<T> =
  | { ok: true; value: T }
  | { ok: false; code: DataStoreErrorCode; message: string };

export interface BatchOptions {
  /**
   * false (default, SPIRE's behaviour): the items that succeed are committed together in one
   * transaction, the failing ones are reported and skipped.
   * true: any failure rolls back the whole batch; the items that would have succeeded report `aborted`.
   */
  allOrNothing?: boolean;
}

/** How `selectors` in a filter match an entry's selectors (SPIRE's match behaviours). */
export type SelectorMatch =
  /** The entry's selector set equals the given set. */
  | 'exact'
  /** The entry's selectors are all among the given ones. */
  | 'subset'
  /** The entry has every given selector (and maybe more). */
  | 'superset'
  /** The entry has at least one of the given selectors. */
  | 'any';

export interface EntryFilter {
  spiffeId?: string;
  parentId?: string;
  selectors?: { selectors: Selector[]; match: SelectorMatch };
  hint?: string;
  federatesWith?: string;
  /** Only entries whose revision is greater than this (incremental sync). */
  revisionAfter?: bigint;
  /** Paging: only entries whose id sorts after this one. */
  afterId?: string;
  /** Paging: at most this many entries. */
  limit?: number;
}

export type AttestationType = 'join_token' | 'tpm';

/** An agent that has attested: who it is, how it proved it, and its current SVID. */
export interface AttestedNode {
  spiffeId: string;
  attestationType: AttestationType;
  /** Node selectors from attestation (e.g. `tpm:ek-hash:…`), used to match node-alias entries. */
  selectors: Selector[];
  /** Serial number of the agent SVID currently valid (decimal or hex string, as the CA wrote it). */
  serialNumber: string;
  /** Serial number of an agent SVID issued during rotation and not yet confirmed in use. */
  newSerialNumber?: string;
  /** Expiry of the current agent SVID. */
  expiresAt: Date;
  banned: boolean;
  /** Evidence summary kept for the record: EK hash, EK certificate issuer, … */
  attestationData: Record<string, unknown>;
  /** Unified Identity claims from the last attestation, if any. */
  claims?: Record<string, unknown>;
  createdAt: Date;
  updatedAt: Date;
}

export type NewAttestedNode = Omit<AttestedNode, 'createdAt' | 'updatedAt' | 'banned'> & { banned?: boolean };

/** Fields present are replaced; `newSerialNumber`/`claims` can be cleared with `null`. */
export interface AttestedNodeUpdate {
  attestationType?: AttestationType;
  selectors?: Selector[];
  serialNumber?: string;
  newSerialNumber?: string | null;
  expiresAt?: Date;
  banned?: boolean;
  attestationData?: Record<string, unknown>;
  claims?: Record<string, unknown> | null;
}

export interface NodeFilter {
  banned?: boolean;
  attestationType?: AttestationType;
  /** Only nodes whose agent SVID expires before this instant. */
  expiresBefore?: Date;
}

export interface JoinToken {
  /** The secret token itself. The datastore keeps only its SHA-256. */
  token: string;
  expiresAt: Date;
  /** SPIFFE ID the agent attesting with this token should get instead of `/agent/join_token/<token>`. */
  spiffeId?: string;
}

/** A trust bundle as SPIFFE bundle JSON (RFC 7517 JWK set with spiffe_sequence / spiffe_refresh_hint). */
export interface StoredBundle {
  /** Trust domain name, e.g. `example.org` (no scheme). */
  trustDomain: string;
  bundleJson: string;
  sequence: bigint;
}

export type BundleEndpointProfile = 'https_web' | 'https_spiffe';

export interface FederationRelationship {
  /** Trust domain name, e.g. `other.org`. */
  trustDomain: string;
  bundleEndpointUrl: string;
  profile: BundleEndpointProfile;
  /** Required for https_spiffe: the SPIFFE ID the bundle endpoint's server must present. */
  endpointSpiffeId?: string;
}

export type DataStoreErrorCode =
  | 'not_found'
  | 'already_exists'
  | 'invalid_argument'
  | 'aborted'
  | 'schema_too_new'
  | 'unavailable';

/** Every datastore failure the caller can act on carries one of these codes. */
export class DataStoreError extends Error {
  override readonly name = 'DataStoreError';
  constructor(readonly code: DataStoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/**
 * The SPIFFE ID node-alias entries use as their parent, as in SPIRE (`entry create -node`):
 * an entry parented by it gives every agent whose node selectors include the entry's selectors
 * an extra identity, under which further entries can be parented.
 */
export function serverSpiffeId(trustDomain: string): string {
  return `spiffe://${trustDomain}/spire/server`;
}

/** A leaf to append to the evidence log (docs/evidence-log.md). */
export interface NewEvidenceLeaf {
  /** The record's kind (attestation, policy, issuance, event). */
  kind: string;
  /** Lookup key: the node's SPIFFE ID, a policy digest; absent for none. */
  tag?: string;
  time: Date;
  /** RFC 9162 leaf hash of `body`. */
  leafHash: Buffer;
  /** The record's canonical bytes. */
  body: Buffer;
}

/** A stored leaf; `body` is absent once retention pruned it (its hash stays in the tree). */
export interface EvidenceLeaf extends Omit<NewEvidenceLeaf, 'body'> {
  index: number;
  body?: Buffer;
}

/** A signed checkpoint (C2SP tlog-checkpoint note) of the evidence log at `size` leaves. */
export interface EvidenceCheckpoint {
  size: number;
  root: Buffer;
  note: string;
  createdAt: Date;
}

/** The evidence log's storage: append-only leaves, the Merkle tree's complete nodes, checkpoints. */
export interface EvidenceStore {
  /** Appends in order at the end of the log (all or nothing); returns the first leaf's index. */
  append(leaves: readonly NewEvidenceLeaf[]): Promise<number>;
  size(): Promise<number>;
  /** Complete-subtree hashes (level 0 = leaf hashes), in the order asked. */
  nodes(nodes: readonly { level: number; index: number }[]): Promise<Buffer[]>;
  /** Leaves [from, to) in index order. */
  leaves(from: number, to: number): Promise<EvidenceLeaf[]>;
  latest(kind: string, tag: string): Promise<EvidenceLeaf | undefined>;
  /** Leaves of this kind and tag after `index`, oldest first, at most `limit`. */
  after(kind: string, tag: string, index: number, limit: number): Promise<EvidenceLeaf[]>;
  addCheckpoint(c: EvidenceCheckpoint): Promise<void>;
  checkpoints(): Promise<EvidenceCheckpoint[]>;
  latestCheckpoint(): Promise<EvidenceCheckpoint | undefined>;
  /** Drops bodies of these kinds written before `before`; returns how many. */
  pruneBodies(before: Date, kinds: readonly string[]): Promise<number>;
}

export interface DataStore {
  /** The evidence log (append-only, shared by every server on this database). */
  readonly evidence: EvidenceStore;

  // --- registration entries ---
  createEntries(entries: NewRegistrationEntry[], options?: BatchOptions): Promise<BatchResult<RegistrationEntry>[]>;
  updateEntries(updates: RegistrationEntryUpdate[], options?: BatchOptions): Promise<BatchResult<RegistrationEntry>[]>;
  /** Each result carries the deleted entry. */
  deleteEntries(ids: string[], options?: BatchOptions): Promise<BatchResult<RegistrationEntry>[]>;
  getEntry(id: string): Promise<RegistrationEntry | undefined>;
  /** Entries matching every given filter field, ordered by id. */
  listEntries(filter?: EntryFilter): Promise<RegistrationEntry[]>;
  /**
   * What an agent may mint SVIDs for (SPIRE semantics): entries parented by the agent's ID, entries
   * parented by the SPIFFE ID of a node-alias entry (parent `serverSpiffeId(td)`) whose selectors are
   * all among `agentSelectors`, and, transitively, entries parented by any of those. The alias entries
   * themselves are not included. Order: by id.
   */
  listAuthorizedEntries(agentId: string, agentSelectors: Selector[]): Promise<RegistrationEntry[]>;
  /** Global, monotonically increasing; changes whenever any entry is created, updated or deleted. */
  entriesRevision(): Promise<bigint>;

  // --- attested nodes ---
  /** Fails with `already_exists` if a node with this SPIFFE ID exists. */
  createNode(node: NewAttestedNode): Promise<AttestedNode>;
  /** Fails with `not_found`. */
  updateNode(spiffeId: string, update: AttestedNodeUpdate): Promise<AttestedNode>;
  getNode(spiffeId: string): Promise<AttestedNode | undefined>;
  listNodes(filter?: NodeFilter): Promise<AttestedNode[]>;
  /** Evict: the node must attest again. Returns the deleted node, or undefined if there was none. */
  deleteNode(spiffeId: string): Promise<AttestedNode | undefined>;
  /** Marks the node banned (it stays, so it cannot simply re-attest). Fails with `not_found`. */
  banNode(spiffeId: string): Promise<AttestedNode>;

  // --- join tokens ---
  /** Fails with `already_exists` if the token is already stored. */
  createJoinToken(token: JoinToken): Promise<void>;
  /**
   * Single use, atomic across servers sharing the database: returns the token (and deletes it) if it
   * exists and has not expired at `now`; returns undefined otherwise (unknown, already used, expired).
   */
  consumeJoinToken(token: string, now?: Date): Promise<JoinToken | undefined>;
  /** Deletes tokens that expired before `now`; returns how many. */
  pruneJoinTokens(now?: Date): Promise<number>;

  // --- nonces ---
  /**
   * Records a nonce as used. True the first time (across all servers sharing the database), false
   * for any later use while the record is kept (until pruned after expiresAt).
   */
  consumeNonce(nonce: string | Uint8Array, expiresAt: Date): Promise<boolean>;
  pruneNonces(now?: Date): Promise<number>;

  // --- bundles (own trust domain and federated) ---
  getBundle(trustDomain: string): Promise<StoredBundle | undefined>;
  listBundles(): Promise<StoredBundle[]>;
  /** Insert or replace. */
  setBundle(bundle: StoredBundle): Promise<StoredBundle>;
  /** Returns false if there was none. */
  deleteBundle(trustDomain: string): Promise<boolean>;

  // --- federation relationships ---
  /** Fails with `already_exists`. */
  createFederationRelationship(rel: FederationRelationship): Promise<FederationRelationship>;
  /** Fails with `not_found`. */
  updateFederationRelationship(rel: FederationRelationship): Promise<FederationRelationship>;
  getFederationRelationship(trustDomain: string): Promise<FederationRelationship | undefined>;
  listFederationRelationships(): Promise<FederationRelationship[]>;
  deleteFederationRelationship(trustDomain: string): Promise<boolean>;

  // --- CA state (opaque to the datastore) ---
  getCaJournal(): Promise<Uint8Array | undefined>;
  setCaJournal(blob: Uint8Array): Promise<void>;

  close(): Promise<void>;
}

export type DataStoreConfig =
  | { type: 'sqlite'; path: string }
  | { type: 'postgres'; connectionString: string; poolSize?: number };
