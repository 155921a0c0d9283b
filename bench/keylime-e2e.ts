// Keylime continuous mode, whole system (loopback, swtpm). Prints its figures.
//   npx tsx bench/keylime-e2e.ts
// A real terroir server (keylime section) and agent, swtpm behind the agent's quote endpoint, the
// test verifier pulling a quote every second. Measured per trial, each on a fresh TPM:
//  - agent start: TPM attestation + Keylime enrollment + first verified quote + first sync;
//  - time from extending a policy PCR on the node's TPM to its workload's Workload API stream no
//    longer serving SVIDs (goal <= 5 s with a 1 s quote interval).
// Both for the server's default status poll (1 s) and a faster one (250 ms).
import os from 'node:os';
import pino from 'pino';
import { badMeasurement, POLICY_PCR, specClient, startDeployment, X509Stream } from '../test/keylime-e2e/fixture.js';

const TRIALS = 5;
const QUOTE_INTERVAL_MS = 1000;

function stats(xs: number[]): string {
  const s = [...xs].sort((a, b) => a - b);
  const med = s[Math.floor(s.length / 2)] as number;
  return `median ${med.toFixed(0)} ms, min ${(s[0] as number).toFixed(0)} ms, max ${(s[s.length - 1] as number).toFixed(0)} ms`;
}

async function trial(pollIntervalMs: number): Promise<{ startMs: number; revokeMs: number }> {
  const d = await startDeployment({ quoteIntervalMs: QUOTE_INTERVAL_MS, pollIntervalMs, logger: pino({ level: 'silent' }) });
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
    return { startMs: d.agentStartMs, revokeMs: lostAt - t0 };
  } finally {
    stream.close();
    client.close();
    await d.stop();
  }
}

async function main(): Promise<void> {
  console.log(`keylime-e2e benchmark: ${os.cpus().length} CPUs, node ${process.version}, verifier quote interval ${QUOTE_INTERVAL_MS} ms, ${TRIALS} trials each`);
  for (const poll of [1000, 250]) {
    const starts: number[] = [];
    const revokes: number[] = [];
    for (let i = 0; i < TRIALS; i++) {
      const r = await trial(poll);
      starts.push(r.startMs);
      revokes.push(r.revokeMs);
    }
    console.log(`server status poll ${poll} ms:`);
    console.log(`  agent start (attest + Keylime enroll + first verified quote + sync): ${stats(starts)}`);
    console.log(`  PCR extended -> workload SVIDs no longer served:                    ${stats(revokes)}  (goal <= 5000 ms)`);
    console.log(`  samples: ${revokes.map((x) => x.toFixed(0)).join(', ')} ms`);
  }
}

main().then(() => process.exit(0), (err: unknown) => {
  console.error(err);
  process.exit(1);
});
