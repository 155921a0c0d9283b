// Latency-witness benchmark (issue 15, "Benchmark"): the real probe responder (agent side) and prober
// (landmark side) over SPIFFE mTLS, on loopback and across a veth pair, for both strengths.
//   npx tsx bench/latency.ts            (the veth part needs root: ip netns)
// Per path and strength: probe RTT min / p50 over N challenges, the radius it yields (c·RTT/2 and the
// map radius the policies use), and the wall time of one whole probe round (connect + N rounds +
// signature checks), which is what the server waits for after an attestation. Beside each figure its
// floor: a bare mTLS echo of a 34-byte frame over the same path, the node's own per-round work
// (digest + signature), and for tpm the bare TPM2_Quote call. Goals: agent-key radius on loopback
// ≤ 15 km (RTT ≤ 0.1 ms), swtpm radius ≤ 200 km, a probe round ≤ 50 ms.
//
// The landmark and the node are different processes in production, so the prober always runs in a
// child process (this file again, `--prober <args.json>`, printing its figures as JSON): on loopback
// directly, across the veth pair inside a network namespace of its own. The node (responder, TPM)
// stays in this process.
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { openTpmCredentialSource, type TpmSession } from '../src/agent/tpm-session.js';
import { radiusForRttM, surfaceRadiusM } from '../src/geo/latency.js';
import { encodeReply, probeDigest, type ProbeStrength } from '../src/latency/protocol.js';
import { probeNode } from '../src/latency/prober.js';
import { startProbeResponder, type ProbeQuoter, type ProbeResponder } from '../src/latency/responder.js';
import type { TrustDomain } from '../src/spiffe/id.js';
import { authorizeId, authorizeOneOf } from '../src/workload/authorizer.js';
import type { X509SourceLike } from '../src/workload/source.js';
import { StaticX509Source } from '../src/workload/static-source.js';
import { createTlsServer, tlsConnect } from '../src/workload/tls.js';
import { createNetNs, type NetNs } from '../test/support/netns.js';
import { startSwtpm, type Swtpm } from '../test/support/swtpm.js';
import { makeDomain, writeSvidFiles, type TestDomain, type TestSvid } from '../test/workload/fixtures.js';

const TD = 'bench.latency';
const NODE = '/agent/tpm/bench-node';
const LANDMARK = '/landmark/bench';
// Rounds per probe and probes per figure: agent-key rounds are cheap (µs), tpm rounds cost a quote each.
const PLAN: Record<ProbeStrength, { rounds: number; probes: number }> = { 'agent-key': { rounds: 100, probes: 10 }, tpm: { rounds: 20, probes: 5 } };
/** The server's default rounds (src/server/config.ts latency.rounds): what an attestation triggers unless configured. */
const SERVER_ROUNDS = 10;
const ECHO_ROUNDS = 300;
const ECHO_FRAME = 34; // a challenge frame's size
const GOAL = { agentKeyRadiusKm: 15, tpmRadiusKm: 200, roundMs: 50 };

// ------------------------------------------------------------------ figures, shared by parent and child

interface StrengthFigures {
  strength: ProbeStrength;
  rounds: number;
  /** Per probe of `rounds` rounds, seconds. */
  rttMinS: number[];
  rttP50S: number[];
  connectS: number[];
  /** Wall time of each whole probeNode call, ms. */
  wallMs: number[];
  /** The child's first probe of this strength (JIT, fresh TLS context), SERVER_ROUNDS rounds, ms. */
  coldMs: number;
  /** Probes of SERVER_ROUNDS rounds, ms. */
  serverRoundsMs: number[];
}

interface PathFigures {
  echoS: number[];
  strengths: StrengthFigures[];
}

interface Target {
  host: string;
  probePort: number;
  echoPort: number;
  nodeId: string;
  akPublic: Buffer;
}

const sorted = (xs: number[]): number[] => [...xs].sort((a, b) => a - b);
/** The same rank the prober uses for its p50. */
const pct = (xs: number[], q: number): number => sorted(xs)[Math.floor((xs.length - 1) * q)] as number;
const min = (xs: number[]): number => Math.min(...xs);
const max = (xs: number[]): number => Math.max(...xs);

