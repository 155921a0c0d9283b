// Two terroir-server processes on one PostgreSQL; a real agent configured with both (`servers`);
// SIGKILL of the server the agent is connected to. The agent must keep serving its SVIDs, move to the
// survivor by itself, get a new entry created there, renew there, and nothing either server
// acknowledged may be missing from the survivor. Two CA layouts an operator can run
// (docs/deployment.md, "Two servers, one PostgreSQL"):
//   - the default: each server its own self-signed CA, the stored bundle the union of both;
//   - a shared upstream CA: the bundle is its root only, so agents trust a server they never met.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { AgentConfigError, parseAgentConfig } from '../../src/agent/config.js';
import { SvidStore } from '../../src/agent/svid-store.js';
import { normalizeSerial } from '../../src/server/ca/issuer.js';
import { AdminClient } from '../../src/api/admin-api.js';
import { createWorkloadClient, splitDerCertificates, workloadMetadata, type X509SvidResponse } from '../../src/api/workload-api.js';
import { freePort } from '../support/ports.js';
import { startPostgres, type TestPostgres } from '../support/postgres.js';
import { tempDir } from '../support/tmp.js';

const TD = 'failover.test';
const CLI = path.resolve(import.meta.dirname, '../../src/cli/terroir-server.ts');
const UID = process.getuid?.() ?? 0;
/** The failover budget the test holds the agent to (docs/agent.md states the expected figure). */
const FAILOVER_BUDGET_MS = 10_000;
const silent = pino({ level: process.env.FAILOVER_LOG ?? 'silent' });

let pg: TestPostgres;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  pg = await startPostgres();
}, 30_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await pg?.stop();
});

interface ServerProc { name: string; child: ChildProcess; admin: AdminClient; port: number }

/** A real terroir-server process on the shared database, up once its admin API answers. */
async function startServerProc(dir: string, name: string, dbUrl: string, ca: Record<string, unknown>, port?: number): Promise<ServerProc> {
  port ??= await freePort();
  const socket = path.join(dir, name, 'admin.sock');
  fs.mkdirSync(path.join(dir, name), { recursive: true, mode: 0o700 });
  const cfg = path.join(dir, name, 'server.yaml');
  fs.writeFileSync(cfg, JSON.stringify({
    trustDomain: TD, dataDir: path.join(dir, name, 'data'), logLevel: 'warn',
    dataStore: { type: 'postgres', connectionString: dbUrl },
    // ca.ttl 2 min: a housekeeping round every 1.2 s, SVIDs of 20 s, so renewal happens within the test.
    ca: { keyStore: 'disk', ttl: '2m', x509SvidTtl: '20s', jwtSvidTtl: '20s', ...ca },
    agentApi: { bindAddress: '127.0.0.1', port, watchIntervalMs: 200 },
    adminApi: { socketPath: socket }, health: { enabled: false },
    nodeAttestation: { joinToken: { enabled: true } },
    // Servers sharing a database share the evidence log's audit key (docs/evidence-log.md).
    evidenceLog: { keyFile: path.join(dir, 'audit-key') },
  }));
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'run', '-c', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => { stderr = (stderr + c.toString()).slice(-4000); });
  const admin = new AdminClient(socket);
  const proc = { name, child, admin, port };
  cleanups.push(() => kill(proc));
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server ${name} exited (${child.exitCode}) while starting: ${stderr}`);
    if (fs.existsSync(socket) && await admin.call('Healthcheck', {}, 1000).then(() => true, () => false)) return proc;
    if (Date.now() - t0 > 20_000) throw new Error(`server ${name} did not come up in 20 s: ${stderr}`);
    await sleep(50);
  }
}

/** SIGKILL by PID: no shutdown code runs, connections are reset by the kernel. */
async function kill(p: ServerProc): Promise<void> {
  p.admin.close();
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  const exited = new Promise((r) => p.child.once('exit', r));
  p.child.kill('SIGKILL');
  await exited;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Whether this network namespace has an established TCP connection to 127.0.0.1:port (the agent's, in this test). */
function connectedTo(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  return ['/proc/net/tcp', '/proc/net/tcp6'].some((f) => fs.existsSync(f) && fs.readFileSync(f, 'utf8').split('\n').slice(1)
    .some((line) => { const c = line.trim().split(/\s+/); return c[2]?.endsWith(`:${hex}`) === true && c[3] === '01'; }));
}

/** One FetchX509SVID answer from the agent's Workload API, as this process (uid selector). */
async function fetchX509(socket: string): Promise<X509SvidResponse> {
  const client = createWorkloadClient(`unix://${socket}`);
  try {
    return await new Promise<X509SvidResponse>((resolve, reject) => {
      const call = client.FetchX509SVID({}, workloadMetadata(), { deadline: Date.now() + 5000 });
      call.once('data', (m: X509SvidResponse) => { resolve(m); call.cancel(); });
      call.once('error', (e: Error & { code?: number }) => { if (e.code !== 1) reject(e); });
    });
  } finally {
    client.close();
  }
}

