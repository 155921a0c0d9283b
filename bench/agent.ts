// Agent benchmark: prints its figures.
//   npx tsx bench/agent.ts
// 1. RSS of the agent process holding 1,000 cached X.509-SVIDs with the Workload API serving.
// 2. FetchX509SVID time to first message (workload attestation by peer credentials included), p50/p99.
// 3. 1,000 concurrent FetchX509SVID streams, and the time for a rotation to reach all of them.
// Part A runs the real thing: a terroir server in this process, `terroir-agent run` as a child process
// (join-token attestation, 1,000 entries signed through the agent API), measured from outside.
// Part B isolates the Workload API: its server, cache and unix attestor run in this process; the
// workloads run in a separate client process, so the two do not share an event loop.
// Times across the two processes use performance.timeOrigin + performance.now() (one system clock).
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { createWorkloadClient, encodeResponse, workloadMetadata, workloadServerDefinition, type WorkloadApiClient, type X509SvidResponse } from '../src/api/workload-api.js';
import { IdentityCache, type CacheEntry, type CachedSvid } from '../src/agent/cache.js';
import { UnixAttestor } from '../src/agent/attestor/unix.js';
import { WorkloadApiServer } from '../src/agent/workloadapi/server.js';
import { toTrustBundle } from '../src/agent/agent.js';
import { Bundle, SpiffeId, TrustDomain, mintCaCertificate, mintX509Svid } from '../src/spiffe/index.js';
import { parseServerConfig, startServer } from '../src/server/index.js';

const CACHED = 1000;
const STREAMS = 1000;
const CONNECTIONS = 10;
const SAMPLES = 2000;
const ROTATIONS = 10;
const now = () => performance.timeOrigin + performance.now();

// ------------------------------------------------------------------ client process

function firstMessage(client: WorkloadApiClient): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const call = client.FetchX509SVID({}, workloadMetadata());
    call.once('data', () => {
      const dt = performance.now() - t0;
      call.cancel();
      resolve(dt);
    });
    call.on('error', (e: grpc.ServiceError) => {
      if (e.code !== grpc.status.CANCELLED) reject(e);
    });
  });
}

/** One FetchX509SVID over node:http2 alone (no gRPC library): the request frame by hand, the first DATA frame times it. */
function rawFirstMessage(session: http2.ClientHttp2Session): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = session.request({
      ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchX509SVID', 'content-type': 'application/grpc', te: 'trailers', 'workload.spiffe.io': 'true',
    });
    req.once('data', () => {
      const dt = performance.now() - t0;
      req.close(http2.constants.NGHTTP2_CANCEL);
      resolve(dt);
    });
    req.on('error', reject);
    req.end(Buffer.from([0, 0, 0, 0, 0])); // an empty X509SVIDRequest, uncompressed
  });
}