/** Round trips of a 34-byte frame through a bare mTLS echo (same certificates, same path): the floor without the probe's work. */
async function tlsEcho(source: X509SourceLike, t: Target, n: number): Promise<number[]> {
  const socket = tlsConnect({ source, authorizer: authorizeId(t.nodeId), host: t.host, port: t.echoPort });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => resolve());
      socket.once('error', reject);
    });
    socket.setNoDelay(true);
    const frame = crypto.randomBytes(ECHO_FRAME);
    let got = 0;
    let wake: (() => void) | undefined;
    socket.on('data', (c: Buffer) => {
      got += c.length;
      if (got >= ECHO_FRAME && wake !== undefined) { got = 0; const w = wake; wake = undefined; w(); }
    });
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const back = new Promise<void>((r) => { wake = r; });
      const t0 = process.hrtime.bigint();
      socket.write(frame);
      await back;
      out.push(Number(process.hrtime.bigint() - t0) / 1e9);
    }
    return out;
  } finally {
    socket.destroy();
  }
}

async function timedProbe(source: X509SourceLike, t: Target, strength: ProbeStrength, rounds: number): Promise<{ wallMs: number; rttMinS: number; rttP50S: number; connectS: number }> {
  const t0 = performance.now();
  const r = await probeNode({
    source, host: t.host, port: t.probePort, nodeId: t.nodeId, strength, rounds, ...(strength === 'tpm' ? { akPublic: t.akPublic } : {}),
  });
  return { wallMs: performance.now() - t0, rttMinS: r.rttMinS, rttP50S: r.rttP50S, connectS: r.connectS };
}

/** Everything the landmark side measures on one path; runs in the prober child. */
async function measurePath(source: X509SourceLike, t: Target): Promise<PathFigures> {
  await tlsEcho(source, t, 30); // warm-up: TLS session setup and JIT, not counted
  const echoS = await tlsEcho(source, t, ECHO_ROUNDS);
  const strengths: StrengthFigures[] = [];
  for (const strength of ['agent-key', 'tpm'] as const) {
    const coldMs = (await timedProbe(source, t, strength, SERVER_ROUNDS)).wallMs;
    const serverRoundsMs: number[] = [];
    for (let i = 0; i < 3; i++) serverRoundsMs.push((await timedProbe(source, t, strength, SERVER_ROUNDS)).wallMs);
    const f: StrengthFigures = { strength, rounds: PLAN[strength].rounds, rttMinS: [], rttP50S: [], connectS: [], wallMs: [], coldMs, serverRoundsMs };
    for (let i = 0; i < PLAN[strength].probes; i++) {
      const r = await timedProbe(source, t, strength, PLAN[strength].rounds);
      f.rttMinS.push(r.rttMinS);
      f.rttP50S.push(r.rttP50S);
      f.connectS.push(r.connectS);
      f.wallMs.push(r.wallMs);
    }
    strengths.push(f);
  }
  return { echoS, strengths };
}

// ------------------------------------------------------------------ child: the landmark's prober

interface ChildArgs {
  host: string;
  probePort: number;
  echoPort: number;
  nodeId: string;
  akPublicB64: string;
  files: { certFile: string; keyFile: string; bundleFiles: Record<string, string> };
}

async function proberChild(file: string): Promise<void> {
  const a = JSON.parse(fs.readFileSync(file, 'utf8')) as ChildArgs;
  // The landmark's SVID and bundle, as PEM files written by the parent.
  const source = StaticX509Source.fromFiles(a.files);
  const figures = await measurePath(source, { host: a.host, probePort: a.probePort, echoPort: a.echoPort, nodeId: a.nodeId, akPublic: Buffer.from(a.akPublicB64, 'base64') });
  process.stdout.write(`${JSON.stringify(figures)}\n`);
}

// ------------------------------------------------------------------ parent: the node, the floors, the report

function sourceOf(svid: TestSvid, domain: TestDomain): X509SourceLike {
  const s = { id: svid.id, certificatesDer: svid.chain, privateKey: svid.key, expiresAt: new Date(Date.now() + 3600_000) };
  const bundles = [domain.bundle()];
  return {
    getX509Svid: () => s,
    getX509Bundles: () => bundles,
    getX509BundleForTrustDomain: (td: TrustDomain) => (td.equals(domain.td) ? bundles[0] : undefined),
    onUpdate: () => () => undefined,
  };
}

