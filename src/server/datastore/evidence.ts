// The evidence log's tables (schema version 2): appends that extend the Merkle tree in the same
// transaction, node reads for proofs, checkpoints and retention. One writer at a time across all
// servers sharing the database (an advisory lock on PostgreSQL, SQLite's write lock), so two servers
// append to one log and never fork it.
import { nodeHash } from '../../translog/merkle.js';
import type { SqlConn, SqlDriver, SqlRow } from './sql-driver.js';
import { DataStoreError, type EvidenceCheckpoint, type EvidenceLeaf, type NewEvidenceLeaf } from './types.js';

/** The advisory lock that serialises appends on PostgreSQL (schema migration uses 7262730). */
const APPEND_LOCK = 7262731;
const HASH_BYTES = 32;

function buf(v: unknown): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v);
  throw new DataStoreError('unavailable', 'unexpected binary value from the database');
}

async function sizeOf(conn: SqlConn): Promise<number> {
  const rows = await conn.query('SELECT MAX(idx) AS m FROM evidence_leaves');
  const m = rows[0]?.m;
  return m === null || m === undefined ? 0 : Number(m) + 1;
}

/** The complete subtrees covering a tree of `size` leaves, largest first: one per set bit of size. */
export function frontierOf(size: number): { level: number; index: number }[] {
  const out: { level: number; index: number }[] = [];
  for (let level = 52; level >= 0; level--) {
    const span = 2 ** level;
    if (Math.floor(size / span) % 2 === 1) out.push({ level, index: Math.floor(size / span) - 1 });
  }
  return out;
}

async function readNodes(conn: SqlConn, nodes: readonly { level: number; index: number }[]): Promise<Buffer[]> {
  if (nodes.length === 0) return [];
  const where = nodes.map(() => '(level = ? AND idx = ?)').join(' OR ');
  const rows = await conn.query(`SELECT level, idx, hash FROM evidence_nodes WHERE ${where}`, nodes.flatMap((n) => [n.level, n.index]));
  const found = new Map(rows.map((r) => [`${Number(r.level)}:${Number(r.idx)}`, buf(r.hash)]));
  return nodes.map((n) => {
    const h = found.get(`${n.level}:${n.index}`);
    if (h === undefined) throw new DataStoreError('not_found', `evidence log node (level ${n.level}, index ${n.index}) is missing: the log's tree is damaged`);
    return h;
  });
}

export class EvidenceTables {
  constructor(private readonly db: SqlDriver) {}

  /**
   * Appends the leaves in order, at the end of the log, and the tree nodes they complete; all or
   * nothing. Returns the index of the first.
   */
  async append(leaves: readonly NewEvidenceLeaf[]): Promise<number> {
    if (leaves.length === 0) throw new DataStoreError('invalid_argument', 'nothing to append to the evidence log');
    for (const l of leaves) {
      if (l.leafHash.length !== HASH_BYTES) throw new DataStoreError('invalid_argument', `an evidence leaf hash must be ${HASH_BYTES} bytes`);
    }
    return this.db.transaction(async (conn) => {
      if (this.db.dialect === 'postgres') await conn.query(`SELECT pg_advisory_xact_lock(${APPEND_LOCK})`);
      const first = await sizeOf(conn);
      const frontier = frontierOf(first);
      const known = new Map<string, Buffer>();
      (await readNodes(conn, frontier)).forEach((h, i) => known.set(`${frontier[i]!.level}:${frontier[i]!.index}`, h));
      const fresh: { level: number; index: number; hash: Buffer }[] = [];
      leaves.forEach((leaf, k) => {
        const i = first + k;
        let hash = leaf.leafHash;
        let index = i;
        known.set(`0:${i}`, hash);
        fresh.push({ level: 0, index: i, hash });
        // A node at level L completes when its right child does: walk up while this one is a right child.
        for (let level = 1; index % 2 === 1; level++) {
          const left = known.get(`${level - 1}:${index - 1}`);
          if (left === undefined) throw new DataStoreError('unavailable', `evidence log node (level ${level - 1}, index ${index - 1}) is missing: the log's tree is damaged`);
          hash = nodeHash(left, hash);
          index = (index - 1) / 2;
          known.set(`${level}:${index}`, hash);
          fresh.push({ level, index, hash });
        }
      });
      for (const [k, leaf] of leaves.entries()) {
        await conn.run('INSERT INTO evidence_leaves (idx, kind, tag, time, leaf_hash, body) VALUES (?, ?, ?, ?, ?, ?)',
          [first + k, leaf.kind, leaf.tag ?? null, leaf.time.getTime(), leaf.leafHash, leaf.body]);
      }
      for (const n of fresh) await conn.run('INSERT INTO evidence_nodes (level, idx, hash) VALUES (?, ?, ?)', [n.level, n.index, n.hash]);
      return first;
    });
  }

