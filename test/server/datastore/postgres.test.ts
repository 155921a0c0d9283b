import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDataStore } from '../../../src/server/datastore/index.js';
import { startPostgres, type TestPostgres } from '../../support/postgres.js';
import { runDataStoreSuite } from './suite.js';

let server: TestPostgres;
let n = 0;
beforeAll(async () => { server = await startPostgres(); });
afterAll(async () => { await server?.stop(); });

runDataStoreSuite('postgres', async () => {
  const url = await server.createDatabase(`ds_${process.pid}_${n++}`);
  const store = await openDataStore({ type: 'postgres', connectionString: url, poolSize: 4 });
  return {
    store,
    reopen: () => openDataStore({ type: 'postgres', connectionString: url, poolSize: 4 }),
    rawExec: async (sql) => {
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      try { await c.query(sql); } finally { await c.end(); }
    },
    cleanup: async () => undefined,
  };
});

describe('PostgreSQL datastore specifics', () => {
  it('migrates once when several servers start at the same time', async () => {
    const url = await server.createDatabase(`ds_${process.pid}_mig`);
    const stores = await Promise.all([1, 2, 3].map(() => openDataStore({ type: 'postgres', connectionString: url, poolSize: 2 })));
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    const rows = (await c.query('SELECT version FROM schema_version ORDER BY version')).rows;
    await c.end();
    expect(rows).toEqual([{ version: 1 }, { version: 2 }]);
    await Promise.all(stores.map((s) => s.close()));
  });

  it('serialises entry writes from several servers: every batch gets its own revision', async () => {
    const url = await server.createDatabase(`ds_${process.pid}_rev`);
    const stores = await Promise.all([1, 2, 3].map(() => openDataStore({ type: 'postgres', connectionString: url, poolSize: 3 })));
    try {
      const batch = (i: number, j: number) => [0, 1, 2].map((k) => ({
        spiffeId: `spiffe://example.org/w/${i}-${j}-${k}`, parentId: 'spiffe://example.org/agent/a',
        selectors: [{ type: 'unix', value: `uid:${k}` }], federatesWith: [],
      }));
      const batches = await Promise.all(stores.flatMap((s, i) => [0, 1, 2, 3].map((j) => s.createEntries(batch(i, j)))));
      const revisions = batches.map((b) => {
        const first = b[0]!;
        if (!first.ok) throw new Error(first.message);
        expect(b.every((r) => r.ok && r.value.revision === first.value.revision)).toBe(true);
        return first.value.revision;
      });
      expect(new Set(revisions).size).toBe(12);
      expect(await stores[0]!.entriesRevision()).toBe(12n);
      expect((await stores[1]!.listEntries()).length).toBe(36);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it('says clearly when the database is unreachable', async () => {
    await expect(openDataStore({ type: 'postgres', connectionString: `postgres://postgres@127.0.0.1:${server.port}/no_such_db` }))
      .rejects.toMatchObject({ code: 'unavailable', message: expect.stringContaining('no_such_db') });
  });
});
