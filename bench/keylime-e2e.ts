// Keylime continuous mode, whole system (loopback, swtpm). Prints its figures.
//   npx tsx bench/keylime-e2e.ts
// A real terroir server (keylime section, default 1 s status poll) and agent, swtpm behind the agent's
// quote endpoint, the test verifier pulling a quote every 2 s (Keylime's default quote_interval).
// Revocation latency, each trial on a fresh deployment (PCR 15 cannot be reset at locality 0), from
// extending a policy PCR on the node's TPM to its workload's Workload API stream no longer serving
// SVIDs (X509Stream.waitForLoss), in two modes:
//  - polled: the verifier does not push; the server's status poll finds the failure and withdraws;
//  - pushed: the verifier POSTs Keylime's revocation notification to the node's quote endpoint on the
//    failed quote, and the agent drops its SVIDs at once (the server's 1 s poll still runs).
// Per mode: end to end (PCR extend -> stream lost; goal pushed <= 3 s) and after the verifier's verdict
// (the double's verdict timestamp -> stream lost; goal pushed <= 1 s), plus where the time goes.
import os from 'node:os';
import pino from 'pino';
import { badMeasurement, POLICY_PCR, specClient, startDeployment, X509Stream } from '../test/keylime-e2e/fixture.js';

const TRIALS = 5;
/** Keylime's default `quote_interval` (2 s). */
const QUOTE_INTERVAL_MS = 2000;
/** terroir's default `keylime.pollIntervalMs`. */
const SERVER_POLL_MS = 1000;

type Mode = 'polled' | 'pushed';

interface Trial {
  startMs: number;
  /** PCR extend -> stream lost. */
  endToEndMs: number;
  /** PCR extend -> the verifier judged the quote failed. */
  toVerdictMs: number;
  /** Verdict -> stream lost. */
  afterVerdictMs: number;
  /** Verdict -> the node's quote endpoint answered the notification (pushed only). */
  toNotifiedMs: number | undefined;
  notifyStatus: number | undefined;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 === 1 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
}

function stats(xs: number[]): string {
  return `median ${median(xs).toFixed(0).padStart(5)} ms, min ${Math.min(...xs).toFixed(0).padStart(5)} ms, max ${Math.max(...xs).toFixed(0).padStart(5)} ms`;
}

async function trial(mode: Mode): Promise<Trial> {
  const d = await startDeployment({ quoteIntervalMs: QUOTE_INTERVAL_MS, pollIntervalMs: SERVER_POLL_MS, logger: pino({ level: 'silent' }) });
  d.verifier.notifyRevocations = mode === 'pushed';
  const client = specClient(d.socket);
  const stream = new X509Stream(client);
  try {
    await d.addWorkload('bench');
    await stream.waitFor((m) => m.svids.length > 0);
    // Start at a random point of the verifier's quote cycle, as a real compromise would.
    await new Promise((r) => setTimeout(r, Math.random() * QUOTE_INTERVAL_MS));
    const t0 = Date.now();
    await d.tpm.quoter!().pcrExtend(POLICY_PCR, badMeasurement('bench'));
    const lostAt = await stream.waitForLoss(30_000);
    const verdict = d.verifier.verdictLog.find((v) => v.id === d.keylimeId && v.state === 9 && v.at >= t0);
    if (verdict === undefined) throw new Error(`${mode}: the stream was lost without a failed verdict from the verifier`);
    const notified = d.verifier.notifications.find((n) => n.aboutId === d.keylimeId && n.toId === d.keylimeId && n.at >= verdict.at);
    if (mode === 'polled' && notified !== undefined) throw new Error('polled: the verifier pushed a notification');
    return {
      startMs: d.agentStartMs, endToEndMs: lostAt - t0, toVerdictMs: verdict.at - t0, afterVerdictMs: lostAt - verdict.at,
      toNotifiedMs: notified === undefined ? undefined : notified.at - verdict.at, notifyStatus: notified?.status,
    };
  } finally {
    stream.close();
    client.close();
    await d.stop();
  }
}

async function main(): Promise<void> {
  const started = Date.now();
  console.log('keylime-e2e: revocation latency, PCR extended on the node -> last workload stream lost (server + agent + swtpm + verifier double, loopback)');
  console.log(`  ${os.cpus().length} CPUs, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}, node ${process.version}`);
  console.log(`  verifier quote interval ${QUOTE_INTERVAL_MS} ms (Keylime default), server status poll ${SERVER_POLL_MS} ms (terroir default), ${TRIALS} trials per mode, fresh deployment each`);
  // Alternate the modes trial by trial so drift in machine load hits both alike.
  const results: Record<Mode, Trial[]> = { polled: [], pushed: [] };
  for (let i = 0; i < TRIALS; i++) {
    for (const mode of (i % 2 === 0 ? ['polled', 'pushed'] : ['pushed', 'polled']) as Mode[]) results[mode].push(await trial(mode));
  }
  for (const mode of ['polled', 'pushed'] as Mode[]) {
    const rs = results[mode];
    const e2e = rs.map((r) => r.endToEndMs);
    const after = rs.map((r) => r.afterVerdictMs);
    const e2eGoal = mode === 'pushed' ? `goal <= 3000 ms: ${Math.max(...e2e) <= 3000 ? 'met' : 'MISSED'} (max)` : 'no goal (reference)';
    const afterGoal = mode === 'pushed' ? `goal <= 1000 ms: ${Math.max(...after) <= 1000 ? 'met' : 'MISSED'} (max)` : 'no goal (reference)';
    console.log(mode === 'polled'
      ? `polled (verifier does not push; the server's ${SERVER_POLL_MS} ms status poll finds the failure and withdraws):`
      : 'pushed (verifier POSTs the revocation notification to the node\'s quote endpoint; the agent drops its SVIDs at once):');
    console.log(`  end to end (PCR extend -> stream lost):          ${stats(e2e)}   ${e2eGoal}`);
    console.log(`  after the verdict (verdict -> stream lost):      ${stats(after)}   ${afterGoal}`);
    console.log(`  where it goes: PCR extend -> verdict:            ${stats(rs.map((r) => r.toVerdictMs))}   (the quote cycle: 0..${QUOTE_INTERVAL_MS} ms + one quote)`);
    if (mode === 'pushed') {
      const n = rs.map((r) => r.toNotifiedMs).filter((x): x is number => x !== undefined);
      if (n.length > 0) console.log(`                 verdict -> notification answered: ${stats(n)}   (statuses ${[...new Set(rs.map((r) => r.notifyStatus))].join(', ')})`);
    }
    console.log(`  samples end to end:      ${e2e.map((x) => x.toFixed(0)).join(', ')} ms`);
    console.log(`  samples after verdict:   ${after.map((x) => x.toFixed(0)).join(', ')} ms`);
    console.log(`  agent start (attest + Keylime enroll + first verified quote + sync): ${stats(rs.map((r) => r.startMs))}`);
  }
  console.log(`  (bench wall time ${((Date.now() - started) / 1000).toFixed(0)} s)`);
}

main().then(() => process.exit(0), (err: unknown) => {
  console.error(err);
  process.exit(1);
});
