// The registration entries an agent is authorized for, cached per agent and keyed by the global
// entries revision, so an unchanged sync costs one O(1) revision read. Each agent's revision string
// is a digest of its own authorized set: a change elsewhere in the database does not make an agent
// download its (unchanged) set again.
import crypto from 'node:crypto';
import type { DataStore, RegistrationEntry, Selector } from '../datastore/types.js';
import type * as api from '../../api/agent-api.js';
import { agentServiceDefinition } from '../../api/agent-api.js';

export interface AuthorizedSet {
  /** Opaque per-agent revision (digest of entry ids and revisions). */
  revision: string;
  byId: Map<string, RegistrationEntry>;
  /** The entries in wire form, built once per change. */
  wire: api.RegistrationEntry[];
  /** The `entries` field of SyncEntriesResponse, protobuf-encoded (see syncResponseBytes). */
  encodedEntries: Buffer;
}

// Each entry is encoded once per revision, as the bytes a one-entry SyncEntriesResponse consists of
// (field 3, length-delimited). Protobuf concatenation merges repeated fields, so a full response is
// a small header plus these cached pieces — 10,000 entries cost a Buffer.concat, not 10,000 encodes.
const encodedById = new Map<string, { revision: bigint; bytes: Buffer }>();
const MAX_ENCODED = 500_000;

function syncSerializer(): (v: api.SyncEntriesResponse) => Buffer {
  const m = agentServiceDefinition().SyncEntries;
  if (!m) throw new Error('agent.proto has no SyncEntries');
  return m.responseSerialize as (v: api.SyncEntriesResponse) => Buffer;
}

function encodeEntry(e: RegistrationEntry, wire: api.RegistrationEntry): Buffer {
  const hit = encodedById.get(e.id);
  if (hit && hit.revision === e.revision) return hit.bytes;
  // Only field 3: protobufjs writes any field present in the object, even proto3 defaults.
  const bytes = syncSerializer()({ entries: [wire] } as api.SyncEntriesResponse);
  if (encodedById.size >= MAX_ENCODED) encodedById.clear();
  encodedById.set(e.id, { revision: e.revision, bytes });
  return bytes;
}

/** A complete encoded SyncEntriesResponse carrying every entry of `set`. */
export function syncResponseBytes(set: AuthorizedSet): Buffer {
  // The scalar fields go last: for a scalar field the last occurrence wins.
  const tail = syncSerializer()({ revision: set.revision, unchanged: false } as api.SyncEntriesResponse);
  return Buffer.concat([set.encodedEntries, tail]);
}

interface CacheSlot {
  globalRevision: bigint;
  selectorsKey: string;
  set: AuthorizedSet;
}

export function selectorsKey(selectors: Selector[]): string {
  return selectors.map((s) => `${s.type}:${s.value}`).sort().join('\n');
}

export function toWireEntry(e: RegistrationEntry): api.RegistrationEntry {
  return {
    id: e.id,
    spiffeId: e.spiffeId,
    parentId: e.parentId,
    selectors: e.selectors.map((s) => ({ type: s.type, value: s.value })),
    x509SvidTtl: e.x509SvidTtl ?? 0,
    jwtSvidTtl: e.jwtSvidTtl ?? 0,
    federatesWith: e.federatesWith,
    dnsNames: e.dnsNames ?? [],
    admin: e.admin ?? false,
    downstream: e.downstream ?? false,
    expiresAt: 0,
    hint: e.hint ?? '',
    revisionNumber: Number(e.revision),
  };
}

export class AuthorizedEntriesCache {
  private readonly slots = new Map<string, CacheSlot>();
  private readonly inflight = new Map<string, Promise<AuthorizedSet>>();

  constructor(private readonly store: Pick<DataStore, 'listAuthorizedEntries' | 'entriesRevision'>, private readonly maxAgents = 10_000) {}

  /** The agent's authorized set as of now; `globalRevision` may be passed when the caller just read it. */
  async get(agentId: string, selectors: Selector[], globalRevision?: bigint): Promise<AuthorizedSet> {
    const rev = globalRevision ?? await this.store.entriesRevision();
    const key = selectorsKey(selectors);
    const slot = this.slots.get(agentId);
    if (slot && slot.globalRevision === rev && slot.selectorsKey === key) return slot.set;
    // Concurrent calls for one agent share one datastore query.
    const flightKey = `${agentId}\n${rev}\n${key}`;
    let p = this.inflight.get(flightKey);
    if (!p) {
      p = this.load(agentId, selectors, rev, key).finally(() => this.inflight.delete(flightKey));
      this.inflight.set(flightKey, p);
    }
    return p;
  }

  forget(agentId: string): void {
    this.slots.delete(agentId);
  }

  private async load(agentId: string, selectors: Selector[], rev: bigint, key: string): Promise<AuthorizedSet> {
    const entries = await this.store.listAuthorizedEntries(agentId, selectors);
    const h = crypto.createHash('sha256');
    const byId = new Map<string, RegistrationEntry>();
    for (const e of entries) {
      byId.set(e.id, e);
      h.update(`${e.id}@${e.revision}\n`);
    }
    const wire = entries.map(toWireEntry);
    const encodedEntries = Buffer.concat(entries.map((e, i) => encodeEntry(e, wire[i] as api.RegistrationEntry)));
    const set: AuthorizedSet = { revision: h.digest('hex').slice(0, 32), byId, wire, encodedEntries };
    this.slots.delete(agentId);
    this.slots.set(agentId, { globalRevision: rev, selectorsKey: key, set });
    if (this.slots.size > this.maxAgents) {
      const oldest = this.slots.keys().next().value;
      if (oldest !== undefined) this.slots.delete(oldest);
    }
    return set;
  }
}
