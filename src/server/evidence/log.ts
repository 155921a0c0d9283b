// The server's side of the evidence log (docs/evidence-log.md): appends records as leaves of the
// Merkle tree in the datastore, batching concurrent appends into one transaction (group commit);
// signs checkpoints with the audit key; answers proofs. Every server on one database appends to the
// same log (the datastore serialises appends), so there is one tree, never a fork.
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { encodeRecord, EVIDENCE_RECORD_VERSION, type EvidenceRecord, type PolicyRecord } from '../../evidence/record.js';
import {
  consistencyProof, formatCheckpoint, inclusionProof, leafHash, rootAt, signNote, type NodeReader, type NoteSigner,
} from '../../translog/index.js';
import type { EvidenceCheckpoint, EvidenceLeaf, EvidenceStore } from '../datastore/types.js';

/** Records of these kinds may lose their bodies to retention; policies never do (attestations cite them). */
export const PRUNABLE_KINDS = ['attestation', 'issuance', 'event'] as const;
/** At most this many records go into one append transaction. */
const MAX_BATCH = 256;

export interface EvidenceLogOptions {
  store: EvidenceStore;
  /** The log's origin line in checkpoints (and the audit key's name). */
  origin: string;
  /** Written into every record. */
  serverName: string;
  signer: NoteSigner;
  logger: Logger;
  now?: () => Date;
}

/** A record to append, minus the fields the log fills in (version, time, server). */
export type RecordInput = EvidenceRecord extends infer R ? R extends EvidenceRecord ? Omit<R, 'v' | 'time' | 'server'> & { time?: string } : never : never;

interface Pending {
  record: EvidenceRecord;
  /** Its leaf bytes, encoded once when it was appended. */
  body: Buffer;
  tag: string | undefined;
  resolve: (index: number) => void;
  reject: (err: unknown) => void;
}

export interface SignedCheckpoint {
  size: number;
  root: Buffer;
  /** The signed note (C2SP tlog-checkpoint). */
  note: string;
}

export class EvidenceLog {
  readonly origin: string;
  private readonly store: EvidenceStore;
  private readonly log: Logger;
  private readonly now: () => Date;
  private queue: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private closed = false;
  /** Appends that failed since start (metrics, health). */
  failures = 0;

  constructor(private readonly o: EvidenceLogOptions) {
    this.origin = o.origin;
    this.store = o.store;
    this.log = o.logger.child({ component: 'evidence-log' });
    this.now = o.now ?? (() => new Date());
  }

  /**
   * Appends one record; resolves with its log index once it is committed. Concurrent appends share
   * one transaction. `tag` is the lookup key (a node's SPIFFE ID for attestations and issuances).
   */
  append(input: RecordInput, tag?: string): Promise<number> {
    return this.appendRecord(input, tag).then((r) => r.index);
  }

