// Runs the dependency-free Workload API client (clients/wire-client.mjs) as another user. The
// script is copied into a world-readable temp directory first: the repository itself may sit where
// that user cannot read (CI clones under root's home).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const SOURCE = path.resolve(import.meta.dirname, 'clients/wire-client.mjs');

/** Copies the client into `dir` (created, made 0755) and returns its path. */
export function installWireClient(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
  const dest = path.join(dir, 'wire-client.mjs');
  fs.copyFileSync(SOURCE, dest);
  fs.chmodSync(dest, 0o644);
  return dest;
}

function setprivArgs(uid: number, script: string, args: string[]): string[] {
  return [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', process.execPath, script, ...args];
}

/** Runs the client to completion as `uid`; resolves with the JSON line it printed. */
export function runWireClientAs<T>(uid: number, script: string, args: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    execFile('setpriv', setprivArgs(uid, script, args), { cwd: path.dirname(script), timeout: 20_000 }, (err, stdout, stderr) => {
      const line = stdout.trim().split('\n').at(-1) ?? '';
      try {
        resolve(JSON.parse(line) as T);
      } catch {
        reject(new Error(`client printed no result (${err?.message ?? ''}): ${stdout} ${stderr}`));
      }
    });
  });
}

/** Starts the client as `uid` (long-running modes such as mtls). */
export function spawnWireClientAs(uid: number, script: string, args: string[]): ChildProcess {
  return spawn('setpriv', setprivArgs(uid, script, args), { cwd: path.dirname(script), stdio: ['ignore', 'pipe', 'pipe'] });
}
