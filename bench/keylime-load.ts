// Keylime under load: 100 concurrent Unified Identity attestations (one-shot mode: each asks the
// verifier) against a slow, a flapping and a garbage verifier. Prints its figures.
//   npx tsx bench/keylime-load.ts            (BENCH_N attestations per fault, default 100)
// A real terroir server and real agents' AttestAgent exchanges over gRPC, one swtpm: the TPM work
// (credential activation, quote, ~50 ms) is serial on it, so 100 attestations reach the server over
// ~5 s and overlap on the verifier while it takes 2 s per answer. The faults are the Keylime test
// double's own fault modes and stop()/restart() (test/doubles/keylime-verifier.ts), its checks untouched.
// Figures: peak verifier requests in flight (counted at the double) and waiting in the server's queue
// (the client's limiter), server RSS growth (this process: agent, server and verifier share it),
// attestation latency p50/p99, and the time until an attestation succeeds once the fault ends.
// test/fleet/keylime-load.test.ts runs a short version of the same and asserts the bounds.
import path from 'node:path';
import type https from 'node:https';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { NodeAttestationError } from '../src/agent/node-attestor.js';
import type { AgentUnifiedIdentity } from '../src/agent/unified-identity.js';
import type { RunningServer } from '../src/server/index.js';
import type { Fault, TestKeylimeVerifier } from '../test/doubles/keylime-verifier.js';
import { startUnifiedDeployment, type UnifiedDeployment } from '../test/unified-identity/fixture.js';

export interface LoadRigOptions {
  maxConcurrentRequests: number;
  maxQueuedRequests: number;
  requestTimeoutMs: number;
}

/** Verifier requests being answered right now, counted at the double's HTTPS server (its checks unchanged). */
export interface VerifierGauge {
  now: number;
  peak: number;
  reset(): void;
}

export interface LoadRig {
  d: UnifiedDeployment;
  server: RunningServer;
  provider: AgentUnifiedIdentity;
  gauge: VerifierGauge;
  stop(): Promise<void>;
}

export async function startLoadRig(o: LoadRigOptions): Promise<LoadRig> {
  const d = await startUnifiedDeployment();
  try {
    const server = await d.startServer({
      flag: true, keylime: true,
      config: {
        // The rate limit is not what is measured here: let every attestation through to the pipeline.
        agentApi: { attestationRateLimit: { perSecond: 10_000, burst: 10_000 } },
        keylime: { requestTimeoutMs: o.requestTimeoutMs, maxConcurrentRequests: o.maxConcurrentRequests, maxQueuedRequests: o.maxQueuedRequests },
      },
    });
    const provider = d.provider(d.berlin);
    // Counted where the requests arrive; the double's private server is only listened to.
    const https_ = (d.verifier as unknown as { server: https.Server }).server;
    const gauge: VerifierGauge = { now: 0, peak: 0, reset() { this.peak = this.now; } };
    https_.on('request', (_req, res) => {
      gauge.now++;
      if (gauge.now > gauge.peak) gauge.peak = gauge.now;
      res.once('close', () => { gauge.now--; });
    });
    return {
      d, server, provider, gauge,
      async stop() {
        await server.stop().catch(() => undefined);
        await d.stop();
      },
    };
  } catch (err) {
    await d.stop();
    throw err;
  }
}

export interface Outcome {
  ok: boolean;
  ms: number;
  /** gRPC status name of a refusal, e.g. UNAVAILABLE. */
  code?: string;
  message?: string;
  /** The claims' verifier when accepted ("keylime" or the stand-in's name). */
  verifier?: string;
}

/** One AttestAgent exchange; never throws. */
export async function attestOnce(rig: LoadRig): Promise<Outcome> {
  const t = performance.now();
  try {
    const r = await rig.d.attest(rig.server, rig.provider);
    const claims = r.unifiedIdentityClaims ? JSON.parse(r.unifiedIdentityClaims.toString('utf8')) as Record<string, unknown> : undefined;
    return { ok: true, ms: performance.now() - t, ...(typeof claims?.['verifier'] === 'string' ? { verifier: claims['verifier'] } : {}) };
  } catch (err) {
    const e = err as NodeAttestationError;
    const code = e instanceof NodeAttestationError && e.grpcCode !== undefined ? grpc.status[e.grpcCode] : e.name;
    return { ok: false, ms: performance.now() - t, code: String(code), message: e.message };
  }
}

export interface Wave {
  outcomes: Outcome[];
  peakVerifierInFlight: number;
  peakInFlight: number;
  peakQueued: number;
  evidenceChecks: number;
  rssGrowthMb: number;
  ms: number;
}

/** `n` attestations at once; peaks (and RSS growth) measured for this wave only. */
export async function wave(rig: LoadRig, n: number): Promise<Wave> {
  const ui = rig.server.unifiedIdentity;
  if (ui === undefined) throw new Error('the load server has no Unified Identity pipeline');
  ui.keylimeLoad(true);
  rig.gauge.reset();
  const checks = rig.d.verifier.counters.evidenceChecks;
  const rss = process.memoryUsage().rss;
  let peakRss = rss;
  const sampler = setInterval(() => { peakRss = Math.max(peakRss, process.memoryUsage().rss); }, 20);
  const t = performance.now();
  const outcomes = await Promise.all(Array.from({ length: n }, () => attestOnce(rig)));
  clearInterval(sampler);
  const load = ui.keylimeLoad();
  return {
    outcomes,
    peakVerifierInFlight: rig.gauge.peak,
    peakInFlight: load?.peakInFlight ?? NaN,
    peakQueued: load?.peakQueued ?? NaN,
    evidenceChecks: rig.d.verifier.counters.evidenceChecks - checks,
    rssGrowthMb: (Math.max(peakRss, process.memoryUsage().rss) - rss) / 1e6,
    ms: performance.now() - t,
  };
}