  /** As append, and also returns the record as written (with its version, time and server). */
  appendRecord<R extends RecordInput>(input: R, tag?: string): Promise<{ index: number; record: Extract<EvidenceRecord, { kind: R['kind'] }> }> {
    if (this.closed) return Promise.reject(new Error('the evidence log is closed'));
    const record = { v: EVIDENCE_RECORD_VERSION, time: input.time ?? this.now().toISOString(), server: this.o.serverName, ...input } as EvidenceRecord;
    // Encode now: a record that cannot be written fails its caller (as a rejection, so appendLater's
    // callers never see a throw), not the whole batch.
    let body: Buffer;
    try {
      body = encodeRecord(record);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<number>((resolve, reject) => {
      this.queue.push({ record, body, tag, resolve, reject });
      this.flushing ??= this.flushSoon();
    }).then((index) => ({ index, record: record as Extract<EvidenceRecord, { kind: R['kind'] }> }));
  }

  /** Appends without waiting; a failure is logged (and counted), never thrown. */
  appendLater(input: RecordInput, tag?: string): void {
    this.append(input, tag).catch((err: unknown) => {
      this.failures++;
      this.log.error({ err, kind: input.kind }, 'an evidence record could not be appended to the log');
    });
  }

  private async flushSoon(): Promise<void> {
    // One turn of the event loop lets concurrent callers join this batch.
    await new Promise<void>((r) => setImmediate(r));
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, MAX_BATCH);
        try {
          const leaves = batch.map((p) => {
            return { kind: p.record.kind, time: new Date(p.record.time), leafHash: leafHash(p.body), body: p.body, ...(p.tag !== undefined ? { tag: p.tag } : {}) };
          });
          const first = await this.store.append(leaves);
          batch.forEach((p, i) => p.resolve(first + i));
        } catch (err) {
          batch.forEach((p) => p.reject(err));
        }
      }
    } finally {
      this.flushing = undefined;
    }
  }

  /** Waits until everything appended so far is committed (or failed). */
  async flush(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  private reader(): NodeReader {
    return (nodes) => this.store.nodes(nodes);
  }

  /** The current tree head (size and root), unsigned. */
  async head(): Promise<{ size: number; root: Buffer }> {
    const size = await this.store.size();
    return { size, root: await rootAt(size, this.reader()) };
  }

  /**
   * Signs a checkpoint of the current tree unless the newest stored one already covers it; returns
   * the newest checkpoint either way (undefined while the log is empty).
   */
  async checkpoint(): Promise<SignedCheckpoint | undefined> {
    const latest = await this.store.latestCheckpoint();
    const size = await this.store.size();
    if (size === 0) return undefined;
    if (latest !== undefined && latest.size >= size) return latest;
    const root = await rootAt(size, this.reader());
    const note = signNote(formatCheckpoint({ origin: this.origin, size, root }), this.o.signer);
    await this.store.addCheckpoint({ size, root, note, createdAt: this.now() });
    return { size, root, note };
  }

  latestCheckpoint(): Promise<EvidenceCheckpoint | undefined> {
    return this.store.latestCheckpoint();
  }

  checkpoints(): Promise<EvidenceCheckpoint[]> {
    return this.store.checkpoints();
  }

  inclusionProof(index: number, size: number): Promise<Buffer[]> {
    return inclusionProof(index, size, this.reader());
  }

  consistencyProof(oldSize: number, newSize: number): Promise<Buffer[]> {
    return consistencyProof(oldSize, newSize, this.reader());
  }

  async entry(index: number): Promise<EvidenceLeaf | undefined> {
    return (await this.store.leaves(index, index + 1))[0];
  }

  leaves(from: number, to: number): Promise<EvidenceLeaf[]> {
    return this.store.leaves(from, to);
  }

  size(): Promise<number> {
    return this.store.size();
  }

  /** The newest leaf of `kind` tagged `tag` (e.g. a node's last attestation). */
  latest(kind: string, tag: string): Promise<EvidenceLeaf | undefined> {
    return this.store.latest(kind, tag);
  }

  /** Leaves of `kind` tagged `tag` after `index`, oldest first (at most `limit`). */
  after(kind: string, tag: string, index: number, limit: number): Promise<EvidenceLeaf[]> {
    return this.store.after(kind, tag, index, limit);
  }

  /**
   * The log index of the policy record for this policy set: the newest one with the same digest,
   * or a new record. Attestation records cite it, so an auditor recomputes decisions under it.
   */
  async ensurePolicy(p: Omit<PolicyRecord, 'v' | 'time' | 'server' | 'kind' | 'sha256'>): Promise<{ index: number; sha256: string }> {
    const sha256 = crypto.createHash('sha256').update(p.document, 'utf8').digest('hex');
    const have = await this.store.latest('policy', sha256);
    if (have !== undefined) return { index: have.index, sha256 };
    const index = await this.append({ kind: 'policy', sha256, ...p }, sha256);
    return { index, sha256 };
  }

  /** Retention: drops evidence bodies written before `before`; returns how many. */
  prune(before: Date): Promise<number> {
    return this.store.pruneBodies(before, PRUNABLE_KINDS);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.flush();
  }
}
