// Crash consistency (issue 18): a real terroir-server killed with SIGKILL in the middle of admin
// entry writes, on SQLite and on PostgreSQL, then restarted on the same data: every acknowledged
// write is there and whole, and a join token used before the crash stays used. bench/crash.ts runs
// twenty of these per datastore; here a few, to keep the suite short.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPostgres, type TestPostgres } from '../support/postgres.js';
import { tempDir } from '../support/tmp.js';
import { crashRun } from './crash-harness.js';

const cleanups: (() => void)[] = [];
afterAll(() => { while (cleanups.length) cleanups.pop()?.(); });
const dir = (): string => {
  const t = tempDir('terroir-crash-');
  cleanups.push(t.cleanup);
  return t.dir;
};

describe('crash consistency', () => {
  it('SQLite: kill -9 after 600 ms of writes loses no acknowledged entry and no token consumption', async () => {
    const d = dir();
    const r = await crashRun({ dir: d, dataStore: { type: 'sqlite', path: `${d}/ds.sqlite3` }, killAfterMs: 600 });
    expect(r.acknowledged).toBeGreaterThan(5);
    expect(r.lost).toEqual([]);
    expect(r.damaged).toEqual([]);
    expect(r.tokenReused).toBe(false);
    expect(r.unusedTokenWorks).toBe(true);
  }, 60_000);

  describe('PostgreSQL', () => {
    let pg: TestPostgres;
    beforeAll(async () => { pg = await startPostgres(); }, 60_000);
    afterAll(async () => { await pg?.stop(); });

    it('kill -9 after 700 ms of writes loses no acknowledged entry and no token consumption', async () => {
      const url = await pg.createDatabase('crash1');
      const r = await crashRun({ dir: dir(), dataStore: { type: 'postgres', connectionString: url }, killAfterMs: 700 });
      expect(r.acknowledged).toBeGreaterThan(5);
      expect(r.lost).toEqual([]);
      expect(r.damaged).toEqual([]);
      expect(r.tokenReused).toBe(false);
      expect(r.unusedTokenWorks).toBe(true);
    }, 60_000);
  });
});