/** The verifier goes down and comes back every `periodMs` until stopped (always left up). */
export function flap(v: TestKeylimeVerifier, periodMs: number): { stop(): Promise<void>; cycles: () => number } {
  let running = true;
  let cycles = 0;
  const loop = (async () => {
    while (running) {
      await sleep(periodMs);
      if (!running) break;
      await v.stop();
      await sleep(periodMs);
      await v.restart();
      cycles++;
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
    },
    cycles: () => cycles,
  };
}

/** Ends the fault, then attests until one succeeds: the time that took (ms), or Infinity after `limitMs`. */
export async function recovery(rig: LoadRig, clear: () => Promise<void> | void, limitMs = 15_000): Promise<{ ms: number; attempts: number }> {
  await clear();
  const t = performance.now();
  let attempts = 0;
  while (performance.now() - t < limitMs) {
    attempts++;
    if ((await attestOnce(rig)).ok) return { ms: performance.now() - t, attempts };
    await sleep(50);
  }
  return { ms: Infinity, attempts };
}

export function pct(xs: number[], p: number): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

/** Refusals grouped by gRPC code and the start of their message. */
export function refusals(outcomes: Outcome[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const o of outcomes) {
    if (o.ok) continue;
    const key = `${o.code}: ${(o.message ?? '').replace(/^node attestation (failed|refused): /, '').slice(0, 60)}`;
    out.set(key, (out.get(key) ?? 0) + 1);
  }
  return out;
}

export const GARBAGE_FAULTS: { name: string; fault: Fault }[] = [
  { name: 'truncated JSON', fault: { mode: 'garbage' } },
  { name: 'wrong shapes', fault: { mode: 'wrong-shape' } },
  { name: 'huge body (8 MiB, chunked)', fault: { mode: 'oversized', bytes: 8 << 20, chunked: true } },
  { name: 'valid:true with failures', fault: { mode: 'contradiction' } },
];

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function main(): Promise<void> {
  const N = Number(process.env['BENCH_N'] ?? 100);
  const limits = { maxConcurrentRequests: 16, maxQueuedRequests: 64, requestTimeoutMs: 5000 };
  const rig = await startLoadRig(limits);
  const row = (name: string, w: Wave, rec: { ms: number }): void => {
    const ok = w.outcomes.filter((o) => o.ok).length;
    const lat = w.outcomes.map((o) => o.ms);
    console.log(`${name.padEnd(28)} ${String(ok).padStart(4)}/${w.outcomes.length} ok  verifier in flight peak ${String(w.peakVerifierInFlight).padStart(3)}`
      + `  client in flight ${String(w.peakInFlight).padStart(3)}  queued ${String(w.peakQueued).padStart(3)}  RSS +${w.rssGrowthMb.toFixed(1).padStart(5)} MB`
      + `  p50 ${pct(lat, 50).toFixed(0).padStart(5)} ms  p99 ${pct(lat, 99).toFixed(0).padStart(5)} ms  recovery ${rec.ms.toFixed(0)} ms  (${(w.ms / 1000).toFixed(1)} s)`);
    for (const [why, count] of refusals(w.outcomes)) console.log(`${''.padEnd(30)}${String(count).padStart(4)} × ${why}`);
  };
  try {
    for (let i = 0; i < 3; i++) await attestOnce(rig); // warm-up: version negotiated, connections open
    console.log(`Keylime under load — ${N} concurrent attestations per fault, one swtpm, node ${process.version}`);
    console.log(`limits: keylime.maxConcurrentRequests ${limits.maxConcurrentRequests}, maxQueuedRequests ${limits.maxQueuedRequests}, requestTimeoutMs ${limits.requestTimeoutMs}`);
    row('healthy verifier', await wave(rig, N), { ms: 0 });

    rig.d.verifier.fault = { mode: 'slow', delayMs: 2000 };
    const slow = await wave(rig, N);
    row('slow (2 s per answer)', slow, await recovery(rig, () => { rig.d.verifier.fault = { mode: 'none' }; }));

    const f = flap(rig.d.verifier, 1000);
    const flapping = await wave(rig, N);
    row(`flapping (1 s up/1 s down)`, flapping, await recovery(rig, () => f.stop()));

    for (const g of GARBAGE_FAULTS) {
      rig.d.verifier.fault = g.fault;
      const w = await wave(rig, Math.ceil(N / GARBAGE_FAULTS.length));
      row(`garbage: ${g.name}`, w, await recovery(rig, () => { rig.d.verifier.fault = { mode: 'none' }; }));
    }
    console.log(`RSS now ${(process.memoryUsage().rss / 1e6).toFixed(0)} MB`);
  } finally {
    await rig.stop();
  }
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main();
}
