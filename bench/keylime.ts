// Keylime integration benchmark (loopback, swtpm). Prints its figures.
//   npx tsx bench/keylime.ts
// 1. One-shot verification round trip (POST /verify/evidence) over mTLS with one reused connection:
//    p50/p99 over 1,000 calls and the number of TLS handshakes they cost (goal: 1).
// 2. Continuous mode: time from a PCR extend on the node's TPM to the monitor's `fail` event, with a
//    1 s verifier quote interval (goal <= 5 s). The server turning that event into "SVIDs no longer
//    served" is wired elsewhere and not part of this figure.
import crypto from 'node:crypto';
import os from 'node:os';
import { verifyEvidence } from '../src/keylime/evidence.js';
import { ContinuousAttestationMonitor } from '../src/keylime/monitor.js';
import { startQuoteEndpoint } from '../src/keylime/quote-endpoint.js';
import { encodeQuoteString } from '../src/keylime/quote-string.js';
import { KeylimeTenant } from '../src/keylime/tenant.js';
import { tpmDeviceQuoter } from '../src/keylime/tpm-quoter.js';
import { TpmDevice } from '../src/tpm/device.js';
import { clientFor, createPki, startVerifier } from '../test/keylime/helpers/fixture.js';
import { startTpm } from '../test/keylime/helpers/tpm.js';
import { ProcessGroup } from '../test/support/proc.js';
import { tempDir } from '../test/support/tmp.js';

const ONE_SHOT_CALLS = 1000;
const QUOTE_INTERVAL_MS = 1000;
const TRIALS = 3;

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

async function main(): Promise<void> {
  const group = new ProcessGroup();
  const tmp = tempDir('terroir-bench-keylime-');
  const pki = await createPki(tmp.dir);
  const tpm = await startTpm(group, tmp.dir);
  const device = await TpmDevice.open(tpm.tcti);
  const ak = await device.createAk('ecc-p256');
  const quoter = tpmDeviceQuoter(device, ak);
  const verifier = await startVerifier(pki, { quoteIntervalMs: QUOTE_INTERVAL_MS });
  const client = clientFor(pki, verifier, { timeoutMs: 5000 });
  try {
    // 1. One-shot.
    const nonce = 'BenchNonce0123456789';
    const q = await quoter.quote([0, 1, 2, 3, 4, 5, 6, 7, 16], Buffer.from(nonce));
    const quote = encodeQuoteString(q);
    const policy = Object.fromEntries([0, 1, 2, 3, 4, 5, 6, 7].map((i) => [i, [Buffer.from(q.pcrs[0]?.values.get(i) ?? []).toString('hex')]]));
    const input = { quote, nonce, akPublic: ak.public, ekPublic: await device.ekPublic('rsa2048'), hashAlg: 'sha256' as const, tpmPolicy: policy };
    for (let i = 0; i < 20; i++) await verifyEvidence(client, input); // warm-up (JIT), same connection
    const sessionsBefore = verifier.counters.tlsSessions;
    const handshakesBefore = client.counters().handshakes;
    const times: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < ONE_SHOT_CALLS; i++) {
      const s = performance.now();
      await verifyEvidence(client, input);
      times.push(performance.now() - s);
    }
    const total = performance.now() - t0;
    times.sort((a, b) => a - b);
    const handshakes = client.counters().handshakes;
    console.log('keylime one-shot verification (POST /v2.6/verify/evidence, ECC P-256 AK quote over 9 PCRs, mTLS, loopback)');
    console.log(`  calls:                    ${ONE_SHOT_CALLS} sequential (plus 20 warm-up)`);
    console.log(`  machine:                  ${os.cpus().length} cores, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')} (client and verifier double share this process)`);
    console.log(`  mean:                     ${(times.reduce((a, b) => a + b, 0) / times.length).toFixed(3)} ms`);
    console.log(`  p50:                      ${pct(times, 50).toFixed(3)} ms`);
    console.log(`  p99:                      ${pct(times, 99).toFixed(3)} ms`);
    console.log(`  max:                      ${times[times.length - 1]?.toFixed(3)} ms`);
    console.log(`  throughput:               ${(ONE_SHOT_CALLS / (total / 1000)).toFixed(0)} verifications/s`);
    console.log(`  TLS handshakes (client):  ${handshakes - handshakesBefore} during the ${ONE_SHOT_CALLS} calls, ${handshakes} in total incl. version negotiation + warm-up`);
    console.log(`  TLS sessions (verifier):  ${verifier.counters.tlsSessions - sessionsBefore} new during the ${ONE_SHOT_CALLS} calls`);

    // 2. Continuous: PCR extended -> monitor fail.
    const tenant = new KeylimeTenant(client);
    const nk = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    const endpoint = await startQuoteEndpoint({
      quoter, pubkeyPem: nk, encAlg: 'ecc', signAlg: 'ecdsa', cert: pki.node.certPem, key: pki.node.keyPem, clientCa: pki.pullCa.certPem,
    });
    console.log(`keylime continuous mode: PCR extended -> monitor 'fail' (verifier quote interval ${QUOTE_INTERVAL_MS} ms)`);
    for (const pollMs of [500, 1000]) {
      const monitor = new ContinuousAttestationMonitor(tenant, { pollIntervalMs: pollMs, maxAttestationAgeMs: 10_000 });
      monitor.start();
      const results: number[] = [];
      for (let trial = 0; trial < TRIALS; trial++) {
        const id = `bench-${pollMs}-${trial}`;
        const [pcr14] = await device.pcrRead([{ alg: 'sha256', pcrs: [14] }]);
        const current = Buffer.from(pcr14?.values.get(14) ?? []).toString('hex');
        await tenant.enrollAgent(id, {
          akPublic: ak.public, tpmPolicy: { 14: [current] }, quoteEndpoint: { ip: '127.0.0.1', port: endpoint.port }, quoteEndpointCert: pki.node.certPem,
        });
        const passed = new Promise<void>((resolve) => { const on = (n: string): void => { if (n === id) { monitor.off('pass', on); resolve(); } }; monitor.on('pass', on); });
        monitor.watch(id);
        await passed;
        // Extend at a random point of the quote cycle so the figure is not phase-locked.
        await new Promise((r) => setTimeout(r, Math.random() * QUOTE_INTERVAL_MS));
        const failed = new Promise<number>((resolve) => { const on = (n: string): void => { if (n === id) { monitor.off('fail', on); resolve(performance.now()); } }; monitor.on('fail', on); });
        const start = performance.now();
        await device.pcrExtend(14, 'sha256', crypto.randomBytes(32));
        results.push((await failed) - start);
        monitor.unwatch(id);
        await tenant.deleteAgent(id);
      }
      await monitor.stop();
      const fmt = results.map((r) => `${(r / 1000).toFixed(2)} s`).join(', ');
      console.log(`  monitor poll ${String(pollMs).padStart(4)} ms:     ${fmt}  (max ${(Math.max(...results) / 1000).toFixed(2)} s, goal <= 5 s)`);
    }
    await endpoint.close();
    console.log('  (time to "SVIDs no longer served" adds the server reacting to `fail`, wired by the server, not measured here)');
  } finally {
    await client.close();
    await verifier.close();
    await device.close();
    await group.stopAll();
    tmp.cleanup();
  }
}

await main();