/** A bare mTLS echo with the node's SVID: what the path and TLS cost without the probe's signing. */
async function startEcho(source: X509SourceLike, landmarkId: string, host: string): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = createTlsServer({ source, authorizer: authorizeOneOf([landmarkId]) }, (socket) => {
    socket.setNoDelay(true);
    socket.on('data', (c: Buffer) => socket.write(c));
    socket.on('error', () => undefined);
  });
  server.on('connection', (s: net.Socket) => { sockets.add(s); s.once('close', () => sockets.delete(s)); });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

/** Times `fn` n times after a few unmeasured calls; seconds. */
async function timeCalls(n: number, fn: () => unknown): Promise<number[]> {
  for (let i = 0; i < 5; i++) await fn();
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    out.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return out;
}

const us = (s: number): string => (s * 1e6).toFixed(1);
const ms = (s: number): string => (s * 1e3).toFixed(2);
const km = (m: number): string => (m / 1000).toFixed(2);
const verdict = (ok: boolean | undefined): string => (ok === undefined ? '(for reference)' : ok ? 'MET' : 'NOT MET');

/** The node's work per round, measured alone right before the path it explains (the machine's load drifts). */
interface Floors {
  /** probeDigest + ECDSA P-256 sign + reply frame, as the responder does for agent-key; seconds. */
  signS: number[];
  /** Bare probeQuote calls; seconds. */
  quoteS: number[];
  /** probeQuote calls made by the responder during this path's tpm probes; seconds. */
  quoteInProbeS: number[];
}

interface Goal { label: string; figure: string; goal: string; met: boolean | undefined; why?: string }

function report(path: string, title: string, p: PathFigures, floors: Floors, goals: Goal[]): void {
  const echoMin = min(p.echoS);
  console.log(`\n${title}`);
  console.log(`  floor, path:   bare mTLS echo of a ${ECHO_FRAME}-byte frame, ${ECHO_ROUNDS} round trips              min ${us(echoMin)} µs, p50 ${us(pct(p.echoS, 0.5))} µs`);
  for (const f of p.strengths) {
    const plan = PLAN[f.strength];
    const tpm = f.strength === 'tpm';
    const work = tpm ? floors.quoteS : floors.signS;
    const medMin = pct(f.rttMinS, 0.5);
    const radius = radiusForRttM(medMin);
    const floorRtt = echoMin + min(work);
    console.log(`  ${f.strength}: ${plan.probes} probes × ${plan.rounds} rounds`);
    if (tpm) {
      console.log(`    floor, work:  bare probeQuote (TPM2_Quote by the AK, swtpm), ${work.length} calls              min ${ms(min(work))} ms, p50 ${ms(pct(work, 0.5))} ms`);
      if (floors.quoteInProbeS.length > 0) {
        console.log(`                  the same quotes inside this path's probes (${floors.quoteInProbeS.length})                   min ${ms(min(floors.quoteInProbeS))} ms, p50 ${ms(pct(floors.quoteInProbeS, 0.5))} ms`);
      }
    } else {
      console.log(`    floor, work:  node's per-round work: digest + ECDSA P-256 sign + frame, ${work.length} calls  min ${us(min(work))} µs, p50 ${us(pct(work, 0.5))} µs`);
    }
    console.log(`    RTT min       per probe: best ${us(min(f.rttMinS))} µs, median ${us(medMin)} µs, worst ${us(max(f.rttMinS))} µs`
      + `   (floor: echo min + work min = ${us(floorRtt)} µs)`);
    console.log(`    RTT p50       median of the probes' p50s: ${us(pct(f.rttP50S, 0.5))} µs`);
    const radiusGoal = tpm ? GOAL.tpmRadiusKm : GOAL.agentKeyRadiusKm;
    // The agent-key radius goal is stated for loopback; across the veth pair it is shown for reference.
    const radiusMet = !tpm && path !== 'loopback' ? undefined : radius <= radiusGoal * 1000;
    console.log(`    radius        c·RTT/2 of the median probe ${km(radius)} km (best ${km(radiusForRttM(min(f.rttMinS)))} km, floor ${km(radiusForRttM(floorRtt))} km);`
      + ` map radius (surfaceRadiusM) ${km(surfaceRadiusM(radius))} km   goal ≤ ${radiusGoal} km ${verdict(radiusMet)}`);
    const roundP50 = pct(f.wallMs, 0.5);
    console.log(`    probe round   connect + ${plan.rounds} rounds + checks: p50 ${roundP50.toFixed(2)} ms, max ${max(f.wallMs).toFixed(2)} ms (of which connect p50 ${ms(pct(f.connectS, 0.5))} ms)`
      + `   goal ≤ ${GOAL.roundMs} ms ${verdict(roundP50 <= GOAL.roundMs)}`);
    console.log(`                  at the server's default ${SERVER_ROUNDS} rounds: p50 ${pct(f.serverRoundsMs, 0.5).toFixed(2)} ms; the child's first ${f.strength} probe (cold) ${f.coldMs.toFixed(2)} ms`);
    const why = radiusMet === false ? `floor ${us(floorRtt)} µs = ${km(radiusForRttM(floorRtt))} km, of which ${tpm ? 'the bare quote' : 'signing'} ${km(radiusForRttM(min(work)))} km` : undefined;
    goals.push({ label: `${path} ${f.strength} radius (median probe)`, figure: `${km(radius)} km`, goal: `≤ ${radiusGoal} km`, met: radiusMet, ...(why !== undefined ? { why } : {}) });
    goals.push({ label: `${path} ${f.strength} probe round, ${plan.rounds} rounds (p50)`, figure: `${roundP50.toFixed(2)} ms`, goal: `≤ ${GOAL.roundMs} ms`, met: roundP50 <= GOAL.roundMs, why: `max of ${plan.probes}: ${max(f.wallMs).toFixed(1)} ms` });
  }
}

