// A private PostgreSQL for tests and benchmarks, started from the installed binaries: initdb into
// a temp dir owned by `postgres` (initdb refuses root), a free port, the socket in that dir, and
// stopped by PID. No shared server, no mocks.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { freePort } from './ports.js';

export const PG_BIN = process.env.TERROIR_PG_BIN ?? '/usr/lib/postgresql/15/bin';

export interface PostgresOptions {
  /** Turn off fsync for speed (tests); keep it on to measure real commit cost (benchmarks). Default false. */
  durable?: boolean;
}

export interface TestPostgres {
  port: number;
  /** Connection string for `database` (default `postgres`), over TCP to 127.0.0.1. */
  url(database?: string): string;
  /** Creates an empty database and returns its connection string. */
  createDatabase(name: string): Promise<string>;
  /** Fast shutdown (SIGINT) by PID, SIGKILL after a grace period, then the data dir is removed. */
  stop(): Promise<void>;
  /**
   * Stops the postmaster but keeps its data dir and port, for outage tests: `fast` (SIGINT, clients
   * disconnected, clean shutdown), `immediate` (SIGQUIT, crash recovery at the next start) or `kill`
   * (SIGKILL of the postmaster alone, as a crash; its backends exit once they notice).
   */
  halt(how?: 'fast' | 'immediate' | 'kill'): Promise<void>;
  /** Starts it again on the same data dir and port after halt(); resolves once it accepts connections. */
  resume(): Promise<void>;
}

function postgresUser(): { uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', 'postgres']).toString().trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres']).toString().trim());
  return { uid, gid };
}

async function waitForReady(url: string, child: ChildProcess, log: () => string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`postgres exited with ${child.exitCode}:\n${log()}`);
    const client = new pg.Client({ connectionString: url });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      return;
    } catch {
      await client.end().catch(() => undefined);
    }
    if (Date.now() > deadline) throw new Error(`postgres did not accept connections within ${timeoutMs} ms:\n${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startPostgres(options: PostgresOptions = {}): Promise<TestPostgres> {
  const { uid, gid } = postgresUser();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-pg-'));
  fs.chownSync(dir, uid, gid);
  const data = path.join(dir, 'data');
  const asPostgres = { uid, gid, env: { ...process.env, HOME: dir, LC_ALL: 'C' } };
  try {
    execFileSync(path.join(PG_BIN, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--no-sync'],
      { ...asPostgres, stdio: 'pipe' });
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    const e = err as { stderr?: Buffer };
    throw new Error(`initdb failed: ${e.stderr?.toString() ?? String(err)}`, { cause: err });
  }
  const port = await freePort();
  const args = ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=50'];
  if (!options.durable) args.push('-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off');
  let out = '';
  const launch = (): ChildProcess => {
    const c = spawn(path.join(PG_BIN, 'postgres'), args, { ...asPostgres, stdio: ['ignore', 'pipe', 'pipe'] });
    // If the test process dies without running its afterAll, do not leave a postmaster behind.
    const killOnExit = (): void => { if (c.exitCode === null) c.kill('SIGKILL'); };
    process.once('exit', killOnExit);
    c.once('exit', () => process.off('exit', killOnExit));
    c.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
    c.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
    return c;
  };
  let child = launch();
  const url = (database = 'postgres'): string => `postgres://postgres@127.0.0.1:${port}/${database}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGINT'); // fast shutdown: disconnects clients instead of waiting for them
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  const halt = async (how: 'fast' | 'immediate' | 'kill' = 'fast'): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(how === 'fast' ? 'SIGINT' : how === 'immediate' ? 'SIGQUIT' : 'SIGKILL');
    await exited;
    if (how === 'kill') {
      // Orphaned backends keep the shared memory (and so the data dir) busy until they notice.
      const pidFile = path.join(data, 'postmaster.pid');
      const deadline = Date.now() + 10_000;
      while (fs.existsSync(pidFile) && Date.now() < deadline) {
        try {
          execFileSync(path.join(PG_BIN, 'pg_ctl'), ['status', '-D', data], { ...asPostgres, stdio: 'pipe' });
        } catch {
          break; // pg_ctl: no server running (the stale pid file is fine for the next start)
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  const resume = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) throw new Error('postgres is running: halt() it first');
    child = launch();
    await waitForReady(url(), child, () => out);
  };
  try {
    await waitForReady(url(), child, () => out);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    port,
    url,
    async createDatabase(name: string): Promise<string> {
      if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`not a plain database name: ${name}`);
      const client = new pg.Client({ connectionString: url() });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${name}`);
      } finally {
        await client.end();
      }
      return url(name);
    },
    stop,
    halt,
    resume,
  };
}
