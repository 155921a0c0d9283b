// One DataStore over any SqlDriver: the SQL is portable between SQLite (>= 3.35) and PostgreSQL,
// so both backends behave the same and one test suite checks both.
import { createHash, randomUUID } from 'node:crypto';
import { EvidenceTables } from './evidence.js';
import { canonicalSelectors, selectorSetKey, selectorsMatch } from './selectors.js';
import type { SqlConn, SqlDriver, SqlRow, SqlValue } from './sql-driver.js';
import {
  DataStoreError,
  serverSpiffeId,
  type AttestedNode,
  type AttestedNodeUpdate,
  type AttestationType,
  type BatchOptions,
  type BatchResult,
  type DataStore,
  type EntryFilter,
  type FederationRelationship,
  type JoinToken,
  type NewAttestedNode,
  type NewRegistrationEntry,
  type NodeFilter,
  type RegistrationEntry,
  type RegistrationEntryUpdate,
  type Selector,
  type StoredBundle,
} from './types.js';

const ENTRY_COLUMNS = 'id, spiffe_id, parent_id, selectors, x509_svid_ttl, jwt_svid_ttl, dns_names, federates_with, ' +
  'admin, downstream, hint, store_svid, location_policy, revision, created_at';
const NODE_COLUMNS = 'spiffe_id, attestation_type, selectors, serial_number, new_serial_number, expires_at, banned, ' +
  'attestation_data, claims, created_at, updated_at';
/** Keeps `IN (...)` lists well under both databases' parameter limits. */
const IN_CHUNK = 500;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAX_TTL_SECONDS = 10 * 365 * 24 * 3600;

// --- value conversions (both databases store times as epoch ms and flags as 0/1) ---

function num(v: unknown): number | undefined {
  return v === null || v === undefined ? undefined : Number(v);
}
function big(v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number' || typeof v === 'string') return BigInt(v);
  throw new DataStoreError('unavailable', `unexpected integer value from the database: ${String(v)}`);
}
function str(v: unknown): string | undefined {
  return v === null || v === undefined ? undefined : String(v);
}
function flag(v: unknown): boolean | undefined {
  return v === null || v === undefined ? undefined : Number(v) !== 0;
}
function flagValue(v: boolean | null | undefined): number | null {
  return v === null || v === undefined ? null : v ? 1 : 0;
}
function json<T>(v: unknown): T | undefined {
  return v === null || v === undefined ? undefined : (JSON.parse(String(v)) as T);
}
function sha256Hex(v: string | Uint8Array): string {
  return createHash('sha256').update(v).digest('hex');
}
function chunks<T>(items: T[], size = IN_CHUNK): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

function rowToEntry(r: SqlRow): RegistrationEntry {
  const e: RegistrationEntry = {
    id: String(r.id),
    spiffeId: String(r.spiffe_id),
    parentId: String(r.parent_id),
    selectors: json<Selector[]>(r.selectors) ?? [],
    federatesWith: json<string[]>(r.federates_with) ?? [],
    revision: big(r.revision),
    createdAt: new Date(Number(r.created_at)),
  };
  const x509 = num(r.x509_svid_ttl);
  if (x509 !== undefined) e.x509SvidTtl = x509;
  const jwt = num(r.jwt_svid_ttl);
  if (jwt !== undefined) e.jwtSvidTtl = jwt;
  const dns = json<string[]>(r.dns_names);
  if (dns !== undefined) e.dnsNames = dns;
  const admin = flag(r.admin);
  if (admin !== undefined) e.admin = admin;
  const downstream = flag(r.downstream);
  if (downstream !== undefined) e.downstream = downstream;
  const hint = str(r.hint);
  if (hint !== undefined) e.hint = hint;
  const storeSvid = flag(r.store_svid);
  if (storeSvid !== undefined) e.storeSvid = storeSvid;
  const policy = str(r.location_policy);
  if (policy !== undefined) e.locationPolicy = policy;
  return e;
}