const ids = (m: X509SvidResponse): string[] => m.svids.map((s) => s.spiffe_id).sort();
const leafOf = (m: X509SvidResponse, id: string): Buffer => splitDerCertificates(m.svids.find((s) => s.spiffe_id === id)!.x509_svid)[0]!;
const issuedBy = (leaf: Buffer, ca: Buffer): boolean => new crypto.X509Certificate(leaf).verify(new crypto.X509Certificate(ca).publicKey);

interface Scenario {
  name: string;
  ca: (dir: string) => Record<string, unknown>;
  /** The agent's trustBundlePath, made while only server A runs. */
  bootstrap: (dir: string, a: ServerProc) => Promise<string>;
}

interface FailoverResult {
  reconnectMs: number;
  newEntryMs: number;
  a: ServerProc;
  b: ServerProc;
  dead: ServerProc;
  survivor: ServerProc;
  agent: Agent;
  dir: string;
  agentId: string;
  /** A's own root(s), read before B started. */
  rootA: Buffer[];
  /** The agent SVID before B started (issued by A). */
  agentLeafBefore: Buffer;
  /** The agent SVID chain when the server was killed. */
  agentChainAtKill: Buffer[];
  /** The web SVID the Workload API served just before the kill. */
  webLeafAtKill: Buffer;
}

/**
 * A runs alone while the agent attests and gets its SVIDs (so they are A's); B joins the database
 * afterwards, then the server the agent is connected to is killed.
 */
async function runFailover(s: Scenario): Promise<FailoverResult> {
  const { dir, cleanup } = tempDir('terroir-failover-');
  cleanups.push(cleanup);
  const db = await pg.createDatabase(`terroir_failover_${s.name}`);
  const portB = await freePort();
  const a = await startServerProc(dir, 'a', db, s.ca(dir));
  const rootA = (await a.admin.call('GetBundle', {})).x509Authorities;
  const trustBundlePath = await s.bootstrap(dir, a);

  const token = (await a.admin.call('GenerateJoinToken', { ttl: 600 })).value;
  const agentId = `spiffe://${TD}/agent/join_token/${token}`;
  const entry = (id: string) => ({ spiffeId: `spiffe://${TD}/${id}`, parentId: agentId, selectors: [{ type: 'unix', value: `uid:${UID}` }] });
  const created = await a.admin.call('BatchCreateEntry', { entries: [entry('web'), entry('db')] });
  expect(created.results.map((r) => r.status.code)).toEqual([0, 0]);

  const socket = path.join(dir, 'agent.sock');
  const agent = await Agent.start(parseAgentConfig({
    trustDomain: TD,
    // B by name: "localhost" also resolves to ::1, where nothing listens; the agent must cope.
    servers: [{ address: '127.0.0.1', port: a.port }, { address: 'localhost', port: portB }],
    dataDir: path.join(dir, 'agent'), socketPath: socket, trustBundlePath, logLevel: 'silent',
    nodeAttestor: { joinToken: { token } },
  }, {}), { logger: silent });
  cleanups.push(() => agent.stop());

  const before = await waitFor('both workload SVIDs', async () => {
    const m = await fetchX509(socket).catch(() => undefined);
    return m && ids(m).length === 2 ? m : undefined;
  }, 10_000);
  expect(ids(before)).toEqual([`spiffe://${TD}/db`, `spiffe://${TD}/web`]);
  const agentLeafBefore = new SvidStore(path.join(dir, 'agent')).load()!.chain[0]!;

  const b = await startServerProc(dir, 'b', db, s.ca(dir), portB);
  // The agent must hold every root before a server dies: B's reaches it through A (one housekeeping
  // round, then a push); with a shared upstream CA there is nothing new to learn.
  const union = (await b.admin.call('GetBundle', {})).x509Authorities.map((d) => d.toString('base64')).sort();
  await waitFor('every server\'s root in the agent\'s bundle', async () => {
    const m = await fetchX509(socket).catch(() => undefined);
    const have = m ? splitDerCertificates(m.svids[0]!.bundle).map((d) => d.toString('base64')).sort() : [];
    return JSON.stringify(have) === JSON.stringify(union) ? true : undefined;
  }, 10_000);
  // New roots or a renewed SVID rebuild the agent's channel, which may then pick B: kill whichever
  // server the agent is on.
  const [dead, survivor] = await waitFor('the agent connected to one server', () => {
    if (connectedTo(a.port) && !connectedTo(b.port)) return [a, b] as const;
    if (connectedTo(b.port) && !connectedTo(a.port)) return [b, a] as const;
    return undefined;
  }, 5000);

  const agentChainAtKill = new SvidStore(path.join(dir, 'agent')).load()!.chain;
  const webLeafAtKill = leafOf(await fetchX509(socket), `spiffe://${TD}/web`);
  const killedAt = Date.now();
  await kill(dead);
  // The server is gone and the agent has not moved yet: its workloads are served from its cache.
  const during = await fetchX509(socket);
  expect(ids(during)).toEqual(ids(before));
  expect(new Date(new crypto.X509Certificate(leafOf(during, `spiffe://${TD}/web`)).validTo).getTime()).toBeGreaterThan(Date.now());

  // An entry written at the survivor right after the kill reaches the agent through it.
  const added = await survivor.admin.call('BatchCreateEntry', { entries: [entry('api')] });
  expect(added.results[0]?.status.code).toBe(0);
  await waitFor('the agent connected to the survivor', () => (connectedTo(survivor.port) ? true : undefined), FAILOVER_BUDGET_MS);
  const reconnectMs = Date.now() - killedAt;
  await waitFor('the entry created at the survivor in the Workload API', async () => {
    const m = await fetchX509(socket).catch(() => undefined);
    return m && ids(m).includes(`spiffe://${TD}/api`) ? m : undefined;
  }, FAILOVER_BUDGET_MS);
  const newEntryMs = Date.now() - killedAt;
  expect(newEntryMs).toBeLessThan(FAILOVER_BUDGET_MS);
  expect(agent.stats.attestations).toBe(1); // the survivor accepted the agent SVID: no new node attestation

  // Nothing acknowledged is lost: both servers' entries and the node record, read from the survivor.
  const entries = (await survivor.admin.call('ListEntries', { pageSize: 100, pageToken: '' })).entries.map((e) => e.spiffeId).sort();
  expect(entries).toEqual([`spiffe://${TD}/api`, `spiffe://${TD}/db`, `spiffe://${TD}/web`]);
  const node = await survivor.admin.call('GetAgent', { spiffeId: agentId });
  expect(node.banned).toBe(false);
  return { reconnectMs, newEntryMs, a, b, dead, survivor, agent, dir, agentId, rootA, agentLeafBefore, agentChainAtKill, webLeafAtKill };
}

