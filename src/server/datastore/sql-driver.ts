// The little a SQL backend has to provide so one store implementation serves SQLite and PostgreSQL.
// Statements use `?` placeholders; a driver rewrites them for its database.

export type SqlValue = string | number | bigint | Buffer | null;
export type SqlRow = Record<string, unknown>;

export interface SqlConn {
  /** Runs one statement; returns its rows (empty for statements without a result). */
  query(sql: string, params?: SqlValue[]): Promise<SqlRow[]>;
  /** Runs one statement; returns the number of rows it changed (or returned, with RETURNING). */
  run(sql: string, params?: SqlValue[]): Promise<number>;
}

export interface SqlDriver {
  readonly dialect: 'sqlite' | 'postgres';
  /**
   * Runs `fn` in one transaction: committed if it resolves, rolled back if it throws. A read-only
   * transaction sees one consistent snapshot and takes no write lock.
   */
  transaction<T>(fn: (conn: SqlConn) => Promise<T>, mode?: 'write' | 'read'): Promise<T>;
  /** Runs `fn` outside an explicit transaction (each statement on its own). */
  connection<T>(fn: (conn: SqlConn) => Promise<T>): Promise<T>;
  /** True if the error is a unique-constraint violation. */
  isUniqueViolation(err: unknown): boolean;
  close(): Promise<void>;
}
