// Fleet simulator (issue 18): a real terroir-server process, and many agent protocol clients spread
// over child processes (each "agent" holds its own agent SVID, so its own mTLS channel: one TCP+TLS
// connection per agent, as a real fleet has). Each simulated agent does what src/agent/agent.ts does
// on the wire: join-token attestation, a WatchAgent stream (sync on READY and ENTRIES_CHANGED), a
// SyncEntries every 5 s (SPIRE's default interval), BatchNewX509Svid for its entries at half their
// TTL, and RenewAgent at half its own SVID's lifetime (then a new channel: the old serial is refused).
// Used by test/fleet/fleet.test.ts (a couple hundred agents) and bench/fleet.ts (thousands).
// The same file is the worker: forked with TERROIR_FLEET_WORKER=1 it runs runWorker() below.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import crypto, { type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { createCsr, generateKeyPair } from '../../src/agent/csr.js';
import { spiffeServerIdentityCheck } from '../../src/agent/server-conn.js';
import { ADMIN_API_MAX_BATCH, AdminClient } from '../../src/api/admin-api.js';
import {
  AGENT_API_CHANNEL_OPTIONS, agentServiceClient, type AgentEvent, type AttestAgentRequest, type AttestAgentResponse,
  type BatchNewX509SvidResponse, type RegistrationEntry, type RenewAgentResponse, type SyncEntriesResponse,
} from '../../src/api/agent-api.js';
import { derToPem } from '../../src/spiffe/index.js';

export const FLEET_TD = 'fleet.test';
const CLI = path.resolve(import.meta.dirname, '../../src/cli/terroir-server.ts');
const SELF = import.meta.filename;

// ------------------------------------------------------------------ the server process

export interface FleetServerOptions {
  dir: string;
  dataStore: Record<string, unknown>;
  /** Agent SVID lifetime (s): agents renew at half of it. */
  agentSvidTtlS: number;
  /** Connection and attestation limits raised for a fleet from one source address. */
  maxConnections: number;
}

export interface FleetServer {
  pid: number;
  agentPort: number;
  admin: AdminClient;
  roots: Buffer[];
  /** ms from spawn to a healthy admin API. */
  startedMs: number;
  /** SIGTERM, wait for the exit (SIGKILL after 20 s). */
  stop(): Promise<void>;
  restart(): Promise<void>;
  /** The last lines of the server's stderr (for failures). */
  log(): string;
}

/** What the bench raises above the defaults, so the report can say so. */
export function fleetServerConfig(o: FleetServerOptions, agentPort: number, socket: string): Record<string, unknown> {
  return {
    trustDomain: FLEET_TD, dataDir: path.join(o.dir, 'data'), logLevel: 'warn', dataStore: o.dataStore,
    ca: { keyStore: 'disk', ttl: '1d', x509SvidTtl: o.agentSvidTtlS },
    agentApi: {
      bindAddress: '127.0.0.1', port: agentPort,
      // Every simulated agent comes from 127.0.0.1: the per-source defaults (10 attestations at once
      // then 2/s; 256 connections) are meant for one address per node.
      attestationRateLimit: { perSecond: 100_000, burst: 100_000 },
      connections: { maxPerSource: o.maxConnections, maxTotal: o.maxConnections },
    },
    adminApi: { socketPath: socket }, health: { enabled: false },
    nodeAttestation: { joinToken: { enabled: true } },
  };
}

export async function startFleetServer(o: FleetServerOptions, agentPort: number): Promise<FleetServer> {
  const socket = path.join(o.dir, 'admin.sock');
  const cfgFile = path.join(o.dir, 'server.yaml');
  fs.writeFileSync(cfgFile, JSON.stringify(fleetServerConfig(o, agentPort, socket)));
  let child: ChildProcess;
  let stderr = '';
  let admin: AdminClient;
  const launch = async (): Promise<number> => {
    const t0 = Date.now();
    // The log (pino, stdout, level warn) and stderr both kept, the last 8 KB: what the server complained about.
    child = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', cfgFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (c: Buffer): void => { stderr = (stderr + c.toString()).slice(-8000); };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    admin = new AdminClient(socket);
    for (;;) {
      if (child.exitCode !== null) throw new Error(`terroir-server exited (${child.exitCode}) while starting: ${stderr}`);
      const ok = fs.existsSync(socket) && await admin.call('Healthcheck', {}, 1000).then(() => true, () => false);
      if (ok) return Date.now() - t0;
      if (Date.now() - t0 > 60_000) { child.kill('SIGKILL'); throw new Error(`terroir-server did not come up in 60 s: ${stderr}`); }
      await sleep(50);
    }
  };
  const stop = async (): Promise<void> => {
    admin.close();
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(t);
  };
  const startedMs = await launch();
  const roots = (await admin!.call('GetBundle', {})).x509Authorities;
  const s: FleetServer = {
    get pid() { return child.pid!; },
    agentPort,
    get admin() { return admin; },
    roots, startedMs,
    stop,
    async restart() { await stop(); s.startedMs = await launch(); },
    log: () => stderr,
  };
  return s;
}

