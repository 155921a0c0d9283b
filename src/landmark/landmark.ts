// A landmark (`terroir-server landmark run -c landmark.yaml`): a small process at an operator-declared
// place that probes nodes when the server asks and answers with a signed measurement. It holds its
// own SVID (from a terroir agent's Workload API, or files) and serves only the server over mTLS.
// Where it is, is not its to say: the server's config declares each landmark's position, so a
// compromised landmark can lie about time (only making nodes look farther) but not about place.
import fs from 'node:fs';
import type http from 'node:http';
import type net from 'node:net';
import pino, { type Logger } from 'pino';
import YAML from 'yaml';
import { z } from 'zod';
import { signMeasurement } from '../latency/measurement.js';
import { MAX_ROUNDS, probeNode, ProbeError } from '../latency/prober.js';
import { SpiffeId } from '../spiffe/id.js';

import { authorizeId } from '../workload/authorizer.js';
import { createHttpsServer } from '../workload/https.js';
import type { X509SourceLike } from '../workload/source.js';
import { StaticX509Source } from '../workload/static-source.js';
import { X509Source } from '../workload/x509-source.js';

const spiffeId = z.string().regex(/^spiffe:\/\/[^/]+\/.+/, 'a SPIFFE ID with a path (spiffe://td/path)');

const configSchema = z.object({
  /** This landmark's SPIFFE ID: its SVID must carry exactly this ID (checked at start). */
  id: spiffeId,
  listen: z.object({
    address: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535),
  }).strict(),
  /** The SVID: from a terroir agent's Workload API (recommended: it rotates) or from PEM files. */
  svid: z.union([
    z.object({ workloadApiSocket: z.string().min(1) }).strict(),
    z.object({ certFile: z.string().min(1), keyFile: z.string().min(1), bundleFile: z.string().min(1) }).strict(),
  ]),
  /** Probes run at once; more wait (in order) up to `queue`, beyond that the server gets 503. */
  concurrency: z.number().int().min(1).max(16).default(1),
  queue: z.number().int().min(0).max(1024).default(64),
  /** Per probe (connection and every round). */
  probeTimeoutMs: z.number().int().min(100).max(60_000).default(10_000),
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
}).strict();

export type LandmarkConfig = z.infer<typeof configSchema>;

export class LandmarkConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LandmarkConfigError';
  }
}

