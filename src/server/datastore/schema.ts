// Versioned schema migrations. Each backend has its own ordered list of SQL steps; the
// `schema_version` table records how far a database has come. A database migrated by a newer
// terroir (higher version than this build knows) is refused rather than used half-understood.
import { DataStoreError } from './types.js';
import type { SqlConn, SqlDriver } from './sql-driver.js';

interface Migration {
  version: number;
  statements: string[];
}

/** Types differ only where the databases differ; times are Unix milliseconds, flags 0/1. */
function baseSchema(t: { int: string; blob: string }): string[] {
  return [
    `CREATE TABLE entries (
      id TEXT PRIMARY KEY,
      spiffe_id TEXT NOT NULL,
      parent_id TEXT NOT NULL,
      selectors TEXT NOT NULL,
      selectors_key TEXT NOT NULL,
      x509_svid_ttl ${t.int},
      jwt_svid_ttl ${t.int},
      dns_names TEXT,
      federates_with TEXT NOT NULL,
      admin SMALLINT,
      downstream SMALLINT,
      hint TEXT,
      store_svid SMALLINT,
      location_policy TEXT,
      revision ${t.int} NOT NULL,
      created_at ${t.int} NOT NULL
    )`,
    'CREATE UNIQUE INDEX entries_identity ON entries (spiffe_id, parent_id, selectors_key)',
    'CREATE INDEX entries_parent ON entries (parent_id)',
    'CREATE INDEX entries_revision ON entries (revision)',
    `CREATE TABLE entry_selectors (
      entry_id TEXT NOT NULL REFERENCES entries (id) ON DELETE CASCADE,
      type TEXT NOT NULL,
      value TEXT NOT NULL,
      PRIMARY KEY (entry_id, type, value)
    )`,
    'CREATE INDEX entry_selectors_tv ON entry_selectors (type, value)',
    `CREATE TABLE counters (name TEXT PRIMARY KEY, value ${t.int} NOT NULL)`,
    "INSERT INTO counters (name, value) VALUES ('entries', 0)",
    `CREATE TABLE attested_nodes (
      spiffe_id TEXT PRIMARY KEY,
      attestation_type TEXT NOT NULL,
      selectors TEXT NOT NULL,
      serial_number TEXT NOT NULL,
      new_serial_number TEXT,
      expires_at ${t.int} NOT NULL,
      banned SMALLINT NOT NULL,
      attestation_data TEXT NOT NULL,
      claims TEXT,
      created_at ${t.int} NOT NULL,
      updated_at ${t.int} NOT NULL
    )`,
    'CREATE INDEX attested_nodes_expires ON attested_nodes (expires_at)',
    `CREATE TABLE join_tokens (token_hash TEXT PRIMARY KEY, expires_at ${t.int} NOT NULL, spiffe_id TEXT)`,
    `CREATE TABLE used_nonces (nonce_hash TEXT PRIMARY KEY, expires_at ${t.int} NOT NULL)`,
    'CREATE INDEX used_nonces_expires ON used_nonces (expires_at)',
    `CREATE TABLE bundles (trust_domain TEXT PRIMARY KEY, bundle_json TEXT NOT NULL, sequence ${t.int} NOT NULL)`,
    `CREATE TABLE federation_relationships (
      trust_domain TEXT PRIMARY KEY,
      bundle_endpoint_url TEXT NOT NULL,
      profile TEXT NOT NULL,
      endpoint_spiffe_id TEXT
    )`,
    `CREATE TABLE ca_journal (id SMALLINT PRIMARY KEY, data ${t.blob} NOT NULL, updated_at ${t.int} NOT NULL)`,
  ];
}

/**
 * Version 2: the evidence log (docs/evidence-log.md). Leaves are append-only (index = position in
 * the Merkle tree); `body` is NULL once retention pruned it, `leaf_hash` stays forever. `tag` is a
 * lookup key (a node's SPIFFE ID, a policy digest). evidence_nodes holds every complete subtree
 * hash, so proofs and roots read O(log n) rows.
 */
function evidenceSchema(t: { int: string; blob: string }): string[] {
  return [
    `CREATE TABLE evidence_leaves (
      idx ${t.int} PRIMARY KEY,
      kind TEXT NOT NULL,
      tag TEXT,
      time ${t.int} NOT NULL,
      leaf_hash ${t.blob} NOT NULL,
      body ${t.blob}
    )`,
    'CREATE INDEX evidence_leaves_tag ON evidence_leaves (kind, tag, idx)',
    'CREATE INDEX evidence_leaves_time ON evidence_leaves (time)',
    `CREATE TABLE evidence_nodes (level SMALLINT NOT NULL, idx ${t.int} NOT NULL, hash ${t.blob} NOT NULL, PRIMARY KEY (level, idx))`,
    `CREATE TABLE evidence_checkpoints (size ${t.int} PRIMARY KEY, root ${t.blob} NOT NULL, note TEXT NOT NULL, created_at ${t.int} NOT NULL)`,
  ];
}

const MIGRATIONS: Record<SqlDriver['dialect'], Migration[]> = {
  sqlite: [
    { version: 1, statements: baseSchema({ int: 'INTEGER', blob: 'BLOB' }) },
    { version: 2, statements: evidenceSchema({ int: 'INTEGER', blob: 'BLOB' }) },
  ],
  postgres: [
    { version: 1, statements: baseSchema({ int: 'BIGINT', blob: 'BYTEA' }) },
    { version: 2, statements: evidenceSchema({ int: 'BIGINT', blob: 'BYTEA' }) },
  ],
};

/** The schema version this build writes and understands. */
export const SCHEMA_VERSION = 2;

async function currentVersion(conn: SqlConn): Promise<number> {
  const rows = await conn.query('SELECT MAX(version) AS v FROM schema_version');
  const v = rows[0]?.v;
  return v === null || v === undefined ? 0 : Number(v);
}

/**
 * Brings the database to SCHEMA_VERSION. Safe to run from several servers at once: PostgreSQL
 * takes an advisory lock for the duration, SQLite's write transaction is exclusive anyway.
 */
export async function migrate(driver: SqlDriver, target = SCHEMA_VERSION): Promise<number> {
  const migrations = MIGRATIONS[driver.dialect];
  return driver.transaction(async (conn) => {
    if (driver.dialect === 'postgres') await conn.query('SELECT pg_advisory_xact_lock(7262730)');
    await conn.run('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
    const have = await currentVersion(conn);
    const known = migrations[migrations.length - 1]?.version ?? 0;
    if (have > known) {
      throw new DataStoreError('schema_too_new',
        `the database schema is at version ${have} but this terroir-server only knows versions up to ${known}; ` +
        'run a newer terroir-server against it (or restore a backup made before the upgrade)');
    }
    for (const m of migrations) {
      if (m.version <= have || m.version > target) continue;
      for (const sql of m.statements) await conn.run(sql);
      await conn.run('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)', [m.version, Date.now()]);
    }
    return currentVersion(conn);
  });
}