const CLK_TCK = 100; // Linux USER_HZ on every mainstream kernel (getconf CLK_TCK)

/** CPU seconds (user+system, all threads) and resident memory of another process, from /proc. */
export function procStats(pid: number): { cpuS: number; rssBytes: number; hwmBytes: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the ")" of the command name: state is field 3, utime 14, stime 15.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const cpuS = (Number(f[11]) + Number(f[12])) / CLK_TCK;
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { cpuS, rssBytes: kb('VmRSS'), hwmBytes: kb('VmHWM') };
}

// ------------------------------------------------------------------ admin helpers

export async function generateTokens(admin: AdminClient, n: number, concurrency = 16): Promise<string[]> {
  const out: string[] = new Array<string>(n);
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < n) {
      const i = next++;
      out[i] = (await admin.call('GenerateJoinToken', { ttl: 3600 })).value;
    }
  }));
  return out;
}

export const agentIdOf = (token: string): string => `spiffe://${FLEET_TD}/agent/join_token/${token}`;

/**
 * One workload entry per agent, parented by the agent's ID (join-token nodes have no selectors, so
 * no node-alias entry can select them: every join-token node's workloads hang off its own ID).
 * Returns the entry ids in token order.
 */
export async function createAgentEntries(admin: AdminClient, tokens: string[], ttlS: number, hint: string): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < tokens.length; i += ADMIN_API_MAX_BATCH) {
    const entries = tokens.slice(i, i + ADMIN_API_MAX_BATCH).map((t, j) => ({
      spiffeId: `spiffe://${FLEET_TD}/workload/w${i + j}`, parentId: agentIdOf(t),
      selectors: [{ type: 'unix', value: 'uid:1000' }], x509SvidTtl: ttlS, hint,
    }));
    const res = await admin.call('BatchCreateEntry', { entries }, 120_000);
    for (const r of res.results) {
      if (r.status.code !== 0 || !r.entry) throw new Error(`entry create failed: ${r.status.message}`);
      ids.push(r.entry.id);
    }
  }
  return ids;
}

/** The fleet-wide admin change: every agent's entry gets a new hint (batches of the admin API maximum). */
export async function updateHints(admin: AdminClient, ids: string[], hint: string): Promise<void> {
  for (let i = 0; i < ids.length; i += ADMIN_API_MAX_BATCH) {
    const res = await admin.call('BatchUpdateEntry', { entries: ids.slice(i, i + ADMIN_API_MAX_BATCH).map((id) => ({ id, hint })), mask: { hint: true } }, 120_000);
    const bad = res.results.find((r) => r.status.code !== 0);
    if (bad) throw new Error(`entry update failed: ${bad.status.message}`);
  }
}

// ------------------------------------------------------------------ the coordinator's view of workers

export interface WorkerStatus {
  agents: number;
  /** Agents with a successful SyncEntries at or after `since`. */
  syncedSince: number;
  /** Latest first-successful-sync-after-`since` time among them (epoch ms). */
  lastSyncedAt: number;
  /** Agents whose entry shows `marker` as its hint, and when the last of them first saw it. */
  withMarker: number;
  markerMaxAt: number;
  /** Agents holding a workload X.509-SVID. */
  withSvid: number;
}

export interface WorkerStats {
  syncMs: number[];
  fullSyncs: number;
  syncErrors: number;
  svidsSigned: number;
  svidErrors: number;
  agentRenewals: number;
  renewErrors: number;
  watchEvents: number;
  watchErrors: number;
  lastErrors: string[];
}

export interface AttestOutcome {
  ok: number; failed: number; latenciesMs: number[]; doneAt: number; errors: string[];
  attempts?: number;
  /** Failed agents by the gRPC status name of their last attempt. */
  failedBy?: Record<string, number>;
}

type Req = { id: number; t: string } & Record<string, unknown>;