it('per-server CAs (the union bundle): the agent keeps its SVIDs, moves to the survivor, and renews there', async () => {
  const r = await runFailover({
    name: 'union',
    ca: () => ({}),
    // A's bundle, before B existed: the agent learns B's root later, through A.
    bootstrap: async (dir, a) => {
      const file = path.join(dir, 'bootstrap.json');
      fs.writeFileSync(file, (await a.admin.call('GetBundle', {})).spiffeJson);
      return file;
    },
  });
  console.log(`failover (per-server CAs): connected to the survivor ${r.reconnectMs} ms after SIGKILL, new entry served after ${r.newEntryMs} ms`);
  // Renewal continues at the survivor: the agent SVID and a workload SVID both re-issued by its CA.
  const rootB = (await r.b.admin.call('GetBundle', {})).x509Authorities.find((d) => !r.rootA.some((x) => x.equals(d)))!;
  const rootOfSurvivor = r.survivor === r.a ? r.rootA[0]! : rootB;
  expect(issuedBy(r.agentLeafBefore, r.rootA[0]!)).toBe(true);
  const store = new SvidStore(path.join(r.dir, 'agent'));
  await waitFor('the agent SVID renewed by the survivor', () => {
    const st = store.load();
    return st && !st.chain[0]!.equals(r.agentChainAtKill[0]!) && issuedBy(st.chain[0]!, rootOfSurvivor) ? true : undefined;
  }, 15_000);
  await waitFor('the web SVID re-signed by the survivor', async () => {
    const m = await fetchX509(path.join(r.dir, 'agent.sock')).catch(() => undefined);
    const leaf = m && leafOf(m, `spiffe://${TD}/web`);
    return leaf && !leaf.equals(r.webLeafAtKill) && issuedBy(leaf, rootOfSurvivor) ? true : undefined;
  }, 15_000);
  expect(r.agent.stats.attestations).toBe(1);
  // The shared node record follows: the renewed SVID becomes current once the agent uses it.
  const serial = normalizeSerial(new crypto.X509Certificate(store.load()!.chain[0]!).serialNumber);
  await waitFor('the node record at the renewed serial', async () =>
    ((await r.survivor.admin.call('GetAgent', { spiffeId: r.agentId })).serialNumber === serial ? true : undefined), 10_000);
}, 40_000);

