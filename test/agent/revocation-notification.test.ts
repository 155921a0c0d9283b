// Keylime's revocation push reaching a running agent: a real server in Keylime continuous mode, the
// test verifier pulling quotes, a real agent with swtpm, and a workload's FetchX509SVID stream (spec
// proto). The notification is posted as the verifier posts it (its pull client certificate, Keylime's
// body): the workload's SVIDs are withdrawn at once, the agent attests again, and the workload gets
// new SVIDs because the server (asking the verifier) still trusts the node.
import https from 'node:https';
import { beforeAll, describe, expect, it } from 'vitest';
import { deploymentPerFile } from '../keylime-e2e/fixture.js';

const f = deploymentPerFile();
const openStream = (): ReturnType<typeof f.openStream> => f.openStream();
let workloadId: string;

beforeAll(async () => {
  workloadId = await f.d.addWorkload('revocable');
}, 60_000);

/** POSTs Keylime's notification body to the agent's quote endpoint with the verifier's pull certificate. */
function notify(agentId: string): Promise<{ status: number; body: string }> {
  const msg = JSON.stringify({
    type: 'revocation', ip: '127.0.0.1', agent_id: agentId, port: f.d.agent.keylimeQuoteEndpoint!.port,
    tpm_policy: '{"mask": "0x18000"}', meta_data: JSON.stringify({ terroir_agent: f.d.agent.spiffeId }), event_time: new Date().toString(),
    event_id: 'pcr_validation.invalid_pcr_15', severity_label: 'emergency', context: '{"message": "PCR 15 not in allowlist"}',
  });
  const body = JSON.stringify({ msg, signature: '' });
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1', port: f.d.agent.keylimeQuoteEndpoint!.port, method: 'POST', path: '/v2.2/notifications/revocation',
      ca: f.d.pki.node.certPem, cert: f.d.pki.pull.certPem, key: f.d.pki.pull.keyPem, agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function until(what: string, cond: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('Keylime revocation notification, agent side', () => {
  it('about another node (Keylime tells every node it polls): 200, nothing dropped, no attestation', async () => {
    const stream = openStream();
    await stream.waitFor((m) => m.svids.some((s) => s.spiffe_id === workloadId));
    const attestations = f.d.agent.stats.attestations;
    const res = await notify('b'.repeat(64));
    expect(res.status).toBe(200);
    await new Promise((r) => setTimeout(r, 500));
    expect(stream.messages.every((m) => m.msg.svids.length > 0)).toBe(true);
    expect(stream.error).toBeUndefined();
    expect(f.d.agent.stats.attestations).toBe(attestations);
    expect(f.d.agent.stats.revocations).toBe(0);
    expect(f.logs.some((l) => l['msg'] === 'Keylime revocation notification about another node: nothing to drop here')).toBe(true);
  });

  it('about this node: the workload\'s SVIDs are withdrawn at once, the agent attests again, and the workload gets new SVIDs', async () => {
    const stream = openStream();
    const first = await stream.waitFor((m) => m.svids.some((s) => s.spiffe_id === workloadId));
    const before = stream.messages.length;
    const oldSvid = first.svids[0]!.x509_svid;
    const attestations = f.d.agent.stats.attestations;
    const t0 = Date.now();
    const res = await notify(f.d.keylimeId);
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({ code: 200, status: 'Success', results: {} });
    // Withdrawn: the stream gets an empty update (or ends) well within a second of the notification.
    const lostAt = await stream.waitForLoss(5_000, before);
    expect(lostAt - t0).toBeLessThan(1000);
    expect(f.d.agent.stats.revocations).toBe(1);
    expect(f.logs.some((l) => l['msg'] === 'Keylime revoked this node: dropping every SVID and attesting again' && l['keylimeAgentId'] === f.d.keylimeId)).toBe(true);
    // Attested again (the server re-enrolled the node with the verifier, which verified a fresh quote) ...
    await until('the re-attestation', () => f.d.agent.stats.attestations > attestations);
    expect(f.d.agent.stats.attestations).toBe(attestations + 1);
    // ... and new workload SVIDs (new keys) follow on a stream.
    let msg;
    for (let i = 0; i < 100 && !msg; i++) {
      const s = stream.error ? openStream() : stream;
      msg = await s.waitFor((m) => m.svids.some((x) => x.spiffe_id === workloadId && !x.x509_svid.equals(oldSvid)), 3000).catch(() => undefined);
    }
    expect(msg?.svids.map((s) => s.spiffe_id)).toEqual([workloadId]);
  }, 60_000);
});