export class FleetWorker {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private constructor(readonly child: ChildProcess) {
    child.on('message', (m: { id: number; ok: boolean; value?: unknown; error?: string }) => {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.value); else p.reject(new Error(m.error));
    });
    child.on('exit', (code) => {
      for (const p of this.pending.values()) p.reject(new Error(`fleet worker exited (${code})`));
      this.pending.clear();
    });
  }

  static async start(init: { agentPort: number; roots: Buffer[] }): Promise<FleetWorker> {
    const child = fork(SELF, [], {
      execArgv: ['--import', 'tsx', '--max-old-space-size=4096'],
      env: { ...process.env, TERROIR_FLEET_WORKER: '1' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const w = new FleetWorker(child);
    await w.call('init', { agentPort: init.agentPort, roots: init.roots.map((r) => r.toString('base64')) });
    return w;
  }

  call<T>(t: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.child.send({ id, t, ...args });
    });
  }

  /** Attests these tokens as long-lived agents (bounded concurrency) and starts their sync loops. */
  bringUp(tokens: string[], concurrency: number): Promise<AttestOutcome> { return this.call('bringUp', { tokens, concurrency }); }
  /** Attests these tokens all at once, each on a fresh connection, and forgets them (the storm). */
  storm(tokens: string[]): Promise<AttestOutcome> { return this.call('storm', { tokens }); }
  status(since: number, marker: string): Promise<WorkerStatus> { return this.call('status', { since, marker }); }
  /** Counters and sync latencies since the last call (then reset). */
  stats(): Promise<WorkerStats> { return this.call('stats'); }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    await this.call('stop').catch(() => undefined);
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }
}

/** Polls the workers until `done` holds of the summed status, or the timeout; returns the last sum. */
export async function waitFleet(workers: FleetWorker[], since: number, marker: string, done: (s: WorkerStatus) => boolean, timeoutMs: number): Promise<WorkerStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const all = await Promise.all(workers.map((w) => w.status(since, marker)));
    const s: WorkerStatus = {
      agents: sum(all.map((x) => x.agents)), syncedSince: sum(all.map((x) => x.syncedSince)),
      lastSyncedAt: Math.max(...all.map((x) => x.lastSyncedAt)), withMarker: sum(all.map((x) => x.withMarker)),
      markerMaxAt: Math.max(...all.map((x) => x.markerMaxAt)), withSvid: sum(all.map((x) => x.withSvid)),
    };
    if (done(s) || Date.now() > deadline) return s;
    await sleep(200);
  }
}

export function mergeStats(all: WorkerStats[]): WorkerStats {
  return {
    syncMs: all.flatMap((s) => s.syncMs),
    fullSyncs: sum(all.map((s) => s.fullSyncs)), syncErrors: sum(all.map((s) => s.syncErrors)),
    svidsSigned: sum(all.map((s) => s.svidsSigned)), svidErrors: sum(all.map((s) => s.svidErrors)),
    agentRenewals: sum(all.map((s) => s.agentRenewals)), renewErrors: sum(all.map((s) => s.renewErrors)),
    watchEvents: sum(all.map((s) => s.watchEvents)), watchErrors: sum(all.map((s) => s.watchErrors)),
    lastErrors: all.flatMap((s) => s.lastErrors).slice(0, 5),
  };
}

export function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = Float64Array.from(xs).sort();
  return s[Math.min(s.length - 1, Math.floor((s.length - 1) * p))]!;
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);
function mergeCounts(xs: Record<string, number>[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const x of xs) for (const [k, v] of Object.entries(x)) out[k] = (out[k] ?? 0) + v;
  return out;
}
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ one scenario, start to end

export interface FleetOptions {
  dir: string;
  dataStore: Record<string, unknown>;
  agents: number;
  workers: number;
  /** Attestations in flight per worker during the bring-up. */
  bringUpConcurrency: number;
  /** Steady-state window over which sync latency, CPU and RSS are measured (ms). */
  steadyMs: number;
  /** Workload entry TTL (s): agents re-sign at half of it. */
  entryTtlS: number;
  agentSvidTtlS: number;
  /** Fresh join-token attestations fired at once after the restart (0: no restart/storm phase). */
  stormAttestations: number;
  propagationTimeoutMs: number;
  log?: (line: string) => void;
}

export interface PhaseCpu { wallS: number; serverCpuS: number; simCpuS: number }