it('a shared upstream CA: the agent trusts the survivor by the upstream root alone', async () => {
  const r = await runFailover({
    name: 'upstream',
    ca: (dir) => {
      const key = path.join(dir, 'up.key');
      const crt = path.join(dir, 'up.crt');
      if (!fs.existsSync(crt)) {
        // openssl, an independent maker of the operator's root.
        execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
          '-keyout', key, '-out', crt, '-days', '2', '-subj', '/CN=failover upstream root',
          '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: 'ignore' });
      }
      // SVIDs of a minute: no renewal, so no new channel, before the kill — the agent stays on A.
      return { upstream: { certFile: crt, keyFile: key }, ttl: '6m', x509SvidTtl: '1m', jwtSvidTtl: '1m' };
    },
    // The upstream root as PEM, taken before either server ran: nothing server-specific.
    bootstrap: async (dir) => path.join(dir, 'up.crt'),
  });
  console.log(`failover (shared upstream CA): connected to the survivor ${r.reconnectMs} ms after SIGKILL, new entry served after ${r.newEntryMs} ms`);
  // B accepted (no new attestation) an agent SVID under A's intermediate, one B never held: the SVID
  // B signed for the new entry has another intermediate.
  expect(r.dead).toBe(r.a);
  const m = await fetchX509(path.join(r.dir, 'agent.sock'));
  const intermediateB = splitDerCertificates(m.svids.find((x) => x.spiffe_id === `spiffe://${TD}/api`)!.x509_svid)[1]!;
  expect(issuedBy(r.agentChainAtKill[0]!, r.agentChainAtKill[1]!)).toBe(true);
  expect(r.agentChainAtKill[1]!.equals(intermediateB)).toBe(false);
  expect(r.agent.stats.attestations).toBe(1);
  const up = new crypto.X509Certificate(fs.readFileSync(path.join(r.dir, 'up.crt')));
  expect(splitDerCertificates(m.svids[0]!.bundle)).toEqual([up.raw]);
}, 40_000);

describe('agent config: servers', () => {
  const base = { trustDomain: TD, dataDir: '/tmp/a', insecureBootstrap: true, nodeAttestor: { joinToken: { token: 't' } } };
  const parse = (extra: Record<string, unknown>, env: NodeJS.ProcessEnv = {}) => parseAgentConfig({ ...base, ...extra }, env);

  it('takes a list (port defaulting to serverPort) or the single serverAddress, and names the first server', () => {
    const c = parse({ servers: [{ address: 'a.example', port: 9001 }, { address: '10.0.0.2' }, { address: 'fd00::2' }], serverPort: 9000 });
    expect(c.servers).toEqual([{ address: 'a.example', port: 9001 }, { address: '10.0.0.2', port: 9000 }, { address: 'fd00::2', port: 9000 }]);
    expect([c.serverAddress, c.serverPort]).toEqual(['a.example', 9001]);
    expect(parse({ serverAddress: 's', serverPort: 1 }).servers).toEqual([{ address: 's', port: 1 }]);
    // The environment names the one server to use.
    expect(parse({ servers: [{ address: 'a' }, { address: 'b' }] }, { TERROIR_AGENT_SERVER_ADDRESS: 'c' }).servers).toEqual([{ address: 'c', port: 8081 }]);
  });

  it('refuses both forms, neither, a port inside the address, brackets, and a server listed twice', () => {
    expect(() => parse({ serverAddress: 'a', servers: [{ address: 'b' }] })).toThrow(/set serverAddress \(one server\) or servers \(several\), not both/);
    expect(() => parse({})).toThrow(/serverAddress: required/);
    expect(() => parse({ servers: [] })).toThrow(/list at least one server/);
    expect(() => parse({ servers: [{ address: 'a.example:8081' }] })).toThrow(/servers\.0\.address: "a\.example:8081" is not a host name or IP address \(write the port in "port"/);
    expect(() => parse({ servers: [{ address: '[::1]' }] })).toThrow(/IPv6 addresses without brackets/);
    expect(() => parse({ servers: [{ address: 'A', port: 1 }, { address: 'a', port: 1 }] })).toThrow(/servers\.1: a port 1 is listed twice/);
    expect(() => parse({ servers: [{ address: 'a', bogus: 1 }] })).toThrow(AgentConfigError);
  });
});