export function parseLandmarkConfig(text: string, file = 'landmark config'): LandmarkConfig {
  let raw: unknown;
  try {
    raw = YAML.parse(text);
  } catch (e) {
    throw new LandmarkConfigError(`${file}: not YAML: ${(e as Error).message}`);
  }
  const r = configSchema.safeParse(raw);
  if (!r.success) {
    throw new LandmarkConfigError(`${file}: ${r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  }
  return r.data;
}

export function loadLandmarkConfig(file: string): LandmarkConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new LandmarkConfigError(`cannot read ${file}: ${(e as Error).message}`);
  }
  return parseLandmarkConfig(text, file);
}

/** What the server sends in POST /v1/probe. */
const probeRequest = z.object({
  request: z.string().min(16).max(128),
  node: spiffeId,
  host: z.string().min(1).max(253),
  port: z.number().int().min(1).max(65535),
  strength: z.enum(['agent-key', 'tpm']),
  rounds: z.number().int().min(1).max(MAX_ROUNDS),
  /** TPM2B_PUBLIC of the node's attested AK, base64 (tpm strength). */
  akPublic: z.string().max(4096).optional(),
}).strict();

const MAX_BODY = 16 * 1024;

export interface Landmark {
  readonly port: number;
  readonly id: string;
  stop(): Promise<void>;
}

export interface LandmarkOptions {
  logger?: Logger;
  /** Use this SVID source instead of the config's (tests, the server's own landmark). */
  source?: X509SourceLike;
}

export async function startLandmark(config: LandmarkConfig, opts: LandmarkOptions = {}): Promise<Landmark> {
  const log = opts.logger ?? pino({ name: 'terroir-landmark', level: config.logLevel });
  let owned: X509Source | undefined;
  let source = opts.source;
  if (source === undefined) {
    if ('workloadApiSocket' in config.svid) {
      owned = await X509Source.create({ endpoint: `unix://${config.svid.workloadApiSocket}` });
      source = owned;
    } else {
      const td = SpiffeId.parse(config.id).trustDomain.name;
      source = StaticX509Source.fromFiles({ certFile: config.svid.certFile, keyFile: config.svid.keyFile, bundleFiles: { [td]: config.svid.bundleFile } });
    }
  }
  const id = source.getX509Svid().id;
  if (id.toString() !== config.id) {
    await owned?.close();
    throw new LandmarkConfigError(`the landmark's SVID is ${id.toString()}, but the config says id ${config.id}: register the landmark under that ID`);
  }
  const serverId = SpiffeId.fromPath(id.trustDomain, '/spire/server');
  const src = source;
  let active = 0;
  const waiting: (() => void)[] = [];

  const server = createHttpsServer({ source: src, authorizer: authorizeId(serverId), logger: log }, (req, res) => {
    void handle(req, res).catch((e: unknown) => {
      log.error({ err: (e as Error).message }, 'landmark request failed');
      if (!res.headersSent) reply(res, 500, { error: { code: 'internal', message: 'internal error' } });
    });
  });
  server.headersTimeout = 5000;
  server.requestTimeout = config.probeTimeoutMs + 5000;

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (req.method !== 'POST' || req.url !== '/v1/probe') {
      reply(res, 404, { error: { code: 'not_found', message: 'POST /v1/probe is the only resource' } });
      return;
    }
    const body = await readBody(req);
    if (body === undefined) {
      res.setHeader('connection', 'close');
      res.once('finish', () => req.socket.destroy());
      reply(res, 413, { error: { code: 'too_large', message: `the body is larger than ${MAX_BODY} bytes` } });
      return;
    }
    let parsed;
    try {
      parsed = probeRequest.parse(JSON.parse(body.toString('utf8')));
    } catch (e) {
      reply(res, 400, { error: { code: 'bad_request', message: `not a probe request: ${(e as Error).message}` } });
      return;
    }
    if (active >= config.concurrency && waiting.length >= config.queue) {
      reply(res, 503, { error: { code: 'busy', message: `${waiting.length} probes are waiting; retry later` } });
      return;
    }
    if (active >= config.concurrency) await new Promise<void>((resolve) => waiting.push(resolve));
    active++;
    try {
      const result = await probeNode({
        source: src, host: parsed.host, port: parsed.port, nodeId: parsed.node, strength: parsed.strength, rounds: parsed.rounds,
        ...(parsed.akPublic !== undefined ? { akPublic: Buffer.from(parsed.akPublic, 'base64') } : {}),
        timeoutMs: config.probeTimeoutMs,
      });
      const measurement = await signMeasurement(src.getX509Svid(), {
        landmark: id.toString(), node: parsed.node, strength: parsed.strength, rounds: result.rounds,
        rttMinS: result.rttMinS, rttP50S: result.rttP50S, measuredAt: new Date(), request: parsed.request,
      });
      log.info({ node: parsed.node, strength: parsed.strength, rttMinUs: Math.round(result.rttMinS * 1e6), rounds: result.rounds }, 'node probed');
      reply(res, 200, { measurement, rttMinS: result.rttMinS, rttP50S: result.rttP50S, connectS: result.connectS });
    } catch (e) {
      if (!(e instanceof ProbeError)) throw e;
      log.warn({ node: parsed.node, code: e.code, err: e.message }, 'probe failed');
      reply(res, 422, { error: { code: `probe_${e.code.replace('-', '_')}`, message: e.message } });
    } finally {
      active--;
      waiting.shift()?.();
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.address, () => { server.off('error', reject); resolve(); });
  });
  const port = (server.address() as net.AddressInfo).port;
  log.info({ id: id.toString(), address: config.listen.address, port }, 'landmark listening');
  return {
    port,
    id: id.toString(),
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await owned?.close();
    },
  };
}

function reply(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** The body, or undefined when it is larger than MAX_BODY (reading stops there). */
function readBody(req: http.IncomingMessage): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        // Stop reading; the caller answers 413 and closes the connection.
        req.pause();
        req.removeAllListeners('data');
        resolve(undefined);
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}