export interface FleetResult {
  agents: number;
  bringUp: AttestOutcome & { wallMs: number; cpu: PhaseCpu; allSyncedMs: number; withSvid: number };
  /** What the agents' syncs and mints did during the bring-up. */
  bringUpStats: WorkerStats;
  steady: { stats: WorkerStats; cpu: PhaseCpu; rssMaxBytes: number; rssEndBytes: number };
  propagation: { adminMs: number; lastAgentMs: number; reached: number; cpu: PhaseCpu; rssMaxBytes: number };
  restart?: { stats: WorkerStats; serverStartMs: number; allResyncedMs: number; resynced: number; storm: AttestOutcome & { lastMs: number }; cpu: PhaseCpu; rssMaxBytes: number };
  serverHwmBytes: number;
  serverLog: string;
}

/** Samples server RSS while `f` runs; returns f's value with the phase's CPU and peak RSS. */
async function phase<T>(server: FleetServer, workers: FleetWorker[], f: () => Promise<T>): Promise<{ value: T; cpu: PhaseCpu; rssMaxBytes: number }> {
  const simCpu = (): number => sum(workers.map((w) => (w.child.pid ? safeStats(w.child.pid).cpuS : 0)));
  const pid = server.pid;
  const s0 = safeStats(pid).cpuS;
  const w0 = simCpu();
  const t0 = performance.now();
  let rssMax = 0;
  const sample = setInterval(() => { rssMax = Math.max(rssMax, safeStats(server.pid).rssBytes); }, 500);
  try {
    const value = await f();
    rssMax = Math.max(rssMax, safeStats(server.pid).rssBytes);
    // A restart inside f changes the pid: count the new process from zero.
    const serverCpuS = server.pid === pid ? safeStats(pid).cpuS - s0 : safeStats(server.pid).cpuS;
    return { value, cpu: { wallS: (performance.now() - t0) / 1000, serverCpuS, simCpuS: simCpu() - w0 }, rssMaxBytes: rssMax };
  } finally {
    clearInterval(sample);
  }
}

function safeStats(pid: number): { cpuS: number; rssBytes: number; hwmBytes: number } {
  try { return procStats(pid); } catch { return { cpuS: 0, rssBytes: 0, hwmBytes: 0 }; }
}