async function clientMain(mode: string, socket: string): Promise<void> {
  const say = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
  if (mode === 'raw') {
    const connect = () => http2.connect('http://localhost', { createConnection: () => net.connect(socket) });
    let session = connect();
    for (let i = 0; i < 100; i++) await rawFirstMessage(session);
    const samples: number[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      if (i % 200 === 0) {
        session.close();
        session = connect();
        await rawFirstMessage(session);
      }
      samples.push(await rawFirstMessage(session));
    }
    session.close();
    say({ samples });
    return;
  }
  if (mode === 'ttfm') {
    // A fresh connection every 200 calls: each sample cancels its stream, and HTTP/2 servers
    // (nghttp2's rapid-reset guard) close a connection that resets streams much faster than ~33/s.
    let client = createWorkloadClient(socket);
    const cold = await firstMessage(client);
    for (let i = 0; i < 100; i++) await firstMessage(client);
    const samples: number[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      if (i % 200 === 0) {
        client.close();
        client = createWorkloadClient(socket);
        await firstMessage(client); // connection set-up is not part of a call's latency
      }
      samples.push(await firstMessage(client));
    }
    client.close();
    say({ cold, samples });
    return;
  }
  const channels = Array.from({ length: CONNECTIONS }, () => createWorkloadClient(socket, { 'grpc.use_local_subchannel_pool': 1 }));
  const counts = new Array<number>(STREAMS).fill(0);
  const reached = new Map<number, number>();
  const t0 = now();
  for (let i = 0; i < STREAMS; i++) {
    const call = (channels[i % CONNECTIONS] as WorkloadApiClient).FetchX509SVID({}, workloadMetadata());
    call.on('data', (_m: X509SvidResponse) => {
      const n = (counts[i] = (counts[i] as number) + 1);
      const r = (reached.get(n) ?? 0) + 1;
      reached.set(n, r);
      if (r === STREAMS) say(n === 1 ? { ready: true, openMs: now() - t0 } : { round: n - 1, lastAt: now() });
    });
    call.on('error', () => undefined);
  }
  // Runs until the parent closes stdin.
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

// ------------------------------------------------------------------ part A: real server + agent process

/**
 * Compiles the project to JavaScript (as `npm run build` would, into a scratch directory under
 * node_modules/.cache) so the agent runs as it does in production, without the tsx loader's own
 * memory; returns the path of the compiled terroir-agent CLI.
 */
function buildAgent(): string {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const out = path.join(root, 'node_modules', '.cache', 'terroir-bench');
  fs.rmSync(out, { recursive: true, force: true });
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  // Type errors elsewhere in a work-in-progress tree must not stop the emit; the agent's own files type-check in CI.
  spawnSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.json'), '--outDir', path.join(out, 'dist'), '--declaration', 'false', '--sourceMap', 'false'], { stdio: 'ignore' });
  fs.cpSync(path.join(root, 'proto'), path.join(out, 'proto'), { recursive: true });
  const cli = path.join(out, 'dist', 'src', 'cli', 'terroir-agent.js');
  if (!fs.existsSync(cli)) throw new Error('compiling the agent failed (run npx tsc -p tsconfig.json to see why)');
  return cli;
}

async function realAgent(): Promise<string[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-bench-real-'));
  fs.chmodSync(dir, 0o755);
  const port = await new Promise<number>((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
  const server = await startServer(parseServerConfig({
    trustDomain: 'real.bench', dataDir: path.join(dir, 'server'), logLevel: 'silent',
    dataStore: { type: 'sqlite', path: path.join(dir, 'server', 'ds.sqlite3') }, ca: { keyStore: 'memory' },
    agentApi: { bindAddress: '127.0.0.1', port }, health: { enabled: false },
  }, dir, {}), { logger: pino({ level: 'silent' }) });
  const token = crypto.randomBytes(16).toString('hex');
  await server.store.createJoinToken({ token, expiresAt: new Date(Date.now() + 600_000) });
  const agentId = `spiffe://real.bench/agent/join_token/${token}`;
  const entries = [{ spiffeId: 'spiffe://real.bench/me', parentId: agentId, selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }], federatesWith: [] }];
  for (let i = 1; i < CACHED; i++) {
    entries.push({ spiffeId: `spiffe://real.bench/w/${i}`, parentId: agentId, selectors: [{ type: 'unix', value: `uid:${100_000 + i}` }], federatesWith: [] });
  }
  for (let i = 0; i < entries.length; i += 250) await server.store.createEntries(entries.slice(i, i + 250));
  fs.writeFileSync(path.join(dir, 'bundle.json'), server.ca.bundle().bundleJson);
  const socket = path.join(dir, 'public', 'api.sock');
  fs.writeFileSync(path.join(dir, 'agent.yaml'), [
    'agent:', '  trustDomain: real.bench', '  serverAddress: 127.0.0.1', `  serverPort: ${port}`, '  dataDir: ./agent',
    `  socketPath: ${socket}`, '  trustBundlePath: ./bundle.json', '  logLevel: info', '  nodeAttestor:', `    joinToken: { token: ${token} }`,
  ].join('\n'));
  const cli = buildAgent();
  const t0 = now();
  const agent = spawn(process.execPath, [cli, 'run', '-c', path.join(dir, 'agent.yaml')], { stdio: ['ignore', 'pipe', 'inherit'] });
  let attestedAt = 0;
  let signed = 0;
  let signedAt = 0;
  await new Promise<void>((resolve, reject) => {
    readline.createInterface({ input: agent.stdout }).on('line', (l) => {
      const o = JSON.parse(l) as { msg?: string; count?: number };
      if (o.msg === 'node attested') attestedAt = now();
      if (o.msg === 'workload SVIDs signed') {
        signed += o.count ?? 0;
        if (signed >= CACHED) {
          signedAt = now();
          resolve();
        }
      }
    });
    agent.once('exit', (c) => reject(new Error(`agent exited ${c}`)));
  });
  while (!fs.existsSync(socket)) await new Promise((r) => setTimeout(r, 10));
  const client = createWorkloadClient(socket);
  const cold = await firstMessage(client);
  const samples: number[] = [];
  for (let i = 0; i < 200; i++) samples.push(await firstMessage(client));
  samples.sort((a, b) => a - b);
  client.close();
  await new Promise((r) => setTimeout(r, 500));
  const status = fs.readFileSync(`/proc/${agent.pid}/status`, 'utf8');
  const rssKb = Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1]);
  const hwmKb = Number(/^VmHWM:\s+(\d+)/m.exec(status)?.[1]);
  agent.kill('SIGTERM');
  await new Promise((r) => agent.once('exit', r));
  await server.stop();
  fs.rmSync(dir, { recursive: true, force: true });
  return [
    `real agent process (compiled terroir-agent run, join token; SQLite server in the bench process):`,
    `  process start to node attested ${(attestedAt - t0).toFixed(0)} ms (Node start-up included); ${CACHED} workload SVIDs signed and cached ${(signedAt - t0).toFixed(0)} ms after start`,
    `  agent RSS with ${CACHED} cached SVIDs ${(rssKb / 1024).toFixed(1)} MB (peak ${(hwmKb / 1024).toFixed(1)} MB; goal <= 150 MB)`,
    `  FetchX509SVID time to first message from this process (200 calls): p50 ${pct(samples, 50).toFixed(3)} ms, p99 ${pct(samples, 99).toFixed(3)} ms; first call (hashes the caller's binary) ${cold.toFixed(1)} ms`,
  ];
}

