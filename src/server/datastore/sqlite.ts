// SQLite backend: better-sqlite3 (synchronous, in-process) in WAL mode. One connection serves the
// whole server; an async lock keeps one caller's transaction from interleaving with another's.
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { migrate } from './schema.js';
import { SqlDataStore } from './sql-store.js';
import type { SqlConn, SqlDriver, SqlRow, SqlValue } from './sql-driver.js';
import { DataStoreError } from './types.js';

/**
 * A full disk or failing storage as the datastore's `unavailable` (UNAVAILABLE to callers, saying what
 * to do), not an internal error: the request was refused and SQLite rolled it back.
 */
function storageError(err: unknown, file: string): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  if (code === 'SQLITE_FULL') {
    return new DataStoreError('unavailable', `the SQLite database's disk is full (${file}): nothing was written; free space on that file system and retry`, { cause: err });
  }
  if (typeof code === 'string' && code.startsWith('SQLITE_IOERR')) {
    return new DataStoreError('unavailable', `the SQLite database's storage failed (${code}: ${(err as Error).message}, ${file}): nothing was written; check the disk (free space, errors) and retry`, { cause: err });
  }
  return err;
}

class SqliteDriver implements SqlDriver {
  readonly dialect = 'sqlite' as const;
  private readonly statements = new Map<string, Database.Statement>();
  private queue: Promise<unknown> = Promise.resolve();
  private readonly conn: SqlConn;

  constructor(private readonly db: Database.Database, private readonly file: string) {
    this.conn = {
      query: async (sql, params = []) => this.exec(sql, params).rows,
      run: async (sql, params = []) => this.exec(sql, params).changes,
    };
  }

  private prepare(sql: string): Database.Statement {
    let st = this.statements.get(sql);
    if (st === undefined) {
      st = this.db.prepare(sql);
      st.safeIntegers(true);
      this.statements.set(sql, st);
    }
    return st;
  }

  private exec(sql: string, params: SqlValue[]): { rows: SqlRow[]; changes: number } {
    const st = this.prepare(sql);
    if (st.reader) {
      const rows = st.all(...params) as SqlRow[];
      return { rows, changes: rows.length };
    }
    return { rows: [], changes: st.run(...params).changes };
  }

  /** Runs `fn` after everything queued before it: the single connection is never shared mid-transaction. */
  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.queue.then(fn, fn);
    this.queue = result.catch(() => undefined);
    return result;
  }

  transaction<T>(fn: (conn: SqlConn) => Promise<T>, mode: 'write' | 'read' = 'write'): Promise<T> {
    return this.serialize(() => this.inTransaction(fn, mode)).catch((err: unknown) => { throw storageError(err, this.file); });
  }

  private async inTransaction<T>(fn: (conn: SqlConn) => Promise<T>, mode: 'write' | 'read'): Promise<T> {
    // IMMEDIATE takes the write lock up front, so a writer never fails half-way on SQLITE_BUSY.
    this.prepare(mode === 'write' ? 'BEGIN IMMEDIATE' : 'BEGIN DEFERRED').run();
    try {
      const out = await fn(this.conn);
      this.prepare('COMMIT').run();
      return out;
    } catch (err) {
      if (this.db.inTransaction) this.prepare('ROLLBACK').run();
      throw err;
    }
  }

  connection<T>(fn: (conn: SqlConn) => Promise<T>): Promise<T> {
    return this.serialize(() => fn(this.conn)).catch((err: unknown) => { throw storageError(err, this.file); });
  }

  isUniqueViolation(err: unknown): boolean {
    const code = (err as { code?: unknown } | null)?.code;
    return code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY';
  }

  close(): Promise<void> {
    return this.serialize(async () => {
      this.statements.clear();
      this.db.close();
    });
  }
}

/** Opens (creating if needed) the SQLite database at `file` and brings its schema up to date. */
export async function openSqliteDataStore(file: string): Promise<SqlDataStore> {
  let db: Database.Database;
  try {
    if (file !== ':memory:') {
      fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
      // Created 0600 before SQLite opens it (SQLite gives the -wal/-shm files the same mode):
      // attestation data and node records are nobody else's business.
      fs.closeSync(fs.openSync(file, 'a', 0o600));
    }
    db = new Database(file);
  } catch (err) {
    throw new DataStoreError('unavailable', `cannot open SQLite database ${file}: ${(err as Error).message}`, { cause: err });
  }
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    // Several processes may open one file (e.g. a CLI next to the server): wait rather than fail.
    db.pragma('busy_timeout = 5000');
    const driver = new SqliteDriver(db, file);
    await migrate(driver);
    return new SqlDataStore(driver);
  } catch (err) {
    db.close();
    throw err;
  }
}
