// Crash consistency at volume (issue 18): twenty kill -9 runs per datastore (SQLite, PostgreSQL),
// each killing a real terroir-server at a random moment of two writers' entry creations, then
// restarting it on the same data. Goal: 0 acknowledged writes lost, 0 damaged, 0 reused join tokens.
//   npx tsx bench/crash.ts              (BENCH_RUNS to change the count)
import os from 'node:os';
import { startPostgres } from '../test/support/postgres.js';
import { tempDir } from '../test/support/tmp.js';
import { crashRun, type CrashRunResult } from '../test/fleet/crash-harness.js';

const RUNS = Number(process.env['BENCH_RUNS'] ?? 20);

function summary(name: string, rs: CrashRunResult[]): void {
  const sum = (f: (r: CrashRunResult) => number): number => rs.reduce((a, r) => a + f(r), 0);
  const restart = rs.map((r) => r.restartMs).sort((a, b) => a - b);
  const lost = sum((r) => r.lost.length);
  const damaged = sum((r) => r.damaged.length);
  const reused = rs.filter((r) => r.tokenReused).length;
  const dead = rs.filter((r) => !r.unusedTokenWorks).length;
  console.log(`${name}: ${rs.length} kill -9 runs, ${sum((r) => r.acknowledged)} acknowledged entry writes (${sum((r) => r.unacknowledged)} more landed unacknowledged)`);
  console.log(`  acknowledged writes lost   ${lost}   goal 0   ${lost === 0 ? 'MET' : 'NOT MET'}`);
  console.log(`  entries damaged            ${damaged}   goal 0   ${damaged === 0 ? 'MET' : 'NOT MET'}`);
  console.log(`  join tokens reused         ${reused}   goal 0   ${reused === 0 ? 'MET' : 'NOT MET'}   (unused tokens refused after restart: ${dead})`);
  console.log(`  restart to a healthy admin API: p50 ${restart[Math.floor(restart.length / 2)]} ms, max ${restart[restart.length - 1]} ms`);
}

async function main(): Promise<void> {
  console.log(`terroir crash consistency — node ${process.version}, ${os.cpus().length} CPUs, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  const kill = (): number => 200 + Math.floor(Math.random() * 1300);
  const sqlite: CrashRunResult[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t = tempDir('terroir-crash-bench-');
    try {
      sqlite.push(await crashRun({ dir: t.dir, dataStore: { type: 'sqlite', path: `${t.dir}/ds.sqlite3` }, killAfterMs: kill() }));
    } finally {
      t.cleanup();
    }
  }
  summary('SQLite', sqlite);
  const pg = await startPostgres({ durable: true });
  const postgres: CrashRunResult[] = [];
  try {
    for (let i = 0; i < RUNS; i++) {
      const t = tempDir('terroir-crash-bench-');
      try {
        postgres.push(await crashRun({ dir: t.dir, dataStore: { type: 'postgres', connectionString: await pg.createDatabase(`crash${i}`) }, killAfterMs: kill() }));
      } finally {
        t.cleanup();
      }
    }
  } finally {
    await pg.stop();
  }
  summary('PostgreSQL (fsync on)', postgres);
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