export async function runFleet(o: FleetOptions, agentPort: number): Promise<FleetResult> {
  const log = o.log ?? (() => undefined);
  const server = await startFleetServer({ dir: o.dir, dataStore: o.dataStore, agentSvidTtlS: o.agentSvidTtlS, maxConnections: o.agents + o.stormAttestations + 2000 }, agentPort);
  const workers: FleetWorker[] = [];
  try {
    log(`server pid ${server.pid} up in ${server.startedMs} ms; generating ${o.agents + o.stormAttestations} join tokens and ${o.agents} entries`);
    const tokens = await generateTokens(server.admin, o.agents);
    const stormTokens = await generateTokens(server.admin, o.stormAttestations);
    const entryIds = await createAgentEntries(server.admin, tokens, o.entryTtlS, 'gen-0');
    for (let i = 0; i < o.workers; i++) workers.push(await FleetWorker.start({ agentPort, roots: server.roots }));

    // ---- bring-up: every agent attests, opens its watch, syncs and gets its SVID
    log(`bring-up of ${o.agents} agents over ${o.workers} workers`);
    const t0 = Date.now();
    const up = await phase(server, workers, async () => {
      const parts = workers.map((w, i) => w.bringUp(tokens.filter((_, j) => j % o.workers === i), o.bringUpConcurrency));
      const outs = await Promise.all(parts);
      const st = await waitFleet(workers, t0, 'gen-0', (s) => s.syncedSince >= s.agents && s.withSvid >= s.agents, 120_000);
      return { outs, st };
    });
    const outs = up.value.outs;
    const bringUp = {
      ok: sum(outs.map((x) => x.ok)), failed: sum(outs.map((x) => x.failed)), latenciesMs: outs.flatMap((x) => x.latenciesMs),
      doneAt: Math.max(...outs.map((x) => x.doneAt)), errors: outs.flatMap((x) => x.errors).slice(0, 5),
      wallMs: Math.max(...outs.map((x) => x.doneAt)) - t0, cpu: up.cpu, allSyncedMs: up.value.st.lastSyncedAt - t0, withSvid: up.value.st.withSvid,
    };
    const upStats = mergeStats(await Promise.all(workers.map((w) => w.stats())));
    log(`bring-up: ${bringUp.ok} attested, ${bringUp.failed} failed in ${bringUp.wallMs} ms; ${up.value.st.syncedSince} synced, ${up.value.st.withSvid} with an SVID`);

    // ---- steady state: syncs every 5 s, renewals
    log(`steady state for ${o.steadyMs / 1000} s`);
    const steady = await phase(server, workers, async () => {
      await sleep(o.steadyMs);
      return mergeStats(await Promise.all(workers.map((w) => w.stats())));
    });
    const rssEndBytes = safeStats(server.pid).rssBytes;

    // ---- propagation: one admin change for every agent's entry; until the last agent has it
    log('propagation: every entry gets hint gen-1');
    const prop = await phase(server, workers, async () => {
      const p0 = Date.now();
      await updateHints(server.admin, entryIds, 'gen-1');
      const adminMs = Date.now() - p0;
      const st = await waitFleet(workers, p0, 'gen-1', (s) => s.withMarker >= s.agents, o.propagationTimeoutMs);
      return { adminMs, lastAgentMs: st.withMarker >= st.agents ? st.markerMaxAt - p0 : NaN, reached: st.withMarker };
    });

    let restart: FleetResult['restart'];
    const hwmBefore = safeStats(server.pid).hwmBytes;
    if (o.stormAttestations > 0) {
      log(`restart: SIGTERM, start again on the same data, ${o.stormAttestations} fresh attestations at once while ${o.agents} agents reconnect`);
      await Promise.all(workers.map((w) => w.stats()));
      const r = await phase(server, workers, async () => {
        await server.restart();
        const t1 = Date.now();
        const per = Math.ceil(o.stormAttestations / o.workers);
        const stormP = Promise.all(workers.map((w, i) => w.storm(stormTokens.slice(i * per, (i + 1) * per))));
        const st = await waitFleet(workers, t1, '', (s) => s.syncedSince >= s.agents, 180_000);
        const so = await stormP;
        const storm = {
          ok: sum(so.map((x) => x.ok)), failed: sum(so.map((x) => x.failed)), latenciesMs: so.flatMap((x) => x.latenciesMs),
          doneAt: Math.max(...so.map((x) => x.doneAt)), errors: so.flatMap((x) => x.errors).slice(0, 5), attempts: sum(so.map((x) => x.attempts ?? 0)), failedBy: mergeCounts(so.map((x) => x.failedBy ?? {})), lastMs: Math.max(...so.map((x) => x.doneAt)) - t1,
        };
        const stats = mergeStats(await Promise.all(workers.map((w) => w.stats())));
        return { stats, serverStartMs: server.startedMs, allResyncedMs: st.syncedSince >= st.agents ? st.lastSyncedAt - t1 : NaN, resynced: st.syncedSince, storm };
      });
      restart = { ...r.value, cpu: r.cpu, rssMaxBytes: r.rssMaxBytes };
    }
    return {
      agents: o.agents, bringUp, bringUpStats: upStats,
      steady: { stats: steady.value, cpu: steady.cpu, rssMaxBytes: steady.rssMaxBytes, rssEndBytes },
      propagation: { ...prop.value, cpu: prop.cpu, rssMaxBytes: prop.rssMaxBytes },
      restart, serverHwmBytes: Math.max(hwmBefore, safeStats(server.pid).hwmBytes), serverLog: server.log(),
    };
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
    await server.stop();
  }
}

// ------------------------------------------------------------------ the worker: simulated agents

type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

const SYNC_INTERVAL_MS = 5000; // SPIRE agent's default sync interval
const MIN_BACKOFF_MS = 500; // as src/agent/context.ts
const MAX_BACKOFF_MS = 30_000;
const CALL_TIMEOUT_MS = 30_000;

interface WorkerEnv { agentPort: number; rootPem: Buffer; stats: WorkerStats; agents: SimAgent[] }

function newClient(env: WorkerEnv, identity?: { key: KeyObject; chain: Buffer[] }): Client {
  const creds = grpc.credentials.createSsl(env.rootPem,
    identity ? Buffer.from(identity.key.export({ format: 'pem', type: 'pkcs8' }) as string) : null,
    identity ? Buffer.from(identity.chain.map((d) => derToPem(d)).join('')) : null,
    { checkServerIdentity: spiffeServerIdentityCheck(FLEET_TD) });
  // A local subchannel pool: grpc-js would otherwise share one connection among equal credentials,
  // and every agent is a separate machine with its own connection.
  return new (agentServiceClient())(`127.0.0.1:${env.agentPort}`, creds, {
    ...AGENT_API_CHANNEL_OPTIONS, 'grpc.ssl_target_name_override': 'terroir-server', 'grpc.use_local_subchannel_pool': 1,
    // As src/agent/server-conn.ts: keepalive, and reconnects from 0.5 s backing off to at most 10 s
    // (grpc-js's own default grows to 120 s, which would make a restart look far slower than it is).
    'grpc.keepalive_time_ms': 30_000, 'grpc.initial_reconnect_backoff_ms': 500, 'grpc.max_reconnect_backoff_ms': 10_000,
  }) as Client;
}

