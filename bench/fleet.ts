// Fleet benchmark (issue 18): N simulated agents (test/fleet/fleet-sim.ts: join-token attestation,
// WatchAgent, SyncEntries every 5 s, SVID minting and RenewAgent, each agent on its own mTLS
// connection) against a real terroir-server process, on SQLite and on PostgreSQL. The server's CPU and
// RSS are read from /proc, apart from the simulator's worker processes.
//   npx tsx bench/fleet.ts [--agents 10000] [--workers 3] [--lanes 32] [--steady 60] [--storm 1000] [--datastore sqlite|postgres|both]
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startPostgres, type TestPostgres } from '../test/support/postgres.js';
import { freePort } from '../test/support/ports.js';
import { percentile, runFleet, type FleetResult, type PhaseCpu } from '../test/fleet/fleet-sim.js';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : def;
}
const AGENTS = Number(arg('agents', '10000'));
const WORKERS = Number(arg('workers', '3'));
const STEADY_S = Number(arg('steady', '60'));
const STORM = Number(arg('storm', '1000'));
const WHICH = arg('datastore', 'both');
const ENTRY_TTL_S = Number(arg('entry-ttl', '300'));
const AGENT_TTL_S = Number(arg('agent-ttl', '600'));

const GOALS = { agents: 10_000, syncP99Ms: 50, rssBytes: 1024 ** 3, propagationMs: 10_000, stormMs: 20_000, stormN: 1000 };

const mib = (b: number): string => `${(b / 1024 / 1024).toFixed(0)} MiB`;
const ms = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(x < 10 ? 1 : 0)} ms` : 'n/a');
const met = (ok: boolean): string => (ok ? 'MET' : 'NOT MET');
const load = (): string => os.loadavg().map((x) => x.toFixed(2)).join(' ');
const cores = (c: PhaseCpu): string => `server ${(c.serverCpuS / c.wallS).toFixed(2)} cores (${c.serverCpuS.toFixed(1)} CPU-s over ${c.wallS.toFixed(1)} s), simulator ${(c.simCpuS / c.wallS).toFixed(2)} cores`;

function report(name: string, r: FleetResult): string[] {
  const out: string[] = [];
  const p = (s: string): void => { out.push(s); };
  const b = r.bringUp;
  const s = r.steady.stats;
  const p50 = percentile(s.syncMs, 0.5);
  const p99 = percentile(s.syncMs, 0.99);
  p(`--- ${name}: ${r.agents} agents`);
  p(`  bring-up: ${b.ok} attested, ${b.failed} failed in ${(b.wallMs / 1000).toFixed(1)} s (attestation p50 ${ms(percentile(b.latenciesMs, 0.5))}, p99 ${ms(percentile(b.latenciesMs, 0.99))}); all synced with an SVID after ${(b.allSyncedMs / 1000).toFixed(1)} s (${b.withSvid} with an SVID); ${cores(b.cpu)}${b.errors.length ? `; errors: ${b.errors.join(' | ')}` : ''}`);
  const u = r.bringUpStats;
  p(`  during bring-up: ${u.syncMs.length} syncs (p50 ${ms(percentile(u.syncMs, 0.5))}, p99 ${ms(percentile(u.syncMs, 0.99))}), ${u.syncErrors} sync errors, ${u.svidsSigned} SVIDs signed (${u.svidErrors} errors), ${u.watchErrors} watch errors${u.lastErrors.length ? `; e.g. ${u.lastErrors.slice(0, 2).join(' | ')}` : ''}`);
  p(`  steady state (${STEADY_S} s): ${s.syncMs.length} syncs (${s.fullSyncs} full), ${s.syncErrors} errors; ${s.svidsSigned} workload SVIDs signed (${s.svidErrors} errors), ${s.agentRenewals} agent renewals (${s.renewErrors} errors), ${s.watchErrors} watch errors${s.lastErrors.length ? `; e.g. ${s.lastErrors.slice(0, 2).join(' | ')}` : ''}`);
  p(`  server CPU: ${cores(r.steady.cpu)}`);
  // Load-independent: the server's CPU time per agent per 5 s interval (sync, watch, its share of
  // signing and renewals), and what that makes a fleet of the goal's size cost.
  const perAgentMs = (r.steady.cpu.serverCpuS * 1000) / r.agents / (r.steady.cpu.wallS / 5);
  p(`  server CPU per agent per 5 s interval: ${perAgentMs.toFixed(2)} ms CPU -> ${GOALS.agents} agents would need ${((perAgentMs * GOALS.agents) / 5000).toFixed(2)} server cores at this cost`);
  p(`  sync p50 ${ms(p50)}, p99 ${ms(p99)} (goal p99 <= ${GOALS.syncP99Ms} ms at ${GOALS.agents} agents): ${met(p99 <= GOALS.syncP99Ms && r.agents >= GOALS.agents)}${r.agents < GOALS.agents ? ` (only ${r.agents} agents)` : ''}`);
  const rssMax = Math.max(r.steady.rssMaxBytes, r.propagation.rssMaxBytes, r.restart?.rssMaxBytes ?? 0);
  p(`  server RSS: steady max ${mib(r.steady.rssMaxBytes)}, at end of steady ${mib(r.steady.rssEndBytes)}, peak over the run (VmHWM) ${mib(r.serverHwmBytes)} (goal <= 1 GiB at ${GOALS.agents} agents): ${met(Math.max(rssMax, r.serverHwmBytes) <= GOALS.rssBytes && r.agents >= GOALS.agents)}`);
  const pr = r.propagation;
  p(`  entry propagation: one admin change to all ${r.agents} agents' entries (BatchUpdateEntry of the hint, ${Math.ceil(r.agents / 1000)} calls of <= 1000, ${ms(pr.adminMs)}): last agent had it ${ms(pr.lastAgentMs)} after the first admin call, ${pr.reached}/${r.agents} reached (goal <= ${GOALS.propagationMs / 1000} s for ${GOALS.agents}): ${met(pr.lastAgentMs <= GOALS.propagationMs && pr.reached === r.agents && r.agents >= GOALS.agents)}; ${cores(pr.cpu)}; RSS max ${mib(pr.rssMaxBytes)}`);
  const rs = r.restart;
  if (rs) {
    const st = rs.storm;
    p(`  restart (SIGTERM, same data): server up in ${rs.serverStartMs} ms; from healthy, ${rs.resynced}/${r.agents} agents synced again (watch backoff 0.5 s doubling to 30 s, channel reconnect 0.5 s to 10 s, as the agent) after ${ms(rs.allResyncedMs)}`);
    p(`  while reconnecting: ${rs.stats.syncMs.length} syncs (p50 ${ms(percentile(rs.stats.syncMs, 0.5))}, p99 ${ms(percentile(rs.stats.syncMs, 0.99))}), ${rs.stats.syncErrors} sync errors, ${rs.stats.watchErrors} watch errors${rs.stats.lastErrors.length ? `; e.g. ${rs.stats.lastErrors.slice(0, 2).join(' | ')}` : ''}`);
    p(`  attestation storm: ${st.ok + st.failed} fresh join-token attestations fired at once (each attempt on a new TLS connection, retried with the agent's backoff on UNAVAILABLE/DEADLINE_EXCEEDED/RESOURCE_EXHAUSTED) the moment the restarted server was healthy, while the ${r.agents} agents reconnected: ${st.ok} served, ${st.failed} failed${st.failed ? ` (${Object.entries(st.failedBy ?? {}).map(([k, v]) => `${k} ${v}`).join(', ')}; PERMISSION_DENIED = the token was consumed by an attempt whose answer the agent never got)` : ''}, ${st.attempts ?? 0} attempts, last served after ${ms(st.lastMs)} (p50 ${ms(percentile(st.latenciesMs, 0.5))}, p99 ${ms(percentile(st.latenciesMs, 0.99))}) (goal ${GOALS.stormN} in <= ${GOALS.stormMs / 1000} s): ${met(st.ok >= GOALS.stormN && st.lastMs <= GOALS.stormMs)}${st.errors.length ? `; errors: ${st.errors.slice(0, 2).join(' | ')}` : ''}`);
    p(`  restart phase: ${cores(rs.cpu)}; RSS max ${mib(rs.rssMaxBytes)}`);
  }
  // The server logs at warn: what it complained about (connection caps, keepalive, slow polls).
  const warns = r.serverLog.split('\n').filter((l) => l.trim() !== '');
  p(`  server log: ${warns.length} warning/error lines kept${warns.length ? `; last: ${warns.slice(-3).map((l) => l.slice(0, 300)).join(' || ')}` : ''}`);
  return out;
}