async function main(): Promise<void> {
  const here = fileURLToPath(import.meta.url);
  const repo = path.resolve(path.dirname(here), '..');
  console.log(`terroir latency-witness benchmark (issue 15) — node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'} ×${os.cpus().length}, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  console.log('radius = c·RTT/2 (c = 299,792.458 km/s: 1 µs of RTT = 0.15 km); the map radius adds the sphere\'s slack (src/geo/latency.ts surfaceRadiusM).');
  console.log('The node (responder, swtpm) runs in this process; the landmark (prober) in a child process, as in production.');

  // Cleanup runs once, in reverse order, on the normal path and on SIGINT/SIGTERM.
  const cleanups: (() => unknown)[] = [];
  let child: ChildProcess | undefined;
  let cleaning: Promise<void> | undefined;
  const cleanup = (): Promise<void> => (cleaning ??= (async () => {
    child?.kill('SIGKILL');
    for (const c of cleanups.reverse()) {
      try { await c(); } catch (e) { process.stderr.write(`cleanup: ${(e as Error).message}\n`); }
    }
  })());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => { void cleanup().finally(() => process.exit(130)); });

  try {
    const td = makeDomain(TD);
    const nodeSvid = td.svid(NODE);
    const landmarkSvid = td.svid(LANDMARK);
    const nodeSource = sourceOf(nodeSvid, td);
    const nodeId = nodeSvid.id.toString();
    const landmarkId = landmarkSvid.id.toString();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-bench-latency-'));
    cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const files = writeSvidFiles(dir, 'landmark', landmarkSvid, [td]);

    const sw: Swtpm = await startSwtpm();
    cleanups.push(() => sw.stop());
    const tpm: TpmSession = await openTpmCredentialSource({ tcti: sw.tcti, ekKind: 'rsa2048' }, { logger: pino({ level: 'silent' }) });
    cleanups.push(() => tpm.close());
    // attestationData creates the AK, as the node's attestation does; probes are quoted by it.
    const akPublic = (await tpm.attestationData()).akPublic;
    const bareQuote = (d: Buffer): Promise<{ attest: Buffer; signature: Buffer }> => {
      if (tpm.probeQuote === undefined) throw new Error('this TPM session has no probeQuote');
      return tpm.probeQuote(d);
    };
    // The responder's quoter, timed: how much of a tpm round the TPM itself takes, during the probes.
    let inProbe: number[] = [];
    const quote: ProbeQuoter = async (d) => {
      const t0 = process.hrtime.bigint();
      const q = await bareQuote(d);
      inProbe.push(Number(process.hrtime.bigint() - t0) / 1e9);
      return q;
    };
    const floors = async (): Promise<Floors> => ({
      signS: await timeCalls(2000, () => encodeReply(crypto.sign('sha256', probeDigest(crypto.randomBytes(32), landmarkId, nodeId), nodeSvid.key))),
      quoteS: await timeCalls(30, () => bareQuote(probeDigest(crypto.randomBytes(32), landmarkId, nodeId))),
      quoteInProbeS: (inProbe = []),
    });

    const serve = async (host: string): Promise<{ probePort: number; echoPort: number }> => {
      const responder: ProbeResponder = await startProbeResponder({ source: nodeSource, landmarks: authorizeOneOf([landmarkId]), host, port: 0, quote });
      cleanups.push(() => responder.close());
      const echo = await startEcho(nodeSource, landmarkId, host);
      cleanups.push(() => echo.close());
      return { probePort: responder.port, echoPort: echo.port };
    };

    /** Runs the prober child (in namespace `ns` if given) against `host` and returns its figures. */
    const probeFrom = async (name: string, ns: string | undefined, host: string): Promise<PathFigures> => {
      const ports = await serve(host);
      const argsFile = path.join(dir, `${name}.json`);
      const args: ChildArgs = { host, ...ports, nodeId, akPublicB64: akPublic.toString('base64'), files };
      fs.writeFileSync(argsFile, JSON.stringify(args), { mode: 0o600 });
      const node = [process.execPath, '--import', 'tsx', here, '--prober', argsFile];
      const [cmd, ...argv] = ns === undefined ? node : ['ip', 'netns', 'exec', ns, ...node];
      const proc = spawn(cmd as string, argv, { cwd: repo, stdio: ['ignore', 'pipe', 'inherit'] });
      child = proc;
      let out = '';
      proc.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
      const killer = setTimeout(() => proc.kill('SIGKILL'), 45_000);
      const code = await new Promise<number | null>((r) => proc.on('exit', (c) => r(c)));
      clearTimeout(killer);
      child = undefined;
      if (code !== 0) throw new Error(`the ${name} prober exited with ${code}`);
      return JSON.parse(out.trim().split('\n').at(-1) as string) as PathFigures;
    };

    const goals: Goal[] = [];
    // 1–2. Loopback.
    let f = await floors();
    report('loopback', 'loopback (127.0.0.1)', await probeFrom('loopback', undefined, '127.0.0.1'), f, goals);

    // 3. Across a veth pair: the landmark in a network namespace of its own.
    let ns: NetNs | undefined;
    try {
      if (process.getuid?.() !== 0) throw new Error('not root (ip netns needs it)');
      ns = createNetNs('tlb');
    } catch (e) {
      console.log(`\nveth pair: skipped — ${(e as Error).message}`);
    }
    if (ns !== undefined) {
      const theNs = ns;
      cleanups.push(() => theNs.remove());
      f = await floors();
      const veth = await probeFrom('veth', theNs.name, theNs.hostIp);
      report('veth', `veth pair (${theNs.hostIp} ← ${theNs.nsIp}; landmark in namespace ${theNs.name})`, veth, f, goals);
    }

    console.log('\nA probe round runs in the background after an attestation (src/server/agentapi/latency.ts): the attestation has');
    console.log('answered already; the round is how long until the latency-bounded claims land (one round per landmark, in parallel).');
    console.log(`\nsummary (load average now ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}; the figures move with it)`);
    for (const g of goals) {
      console.log(`  ${g.label.padEnd(50)} ${g.figure.padStart(10)}   goal ${g.goal.padEnd(9)} ${verdict(g.met)}${g.why !== undefined ? `   (${g.why})` : ''}`);
    }
  } finally {
    await cleanup();
  }
}

const [mode, arg] = process.argv.slice(2);
if (mode === '--prober') await proberChild(arg as string);
else await main();
// Leftover handles (swtpm's TCTI, TLS contexts) must not keep the run alive.
process.exit(0);