function unary<T>(c: Client, method: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    (c[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: Error | null, r: T) => void) => void)
      .call(c, req, new grpc.Metadata(), { deadline: Date.now() + CALL_TIMEOUT_MS }, (e, r) => (e ? reject(e) : resolve(r)));
  });
}

async function attestToken(c: Client, token: string, csr: Buffer): Promise<{ id: string; chain: Buffer[] }> {
  const call = (c.AttestAgent as (md: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientDuplexStream<AttestAgentRequest, AttestAgentResponse>)
    .call(c, new grpc.Metadata(), { deadline: Date.now() + CALL_TIMEOUT_MS });
  return new Promise((resolve, reject) => {
    call.on('data', (r: AttestAgentResponse) => { if (r.result) resolve({ id: r.result.spiffeId, chain: r.result.svidChain }); });
    call.on('error', reject);
    call.on('end', () => reject(new Error('attestation ended without a result')));
    call.write({ params: { joinToken: { token }, csr } });
  });
}

function noteError(env: WorkerEnv, e: unknown): void {
  if (env.stats.lastErrors.length < 5) env.stats.lastErrors.push((e as Error).message);
}

class SimAgent {
  private client: Client;
  private watch: grpc.ClientReadableStream<AgentEvent> | undefined;
  private watchBackoffMs = MIN_BACKOFF_MS;
  private timer: NodeJS.Timeout | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private busy = false;
  private again = false;
  private stopped = false;
  private revision = '';
  private entries: RegistrationEntry[] = [];
  private readonly workloadCsr: Buffer;
  private svidRenewAt = 0;
  private agentRenewAt: number;
  /** Successful syncs (epoch ms), newest last; a few are enough to answer "synced since T". */
  private readonly syncs: number[] = [];
  readonly markers = new Map<string, number>();
  hasSvid = false;
  private firstSynced!: () => void;
  /** Resolves at the agent's first successful SyncEntries. */
  readonly firstSync = new Promise<void>((r) => { this.firstSynced = r; });

  constructor(private readonly env: WorkerEnv, private key: KeyObject, private chain: Buffer[]) {
    this.client = newClient(env, { key, chain });
    this.workloadCsr = createCsr(generateKeyPair());
    this.agentRenewAt = this.halfLife(chain[0]!);
  }

  start(): void {
    this.openWatch();
    // A random phase, as a fleet that came up over time would have.
    this.timer = setTimeout(() => this.loop(), Math.random() * SYNC_INTERVAL_MS);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.watchTimer);
    this.watch?.cancel();
    this.client.close();
  }

  syncedSince(t: number): number | undefined {
    return this.syncs.find((x) => x >= t);
  }

  private halfLife(der: Buffer): number {
    const c = new crypto.X509Certificate(der);
    const from = Date.parse(c.validFrom);
    const to = Date.parse(c.validTo);
    return from + (to - from) / 2;
  }

  private loop(): void {
    if (this.stopped) return;
    void this.sync();
    this.timer = setTimeout(() => this.loop(), SYNC_INTERVAL_MS);
  }

  private async sync(): Promise<void> {
    if (this.busy) { this.again = true; return; }
    this.busy = true;
    const s = this.env.stats;
    try {
      if (Date.now() >= this.agentRenewAt) await this.renewAgent();
      const t0 = performance.now();
      let res: SyncEntriesResponse;
      try {
        res = await unary<SyncEntriesResponse>(this.client, 'SyncEntries', { knownRevision: this.revision });
      } catch (e) {
        s.syncErrors++;
        noteError(this.env, e);
        return;
      }
      s.syncMs.push(performance.now() - t0);
      const now = Date.now();
      if (this.syncs.length === 0) this.firstSynced();
      this.syncs.push(now);
      if (this.syncs.length > 8) this.syncs.shift();
      if (!res.unchanged) {
        s.fullSyncs++;
        this.revision = res.revision;
        this.entries = res.entries;
        for (const e of res.entries) if (e.hint && !this.markers.has(e.hint)) this.markers.set(e.hint, now);
      }
      if (this.entries.length > 0 && Date.now() >= this.svidRenewAt) await this.mintSvids();
    } finally {
      this.busy = false;
      if (this.again && !this.stopped) { this.again = false; void this.sync(); }
    }
  }

  private async mintSvids(): Promise<void> {
    const s = this.env.stats;
    try {
      const res = await unary<BatchNewX509SvidResponse>(this.client, 'BatchNewX509Svid', { params: this.entries.map((e) => ({ entryId: e.id, csr: this.workloadCsr })) });
      let soonest = Infinity;
      for (const r of res.results) {
        if (r.svid) { s.svidsSigned++; soonest = Math.min(soonest, this.halfLife(r.svid.certChain[0]!)); } else { s.svidErrors++; noteError(this.env, new Error(r.errorMessage)); }
      }
      if (soonest !== Infinity) { this.svidRenewAt = soonest; this.hasSvid = true; }
    } catch (e) {
      s.svidErrors++;
      noteError(this.env, e);
    }
  }

  /** RenewAgent, then a new channel with the new SVID (the server refuses the replaced serial). */
  private async renewAgent(): Promise<void> {
    const s = this.env.stats;
    const kp = generateKeyPair();
    try {
      const res = await unary<RenewAgentResponse>(this.client, 'RenewAgent', { csr: createCsr(kp) });
      if (!res.svid) throw new Error('RenewAgent answered no SVID');
      s.agentRenewals++;
      this.key = kp.privateKey;
      this.chain = res.svid.certChain;
      this.agentRenewAt = this.halfLife(this.chain[0]!);
      const old = this.client;
      this.client = newClient(this.env, { key: this.key, chain: this.chain });
      this.watch?.cancel();
      this.watch = undefined;
      old.close();
      this.openWatch();
    } catch (e) {
      s.renewErrors++;
      noteError(this.env, e);
    }
  }

  private openWatch(): void {
    if (this.stopped) return;
    const call = (this.client.WatchAgent as (req: object) => grpc.ClientReadableStream<AgentEvent>).call(this.client, {});
    this.watch = call;
    call.on('data', (ev: AgentEvent) => {
      this.env.stats.watchEvents++;
      if (ev.kind === 'READY') this.watchBackoffMs = MIN_BACKOFF_MS;
      if (ev.kind === 'READY' || ev.kind === 'ENTRIES_CHANGED' || ev.kind === 'BUNDLE_CHANGED') void this.sync();
    });
    const ended = (e?: Error): void => {
      if (this.watch !== call || this.stopped) return;
      if (e && (e as grpc.ServiceError).code !== grpc.status.CANCELLED) this.env.stats.watchErrors++;
      this.watch = undefined;
      clearTimeout(this.watchTimer);
      this.watchTimer = setTimeout(() => this.openWatch(), this.watchBackoffMs * (0.5 + Math.random()));
      this.watchBackoffMs = Math.min(this.watchBackoffMs * 2, MAX_BACKOFF_MS);
    };
    call.on('error', ended);
    call.on('end', () => ended());
  }
}

