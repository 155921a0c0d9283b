// kill -9 of a real terroir-server process in the middle of admin writes, then a restart on the same
// datastore (SQLite file or PostgreSQL): every write the server acknowledged must be there, whole;
// join tokens consumed before the crash stay consumed. Used by test/fleet/crash.test.ts (a couple of
// runs) and bench/crash.ts (twenty per datastore).
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createCsr, generateKeyPair } from '../../src/agent/csr.js';
import { attestNode, NodeAttestationError } from '../../src/agent/node-attestor.js';
import { connectToServer } from '../../src/agent/server-conn.js';
import { AdminClient, type Entry } from '../../src/api/admin-api.js';
import { freePort } from '../support/ports.js';

const TD = 'crash.test';
const CLI = path.resolve(import.meta.dirname, '../../src/cli/terroir-server.ts');

export interface CrashRunResult {
  /** Entry writes the server answered OK before it died. */
  acknowledged: number;
  /** Acknowledged entries missing after the restart (must be none). */
  lost: string[];
  /** Entries present after the restart whose fields differ from what was written (must be none). */
  damaged: string[];
  /** Entries present that were never acknowledged (written but the answer was lost: allowed). */
  unacknowledged: number;
  /** A join token used before the crash that worked again after it (must be false). */
  tokenReused: boolean;
  /** A token issued but unused before the crash that works once after it (must be true). */
  unusedTokenWorks: boolean;
  /** The restart: from spawn to a healthy admin API (ms). */
  restartMs: number;
}

interface ServerProc { child: ChildProcess; admin: AdminClient; agentPort: number }

async function startServerProcess(cfgFile: string, socket: string, agentPort: number): Promise<ServerProc & { startedMs: number }> {
  const t0 = Date.now();
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', cfgFile], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-4000); });
  const admin = new AdminClient(socket);
  for (;;) {
    if (child.exitCode !== null) throw new Error(`terroir-server exited (${child.exitCode}) while starting: ${stderr}`);
    const ok = fs.existsSync(socket) && await admin.call('Healthcheck', {}, 1000).then(() => true, () => false);
    if (ok) break;
    if (Date.now() - t0 > 30_000) { child.kill('SIGKILL'); throw new Error(`terroir-server did not come up in 30 s: ${stderr}`); }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, admin, agentPort, startedMs: Date.now() - t0 };
}

async function killHard(p: ServerProc): Promise<void> {
  p.admin.close();
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise((r) => p.child.once('exit', r));
  p.child.kill('SIGKILL');
  await exited;
}

async function joinWith(p: ServerProc, token: string, bundleDer: Buffer[]): Promise<boolean> {
  const client = connectToServer({ address: '127.0.0.1', port: p.agentPort, trustDomain: TD, roots: bundleDer });
  try {
    await attestNode(client, { csr: createCsr(generateKeyPair()), joinToken: token, timeoutMs: 10_000 });
    return true;
  } catch (e) {
    if (e instanceof NodeAttestationError && e.code === 'refused') return false;
    throw e;
  } finally {
    client.close();
  }
}

async function listAll(admin: AdminClient): Promise<Entry[]> {
  const out: Entry[] = [];
  let pageToken = '';
  do {
    const res = await admin.call('ListEntries', { pageSize: 500, pageToken });
    out.push(...res.entries);
    pageToken = res.nextPageToken;
  } while (pageToken !== '');
  return out;
}

/**
 * One crash run in `dir`: a server on `dataStore`, 2 writers creating entries (each with 3 selectors
 * and DNS names, so a half-written entry would show), SIGKILL after `killAfterMs`, restart, check.
 */
export async function crashRun(o: { dir: string; dataStore: Record<string, unknown>; killAfterMs: number }): Promise<CrashRunResult> {
  const socket = path.join(o.dir, 'admin.sock');
  const agentPort = await freePort();
  const cfgFile = path.join(o.dir, 'server.yaml');
  fs.writeFileSync(cfgFile, JSON.stringify({
    trustDomain: TD, dataDir: path.join(o.dir, 'data'), logLevel: 'silent', dataStore: o.dataStore,
    ca: { keyStore: 'disk', ttl: '1d', x509SvidTtl: '1h' },
    agentApi: { bindAddress: '127.0.0.1', port: agentPort, attestationRateLimit: { perSecond: 1000, burst: 1000 } },
    adminApi: { socketPath: socket }, health: { enabled: false },
    nodeAttestation: { joinToken: { enabled: true } },
  }));
  let p: ServerProc = await startServerProcess(cfgFile, socket, agentPort);
  const bundleDer = (await p.admin.call('GetBundle', {})).x509Authorities;
  // Two tokens: one used before the crash, one kept for after.
  const used = (await p.admin.call('GenerateJoinToken', { ttl: 600 })).value;
  const unused = (await p.admin.call('GenerateJoinToken', { ttl: 600 })).value;
  if (!(await joinWith(p, used, bundleDer))) throw new Error('a fresh join token was refused before the crash');

  const sent = new Map<string, Partial<Entry>>();
  const acked = new Map<string, string>(); // spiffeId → entry id
  let stop = false;
  const writer = async (w: number): Promise<void> => {
    for (let i = 0; !stop; i++) {
      const spiffeId = `spiffe://${TD}/workload/w${w}-${i}-${crypto.randomBytes(3).toString('hex')}`;
      const entry: Partial<Entry> = {
        spiffeId, parentId: `spiffe://${TD}/node/n${i % 7}`,
        selectors: [{ type: 'unix', value: `uid:${1000 + i}` }, { type: 'unix', value: `gid:${w}` }, { type: 'unix', value: `sha256:${crypto.randomBytes(32).toString('hex')}` }],
        dnsNames: [`w${w}-${i}.crash.test`], x509SvidTtl: 600, jwtSvidTtl: 300,
      };
      sent.set(spiffeId, entry);
      try {
        const res = await p.admin.call('BatchCreateEntry', { entries: [entry] }, 5000);
        const r = res.results[0];
        if (r?.status.code === 0 && r.entry) acked.set(spiffeId, r.entry.id);
      } catch {
        return; // the server died: this write may or may not have landed, it was not acknowledged
      }
    }
  };
  const writers = [writer(0), writer(1)];
  await new Promise((r) => setTimeout(r, o.killAfterMs));
  await killHard(p);
  stop = true;
  await Promise.all(writers);

  const restarted = await startServerProcess(cfgFile, socket, agentPort);
  p = restarted;
  try {
    const present = new Map((await listAll(p.admin)).map((e) => [e.spiffeId, e]));
    const lost = [...acked.keys()].filter((id) => !present.has(id));
    const damaged: string[] = [];
    for (const [id, e] of present) {
      const s = sent.get(id);
      if (s === undefined) { damaged.push(`${id} (never written)`); continue; }
      const same = e.parentId === s.parentId && e.dnsNames.join() === s.dnsNames!.join()
        && e.selectors.map((x) => `${x.type}:${x.value}`).sort().join() === s.selectors!.map((x) => `${x.type}:${x.value}`).sort().join();
      if (!same || (acked.has(id) && acked.get(id) !== e.id)) damaged.push(id);
    }
    const tokenReused = await joinWith(p, used, bundleDer);
    const unusedTokenWorks = await joinWith(p, unused, bundleDer);
    return {
      acknowledged: acked.size, lost, damaged, unacknowledged: [...present.keys()].filter((id) => !acked.has(id)).length,
      tokenReused, unusedTokenWorks, restartMs: restarted.startedMs,
    };
  } finally {
    await killHard(p);
  }
}
