// The monitor's decision rules, driven by a scripted status source and a controlled clock (the
// integration with the real verifier double and swtpm is in continuous.test.ts).
import { describe, expect, it } from 'vitest';
import { KeylimeRequestError } from '../../src/keylime/errors.js';
import { ContinuousAttestationMonitor, MonitorFailureError, type MonitorFailure } from '../../src/keylime/monitor.js';
import type { AgentStatus } from '../../src/keylime/tenant.js';

const T0 = 1_700_000_000_000;

function harness(opts: { maxAttestationAgeMs?: number; pendingTimeoutMs?: number } = {}) {
  let now = T0;
  let next: AgentStatus | Error = status({});
  const monitor = new ContinuousAttestationMonitor(
    { getAgentStatus: async () => { if (next instanceof Error) throw next; return next; } },
    { now: () => now, maxAttestationAgeMs: 10_000, pendingTimeoutMs: 20_000, ...opts },
  );
  const events: string[] = [];
  const failures: MonitorFailure[] = [];
  monitor.on('pass', (id) => events.push(`pass:${id}`));
  monitor.on('fail', (id, f) => { events.push(`fail:${id}:${f.kind}`); failures.push(f); });
  monitor.watch('n1');
  return {
    monitor, events, failures,
    set: (s: AgentStatus | Error) => { next = s; },
    advance: (ms: number) => { now += ms; },
    now: () => now,
  };
}

function status(over: Partial<AgentStatus>): AgentStatus {
  return {
    operationalState: 3, attestationStatus: 'PASS', attestationCount: 0, lastSuccessfulAttestation: undefined,
    lastEventId: undefined, severityLevel: undefined, ...over,
  };
}