// ------------------------------------------------------------------ part B: Workload API in this process

function pct(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] as number;
}

async function agentMain(): Promise<void> {
  const partA = await realAgent();
  const uid = process.getuid!();
  const td = TrustDomain.parse('bench.example');
  const caKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const ca = mintCaCertificate({ trustDomain: td, publicKey: caKey.publicKey, selfSignKey: caKey.privateKey, ttlSeconds: 86_400 });
  const issuer = { certificateDer: ca.der, privateKey: caKey.privateKey };
  const bundle = new Bundle(td);
  bundle.addX509Authority(ca.der);
  bundle.sequenceNumber = 1n;
  const svid = (id: string): CachedSvid => {
    const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const m = mintX509Svid({ id: SpiffeId.parse(id), publicKey: k.publicKey, issuer, ttlSeconds: 3600 });
    return { spiffeId: id, chain: [m.der], key: k.privateKey.export({ format: 'der', type: 'pkcs8' }), notBefore: Date.now() - 10_000, notAfter: m.notAfter.getTime() };
  };

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-bench-agent-'));
  const socket = path.join(dir, 'public', 'agent.sock');
  const cache = new IdentityCache(td.name);
  cache.setBundles(toTrustBundle(bundle), []);
  // One entry for the benchmark's workloads (this uid), the rest for other uids: 1,000 SVIDs cached.
  const entries: CacheEntry[] = [{ id: 'bench', spiffeId: 'spiffe://bench.example/me', selectors: [{ type: 'unix', value: `uid:${uid}` }], federatesWith: [], hint: '', jwtSvidTtl: 300 }];
  for (let i = 1; i < CACHED; i++) {
    entries.push({ id: `e${i}`, spiffeId: `spiffe://bench.example/w/${i}`, selectors: [{ type: 'unix', value: `uid:${100_000 + i}` }], federatesWith: [], hint: '', jwtSvidTtl: 300 });
  }
  cache.setEntries(entries);
  const tMint = performance.now();
  cache.putSvids(new Map(entries.map((e) => [e.id, svid(e.spiffeId)])));
  const mintMs = performance.now() - tMint;
  const server = await WorkloadApiServer.start({
    socketPath: socket,
    cache,
    attestor: new UnixAttestor(),
    jwt: { fetchJwtSvid: async () => { throw new Error('unused'); }, validateJwtSvid: async () => { throw new Error('unused'); } },
    logger: pino({ level: 'silent' }),
  });
  await new Promise((r) => setTimeout(r, 100));
  const rssCached = process.memoryUsage().rss;

  const self = fileURLToPath(import.meta.url);
  const startClient = (mode: string) => spawn(process.execPath, ['--import', 'tsx', self, 'client', mode, socket], { stdio: ['pipe', 'pipe', 'inherit'] });

  // Time to first message.
  const ttfmChild = startClient('ttfm');
  const ttfm = await new Promise<{ cold: number; samples: number[] }>((resolve, reject) => {
    let out = '';
    ttfmChild.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    ttfmChild.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as { cold: number; samples: number[] }) : reject(new Error(`client exited ${code}`))));
  });
  const samples = ttfm.samples.sort((a, b) => a - b);

  // The floor: plain grpc-js answering the same RPC with a pre-encoded message of the same size,
  // no header check, no attestation, no cache — what any Node gRPC server costs on this machine.
  const floorSocket = path.join(dir, 'floor.sock');
  const floorMsg = encodeResponse('FetchX509SVID', {
    svids: [{ spiffe_id: 'spiffe://bench.example/me', x509_svid: Buffer.concat(cache.svid('bench')!.chain), x509_svid_key: cache.svid('bench')!.key, bundle: ca.der, hint: '' }],
    crl: [], federated_bundles: {},
  });
  const floorServer = new grpc.Server();
  floorServer.addService(workloadServerDefinition(), { FetchX509SVID: (call: grpc.ServerWritableStream<unknown, unknown>) => { call.write(floorMsg); } });
  await new Promise<void>((resolve, reject) => floorServer.bindAsync(`unix://${floorSocket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
  const floorChild = spawn(process.execPath, ['--import', 'tsx', self, 'client', 'ttfm', floorSocket], { stdio: ['pipe', 'pipe', 'inherit'] });
  const floor = await new Promise<{ samples: number[] }>((resolve, reject) => {
    let out = '';
    floorChild.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    floorChild.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as { samples: number[] }) : reject(new Error(`client exited ${code}`))));
  });
  floorServer.forceShutdown();
  const floorSamples = floor.samples.sort((a, b) => a - b);

  // The machine's floor: node:http2 on both sides, no gRPC library, the same pre-encoded message.
  const rawSocket = path.join(dir, 'raw.sock');
  const rawServer = http2.createServer();
  const rawBody = Buffer.alloc(5 + floorMsg.length);
  rawBody.writeUInt32BE(floorMsg.length, 1);
  floorMsg.copy(rawBody, 5);
  rawServer.on('stream', (stream) => {
    stream.on('error', () => undefined);
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
    stream.write(rawBody);
  });
  await new Promise<void>((resolve) => rawServer.listen(rawSocket, resolve));
  const rawChild = spawn(process.execPath, ['--import', 'tsx', self, 'client', 'raw', rawSocket], { stdio: ['pipe', 'pipe', 'inherit'] });
  const raw = await new Promise<{ samples: number[] }>((resolve, reject) => {
    let out = '';
    rawChild.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    rawChild.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as { samples: number[] }) : reject(new Error(`raw client exited ${code}`))));
  });
  await new Promise<void>((resolve) => rawServer.close(() => resolve()));
  const rawSamples = raw.samples.sort((a, b) => a - b);

  // 1,000 streams, then rotations.
  const child = startClient('streams');
  const lines = readline.createInterface({ input: child.stdout });
  const waiters: Array<(o: Record<string, number | boolean>) => void> = [];
  lines.on('line', (l) => waiters.shift()?.(JSON.parse(l) as Record<string, number | boolean>));
  const next = () => new Promise<Record<string, number | boolean>>((resolve) => waiters.push(resolve));
  const ready = await next();
  const rssStreams = process.memoryUsage().rss;
  const fanout: number[] = [];
  for (let round = 0; round < ROTATIONS + 2; round++) {
    const fresh = svid('spiffe://bench.example/me');
    await new Promise((r) => setTimeout(r, 100));
    const reply = next();
    const t = now();
    cache.putSvids(new Map([['bench', fresh]]));
    const r = await reply;
    // The first two rotations warm up the JIT; they are not counted.
    if (round >= 2) fanout.push((r['lastAt'] as number) - t);
  }
  fanout.sort((a, b) => a - b);
  child.stdin.end();
  await new Promise((r) => child.once('exit', r));
  await server.close();
  fs.rmSync(dir, { recursive: true, force: true });

  const mb = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;
  console.log(`terroir agent benchmark (Node ${process.version}, ${os.cpus().length} cores, load average ${os.loadavg()[0]!.toFixed(1)})`);
  for (const l of partA) console.log(l);
  console.log('Workload API in the bench process, workloads in a separate client process:');
  console.log(`cache: ${CACHED} X.509-SVIDs (P-256) minted and cached in ${mintMs.toFixed(0)} ms`);
  console.log(`${STREAMS} open streams add ${mb(rssStreams - rssCached)} to the RSS of the process serving them`);
  console.log(`FetchX509SVID time to first message, peer-credential workload attestation included (${SAMPLES} calls): ` +
    `p50 ${pct(samples, 50).toFixed(3)} ms, p99 ${pct(samples, 99).toFixed(3)} ms, max ${samples[samples.length - 1]!.toFixed(3)} ms (goal p99 <= 2 ms); ` +
    `first call after start (hashes the workload's binary once) ${ttfm.cold.toFixed(1)} ms`);
  console.log(`  floor: plain grpc-js streaming a pre-encoded message of the same size, same client: ` +
    `p50 ${pct(floorSamples, 50).toFixed(3)} ms, p99 ${pct(floorSamples, 99).toFixed(3)} ms`);
  console.log(`  floor of the machine: node:http2 server and client, no gRPC library, same message: ` +
    `p50 ${pct(rawSamples, 50).toFixed(3)} ms, p99 ${pct(rawSamples, 99).toFixed(3)} ms`);
  console.log(`${STREAMS} concurrent streams over ${CONNECTIONS} connections: all had their first message ${(ready['openMs'] as number).toFixed(0)} ms after the client began opening them`);
  console.log(`rotation fan-out to ${STREAMS} streams (${ROTATIONS} rotations; from the cache update to the last stream's receipt): ` +
    `median ${pct(fanout, 50).toFixed(1)} ms, worst ${fanout[fanout.length - 1]!.toFixed(1)} ms (goal <= 100 ms)`);
}

if (process.argv[2] === 'client') await clientMain(process.argv[3] as string, process.argv[4] as string);
else await agentMain();