function emptyStats(): WorkerStats {
  return { syncMs: [], fullSyncs: 0, syncErrors: 0, svidsSigned: 0, svidErrors: 0, agentRenewals: 0, renewErrors: 0, watchEvents: 0, watchErrors: 0, lastErrors: [] };
}

async function bringUp(env: WorkerEnv, tokens: string[], concurrency: number): Promise<AttestOutcome> {
  const out: AttestOutcome = { ok: 0, failed: 0, latenciesMs: [], doneAt: 0, errors: [] };
  // A few bootstrap channels (no client certificate) shared by the bring-up; the storm below uses
  // one fresh connection per attestation.
  const boot = Array.from({ length: Math.min(concurrency, 8) }, () => newClient(env));
  let next = 0;
  await Promise.all(Array.from({ length: concurrency }, async (_, lane) => {
    while (next < tokens.length) {
      const token = tokens[next++]!;
      const kp = generateKeyPair();
      const t0 = performance.now();
      try {
        const r = await attestToken(boot[lane % boot.length]!, token, createCsr(kp));
        out.latenciesMs.push(performance.now() - t0);
        out.ok++;
        const a = new SimAgent(env, kp.privateKey, r.chain);
        env.agents.push(a);
        a.start();
        // The lane moves on once this agent is connected and synced (or after 30 s): the fleet
        // arrives at the pace the server takes it, not as one SYN flood (the restart below is that).
        await Promise.race([a.firstSync, sleep(30_000)]);
      } catch (e) {
        out.failed++;
        if (out.errors.length < 5) out.errors.push((e as Error).message);
      }
    }
  }));
  for (const c of boot) c.close();
  out.doneAt = Date.now();
  return out;
}