function rowToNode(r: SqlRow): AttestedNode {
  const n: AttestedNode = {
    spiffeId: String(r.spiffe_id),
    attestationType: String(r.attestation_type) as AttestationType,
    selectors: json<Selector[]>(r.selectors) ?? [],
    serialNumber: String(r.serial_number),
    expiresAt: new Date(Number(r.expires_at)),
    banned: Number(r.banned) !== 0,
    attestationData: json<Record<string, unknown>>(r.attestation_data) ?? {},
    createdAt: new Date(Number(r.created_at)),
    updatedAt: new Date(Number(r.updated_at)),
  };
  const next = str(r.new_serial_number);
  if (next !== undefined) n.newSerialNumber = next;
  const claims = json<Record<string, unknown>>(r.claims);
  if (claims !== undefined) n.claims = claims;
  return n;
}

function invalid(message: string): DataStoreError {
  return new DataStoreError('invalid_argument', message);
}

function checkTtl(name: string, v: number | null | undefined): void {
  if (v === null || v === undefined) return;
  if (!Number.isInteger(v) || v <= 0 || v > MAX_TTL_SECONDS) {
    throw invalid(`${name} must be a whole number of seconds between 1 and ${MAX_TTL_SECONDS}, got ${v}`);
  }
}

/** Structural checks only; the admin API validates SPIFFE IDs and trust domains before this. */
function checkEntry(e: Omit<RegistrationEntry, 'revision' | 'createdAt'>): void {
  if (!UUID_RE.test(e.id)) throw invalid(`entry id must be a UUID, got "${e.id}"`);
  if (!e.spiffeId.startsWith('spiffe://')) throw invalid(`entry SPIFFE ID must start with spiffe://, got "${e.spiffeId}"`);
  if (!e.parentId.startsWith('spiffe://')) throw invalid(`entry parent ID must start with spiffe://, got "${e.parentId}"`);
  if (e.selectors.length === 0) throw invalid('an entry needs at least one selector');
  for (const s of e.selectors) {
    if (s.type === '' || s.value === '') throw invalid(`selector type and value must be non-empty, got "${s.type}:${s.value}"`);
  }
  checkTtl('x509SvidTtl', e.x509SvidTtl);
  checkTtl('jwtSvidTtl', e.jwtSvidTtl);
}

function entryParams(e: Omit<RegistrationEntry, 'createdAt' | 'revision'>): SqlValue[] {
  const selectors = canonicalSelectors(e.selectors);
  return [
    e.spiffeId, e.parentId, JSON.stringify(selectors), selectorSetKey(selectors),
    e.x509SvidTtl ?? null, e.jwtSvidTtl ?? null, e.dnsNames === undefined ? null : JSON.stringify(e.dnsNames),
    JSON.stringify(e.federatesWith), flagValue(e.admin), flagValue(e.downstream), e.hint ?? null,
    flagValue(e.storeSvid), e.locationPolicy ?? null,
  ];
}

/** Applies an update's present fields to an entry (null clears an optional field). */
function applyUpdate(cur: RegistrationEntry, u: RegistrationEntryUpdate): RegistrationEntry {
  const next: RegistrationEntry = { ...cur };
  if (u.spiffeId !== undefined) next.spiffeId = u.spiffeId;
  if (u.parentId !== undefined) next.parentId = u.parentId;
  if (u.selectors !== undefined) next.selectors = canonicalSelectors(u.selectors);
  if (u.federatesWith !== undefined) next.federatesWith = u.federatesWith;
  const optional = ['x509SvidTtl', 'jwtSvidTtl', 'dnsNames', 'admin', 'downstream', 'hint', 'storeSvid', 'locationPolicy'] as const;
  for (const k of optional) {
    const v = u[k];
    if (v === undefined) continue;
    if (v === null) delete next[k];
    else (next as unknown as Record<string, unknown>)[k] = v;
  }
  return next;
}

class Aborted extends Error {}

export class SqlDataStore implements DataStore {
  readonly evidence: EvidenceTables;
  constructor(private readonly db: SqlDriver) {
    this.evidence = new EvidenceTables(db);
  }

  // --- registration entries ---