async function one(name: string, dataStore: (dir: string) => Promise<Record<string, unknown>>): Promise<string[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-bench-fleet-'));
  try {
    console.log(`\n[${name}] load average before: ${load()}`);
    const r = await runFleet({
      dir, dataStore: await dataStore(dir), agents: AGENTS, workers: WORKERS, bringUpConcurrency: Number(arg('lanes', '32')),
      steadyMs: STEADY_S * 1000, entryTtlS: ENTRY_TTL_S, agentSvidTtlS: AGENT_TTL_S, stormAttestations: STORM,
      propagationTimeoutMs: 120_000, log: (l) => console.log(`  [${new Date().toISOString().slice(11, 19)}] ${l} (load ${load()})`),
    }, await freePort());
    const lines = report(name, r);
    lines.push(`  load average after: ${load()}`);
    console.log(lines.join('\n'));
    return lines;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

console.log(`terroir fleet benchmark — node ${process.version}, ${os.cpus().length} CPU(s) ${os.cpus()[0]?.model ?? ''}, ${mib(os.totalmem())} RAM; load average ${load()} (the machine is shared)`);
console.log(`${AGENTS} simulated agents in ${WORKERS} worker processes, each agent its own mTLS connection; sync every 5 s + WatchAgent; workload entry TTL ${ENTRY_TTL_S} s, agent SVID TTL ${AGENT_TTL_S} s (both renewed at half-life)`);
console.log('server: its own process (node --import tsx src/cli/terroir-server.ts run), CPU and RSS from /proc/<pid>; raised for one source address: agentApi.attestationRateLimit 100000/s burst 100000, agentApi.connections.maxPerSource = maxTotal = agents + storm + 2000');
console.log('entries: one workload entry per agent, parented by its agent ID (join-token nodes have no selectors, so no node-alias entry can select them)');

const summary: string[] = [];
if (WHICH === 'both' || WHICH === 'sqlite') summary.push(...await one('SQLite', async (dir) => ({ type: 'sqlite', path: path.join(dir, 'ds.sqlite3') })));
if (WHICH === 'both' || WHICH === 'postgres') {
  let pg: TestPostgres | undefined;
  try {
    summary.push(...await one('PostgreSQL', async () => {
      pg = await startPostgres({ durable: true });
      return { type: 'postgres', connectionString: await pg.createDatabase('fleet') };
    }));
  } finally {
    await pg?.stop();
  }
}
console.log(`\n===== summary =====\n${summary.join('\n')}`);
