// Keylime under load (issue 18 part 2), short version of bench/keylime-load.ts: many concurrent
// Unified Identity attestations (one-shot mode: every one asks the verifier) through a real server's
// agent API with swtpm, against a slow, a flapping and a garbage verifier (the test double's own fault
// modes and stop()/restart(); its checks untouched). Fail closed, bounded, and recovering unaided.
// Before keylime.maxConcurrentRequests the client queued without bound: 100 attestations against a
// 2 s verifier left 199 requests waiting in undici's pool (one connection, each retried on timeout).
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseServerConfig } from '../../src/server/index.js';
import { LimiterRefusal, RequestLimiter } from '../../src/keylime/limiter.js';
import { attestOnce, flap, GARBAGE_FAULTS, recovery, startLoadRig, wave, type LoadRig, type Outcome } from '../../bench/keylime-load.js';

const LIMITS = { maxConcurrentRequests: 4, maxQueuedRequests: 8, requestTimeoutMs: 3000 };
const UNAVAILABLE = grpc.status[grpc.status.UNAVAILABLE];

let rig: LoadRig;

beforeAll(async () => {
  rig = await startLoadRig(LIMITS);
  expect((await attestOnce(rig)).ok).toBe(true); // warm: version negotiated
}, 30_000);

afterAll(async () => {
  await rig?.stop();
});

/** Every accepted attestation carries a verdict the verifier actually gave. */
function acceptedOnlyWithVerdicts(outcomes: Outcome[], evidenceChecks: number): void {
  const ok = outcomes.filter((o) => o.ok);
  for (const o of ok) expect(o.verifier).toBeDefined();
  expect(ok.length).toBeLessThanOrEqual(evidenceChecks);
}

describe('Keylime under load', () => {
  it('a slow verifier (2 s per answer) under 100 concurrent attestations: bounded in flight and queued, excess refused at once as busy', async () => {
    rig.d.verifier.fault = { mode: 'slow', delayMs: 2000 };
    const w = await wave(rig, 100);
    const codes = new Set(w.outcomes.filter((o) => !o.ok).map((o) => o.code));
    expect([...codes]).toEqual([UNAVAILABLE]); // nothing else: no crash, no wrong verdict
    const busy = w.outcomes.filter((o) => /Keylime verifier busy, retry/.test(o.message ?? ''));
    expect(busy.length).toBeGreaterThan(0);
    // Refused at once, before anything was sent (the latency seen here includes the serial TPM queue).
    for (const o of busy) expect(o.message).toMatch(/the request was not sent/);
    expect(w.peakVerifierInFlight).toBeLessThanOrEqual(LIMITS.maxConcurrentRequests);
    expect(w.peakInFlight).toBe(LIMITS.maxConcurrentRequests);
    expect(w.peakQueued).toBeLessThanOrEqual(LIMITS.maxQueuedRequests);
    expect(w.outcomes.filter((o) => o.ok).length).toBeGreaterThan(0); // the slots still served
    acceptedOnlyWithVerdicts(w.outcomes, w.evidenceChecks);
    const load = rig.server.unifiedIdentity?.keylimeLoad();
    expect(load?.inFlight).toBe(0);
    expect(load?.queued).toBe(0);

    const rec = await recovery(rig, () => { rig.d.verifier.fault = { mode: 'none' }; });
    expect(rec.attempts).toBe(1);
  }, 40_000);

  it('a flapping verifier (down and up every second): only verdicts accepted, outages UNAVAILABLE, recovery unaided', async () => {
    const f = flap(rig.d.verifier, 800);
    let w;
    try {
      w = await wave(rig, 40);
    } finally {
      const rec = await recovery(rig, () => f.stop());
      expect(rec.ms).toBeLessThan(5000);
    }
    expect(f.cycles()).toBeGreaterThan(0);
    for (const o of w.outcomes.filter((x) => !x.ok)) {
      expect(o.code).toBe(UNAVAILABLE);
      expect(o.message).toMatch(/Keylime verifier (unreachable or failing|busy, retry)/);
    }
    acceptedOnlyWithVerdicts(w.outcomes, w.evidenceChecks);
    expect(w.peakQueued).toBeLessThanOrEqual(LIMITS.maxQueuedRequests);
  }, 40_000);

  it.each(GARBAGE_FAULTS)('a verifier answering HTTP 200 garbage ($name): never read as valid, then recovery', async ({ fault }) => {
    rig.d.verifier.fault = fault;
    const w = await wave(rig, 10);
    expect(w.outcomes.filter((o) => o.ok)).toEqual([]);
    for (const o of w.outcomes) {
      // A verdict that contradicts itself is a rejection (the node's problem); anything unreadable is an outage.
      if (fault.mode === 'contradiction') expect(o.code).toBe(grpc.status[grpc.status.PERMISSION_DENIED]);
      else expect(o.message).toMatch(/Keylime verifier unreachable or failing.*(not JSON|not a Keylime envelope|unexpected results|exceeds \d+ bytes)/);
    }
    expect(w.peakQueued).toBeLessThanOrEqual(LIMITS.maxQueuedRequests);
    const rec = await recovery(rig, () => { rig.d.verifier.fault = { mode: 'none' }; });
    expect(rec.attempts).toBe(1);
  }, 30_000);

  it('keylime.maxConcurrentRequests / maxQueuedRequests are validated', () => {
    const base = { trustDomain: 'example.org', dataDir: '/tmp/x', nodeAttestation: { tpm: { enabled: true } } };
    const keylime = { verifierUrl: 'https://v.example:8881', caFile: 'a', certFile: 'b', keyFile: 'c', mode: 'oneshot' };
    const parse = (extra: Record<string, unknown>): unknown => parseServerConfig({ ...base, keylime: { ...keylime, ...extra } }, '/tmp', {});
    for (const bad of [{ maxConcurrentRequests: 0 }, { maxConcurrentRequests: 1.5 }, { maxQueuedRequests: -1 }, { maxConcurrentRequests: 5000 }]) {
      expect(() => parse(bad), JSON.stringify(bad)).toThrow(/maxConcurrentRequests|maxQueuedRequests/);
    }
  });

  it('the limiter: slots handed over in arrival order, a full queue refused at once, a waiter gives up at its deadline', async () => {
    const l = new RequestLimiter(2, 2);
    const never = new AbortController().signal;
    const a = await l.acquire(never);
    const b = await l.acquire(never);
    const order: string[] = [];
    const c = l.acquire(never).then((r) => { order.push('c'); return r; });
    const deadline = new AbortController();
    const d = l.acquire(deadline.signal);
    await expect(l.acquire(never)).rejects.toMatchObject({ reason: 'full' });
    deadline.abort();
    await expect(d).rejects.toBeInstanceOf(LimiterRefusal);
    expect(l.load()).toMatchObject({ inFlight: 2, queued: 1, peakQueued: 2, refusedFull: 1, refusedDeadline: 1 });
    a();
    a(); // a second release of one slot changes nothing
    const rc = await c;
    expect(order).toEqual(['c']);
    expect(l.load()).toMatchObject({ inFlight: 2, queued: 0 });
    b();
    rc();
    expect(l.load()).toMatchObject({ inFlight: 0, queued: 0, peakInFlight: 2 });
  });
});
