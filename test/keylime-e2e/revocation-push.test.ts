// Revocation pushed, not only polled: the verifier double, like Keylime, POSTs a revocation
// notification to the nodes' quote endpoints when a quote fails. With the server polling its verdicts
// only every 5 s, the workload still loses its SVIDs within a second of the notification: the agent
// acts on the push itself (dropping one's own SVIDs only lowers privilege). The server still decides
// from the verifier's status: the agent's re-attestation is refused since the PCR is bad.
import { describe, expect, it } from 'vitest';
import { badMeasurement, deploymentPerFile, POLICY_PCR } from './fixture.js';

const f = deploymentPerFile({ pollIntervalMs: 5000, quoteIntervalMs: 500 });
const openStream = (): ReturnType<typeof f.openStream> => f.openStream();

describe('Keylime revocation notification, end to end', () => {
  it('a failed quote is pushed to the node; its workloads lose their SVIDs within a second of the push, long before the server\'s next poll', async () => {
    const workloadId = await f.d.addWorkload('pushed');
    const stream = openStream();
    await stream.waitFor((m) => m.svids.some((s) => s.spiffe_id === workloadId));
    const revocationsBefore = f.d.agent.stats.revocations;

    // PCR 15 cannot be reset at locality 0: the node stays bad for the rest of this deployment.
    await f.d.tpm.quoter!().pcrExtend(POLICY_PCR, badMeasurement('pushed-rootkit'));
    const lostAt = await stream.waitForLoss(10_000);
    const pushed = f.d.verifier.notifications.find((n) => n.aboutId === f.d.keylimeId && n.toId === f.d.keylimeId);
    expect(pushed, 'the verifier pushed a notification to the failed node').toBeDefined();
    expect(pushed!.status).toBe(200);
    expect(lostAt - pushed!.at).toBeLessThan(1000);
    expect(f.d.agent.stats.revocations).toBeGreaterThan(revocationsBefore);
    expect(f.logs.some((l) => l['msg'] === 'Keylime revocation notification received')).toBe(true);
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
    const refused = (): boolean => f.logs.some((l) => l['audit'] === true && l['action'] === 'attest_agent' && l['result'] === 'denied'
      && String(l['reason']).includes('Keylime refused the node'));
    const deadline = Date.now() + 15_000;
    while (!refused() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(refused()).toBe(true);
    expect(later.messages.some((m) => m.msg.svids.length > 0)).toBe(false);
  }, 60_000);
});
