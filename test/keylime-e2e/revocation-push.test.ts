// Revocation pushed, not only polled: the verifier double, like Keylime, POSTs a revocation
// notification to the nodes' quote endpoints when a quote fails. With the server polling its verdicts
// only every 5 s, the workload still loses its SVIDs within a second of the notification: the agent
// acts on the push itself (dropping one's own SVIDs only lowers privilege). The server still decides
// from the verifier's status: the agent's re-attestation is refused since the PCR is bad.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { badMeasurement, POLICY_PCR, specClient, startDeployment, X509Stream, type Deployment, type SpecClient } from './fixture.js';

const logs: Record<string, unknown>[] = [];
const logger = pino({ level: 'info' }, { write: (line: string) => { logs.push(JSON.parse(line) as Record<string, unknown>); } });

let d: Deployment;
let client: SpecClient;
const streams: X509Stream[] = [];

beforeAll(async () => {
  d = await startDeployment({ logger, pollIntervalMs: 5000, quoteIntervalMs: 500 });
  client = specClient(d.socket);
}, 60_000);

afterAll(async () => {
  for (const s of streams) s.close();
  client?.close();
  await d?.stop();
});

function openStream(): X509Stream {
  const s = new X509Stream(client);
  streams.push(s);
  return s;
}

describe('Keylime revocation notification, end to end', () => {
  it('a failed quote is pushed to the node; its workloads lose their SVIDs within a second of the push, long before the server\'s next poll', async () => {
    const workloadId = await d.addWorkload('pushed');
    const stream = openStream();
    await stream.waitFor((m) => m.svids.some((s) => s.spiffe_id === workloadId));
    const revocationsBefore = d.agent.stats.revocations;

    // PCR 15 cannot be reset at locality 0: the node stays bad for the rest of this deployment.
    await d.tpm.quoter!().pcrExtend(POLICY_PCR, badMeasurement('pushed-rootkit'));
    const lostAt = await stream.waitForLoss(10_000);
    const pushed = d.verifier.notifications.find((n) => n.aboutId === d.keylimeId && n.toId === d.keylimeId);
    expect(pushed, 'the verifier pushed a notification to the failed node').toBeDefined();
    expect(pushed!.status).toBe(200);
    expect(lostAt - pushed!.at).toBeLessThan(1000);
    expect(d.agent.stats.revocations).toBeGreaterThan(revocationsBefore);
    expect(logs.some((l) => l['msg'] === 'Keylime revocation notification received')).toBe(true);
    // The agent re-attests at once, before the server's next poll of a verdict that still says PASS.
    // Only a quote Keylime verifies after the re-attestation began may vouch for it, so for the next
    // 3 s no workload client (a new stream every 150 ms) is served, and the re-attestation is refused.
    const served: number[] = [];
    const until = Date.now() + 3000;
    while (Date.now() < until) {
      const probe = openStream();
      await new Promise((r) => setTimeout(r, 150));
      if (probe.messages.some((m) => m.msg.svids.length > 0)) served.push(Date.now() - lostAt);
      probe.close();
    }
    expect(served, 'ms after the loss at which a workload got an SVID again').toEqual([]);
    const later = openStream();
    const refused = (): boolean => logs.some((l) => l['audit'] === true && l['action'] === 'attest_agent' && l['result'] === 'denied'
      && String(l['reason']).includes('Keylime refused the node'));
    const deadline = Date.now() + 15_000;
    while (!refused() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(refused()).toBe(true);
    expect(later.messages.some((m) => m.msg.svids.length > 0)).toBe(false);
  }, 60_000);
});