  /**
   * The revision the current transaction's changes will carry. On PostgreSQL the counter row stays
   * locked until commit, which serialises entry writers across servers so revisions never interleave.
   */
  private async nextRevision(conn: SqlConn): Promise<bigint> {
    const lock = this.db.dialect === 'postgres' ? ' FOR UPDATE' : '';
    const cur = await conn.query(`SELECT value FROM counters WHERE name = 'entries'${lock}`);
    return big(cur[0]?.value) + 1n;
  }

  private async setRevision(conn: SqlConn, revision: bigint): Promise<void> {
    await conn.run("UPDATE counters SET value = ? WHERE name = 'entries'", [revision]);
  }

  /**
   * Runs an update or delete batch in one transaction, item by item. A failing item (a conflict, a
   * missing entry) is skipped alone: updates run under a savepoint because their UPDATE can fail after
   * a partial write; deletes refuse before writing anything, so they do without. With allOrNothing
   * any failure rolls back everything.
   * Every changed entry gets the batch's revision, and the global counter moves only if
   * something changed (a batch that fails entirely leaves the revision where it was).
   */
  private async batch<I, T>(
    items: I[],
    options: BatchOptions | undefined,
    item: (conn: SqlConn, it: I, revision: bigint) => Promise<T>,
    /** Items whose SQL can fail after a partial write need a savepoint; the others save two round trips. */
    savepoints: boolean,
  ): Promise<BatchResult<T>[]> {
    const results: BatchResult<T>[] = [];
    if (items.length === 0) return results;
    const run = async (conn: SqlConn): Promise<void> => {
      const revision = await this.nextRevision(conn);
      for (const it of items) {
        if (savepoints) await conn.run('SAVEPOINT item');
        try {
          const value = await item(conn, it, revision);
          if (savepoints) await conn.run('RELEASE SAVEPOINT item');
          results.push({ ok: true, value });
        } catch (err) {
          if (savepoints) {
            await conn.run('ROLLBACK TO SAVEPOINT item');
            await conn.run('RELEASE SAVEPOINT item');
          }
          // Without a savepoint only refusals raised before any write may be skipped; anything
          // else aborts the whole batch (the transaction rolls back).
          if (!(err instanceof DataStoreError)) throw err;
          results.push({ ok: false, code: err.code, message: err.message });
        }
      }
      if (options?.allOrNothing && results.some((r) => !r.ok)) throw new Aborted();
      if (results.some((r) => r.ok)) await this.setRevision(conn, revision);
    };
    try {
      await this.db.transaction(run);
    } catch (err) {
      if (!(err instanceof Aborted)) throw err;
      return results.map((r) => r.ok
        ? { ok: false, code: 'aborted', message: 'not applied: another item in this all-or-nothing batch failed' }
        : r);
    }
    return results;
  }