/** Status codes after which an agent simply tries again (the server was busy or not reachable). */
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.RESOURCE_EXHAUSTED]);

async function storm(env: WorkerEnv, tokens: string[]): Promise<AttestOutcome> {
  const out: AttestOutcome = { ok: 0, failed: 0, latenciesMs: [], doneAt: 0, errors: [], attempts: 0, failedBy: {} };
  // Keys first, so key generation is not counted as the server's time.
  const csrs = tokens.map(() => createCsr(generateKeyPair()));
  const giveUpAt = Date.now() + 120_000;
  await Promise.all(tokens.map(async (token, i) => {
    const t0 = performance.now();
    // Each attempt on a new connection (each agent is its own machine); retried with the agent's
    // backoff (0.5 s doubling to 10 s) while the server refuses connections or is too busy.
    for (let backoff = MIN_BACKOFF_MS; ; backoff = Math.min(backoff * 2, 10_000)) {
      const c = newClient(env);
      out.attempts!++;
      try {
        await attestToken(c, token, csrs[i]!);
        out.latenciesMs.push(performance.now() - t0);
        out.ok++;
        out.doneAt = Math.max(out.doneAt, Date.now()); // the storm's end is its last agent served
        return;
      } catch (e) {
        if (!RETRYABLE.has((e as grpc.ServiceError).code) || Date.now() > giveUpAt) {
          out.failed++;
          const code = grpc.status[(e as grpc.ServiceError).code] ?? 'OTHER';
          out.failedBy![code] = (out.failedBy![code] ?? 0) + 1;
          if (out.errors.length < 5) out.errors.push((e as Error).message);
          return;
        }
      } finally {
        c.close();
      }
      await sleep(backoff * (0.5 + Math.random()));
    }
  }));
  if (out.ok === 0) out.doneAt = Date.now();
  return out;
}

function runWorker(): void {
  let env: WorkerEnv | undefined;
  const handlers: Record<string, (m: Req) => Promise<unknown>> = {
    init: async (m) => {
      env = {
        agentPort: m.agentPort as number,
        rootPem: Buffer.from((m.roots as string[]).map((b) => derToPem(Buffer.from(b, 'base64'))).join('')),
        stats: emptyStats(), agents: [],
      };
      return null;
    },
    bringUp: (m) => bringUp(env!, m.tokens as string[], m.concurrency as number),
    storm: (m) => storm(env!, m.tokens as string[]),
    status: async (m) => {
      const since = m.since as number;
      const marker = m.marker as string;
      const st: WorkerStatus = { agents: env!.agents.length, syncedSince: 0, lastSyncedAt: 0, withMarker: 0, markerMaxAt: 0, withSvid: 0 };
      for (const a of env!.agents) {
        const t = a.syncedSince(since);
        if (t !== undefined) { st.syncedSince++; st.lastSyncedAt = Math.max(st.lastSyncedAt, t); }
        const mt = a.markers.get(marker);
        if (mt !== undefined) { st.withMarker++; st.markerMaxAt = Math.max(st.markerMaxAt, mt); }
        if (a.hasSvid) st.withSvid++;
      }
      return st;
    },
    stats: async () => {
      const s = env!.stats;
      env!.stats = emptyStats();
      return s;
    },
    stop: async () => {
      for (const a of env?.agents ?? []) a.stop();
      setTimeout(() => process.exit(0), 100);
      return null;
    },
  };
  process.on('message', (m: Req) => {
    const h = handlers[m.t];
    if (!h) { process.send!({ id: m.id, ok: false, error: `unknown request ${m.t}` }); return; }
    h(m).then((value) => process.send!({ id: m.id, ok: true, value }), (e: unknown) => process.send!({ id: m.id, ok: false, error: (e as Error).message }));
  });
  // The coordinator went away: do not linger with thousands of connections.
  process.on('disconnect', () => process.exit(0));
}

if (process.env.TERROIR_FLEET_WORKER === '1' && process.send) runWorker();
