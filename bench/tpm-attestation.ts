// TPM node attestation extras, on swtpm over loopback. Prints its figures.
//   npx tsx bench/tpm-attestation.ts            (N=100 attestations per setting; N=... to change)
// 1. AttestAgent wall time through the agent's own attestNode and the real server (config loader,
//    TLS gRPC agent API), without and with nodeAttestation.tpm.pcrSelectors: what the PCR quote costs.
// 2. What reading the EK certificate chain from the TCG NV indices (0x01C00100..) adds to an agent's
//    start, next to reading the EK certificate itself.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pino from 'pino';
import { attestNode } from '../src/agent/node-attestor.js';
import { openTpmCredentialSource } from '../src/agent/tpm-session.js';
import { TpmDevice } from '../src/tpm/device.js';
import { agentClient, newKey, startTestServer } from '../test/server/e2e/helpers.js';
import { pemBundleToDer, startSwtpm, type Swtpm } from '../test/support/swtpm.js';

const N = Number(process.env['N'] ?? 100);
const quiet = pino({ level: 'silent' });

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] as number;
}

async function pcrSelectorRuns(swtpm: Swtpm): Promise<void> {
  const session = await openTpmCredentialSource({ tcti: swtpm.tcti, ekKind: 'rsa2048' }, { logger: quiet });
  try {
    const settings: number[][] = [[], [7], [0, 1, 2, 3, 4, 5, 6, 7], Array.from({ length: 24 }, (_, i) => i)];
    for (const pcrs of settings) {
      const ts = await startTestServer({
        nodeAttestation: { joinToken: { enabled: false }, tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile], pcrSelectors: pcrs } },
        agentApi: { attestationRateLimit: { perSecond: 1000, burst: 1000 } },
      });
      const client = agentClient(ts.server);
      try {
        await attestNode(client, { csr: newKey().csr, tpm: session }); // warm-up
        const times: number[] = [];
        let selectors = 0;
        for (let i = 0; i < N; i++) {
          const csr = newKey().csr;
          const t0 = performance.now();
          const r = await attestNode(client, { csr, tpm: session });
          times.push(performance.now() - t0);
          selectors = r.selectors.length;
        }
        times.sort((a, b) => a - b);
        const label = pcrs.length === 0 ? 'off' : `[${pcrs.length} PCR${pcrs.length > 1 ? 's' : ''}]`;
        console.log(`  pcrSelectors=${label}`.padEnd(26) + `p50 ${pct(times, 0.5).toFixed(2)} ms  p95 ${pct(times, 0.95).toFixed(2)} ms  `
          + `p99 ${pct(times, 0.99).toFixed(2)} ms  (${N} attestations, ${selectors} selectors each)`);
      } finally {
        client.close();
        await ts.stop();
      }
    }
  } finally {
    await session.close();
  }
}

async function ekChainRuns(swtpm: Swtpm): Promise<void> {
  const env = { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti, TSS2_LOG: 'all+NONE' };
  // The swtpm local CA's intermediate (the EK certificate's issuer), as a manufacturer would store it.
  const intermediate = pemBundleToDer(fs.readFileSync(swtpm.caFile, 'utf8'))[1] as Buffer;
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-bench-ekchain-')), 'intermediate.der');
  fs.writeFileSync(file, intermediate);
  const store = (index: number): void => {
    const hex = `0x${index.toString(16)}`;
    execFileSync('tpm2_nvdefine', [hex, '-C', 'p', '-s', String(intermediate.length), '-a', 'ppwrite|ppread|ownerread|authread|no_da|platformcreate'], { env, stdio: 'ignore' });
    execFileSync('tpm2_nvwrite', [hex, '-C', 'p', '-i', file], { env, stdio: 'ignore' });
  };
  const device = await TpmDevice.open(swtpm.tcti, { logger: quiet });
  const measure = async (label: string, fn: () => Promise<unknown>): Promise<void> => {
    for (let i = 0; i < 10; i++) await fn();
    const t: number[] = [];
    for (let i = 0; i < 200; i++) {
      const s = performance.now();
      await fn();
      t.push(performance.now() - s);
    }
    t.sort((a, b) => a - b);
    console.log(`  ${label.padEnd(60)} p50 ${pct(t, 0.5).toFixed(3)} ms  p99 ${pct(t, 0.99).toFixed(3)} ms  (200 reads)`);
  };
  try {
    await measure('readEkCertificate(rsa2048) (read at every start already)', () => device.readEkCertificate('rsa2048'));
    await measure('readEkCertificateChain, no chain index', () => device.readEkCertificateChain());
    store(0x01c00100);
    await measure(`readEkCertificateChain, 1 index (${intermediate.length}-byte certificate)`, () => device.readEkCertificateChain());
    store(0x01c00101);
    store(0x01c00102);
    await measure(`readEkCertificateChain, 3 indices (3 x ${intermediate.length} bytes)`, () => device.readEkCertificateChain());
  } finally {
    await device.close();
    fs.rmSync(path.dirname(file), { recursive: true, force: true });
  }
}

console.log(`terroir TPM attestation benchmark (Node ${process.version}, ${os.cpus().length} cores, load average ${os.loadavg()[0]!.toFixed(1)}; swtpm)`);
/** Runs one part of the benchmark on its own swtpm, stopped afterwards. */
async function onFreshSwtpm(title: string, part: (swtpm: Swtpm) => Promise<void>): Promise<void> {
  const swtpm = await startSwtpm();
  try {
    console.log(title);
    await part(swtpm);
  } finally {
    await swtpm.stop();
  }
}

// Separate swtpm instances: the chain indices written in part 2 must not change part 1's EK chain.
await onFreshSwtpm('[1] AttestAgent, agent view (attestNode on one open connection; credential activation, PCR quote when asked, SVID):', pcrSelectorRuns);
await onFreshSwtpm('[2] EK certificate chain from the TCG NV indices (0x01C00100..):', ekChainRuns);
