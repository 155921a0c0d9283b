// PostgreSQL backend for HA: several servers share one database. Single-use semantics (join
// tokens, nonces) rest on row-level atomicity (DELETE … RETURNING, unique keys), which holds
// across connections and servers.
import pg from 'pg';
import { migrate } from './schema.js';
import { SqlDataStore } from './sql-store.js';
import type { SqlConn, SqlDriver, SqlRow, SqlValue } from './sql-driver.js';
import { DataStoreError } from './types.js';

/** `?` → `$1, $2, …` (our SQL never has `?` inside a literal). */
const rewritten = new Map<string, string>();
function toPg(sql: string): string {
  let out = rewritten.get(sql);
  if (out === undefined) {
    let i = 0;
    out = sql.replace(/\?/g, () => `$${++i}`);
    rewritten.set(sql, out);
  }
  return out;
}

/** pg does not serialise bigint itself. */
function toPgParams(params: SqlValue[]): unknown[] {
  return params.map((p) => (typeof p === 'bigint' ? p.toString() : p));
}

type Queryable = pg.Pool | pg.PoolClient;

/** Errors that mean the database is out of reach (down, restarting, connection cut), not that the request was wrong. */
const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', '57P01', '57P02', '57P03']);
function connectionLost(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | null;
  const code = typeof e?.code === 'string' ? e.code : '';
  if (CONNECTION_CODES.has(code) || code.startsWith('08')) return true;
  return typeof e?.message === 'string' && /Connection terminated|connection timeout|Client has encountered a connection error/i.test(e.message);
}

/** A lost connection as the datastore's `unavailable` (UNAVAILABLE to callers); anything else unchanged. */
function unavailable(err: unknown): unknown {
  if (!connectionLost(err)) return err;
  return new DataStoreError('unavailable', `PostgreSQL is unreachable (${(err as Error).message}): the request failed; retry once the database is back `
    + '(a write cut off at its commit may have been applied)', { cause: err });
}

function connOf(q: Queryable): SqlConn {
  return {
    query: async (sql, params = []) => (await q.query(toPg(sql), toPgParams(params))).rows as SqlRow[],
    run: async (sql, params = []) => (await q.query(toPg(sql), toPgParams(params))).rowCount ?? 0,
  };
}

class PostgresDriver implements SqlDriver {
  readonly dialect = 'postgres' as const;
  constructor(private readonly pool: pg.Pool) {}

  async transaction<T>(fn: (conn: SqlConn) => Promise<T>, mode: 'write' | 'read' = 'write'): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw unavailable(err);
    }
    let broken = false;
    // A checked-out client whose connection drops between queries emits 'error': unheard, that is an
    // uncaught exception (the server would crash). The failing query reports it; the client is dropped.
    const onError = (): void => { broken = true; };
    client.on('error', onError);
    try {
      await client.query(mode === 'write' ? 'BEGIN' : 'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      try {
        const out = await fn(connOf(client));
        await client.query('COMMIT');
        return out;
      } catch (err) {
        // A connection that cannot even roll back is not put back into the pool.
        await client.query('ROLLBACK').catch(() => { broken = true; });
        throw err;
      }
    } catch (err) {
      throw unavailable(err);
    } finally {
      client.off('error', onError);
      client.release(broken);
    }
  }

  async connection<T>(fn: (conn: SqlConn) => Promise<T>): Promise<T> {
    try {
      return await fn(connOf(this.pool));
    } catch (err) {
      throw unavailable(err);
    }
  }

  isUniqueViolation(err: unknown): boolean {
    return (err as { code?: unknown } | null)?.code === '23505';
  }

  close(): Promise<void> {
    return this.pool.end();
  }
}

/** Connects to PostgreSQL (`postgres://user@host:port/db`) and brings the schema up to date. */
export async function openPostgresDataStore(connectionString: string, poolSize = 10): Promise<SqlDataStore> {
  const pool = new pg.Pool({ connectionString, max: poolSize });
  // An idle client losing its connection must not crash the server; the next query reconnects.
  pool.on('error', () => undefined);
  try {
    await migrate(new PostgresDriver(pool));
  } catch (err) {
    await pool.end();
    if (err instanceof DataStoreError) throw err;
    throw new DataStoreError('unavailable', `cannot prepare the PostgreSQL datastore: ${(err as Error).message}`, { cause: err });
  }
  return new SqlDataStore(new PostgresDriver(pool));
}
