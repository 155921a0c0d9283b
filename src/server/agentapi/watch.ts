// Pushes events to agents holding a WatchAgent stream: entries changed (per agent, only when its own
// authorized set changed), bundle changed, and "drop your SVIDs" when the node is banned, evicted or
// withdrawn. Entry changes are found by polling the O(1) global entries revision.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type * as api from '../../api/agent-api.js';
import type { DataStore } from '../datastore/types.js';
import type { AuthorizedEntriesCache } from './entries.js';

export interface Watcher {
  agentId: string;
  /** The per-agent revision the agent was last told about. */
  revision: string;
  send(ev: api.AgentEvent): void;
  close(code: grpc.status, message: string): void;
}

export class WatchHub {
  private readonly watchers = new Map<string, Set<Watcher>>();
  private timer: NodeJS.Timeout | undefined;
  private lastGlobal: bigint | undefined;
  private polling = false;
  private lastStandingCheck = 0;
  /** How often node standing (banned/evicted) is re-read (10 watch intervals); bans through this server's admin API arrive at once via dropNode. */
  private readonly standingIntervalMs: number;

  constructor(
    private readonly store: Pick<DataStore, 'entriesRevision' | 'getNode'>,
    private readonly entries: AuthorizedEntriesCache,
    private readonly intervalMs: number,
    private readonly logger?: Logger,
  ) {
    this.standingIntervalMs = intervalMs * 10;
  }

  start(): void {
    this.timer ??= setInterval(() => { void this.poll(); }, this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    for (const set of this.watchers.values()) for (const w of set) w.close(grpc.status.UNAVAILABLE, 'server shutting down');
    this.watchers.clear();
  }

  add(w: Watcher): () => void {
    let set = this.watchers.get(w.agentId);
    if (!set) this.watchers.set(w.agentId, (set = new Set()));
    set.add(w);
    return () => {
      set.delete(w);
      if (set.size === 0 && this.watchers.get(w.agentId) === set) this.watchers.delete(w.agentId);
    };
  }

  count(): number {
    let n = 0;
    for (const s of this.watchers.values()) n += s.size;
    return n;
  }

  bundleChanged(sequence: bigint): void {
    for (const set of this.watchers.values()) {
      for (const w of set) w.send({ kind: 'BUNDLE_CHANGED', revision: '', bundleSequence: Number(sequence), reason: '' });
    }
  }

  /**
   * Tells the agent to discard every SVID it holds and ends its watch streams. For bans, evictions
   * and withdrawn attestations (issue 6/8 call this when a node loses integrity or location).
   */
  dropNode(agentId: string, reason: string, code: grpc.status = grpc.status.PERMISSION_DENIED): void {
    const set = this.watchers.get(agentId);
    if (!set) return;
    this.watchers.delete(agentId);
    for (const w of set) {
      w.send({ kind: 'DROP_SVIDS', revision: '', bundleSequence: 0, reason });
      w.close(code, reason);
    }
    this.entries.forget(agentId);
  }

  /** The node's claims changed (a witness placed it): its agent syncs now, for SVIDs it was refused before. */
  claimsChanged(agentId: string): void {
    for (const w of this.watchers.get(agentId) ?? []) w.send({ kind: 'ENTRIES_CHANGED', revision: w.revision, bundleSequence: 0, reason: '' });
  }

  /** One round: node standing for every watched agent, then entry changes. Exposed for tests. */
  async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      const global = await this.store.entriesRevision();
      const entriesChanged = this.lastGlobal !== global;
      this.lastGlobal = global;
      const checkStanding = Date.now() - this.lastStandingCheck >= this.standingIntervalMs;
      if (checkStanding) this.lastStandingCheck = Date.now();
      if (!entriesChanged && !checkStanding) return;
      for (const [agentId, set] of [...this.watchers]) {
        const node = await this.store.getNode(agentId);
        if (!node) { this.dropNode(agentId, `agent ${agentId} was evicted; attest again`, grpc.status.UNAUTHENTICATED); continue; }
        if (node.banned) { this.dropNode(agentId, `agent ${agentId} is banned`); continue; }
        if (!entriesChanged) continue;
        const auth = await this.entries.get(agentId, node.selectors, global);
        for (const w of set) {
          if (w.revision !== auth.revision) {
            w.revision = auth.revision;
            w.send({ kind: 'ENTRIES_CHANGED', revision: auth.revision, bundleSequence: 0, reason: '' });
          }
        }
      }
    } catch (err) {
      this.logger?.warn({ err }, 'watch poll failed; retrying at the next interval');
    } finally {
      this.polling = false;
    }
  }
}