  size(): Promise<number> {
    return this.db.transaction((conn) => sizeOf(conn), 'read');
  }

  /** Complete-subtree hashes, in the order asked; not_found when one does not exist (yet). */
  nodes(nodes: readonly { level: number; index: number }[]): Promise<Buffer[]> {
    return this.db.transaction((conn) => readNodes(conn, nodes), 'read');
  }

  /** Leaves [from, to) in index order (fewer when the log is shorter). */
  async leaves(from: number, to: number): Promise<EvidenceLeaf[]> {
    const rows = await this.db.transaction((conn) => conn.query(
      'SELECT idx, kind, tag, time, leaf_hash, body FROM evidence_leaves WHERE idx >= ? AND idx < ? ORDER BY idx', [from, to]), 'read');
    return rows.map(rowToLeaf);
  }

  /** The newest leaf of this kind with this tag (e.g. a node's last attestation). */
  async latest(kind: string, tag: string): Promise<EvidenceLeaf | undefined> {
    const rows = await this.db.transaction((conn) => conn.query(
      'SELECT idx, kind, tag, time, leaf_hash, body FROM evidence_leaves WHERE kind = ? AND tag = ? ORDER BY idx DESC LIMIT 1', [kind, tag]), 'read');
    return rows[0] === undefined ? undefined : rowToLeaf(rows[0]);
  }

  async after(kind: string, tag: string, index: number, limit: number): Promise<EvidenceLeaf[]> {
    const rows = await this.db.transaction((conn) => conn.query(
      'SELECT idx, kind, tag, time, leaf_hash, body FROM evidence_leaves WHERE kind = ? AND tag = ? AND idx > ? ORDER BY idx LIMIT ?', [kind, tag, index, limit]), 'read');
    return rows.map(rowToLeaf);
  }

  /**
   * Stores a signed checkpoint; a second one for the same size is kept out (the first stays). Two
   * servers sign the same size at the same moment: one statement, no read-then-write race.
   */
  async addCheckpoint(c: EvidenceCheckpoint): Promise<void> {
    await this.db.transaction((conn) => conn.run(
      'INSERT INTO evidence_checkpoints (size, root, note, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (size) DO NOTHING',
      [c.size, c.root, c.note, c.createdAt.getTime()]));
  }

  async checkpoints(): Promise<EvidenceCheckpoint[]> {
    const rows = await this.db.transaction((conn) => conn.query('SELECT size, root, note, created_at FROM evidence_checkpoints ORDER BY size'), 'read');
    return rows.map(rowToCheckpoint);
  }

  async latestCheckpoint(): Promise<EvidenceCheckpoint | undefined> {
    const rows = await this.db.transaction((conn) => conn.query('SELECT size, root, note, created_at FROM evidence_checkpoints ORDER BY size DESC LIMIT 1'), 'read');
    return rows[0] === undefined ? undefined : rowToCheckpoint(rows[0]);
  }

  /** Retention: drops the bodies of leaves of these kinds written before `before`; hashes stay. */
  async pruneBodies(before: Date, kinds: readonly string[]): Promise<number> {
    if (kinds.length === 0) return 0;
    return this.db.transaction((conn) => conn.run(
      `UPDATE evidence_leaves SET body = NULL WHERE time < ? AND body IS NOT NULL AND kind IN (${kinds.map(() => '?').join(', ')})`,
      [before.getTime(), ...kinds]));
  }
}

function rowToLeaf(r: SqlRow): EvidenceLeaf {
  return {
    index: Number(r.idx),
    kind: String(r.kind),
    ...(r.tag === null || r.tag === undefined ? {} : { tag: String(r.tag) }),
    time: new Date(Number(r.time)),
    leafHash: buf(r.leaf_hash),
    ...(r.body === null || r.body === undefined ? {} : { body: buf(r.body) }),
  };
}

function rowToCheckpoint(r: SqlRow): EvidenceCheckpoint {
  return { size: Number(r.size), root: buf(r.root), note: String(r.note), createdAt: new Date(Number(r.created_at)) };
}