describe('ContinuousAttestationMonitor', () => {
  it('does not trust Keylime PASS before a quote was verified', async () => {
    const h = harness();
    await h.monitor.pollOnce();
    expect(h.monitor.verdict('n1')).toBe('pending');
    expect(h.monitor.isTrusted('n1')).toBe(false);
    expect(h.events).toEqual([]);
  });

  it('passes with attestation_count >= 1 and a recent last success; emits pass once', async () => {
    const h = harness();
    h.set(status({ attestationCount: 1, lastSuccessfulAttestation: Math.floor(h.now() / 1000) }));
    await h.monitor.pollOnce();
    await h.monitor.pollOnce();
    expect(h.monitor.isTrusted('n1')).toBe(true);
    expect(h.events).toEqual(['pass:n1']);
  });

  it('fails a node whose last success is too old (stale)', async () => {
    const h = harness();
    h.set(status({ attestationCount: 5, lastSuccessfulAttestation: Math.floor(h.now() / 1000) - 11 }));
    await h.monitor.pollOnce();
    expect(h.events).toEqual(['fail:n1:stale']);
    expect(h.monitor.isTrusted('n1')).toBe(false);
  });

  it.each([
    [7, 'failed'], [8, 'terminated'], [9, 'invalid_quote'], [10, 'tenant_quote_failed'], [11, 'unexpected_state'],
  ] as const)('state %i fails the node (%s), even with a recent success', async (state, kind) => {
    const h = harness();
    h.set(status({ attestationCount: 1, lastSuccessfulAttestation: Math.floor(h.now() / 1000) }));
    await h.monitor.pollOnce();
    h.set(status({ operationalState: state, attestationStatus: 'FAIL', attestationCount: 1, lastSuccessfulAttestation: Math.floor(h.now() / 1000), lastEventId: 'pcr_validation.invalid_pcr_15' }));
    await h.monitor.pollOnce();
    expect(h.events).toEqual(['pass:n1', `fail:n1:${kind}`]);
    expect(h.monitor.isTrusted('n1')).toBe(false);
    if (state !== 8 && state !== 11) expect(h.failures[0]?.lastEventId).toBe('pcr_validation.invalid_pcr_15');
  });

  it('fails a node that never verifies a quote within the pending timeout', async () => {
    const h = harness();
    await h.monitor.pollOnce();
    h.advance(20_001);
    await h.monitor.pollOnce();
    expect(h.events).toEqual(['fail:n1:pending_timeout']);
  });

  it('verifier unreachable fails closed, counts, and recovers by itself', async () => {
    const h = harness();
    h.set(status({ attestationCount: 1, lastSuccessfulAttestation: Math.floor(h.now() / 1000) }));
    await h.monitor.pollOnce();
    h.set(new KeylimeRequestError('connect', 'connection refused'));
    await h.monitor.pollOnce();
    await h.monitor.pollOnce();
    expect(h.events).toEqual(['pass:n1', 'fail:n1:verifier_unreachable']); // one event per change
    expect(h.monitor.counters().verifierUnreachable).toBe(2);
    expect(h.monitor.isTrusted('n1')).toBe(false);
    h.set(status({ attestationCount: 2, lastSuccessfulAttestation: Math.floor(h.now() / 1000) }));
    await h.monitor.pollOnce();
    expect(h.events).toEqual(['pass:n1', 'fail:n1:verifier_unreachable', 'pass:n1']);
    expect(h.monitor.isTrusted('n1')).toBe(true);
  });

  it('a node the verifier does not know (404) is failed as not_enrolled', async () => {
    const h = harness();
    h.set(new KeylimeRequestError('http', 'HTTP 404', { status: 404 }));
    await h.monitor.pollOnce();
    expect(h.events).toEqual(['fail:n1:not_enrolled']);
  });

  it('stops trusting when the monitor itself stops polling', async () => {
    const h = harness();
    h.set(status({ attestationCount: 1, lastSuccessfulAttestation: Math.floor(h.now() / 1000) }));
    await h.monitor.pollOnce();
    expect(h.monitor.isTrusted('n1')).toBe(true);
    h.advance(10_001);
    expect(h.monitor.isTrusted('n1')).toBe(false);
  });

  it('awaitTrusted resolves on the first pass, rejects on fail or timeout', async () => {
    const h = harness();
    const waiting = h.monitor.awaitTrusted('n1', 5000);
    await h.monitor.pollOnce(); // count 0: still pending
    h.set(status({ attestationCount: 1, lastSuccessfulAttestation: Math.floor(h.now() / 1000) }));
    await h.monitor.pollOnce();
    expect((await waiting).attestationCount).toBe(1);
    expect((await h.monitor.awaitTrusted('n1', 10)).attestationCount).toBe(1); // already trusted

    h.advance(10_001); // no longer trusted (stale poll), so it waits
    const failing = h.monitor.awaitTrusted('n1', 5000).catch((e: unknown) => e);
    h.set(status({ operationalState: 9, attestationStatus: 'FAIL', attestationCount: 1 }));
    await h.monitor.pollOnce();
    const err = await failing;
    expect(err).toBeInstanceOf(MonitorFailureError);
    expect((err as MonitorFailureError).failure.kind).toBe('invalid_quote');
    await expect(h.monitor.awaitTrusted('n1', 20)).rejects.toMatchObject({ failure: { kind: 'pending_timeout' } });
    await expect(h.monitor.awaitTrusted('unknown', 20)).rejects.toMatchObject({ failure: { kind: 'not_enrolled' } });
  });

  it('awaitFreshQuote: a passing verdict from before does not count; only a newly verified quote does, and a failure ends the wait', async () => {
    const h = harness();
    const sec = (): number => Math.floor(h.now() / 1000);
    h.set(status({ attestationCount: 4, lastSuccessfulAttestation: sec() }));
    await h.monitor.pollOnce();
    expect(h.monitor.isTrusted('n1')).toBe(true);
    const wait = h.monitor.awaitFreshQuote('n1', h.monitor.lastStatus('n1')!.attestationCount, 5000);
    let settled = false;
    void wait.then(() => { settled = true; }, () => { settled = true; });
    await h.monitor.pollOnce(); // same count: still the old verdict
    await Promise.resolve();
    expect(settled).toBe(false);
    h.set(status({ attestationCount: 5, lastSuccessfulAttestation: sec() }));
    await h.monitor.pollOnce();
    await expect(wait).resolves.toMatchObject({ attestationCount: 5 });
    // Revoked meanwhile (Keylime pushed, then recorded state 9): the wait ends with the failure.
    const revoked = h.monitor.awaitFreshQuote('n1', 5, 5000);
    h.set(status({ operationalState: 9, attestationCount: 5, lastEventId: 'pcr_validation.invalid_pcr_15' }));
    await h.monitor.pollOnce();
    await expect(revoked).rejects.toBeInstanceOf(MonitorFailureError);
    await expect(h.monitor.awaitFreshQuote('unknown', 0, 10)).rejects.toMatchObject({ failure: { kind: 'not_enrolled' } });
  });
});