  /**
   * Creates a batch with multi-row INSERTs (one round trip per 200 entries, not several per entry):
   * items are checked first, then inserted with ON CONFLICT DO NOTHING … RETURNING id, and an item
   * whose id does not come back collided with an existing entry.
   */
  async createEntries(entries: NewRegistrationEntry[], options?: BatchOptions): Promise<BatchResult<RegistrationEntry>[]> {
    const results: BatchResult<RegistrationEntry>[] = new Array(entries.length);
    const toCreate: { i: number; e: Omit<RegistrationEntry, 'revision' | 'createdAt'> }[] = [];
    const ids = new Set<string>();
    entries.forEach((input, i) => {
      const e = { ...input, id: (input.id ?? randomUUID()).toLowerCase(), selectors: canonicalSelectors(input.selectors) };
      try {
        checkEntry(e);
      } catch (err) {
        const ds = err as DataStoreError;
        results[i] = { ok: false, code: ds.code, message: ds.message };
        return;
      }
      if (ids.has(e.id)) {
        results[i] = { ok: false, code: 'already_exists', message: `entry id ${e.id} appears twice in this batch` };
        return;
      }
      ids.add(e.id);
      toCreate.push({ i, e });
    });
    // Array.from, not map: map skips the holes of items not decided yet.
    const abort = (): BatchResult<RegistrationEntry>[] => Array.from(results, (r) => (r === undefined || r.ok
      ? { ok: false, code: 'aborted', message: 'not applied: another item in this all-or-nothing batch failed' }
      : r));
    if (toCreate.length === 0) return results;
    if (options?.allOrNothing && toCreate.length < entries.length) return abort();
    try {
      await this.db.transaction(async (conn) => {
        const revision = await this.nextRevision(conn);
        const createdAt = Date.now();
        const inserted = new Set<string>();
        for (const part of chunks(toCreate, 200)) {
          const rows = await conn.query(
            `INSERT INTO entries (id, spiffe_id, parent_id, selectors, selectors_key, x509_svid_ttl, jwt_svid_ttl, dns_names,
              federates_with, admin, downstream, hint, store_svid, location_policy, revision, created_at)
             VALUES ${part.map(() => '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)').join(', ')}
             ON CONFLICT DO NOTHING RETURNING id`,
            part.flatMap(({ e }) => [e.id, ...entryParams(e), revision, createdAt]));
          for (const r of rows) inserted.add(String(r.id));
        }
        const created: Omit<RegistrationEntry, 'revision' | 'createdAt'>[] = [];
        for (const { i, e } of toCreate) {
          if (inserted.has(e.id)) {
            results[i] = { ok: true, value: { ...e, revision, createdAt: new Date(createdAt) } };
            created.push(e);
          } else {
            results[i] = { ok: false, code: 'already_exists',
              message: `an entry with id ${e.id} or with the same SPIFFE ID, parent ID and selectors already exists` };
          }
        }
        if (options?.allOrNothing && created.length < toCreate.length) throw new Aborted();
        const selectorRows = created.flatMap((e) => e.selectors.map((s) => [e.id, s.type, s.value]));
        for (const part of chunks(selectorRows, 300)) {
          await conn.run(`INSERT INTO entry_selectors (entry_id, type, value) VALUES ${part.map(() => '(?, ?, ?)').join(', ')}`,
            part.flat());
        }
        if (created.length > 0) await this.setRevision(conn, revision);
      });
    } catch (err) {
      if (err instanceof Aborted) return abort();
      throw err;
    }
    return results;
  }

  private async insertSelectors(conn: SqlConn, id: string, selectors: Selector[]): Promise<void> {
    for (const part of chunks(selectors, 100)) {
      await conn.run(`INSERT INTO entry_selectors (entry_id, type, value) VALUES ${part.map(() => '(?, ?, ?)').join(', ')}`,
        part.flatMap((s) => [id, s.type, s.value]));
    }
  }

  updateEntries(updates: RegistrationEntryUpdate[], options?: BatchOptions): Promise<BatchResult<RegistrationEntry>[]> {
    return this.batch(updates, options, async (conn, u, revision) => {
      // PostgreSQL: lock the row so two servers updating one entry apply one after the other.
      const lock = this.db.dialect === 'postgres' ? ' FOR UPDATE' : '';
      const rows = await conn.query(`SELECT ${ENTRY_COLUMNS} FROM entries WHERE id = ?${lock}`, [u.id]);
      const row = rows[0];
      if (row === undefined) throw new DataStoreError('not_found', `no entry with id ${u.id}`);
      const next = applyUpdate(rowToEntry(row), u);
      checkEntry(next);
      next.revision = revision;
      try {
        await conn.run(
          `UPDATE entries SET spiffe_id = ?, parent_id = ?, selectors = ?, selectors_key = ?, x509_svid_ttl = ?,
            jwt_svid_ttl = ?, dns_names = ?, federates_with = ?, admin = ?, downstream = ?, hint = ?, store_svid = ?,
            location_policy = ?, revision = ? WHERE id = ?`,
          [...entryParams(next), next.revision, u.id]);
      } catch (err) {
        if (this.db.isUniqueViolation(err)) {
          throw new DataStoreError('already_exists', 'another entry has the same SPIFFE ID, parent ID and selectors');
        }
        throw err;
      }
      if (u.selectors !== undefined) {
        await conn.run('DELETE FROM entry_selectors WHERE entry_id = ?', [u.id]);
        await this.insertSelectors(conn, u.id, next.selectors);
      }
      return next;
    }, true);
  }

