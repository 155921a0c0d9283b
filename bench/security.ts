// Security benchmark (issue 14): the agent API under attack, in one run.
//  1. Event-loop delay p99 of the server (perf_hooks.monitorEventLoopDelay, 10 ms resolution) while
//     one attested agent sends the most expensive requests the limits allow (back-to-back batches
//     of 500 RSA-4096 CSRs, e = 65537, without waiting for the retry-after), next to the idle server.
//     Goal: <= 2x idle.
//  2. Server RSS growth while 5,000 TLS connections without a client certificate are attempted from
//     one address and left open. Goal: held at the per-source cap, <= 50 MiB added.
// The attackers run in child processes, so their CPU and memory are not the server's.
// Run: npx tsx bench/security.ts
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { agentServiceClient, AGENT_API_CHANNEL_OPTIONS, type AttestAgentResponse, type BatchNewX509SvidResponse } from '../src/api/agent-api.js';
import { createCsr, generateKeyPair } from '../src/agent/csr.js';
import { parseServerConfig } from '../src/server/config.js';
import { startServer } from '../src/server/run.js';
import { rsaCsr, rsaKeyWithExponent } from '../test/server/e2e/expensive-csr.js';

const TD = 'bench.example';
const ATTACK_MS = 8000;
const IDLE_MS = 5000;
const CONNECTIONS = 5000;

type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

function client(port: number, rootsPem: string, id?: { chainPem: string; keyPem: string }): Client {
  const creds = grpc.credentials.createSsl(Buffer.from(rootsPem), id ? Buffer.from(id.keyPem) : null, id ? Buffer.from(id.chainPem) : null,
    { checkServerIdentity: (_h, c) => (new crypto.X509Certificate(c.raw).subjectAltName?.includes(`URI:spiffe://${TD}/spire/server`) ? undefined : new Error('not the server')) });
  return new (agentServiceClient())(`127.0.0.1:${port}`, creds, { ...AGENT_API_CHANNEL_OPTIONS, 'grpc.ssl_target_name_override': 'terroir-server' }) as Client;
}

function unary<T>(c: Client, m: string, req: unknown): Promise<T> {
  return new Promise((resolve, reject) => (c[m] as (r: unknown, o: grpc.CallOptions, cb: (e: Error | null, r: T) => void) => void)
    .call(c, req, { deadline: Date.now() + 10_000 }, (e, r) => (e ? reject(e) : resolve(r))));
}

// ------------------------------------------------------------------ child: the attacking agent
async function agentChild(a: { port: number; roots: string; chainPem: string; keyPem: string; entryId: string; spiffeId: string; ms: number }): Promise<void> {
  const csr = rsaCsr(rsaKeyWithExponent(4096, 65537), a.spiffeId);
  const params = Array.from({ length: 500 }, () => ({ entryId: a.entryId, csr }));
  const c = client(a.port, a.roots, a);
  await unary(c, 'SyncEntries', { knownRevision: '' }).catch((e: unknown) => { process.stderr.write(`child: ${String(e)}\n`); });
  process.stdout.write('ready\n');
  await new Promise<void>((r) => process.stdin.once('data', () => r()));
  const until = Date.now() + a.ms;
  const n = { calls: 0, signed: 0, refusedItems: 0, refusedCalls: 0 };
  while (Date.now() < until) {
    n.calls++;
    try {
      const res = await unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params });
      for (const r of res.results) if (r.errorCode === 0) n.signed++; else n.refusedItems++;
    } catch {
      n.refusedCalls++;
    }
  }
  c.close();
  process.stdout.write(`${JSON.stringify(n)}\n`);
}

// ------------------------------------------------------------------ child: the connection flood
async function floodChild(a: { port: number; n: number }): Promise<void> {
  const socks: tls.TLSSocket[] = [];
  let handshakes = 0;
  let failed = 0;
  const one = (): Promise<void> => new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: a.port, servername: 'terroir-server', rejectUnauthorized: false, ALPNProtocols: ['h2'] }, () => { handshakes++; resolve(); });
    s.resume();
    s.on('error', () => { failed++; resolve(); });
    s.on('close', () => resolve());
    socks.push(s);
  });
  for (let i = 0; i < a.n; i += 100) await Promise.all(Array.from({ length: Math.min(100, a.n - i) }, one));
  await new Promise((r) => setTimeout(r, 2000));
  const open = socks.filter((s) => !s.destroyed && !s.closed).length;
  process.stdout.write(`${JSON.stringify({ attempted: a.n, handshakes, failed, openAfter2s: open })}\n`);
  await new Promise<void>((r) => process.stdin.once('data', () => r()));
  for (const s of socks) s.destroy();
}

function child(mode: string, arg: unknown): { lines: AsyncIterator<string>; go(): void; done: Promise<void> } {
  const p = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), mode, JSON.stringify(arg)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const queue: string[] = [];
  let waiting: ((v: IteratorResult<string>) => void) | undefined;
  let buf = '';
  p.stdout.on('data', (d: Buffer) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (waiting) { const w = waiting; waiting = undefined; w({ value: line, done: false }); } else queue.push(line);
    }
  });
  return {
    lines: { next: () => (queue.length ? Promise.resolve({ value: queue.shift() as string, done: false }) : new Promise((r) => { waiting = r; })) },
    go: () => p.stdin.write('go\n'),
    done: new Promise((r) => p.on('exit', () => r())),
  };
}

