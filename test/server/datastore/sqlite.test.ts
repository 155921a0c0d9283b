import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { openDataStore } from '../../../src/server/datastore/index.js';
import { tempDir } from '../../support/tmp.js';
import { runDataStoreSuite } from './suite.js';

runDataStoreSuite('sqlite', async () => {
  const { dir, cleanup } = tempDir('terroir-ds-');
  const file = path.join(dir, 'sub', 'datastore.sqlite3');
  const store = await openDataStore({ type: 'sqlite', path: file });
  return {
    store,
    reopen: () => openDataStore({ type: 'sqlite', path: file }),
    rawExec: async (sql) => {
      const db = new Database(file);
      try { db.exec(sql); } finally { db.close(); }
    },
    cleanup: async () => cleanup(),
  };
});

describe('SQLite datastore specifics', () => {
  it('runs in WAL mode with files only the server user can read', async () => {
    const { dir, cleanup } = tempDir('terroir-ds-');
    try {
      const file = path.join(dir, 'ds.sqlite3');
      const store = await openDataStore({ type: 'sqlite', path: file });
      await store.createEntries([{ spiffeId: 'spiffe://td/x', parentId: 'spiffe://td/a', selectors: [{ type: 't', value: 'v' }], federatesWith: [] }]);
      expect(fs.statSync(file).mode & 0o777).toBe(0o600);
      expect(fs.statSync(`${file}-wal`).mode & 0o777).toBe(0o600);
      await store.close();
      const db = new Database(file, { readonly: true });
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      db.close();
    } finally {
      cleanup();
    }
  });

  it('says clearly when the database file cannot be opened', async () => {
    const { dir, cleanup } = tempDir('terroir-ds-');
    try {
      fs.writeFileSync(path.join(dir, 'plain-file'), '');
      // The database's directory is a regular file: neither the directory nor the file can exist.
      await expect(openDataStore({ type: 'sqlite', path: path.join(dir, 'plain-file', 'ds.sqlite3') }))
        .rejects.toMatchObject({ code: 'unavailable', message: expect.stringContaining('cannot open SQLite database') });
    } finally {
      cleanup();
    }
  });
});