  deleteEntries(ids: string[], options?: BatchOptions): Promise<BatchResult<RegistrationEntry>[]> {
    return this.batch(ids, options, async (conn, id) => {
      const rows = await conn.query(`DELETE FROM entries WHERE id = ? RETURNING ${ENTRY_COLUMNS}`, [id]);
      const row = rows[0];
      if (row === undefined) throw new DataStoreError('not_found', `no entry with id ${id}`);
      // SQLite enforces ON DELETE CASCADE only with foreign_keys on; delete explicitly for both.
      await conn.run('DELETE FROM entry_selectors WHERE entry_id = ?', [id]);
      return rowToEntry(row);
    }, false);
  }

  async getEntry(id: string): Promise<RegistrationEntry | undefined> {
    const rows = await this.db.connection((c) => c.query(`SELECT ${ENTRY_COLUMNS} FROM entries WHERE id = ?`, [id]));
    return rows[0] === undefined ? undefined : rowToEntry(rows[0]);
  }

  async listEntries(filter: EntryFilter = {}): Promise<RegistrationEntry[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (filter.spiffeId !== undefined) { where.push('spiffe_id = ?'); params.push(filter.spiffeId); }
    if (filter.parentId !== undefined) { where.push('parent_id = ?'); params.push(filter.parentId); }
    if (filter.hint !== undefined) { where.push('hint = ?'); params.push(filter.hint); }
    if (filter.revisionAfter !== undefined) { where.push('revision > ?'); params.push(filter.revisionAfter); }
    const sel = filter.selectors;
    if (sel !== undefined) {
      if (sel.selectors.length === 0) return [];
      // Candidates share at least one selector with the filter (every entry has one); the exact
      // match behaviour is then checked on the candidates.
      const given = canonicalSelectors(sel.selectors);
      where.push(`id IN (SELECT entry_id FROM entry_selectors WHERE ${given.map(() => '(type = ? AND value = ?)').join(' OR ')})`);
      for (const s of given) params.push(s.type, s.value);
    }
    if (filter.afterId !== undefined) { where.push('id > ?'); params.push(filter.afterId.toLowerCase()); }
    // LIMIT can go to the database only when no filter is left to apply here.
    const postFilter = sel !== undefined || filter.federatesWith !== undefined;
    const limit = filter.limit !== undefined && !postFilter ? ` LIMIT ${Math.max(0, Math.floor(filter.limit))}` : '';
    const sql = `SELECT ${ENTRY_COLUMNS} FROM entries${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY id${limit}`;
    const rows = await this.db.connection((c) => c.query(sql, params));
    let entries = rows.map(rowToEntry);
    if (sel !== undefined) entries = entries.filter((e) => selectorsMatch(e.selectors, sel.selectors, sel.match));
    const fed = filter.federatesWith;
    if (fed !== undefined) entries = entries.filter((e) => e.federatesWith.includes(fed));
    if (filter.limit !== undefined && postFilter) entries = entries.slice(0, filter.limit);
    return entries;
  }

  async listAuthorizedEntries(agentId: string, agentSelectors: Selector[]): Promise<RegistrationEntry[]> {
    const td = /^spiffe:\/\/([^/]+)/.exec(agentId)?.[1];
    if (td === undefined) throw invalid(`agent ID must be a SPIFFE ID, got "${agentId}"`);
    return this.db.transaction(async (conn) => {
      const aliases = (await conn.query(`SELECT ${ENTRY_COLUMNS} FROM entries WHERE parent_id = ?`, [serverSpiffeId(td)]))
        .map(rowToEntry)
        .filter((e) => selectorsMatch(e.selectors, agentSelectors, 'subset'));
      const seeds = [...new Set([agentId, ...aliases.map((a) => a.spiffeId)])];
      // One recursive query walks parent → child down from the agent and its aliases; UNION (not
      // UNION ALL) drops IDs already seen, so a cycle ends the walk instead of looping.
      const rows = await conn.query(
        `WITH RECURSIVE parents(pid) AS (
           ${seeds.map(() => 'SELECT CAST(? AS TEXT)').join(' UNION ')}
           UNION
           SELECT e.spiffe_id FROM entries e JOIN parents p ON e.parent_id = p.pid
         )
         SELECT ${ENTRY_COLUMNS} FROM entries WHERE parent_id IN (SELECT pid FROM parents) ORDER BY id`, seeds);
      return rows.map(rowToEntry);
    }, 'read');
  }

