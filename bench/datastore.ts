// Datastore benchmark: creating 10,000 entries (SQLite vs PostgreSQL, and through the admin API),
// the authorized-entries query for an agent with 10,000 entries, and the memory a server needs to
// hold and serve 100,000 entries. PostgreSQL is a private instance started from the installed
// binaries with fsync on (durable, like production). Run: npx tsx bench/datastore.ts
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { AdminClient } from '../src/api/admin-api.js';
import { createAdminService, startAdminServer } from '../src/server/admin/index.js';
import { openDataStore, type DataStore, type NewRegistrationEntry } from '../src/server/datastore/index.js';
import { Bundle, TrustDomain } from '../src/spiffe/index.js';
import { startPostgres } from '../test/support/postgres.js';
import { tempDir } from '../test/support/tmp.js';

const TD = 'bench.example';
const AGENT = `spiffe://${TD}/agent/join_token/bench`;
const BATCH = 100;

function entries(n: number, prefix: string, parentId = AGENT): NewRegistrationEntry[] {
  return Array.from({ length: n }, (_, i) => ({
    spiffeId: `spiffe://${TD}/${prefix}/workload-${i}`,
    parentId,
    selectors: [{ type: 'unix', value: `uid:${10000 + i}` }, { type: 'unix', value: 'gid:100' }],
    federatesWith: [],
    x509SvidTtl: 3600,
  }));
}

async function createAll(store: DataStore, list: NewRegistrationEntry[]): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < list.length; i += BATCH) {
    const res = await store.createEntries(list.slice(i, i + BATCH));
    if (res.some((r) => !r.ok)) throw new Error('benchmark entry creation failed');
  }
  return performance.now() - t0;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function timeIt(fn: () => Promise<unknown>, runs: number): Promise<number> {
  const ms: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  return median(ms);
}

async function syncFigures(name: string, store: DataStore): Promise<void> {
  await store.listAuthorizedEntries(AGENT, []); // warm-up
  const full = await timeIt(async () => {
    const got = await store.listAuthorizedEntries(AGENT, []);
    if (got.length !== 10_000) throw new Error(`expected 10000 authorized entries, got ${got.length}`);
  }, 9);
  const unchanged = await timeIt(() => store.entriesRevision(), 101);
  console.log(`${name.padEnd(10)} listAuthorizedEntries (10,000 entries): ${full.toFixed(1)} ms   entriesRevision (unchanged check): ${unchanged.toFixed(3)} ms`);
}

/** Child mode: load 100,000 entries into a fresh SQLite store, list them all, report RSS. */
async function rssChild(): Promise<void> {
  const { dir, cleanup } = tempDir('terroir-bench-');
  try {
    global.gc?.();
    const before = process.memoryUsage().rss;
    const store = await openDataStore({ type: 'sqlite', path: path.join(dir, 'ds.sqlite3') });
    const t0 = performance.now();
    for (let k = 0; k < 10; k++) await createAll(store, entries(10_000, `rss${k}`));
    const loadMs = performance.now() - t0;
    const afterLoad = process.memoryUsage().rss;
    const t1 = performance.now();
    const all = await store.listAuthorizedEntries(AGENT, []);
    const listMs = performance.now() - t1;
    const peak = process.memoryUsage().rss;
    console.log(JSON.stringify({ before, afterLoad, peak, loadMs, listMs, count: all.length }));
    await store.close();
  } finally {
    cleanup();
  }
}

async function main(): Promise<void> {
  const mb = (b: number): string => `${(b / 1024 / 1024).toFixed(0)} MB`;
  console.log(`terroir datastore benchmark — node ${process.version}, ${new Date().toISOString()}`);
  const { dir, cleanup } = tempDir('terroir-bench-');
  const pg = await startPostgres({ durable: true });
  try {
    // 1. Creating 10,000 entries in batches of 100, straight into each datastore.
    const sqlite = await openDataStore({ type: 'sqlite', path: path.join(dir, 'ds.sqlite3') });
    const postgres = await openDataStore({ type: 'postgres', connectionString: await pg.createDatabase('bench'), poolSize: 4 });
    // Three rounds each (the first under the agent the sync figures use), median reported: the
    // machine may be busy with other work.
    for (const [name, store] of [['sqlite', sqlite], ['postgres', postgres]] as const) {
      const runs: number[] = [];
      for (let r = 0; r < 3; r++) {
        runs.push(await createAll(store, entries(10_000, `create${r}`, r === 0 ? AGENT : `${AGENT}-other-${r}`)));
      }
      const ms = median(runs);
      console.log(`${name.padEnd(10)} create 10,000 entries (batches of ${BATCH}): median of 3 ${(ms / 1000).toFixed(2)} s = ` +
        `${Math.round(10_000 / (ms / 1000))} entries/s (best ${Math.round(10_000 / (Math.min(...runs) / 1000))})`);
    }

    // 2. The agent-API sync query over those 10,000 entries.
    await syncFigures('sqlite', sqlite);
    await syncFigures('postgres', postgres);

    // 3. The same creation through the admin API (gRPC over the Unix socket), SQLite behind it.
    const adminStore = await openDataStore({ type: 'sqlite', path: path.join(dir, 'admin.sqlite3') });
    const td = TrustDomain.parse(TD);
    const service = createAdminService({ store: adminStore, trustDomain: td, logger: pino({ level: 'silent' }), bundleProvider: () => new Bundle(td) });
    const admin = await startAdminServer(path.join(dir, 'private', 'api.sock'), service);
    const client = new AdminClient(admin.socketPath);
    const list = entries(10_000, 'admin').map((e) => ({ ...e }));
    const t0 = performance.now();
    for (let i = 0; i < list.length; i += BATCH) {
      const res = await client.call('BatchCreateEntry', { entries: list.slice(i, i + BATCH) });
      if (res.results.some((r) => r.status.code !== 0)) throw new Error('admin API creation failed');
    }
    const adminMs = performance.now() - t0;
    console.log(`admin API  create 10,000 entries (BatchCreateEntry x ${10_000 / BATCH}, sqlite): ${(adminMs / 1000).toFixed(2)} s = ${Math.round(10_000 / (adminMs / 1000))} entries/s`);
    client.close();
    await admin.close();
    await adminStore.close();
    await sqlite.close();
    await postgres.close();
  } finally {
    await pg.stop();
    cleanup();
  }

  // 4. 100,000 entries, in a fresh process so the figure is the datastore's alone.
  const self = fileURLToPath(import.meta.url);
  const out = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', self, '--rss-child'], { maxBuffer: 1 << 20 }).toString();
  const r = JSON.parse(out.trim().split('\n').pop()!) as { before: number; afterLoad: number; peak: number; loadMs: number; listMs: number; count: number };
  console.log(`sqlite     100,000 entries: loaded in ${(r.loadMs / 1000).toFixed(1)} s; RSS ${mb(r.before)} before, ${mb(r.afterLoad)} after loading, ` +
    `${mb(r.peak)} after listing all ${r.count} for one agent (${r.listMs.toFixed(0)} ms); goal: RSS <= 500 MB`);
}

if (process.argv.includes('--rss-child')) await rssChild();
else await main();
