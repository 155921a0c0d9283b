// What tracing costs a node attestation: the same Unified Identity attestation (swtpm, Keylime test
// verifier one-shot, gpsd, a real server) with tracing off and on, in alternating blocks so that
// drift in the machine's load falls on both alike. "On" is the production setup: batched export over
// OTLP/HTTP to a collector (here a local HTTP server that accepts and discards).
//   npx tsx bench/tracing.ts            (BENCH_BLOCKS, BENCH_BLOCK_N to change the sample)
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import { startTracing } from '../src/api/tracing.js';
import { startUnifiedDeployment } from '../test/unified-identity/fixture.js';

const BLOCKS = Number(process.env['BENCH_BLOCKS'] ?? 6);
const BLOCK_N = Number(process.env['BENCH_BLOCK_N'] ?? 10);
const GOAL_PCT = 3;

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
};

async function main(): Promise<void> {
  console.log(`terroir tracing overhead — node ${process.version}, ${os.cpus().length} CPUs, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  let spans = 0;
  const collector = http.createServer((req, res) => {
    req.on('data', () => undefined);
    req.on('end', () => { spans++; res.writeHead(200, { 'content-type': 'application/json' }); res.end('{}'); });
  });
  await new Promise<void>((r) => collector.listen(0, '127.0.0.1', () => r()));
  const endpoint = `http://127.0.0.1:${(collector.address() as AddressInfo).port}/v1/traces`;
  const d = await startUnifiedDeployment();
  try {
    const server = await d.startServer({ flag: true, keylime: true });
    const provider = d.provider(d.berlin);
    const once = async (): Promise<number> => {
      const t = performance.now();
      await d.attest(server, provider);
      return performance.now() - t;
    };
    for (let i = 0; i < 5; i++) await once(); // warm-up
    const off: number[] = [];
    const on: number[] = [];
    for (let b = 0; b < BLOCKS; b++) {
      for (let i = 0; i < BLOCK_N; i++) off.push(await once());
      const tracing = startTracing({ serviceName: 'bench', otlpEndpoint: endpoint });
      for (let i = 0; i < BLOCK_N; i++) on.push(await once());
      await tracing.shutdown();
    }
    const p50Off = pct(off, 50);
    const p50On = pct(on, 50);
    const diff = ((p50On - p50Off) / p50Off) * 100;
    console.log(`attestation (whole AttestAgent exchange, Unified Identity), ${off.length} each, alternating blocks of ${BLOCK_N}`);
    console.log(`  tracing off   p50 ${p50Off.toFixed(2)} ms   p90 ${pct(off, 90).toFixed(2)} ms`);
    console.log(`  tracing on    p50 ${p50On.toFixed(2)} ms   p90 ${pct(on, 90).toFixed(2)} ms   (${spans} OTLP export requests received)`);
    console.log(`  difference    ${diff >= 0 ? '+' : ''}${diff.toFixed(1)} % of p50   goal ≤ ${GOAL_PCT} %   ${Math.abs(diff) <= GOAL_PCT ? 'MET' : 'NOT MET'}`);
    console.log(`load at the end ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  } finally {
    await d.stop();
    await new Promise<void>((r) => collector.close(() => r()));
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