async function loopP99(ms: number): Promise<{ p50: number; p99: number; max: number }> {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  await new Promise((r) => setTimeout(r, ms));
  h.disable();
  return { p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6 };
}

const rssMiB = (): number => process.memoryUsage().rss / 2 ** 20;

async function main(): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-bench-security-'));
  const config = parseServerConfig({
    trustDomain: TD, dataDir: dir, logLevel: 'silent',
    agentApi: { bindAddress: '127.0.0.1', port: 0 }, health: { bindAddress: '127.0.0.1', port: 0 }, ca: { keyStore: 'memory' },
  }, dir, {});
  const server = await startServer(config, { logger: pino({ level: 'silent' }) });
  const port = server.agentApiPort;
  const roots = server.ca.x509Roots().map((d) => new crypto.X509Certificate(d).toString()).join('');
  const limits = config.agentApi;
  console.log(`terroir security bench — node ${process.version}, ${os.cpus().length} CPUs, load ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  console.log(`limits: signing ${limits.signingRateLimit.perSecond}/s burst ${limits.signingRateLimit.burst} per agent; calls ${limits.rpcRateLimit.perSecond}/s burst ${limits.rpcRateLimit.burst} per agent; `
    + `connections ${limits.connections.maxPerSource}/source, ${limits.connections.maxTotal} total; handshake ${limits.connections.handshakeTimeoutMs} ms, idle ${limits.connections.idleTimeoutMs} ms`);

  // An attested agent with one entry; its identity goes to the attacking child.
  const token = crypto.randomBytes(16).toString('hex');
  await server.store.createJoinToken({ token, expiresAt: new Date(Date.now() + 60_000) });
  const k = generateKeyPair();
  const ac = client(port, roots);
  const call = (ac.AttestAgent as () => grpc.ClientDuplexStream<unknown, AttestAgentResponse>).call(ac);
  const res = await new Promise<AttestAgentResponse>((resolve, reject) => {
    call.on('data', resolve);
    call.on('error', reject);
    call.write({ params: { joinToken: { token }, csr: createCsr(k) } });
  });
  ac.close();
  const result = res.result!;
  const spiffeId = `spiffe://${TD}/w/bench`;
  const [e] = await server.store.createEntries([{ spiffeId, parentId: result.spiffeId, selectors: [{ type: 'unix', value: 'uid:1000' }], federatesWith: [] }]);
  const entryId = (e as { ok: true; value: { id: string } }).value.id;

  // 1. Event-loop delay: idle, then under one agent's most expensive allowed requests.
  const agent = child('agent', {
    port, roots, entryId, spiffeId, ms: ATTACK_MS,
    chainPem: result.svidChain.map((d) => new crypto.X509Certificate(d).toString()).join(''), keyPem: k.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
  });
  await agent.lines.next(); // ready (its CSRs are made)
  const idle = await loopP99(IDLE_MS);
  agent.go();
  const busy = await loopP99(ATTACK_MS - 500);
  const counts = (await agent.lines.next()).value;
  await agent.done;
  console.log('\n1. event-loop delay of the server (monitorEventLoopDelay, resolution 10 ms)');
  console.log(`   idle server:                  p50 ${idle.p50.toFixed(1)} ms  p99 ${idle.p99.toFixed(1)} ms  max ${idle.max.toFixed(1)} ms`);
  console.log(`   one agent, 500 x RSA-4096 CSR batches back to back for ${ATTACK_MS / 1000} s: p50 ${busy.p50.toFixed(1)} ms  p99 ${busy.p99.toFixed(1)} ms  max ${busy.max.toFixed(1)} ms`);
  console.log(`   agent's tally: ${counts}`);
  console.log(`   p99 ratio: ${(busy.p99 / idle.p99).toFixed(2)}x idle (goal <= 2x)`);

  // 2. RSS with 5,000 idle unauthenticated connections attempted.
  global.gc?.();
  await new Promise((r) => setTimeout(r, 500));
  const before = rssMiB();
  const flood = child('flood', { port, n: CONNECTIONS });
  const tally = (await flood.lines.next()).value;
  const during = rssMiB();
  flood.go();
  await flood.done;
  console.log(`\n2. server RSS with ${CONNECTIONS} TLS connections without a client certificate attempted from one address`);
  console.log(`   flood's tally: ${tally}`);
  console.log(`   RSS before ${before.toFixed(1)} MiB, with the connections held ${during.toFixed(1)} MiB: +${(during - before).toFixed(1)} MiB (goal <= 50 MiB, held at the cap of ${limits.connections.maxPerSource})`);

  await server.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}

const [mode, arg] = process.argv.slice(2);
if (mode === 'agent') await agentChild(JSON.parse(arg as string));
else if (mode === 'flood') await floodChild(JSON.parse(arg as string));
else await main();
// The children keep stdin open (the parent's go signal): leave explicitly.
process.exit(0);