  async entriesRevision(): Promise<bigint> {
    const rows = await this.db.connection((c) => c.query("SELECT value FROM counters WHERE name = 'entries'"));
    return big(rows[0]?.value);
  }

  // --- attested nodes ---

  async createNode(node: NewAttestedNode): Promise<AttestedNode> {
    const now = Date.now();
    const n = await this.db.connection((c) => c.run(
      `INSERT INTO attested_nodes (${NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
      [node.spiffeId, node.attestationType, JSON.stringify(canonicalSelectors(node.selectors)), node.serialNumber,
        node.newSerialNumber ?? null, node.expiresAt.getTime(), node.banned ? 1 : 0,
        JSON.stringify(node.attestationData), node.claims === undefined ? null : JSON.stringify(node.claims), now, now]));
    if (n === 0) throw new DataStoreError('already_exists', `an attested node ${node.spiffeId} already exists`);
    const created = await this.getNode(node.spiffeId);
    if (created === undefined) throw new DataStoreError('not_found', `attested node ${node.spiffeId} vanished after creation`);
    return created;
  }

  async updateNode(spiffeId: string, u: AttestedNodeUpdate): Promise<AttestedNode> {
    const set: string[] = [];
    const params: SqlValue[] = [];
    const put = (col: string, v: SqlValue): void => { set.push(`${col} = ?`); params.push(v); };
    if (u.attestationType !== undefined) put('attestation_type', u.attestationType);
    if (u.selectors !== undefined) put('selectors', JSON.stringify(canonicalSelectors(u.selectors)));
    if (u.serialNumber !== undefined) put('serial_number', u.serialNumber);
    if (u.newSerialNumber !== undefined) put('new_serial_number', u.newSerialNumber);
    if (u.expiresAt !== undefined) put('expires_at', u.expiresAt.getTime());
    if (u.banned !== undefined) put('banned', u.banned ? 1 : 0);
    if (u.attestationData !== undefined) put('attestation_data', JSON.stringify(u.attestationData));
    if (u.claims !== undefined) put('claims', u.claims === null ? null : JSON.stringify(u.claims));
    put('updated_at', Date.now());
    const rows = await this.db.connection((c) => c.query(
      `UPDATE attested_nodes SET ${set.join(', ')} WHERE spiffe_id = ? RETURNING ${NODE_COLUMNS}`, [...params, spiffeId]));
    if (rows[0] === undefined) throw new DataStoreError('not_found', `no attested node ${spiffeId}`);
    return rowToNode(rows[0]);
  }

  async getNode(spiffeId: string): Promise<AttestedNode | undefined> {
    const rows = await this.db.connection((c) =>
      c.query(`SELECT ${NODE_COLUMNS} FROM attested_nodes WHERE spiffe_id = ?`, [spiffeId]));
    return rows[0] === undefined ? undefined : rowToNode(rows[0]);
  }

  async listNodes(filter: NodeFilter = {}): Promise<AttestedNode[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (filter.banned !== undefined) { where.push('banned = ?'); params.push(filter.banned ? 1 : 0); }
    if (filter.attestationType !== undefined) { where.push('attestation_type = ?'); params.push(filter.attestationType); }
    if (filter.expiresBefore !== undefined) { where.push('expires_at < ?'); params.push(filter.expiresBefore.getTime()); }
    const sql = `SELECT ${NODE_COLUMNS} FROM attested_nodes${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY spiffe_id`;
    return (await this.db.connection((c) => c.query(sql, params))).map(rowToNode);
  }

  async deleteNode(spiffeId: string): Promise<AttestedNode | undefined> {
    const rows = await this.db.connection((c) =>
      c.query(`DELETE FROM attested_nodes WHERE spiffe_id = ? RETURNING ${NODE_COLUMNS}`, [spiffeId]));
    return rows[0] === undefined ? undefined : rowToNode(rows[0]);
  }

  banNode(spiffeId: string): Promise<AttestedNode> {
    return this.updateNode(spiffeId, { banned: true });
  }

  // --- join tokens (stored as SHA-256 so a database dump does not hand out tokens) ---

  async createJoinToken(t: JoinToken): Promise<void> {
    if (t.token === '') throw invalid('join token must be non-empty');
    const n = await this.db.connection((c) => c.run(
      'INSERT INTO join_tokens (token_hash, expires_at, spiffe_id) VALUES (?, ?, ?) ON CONFLICT DO NOTHING',
      [sha256Hex(t.token), t.expiresAt.getTime(), t.spiffeId ?? null]));
    if (n === 0) throw new DataStoreError('already_exists', 'this join token already exists');
  }

  async consumeJoinToken(token: string, now = new Date()): Promise<JoinToken | undefined> {
    // One DELETE … RETURNING: of two servers racing for the same token, exactly one gets the row.
    const rows = await this.db.connection((c) => c.query(
      'DELETE FROM join_tokens WHERE token_hash = ? RETURNING expires_at, spiffe_id', [sha256Hex(token)]));
    const row = rows[0];
    if (row === undefined) return undefined;
    const expiresAt = new Date(Number(row.expires_at));
    if (expiresAt.getTime() <= now.getTime()) return undefined;
    const spiffeId = str(row.spiffe_id);
    return spiffeId === undefined ? { token, expiresAt } : { token, expiresAt, spiffeId };
  }

  pruneJoinTokens(now = new Date()): Promise<number> {
    return this.db.connection((c) => c.run('DELETE FROM join_tokens WHERE expires_at <= ?', [now.getTime()]));
  }

  // --- nonces ---

  async consumeNonce(nonce: string | Uint8Array, expiresAt: Date): Promise<boolean> {
    if (nonce.length === 0) throw invalid('nonce must be non-empty');
    const n = await this.db.connection((c) => c.run(
      'INSERT INTO used_nonces (nonce_hash, expires_at) VALUES (?, ?) ON CONFLICT DO NOTHING',
      [sha256Hex(nonce), expiresAt.getTime()]));
    return n === 1;
  }

  pruneNonces(now = new Date()): Promise<number> {
    return this.db.connection((c) => c.run('DELETE FROM used_nonces WHERE expires_at <= ?', [now.getTime()]));
  }

  // --- bundles ---

  async getBundle(trustDomain: string): Promise<StoredBundle | undefined> {
    const rows = await this.db.connection((c) =>
      c.query('SELECT trust_domain, bundle_json, sequence FROM bundles WHERE trust_domain = ?', [trustDomain]));
    const r = rows[0];
    return r === undefined ? undefined : { trustDomain: String(r.trust_domain), bundleJson: String(r.bundle_json), sequence: big(r.sequence) };
  }

  async listBundles(): Promise<StoredBundle[]> {
    const rows = await this.db.connection((c) =>
      c.query('SELECT trust_domain, bundle_json, sequence FROM bundles ORDER BY trust_domain'));
    return rows.map((r) => ({ trustDomain: String(r.trust_domain), bundleJson: String(r.bundle_json), sequence: big(r.sequence) }));
  }

  async setBundle(b: StoredBundle): Promise<StoredBundle> {
    if (b.trustDomain === '' || b.trustDomain.includes('/')) throw invalid(`bundle trust domain must be a bare name, got "${b.trustDomain}"`);
    try {
      JSON.parse(b.bundleJson);
    } catch {
      throw invalid(`bundle for ${b.trustDomain} is not valid JSON`);
    }
    await this.db.connection((c) => c.run(
      `INSERT INTO bundles (trust_domain, bundle_json, sequence) VALUES (?, ?, ?)
       ON CONFLICT (trust_domain) DO UPDATE SET bundle_json = excluded.bundle_json, sequence = excluded.sequence`,
      [b.trustDomain, b.bundleJson, b.sequence]));
    return { ...b };
  }

  async deleteBundle(trustDomain: string): Promise<boolean> {
    return (await this.db.connection((c) => c.run('DELETE FROM bundles WHERE trust_domain = ?', [trustDomain]))) > 0;
  }

  // --- federation relationships ---

  private static checkRelationship(r: FederationRelationship): void {
    if (r.trustDomain === '' || r.trustDomain.includes('/')) throw invalid(`trust domain must be a bare name, got "${r.trustDomain}"`);
    if (!r.bundleEndpointUrl.startsWith('https://')) throw invalid(`bundle endpoint URL must be https://, got "${r.bundleEndpointUrl}"`);
    if (r.profile !== 'https_web' && r.profile !== 'https_spiffe') throw invalid(`profile must be https_web or https_spiffe, got "${String(r.profile)}"`);
    if (r.profile === 'https_spiffe' && r.endpointSpiffeId === undefined) throw invalid('the https_spiffe profile needs the endpoint SPIFFE ID');
  }

  async createFederationRelationship(r: FederationRelationship): Promise<FederationRelationship> {
    SqlDataStore.checkRelationship(r);
    const n = await this.db.connection((c) => c.run(
      `INSERT INTO federation_relationships (trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id)
       VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`,
      [r.trustDomain, r.bundleEndpointUrl, r.profile, r.endpointSpiffeId ?? null]));
    if (n === 0) throw new DataStoreError('already_exists', `a federation relationship with ${r.trustDomain} already exists`);
    return { ...r };
  }

  async updateFederationRelationship(r: FederationRelationship): Promise<FederationRelationship> {
    SqlDataStore.checkRelationship(r);
    const n = await this.db.connection((c) => c.run(
      'UPDATE federation_relationships SET bundle_endpoint_url = ?, profile = ?, endpoint_spiffe_id = ? WHERE trust_domain = ?',
      [r.bundleEndpointUrl, r.profile, r.endpointSpiffeId ?? null, r.trustDomain]));
    if (n === 0) throw new DataStoreError('not_found', `no federation relationship with ${r.trustDomain}`);
    return { ...r };
  }

  async getFederationRelationship(trustDomain: string): Promise<FederationRelationship | undefined> {
    const rows = await this.db.connection((c) => c.query(
      'SELECT * FROM federation_relationships WHERE trust_domain = ?', [trustDomain]));
    return rows[0] === undefined ? undefined : rowToRelationship(rows[0]);
  }

  async listFederationRelationships(): Promise<FederationRelationship[]> {
    const rows = await this.db.connection((c) => c.query('SELECT * FROM federation_relationships ORDER BY trust_domain'));
    return rows.map(rowToRelationship);
  }

  async deleteFederationRelationship(trustDomain: string): Promise<boolean> {
    return (await this.db.connection((c) =>
      c.run('DELETE FROM federation_relationships WHERE trust_domain = ?', [trustDomain]))) > 0;
  }

  // --- CA journal ---

  async getCaJournal(): Promise<Uint8Array | undefined> {
    const rows = await this.db.connection((c) => c.query('SELECT data FROM ca_journal WHERE id = 1'));
    const d = rows[0]?.data;
    return d === undefined || d === null ? undefined : new Uint8Array(d as Buffer);
  }

  async setCaJournal(blob: Uint8Array): Promise<void> {
    await this.db.connection((c) => c.run(
      `INSERT INTO ca_journal (id, data, updated_at) VALUES (1, ?, ?)
       ON CONFLICT (id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at`,
      [Buffer.from(blob), Date.now()]));
  }

  close(): Promise<void> {
    return this.db.close();
  }
}

function rowToRelationship(r: SqlRow): FederationRelationship {
  const rel: FederationRelationship = {
    trustDomain: String(r.trust_domain),
    bundleEndpointUrl: String(r.bundle_endpoint_url),
    profile: String(r.profile) as FederationRelationship['profile'],
  };
  const id = str(r.endpoint_spiffe_id);
  if (id !== undefined) rel.endpointSpiffeId = id;
  return rel;
}
