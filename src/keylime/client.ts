/**
 * KeylimeVerifierClient: HTTPS to a Keylime verifier over strict mutual TLS.
 *
 * The verifier's CA is pinned (only that CA is trusted, never the system store), a client
 * certificate is always presented, the host name is verified, TLS >= 1.2. There is deliberately no
 * option to relax any of this; bad or missing TLS material is a KeylimeConfigError at construction.
 *
 * Connections are kept alive and reused (a sequence of calls costs one TLS handshake). Responses are
 * size-limited before parsing and validated with zod. Idempotent calls are retried a bounded number
 * of times with exponential backoff; everything else fails on the first error. With
 * maxConcurrentRequests, requests beyond the bound wait in a bounded queue (their wait counts against
 * their deadline) and beyond that are refused at once as `busy` (limiter.ts).
 */
import crypto from 'node:crypto';
import { inSpan, SpanKind, traceHeaders } from '../api/tracing.js';
import fs from 'node:fs';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import { Pool, buildConnector, type Dispatcher } from 'undici';
import { z } from 'zod';
import { KeylimeConfigError, KeylimeRequestError, type KeylimeFailure, type KeylimeFailureKind } from './errors.js';
import { LimiterRefusal, RequestLimiter, type LimiterLoad } from './limiter.js';

/** Keylime REST API versions this client speaks (agent management + one-shot evidence). */
export const CLIENT_API_VERSIONS = ['2.0', '2.1', '2.2', '2.3', '2.4', '2.5', '2.6'] as const;

export interface KeylimeClientOptions {
  /** Verifier base URL, `https://host:port`. Plain http is refused. */
  url: string;
  /** The verifier's CA certificate(s), PEM. Exactly one of `ca` / `caFile`. */
  ca?: string | Buffer;
  caFile?: string;
  /** Client certificate (PEM) issued by a CA the verifier trusts. Exactly one of `cert` / `certFile`. */
  cert?: string | Buffer;
  certFile?: string;
  /** Client private key (PEM). Exactly one of `key` / `keyFile`. */
  key?: string | Buffer;
  keyFile?: string;
  /** Name to verify the verifier's certificate against, when it differs from the URL's host. */
  servername?: string;
  /** Per-attempt deadline covering connect, headers and body. Default 5000 ms. */
  timeoutMs?: number;
  /** Retries after the first attempt, for idempotent calls only. Default 2. */
  retries?: number;
  /** First backoff delay; doubles per retry (with jitter). Default 100 ms. */
  retryBaseDelayMs?: number;
  /** Largest response body accepted; bigger ones are refused before parsing. Default 1 MiB. */
  maxResponseBytes?: number;
  /** Pin an API version instead of negotiating (it must still be one the verifier lists). */
  apiVersion?: string;
  /**
   * Connections kept to the verifier. Default 1: calls queue on one kept-alive TLS session (one
   * handshake). With more, undici opens a second connection even for back-to-back calls.
   */
  connections?: number;
  /**
   * At most this many requests in flight to the verifier at once (retries included); unset: no bound
   * beyond the pool's queue. Give the pool as many `connections`, or they wait on fewer sockets.
   */
  maxConcurrentRequests?: number;
  /**
   * With maxConcurrentRequests: at most this many requests wait for a slot (default 0); one more is
   * refused at once with kind `busy`. A waiting request's wait counts against its timeoutMs.
   */
  maxQueuedRequests?: number;
  /**
   * Accept a verifier that says it is terroir's development stand-in (the test double under test/,
   * which marks its `/version` answer). Default false: such a verifier is refused on every call.
   */
  allowDevelopmentStandIn?: boolean;
  logger?: Logger;
  /** Told of every request once it ends (retries folded in): for the server's metrics. */
  onRequest?: (e: KeylimeRequestReport) => void;
}

/** One request as reported to `onRequest`: a bounded kind, `ok` or the failure kind, and its duration. */
export interface KeylimeRequestReport {
  kind: 'version' | 'verify_evidence' | 'add_agent' | 'get_agent' | 'list_agents' | 'delete_agent' | 'other';
  result: 'ok' | KeylimeFailureKind | 'error';
  seconds: number;
}

/** The kind of a request from its method and path below the version prefix (never the agent ID in it). */
export function keylimeRequestKind(method: string, path: string): KeylimeRequestReport['kind'] {
  if (path === '/version') return 'version';
  if (path === '/verify/evidence') return 'verify_evidence';
  if (path === '/agents/' || path === '/agents') return 'list_agents';
  if (path.startsWith('/agents/')) return method === 'POST' ? 'add_agent' : method === 'DELETE' ? 'delete_agent' : 'get_agent';
  return 'other';
}

export interface KeylimeClientCounters {
  /** HTTP attempts sent (retries included). */
  requests: number;
  /** Completed TLS handshakes (new connections). */
  handshakes: number;
  retries: number;
  failures: Record<KeylimeFailureKind, number>;
}

export interface CallOptions<T> {
  method: 'GET' | 'POST' | 'DELETE';
  /** Path below the versioned prefix, e.g. `/agents/abc` (the client adds `/v2.x`). */
  path: string;
  body?: unknown;
  /** Schema for the `results` member of Keylime's response envelope. */
  results: z.ZodType<T>;
  /** Statuses that are success for this call (default [200]). */
  expect?: readonly number[];
  /** Only idempotent calls are retried. */
  idempotent: boolean;
}

export interface CallResult<T> {
  status: number;
  results: T;
}

/** Keylime wraps every answer as {code, status, results}. */
const envelope = z.object({ code: z.number().int(), status: z.string(), results: z.unknown() });
const versionResults = z.object({
  current_version: z.string(),
  supported_versions: z.array(z.string()).max(64),
  /** Set only by terroir's development stand-in (test/doubles/keylime-verifier.ts); Keylime never sends it. */
  terroir_development_stand_in: z.boolean().optional(),
});

export class KeylimeVerifierClient {
  readonly origin: string;
  private readonly pool: Pool;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly retryBaseDelayMs: number;
  private readonly maxResponseBytes: number;
  private readonly pinnedVersion: string | undefined;
  private readonly allowDevelopmentStandIn: boolean;
  private standIn: boolean | undefined;
  private readonly logger: Logger | undefined;
  private readonly onRequest: ((e: KeylimeRequestReport) => void) | undefined;
  private versionPromise: Promise<string> | undefined;
  private readonly limiter: RequestLimiter | undefined;
  private readonly stats: KeylimeClientCounters = {
    requests: 0,
    handshakes: 0,
    retries: 0,
    failures: { connect: 0, tls: 0, timeout: 0, http: 0, refused: 0, oversized: 0, malformed: 0, version: 0, stand_in: 0, busy: 0 },
  };

  constructor(opts: KeylimeClientOptions) {
    let url: URL;
    try {
      url = new URL(opts.url);
    } catch (err) {
      throw new KeylimeConfigError(`Keylime verifier URL ${JSON.stringify(opts.url)} is not a URL`, { cause: err });
    }
    if (url.protocol !== 'https:') throw new KeylimeConfigError(`Keylime verifier URL must be https://, got ${url.protocol}`);
    if (url.pathname !== '/' || url.search !== '' || url.username !== '') {
      throw new KeylimeConfigError('Keylime verifier URL must be just https://host:port (no path, query or credentials)');
    }
    this.origin = url.origin;
    const ca = readPem(opts.ca, opts.caFile, 'verifier CA (ca/caFile)');
    const cert = readPem(opts.cert, opts.certFile, 'client certificate (cert/certFile)');
    const key = readPem(opts.key, opts.keyFile, 'client key (key/keyFile)');
    checkTlsMaterial(ca, cert, key);

    this.timeoutMs = positive(opts.timeoutMs ?? 5000, 'timeoutMs');
    this.retries = nonNegativeInt(opts.retries ?? 2, 'retries');
    this.retryBaseDelayMs = nonNegativeInt(opts.retryBaseDelayMs ?? 100, 'retryBaseDelayMs');
    this.maxResponseBytes = positive(opts.maxResponseBytes ?? 1024 * 1024, 'maxResponseBytes');
    if (opts.apiVersion !== undefined && !(CLIENT_API_VERSIONS as readonly string[]).includes(opts.apiVersion)) {
      throw new KeylimeConfigError(`apiVersion ${opts.apiVersion} is not one this client speaks (${CLIENT_API_VERSIONS.join(', ')})`);
    }
    this.pinnedVersion = opts.apiVersion;
    this.allowDevelopmentStandIn = opts.allowDevelopmentStandIn === true;
    this.logger = opts.logger?.child({ component: 'keylime-client', verifier: this.origin });
    this.onRequest = opts.onRequest;
    if (opts.maxConcurrentRequests !== undefined) {
      this.limiter = new RequestLimiter(positiveInt(opts.maxConcurrentRequests, 'maxConcurrentRequests'), nonNegativeInt(opts.maxQueuedRequests ?? 0, 'maxQueuedRequests'));
    } else if (opts.maxQueuedRequests !== undefined) {
      throw new KeylimeConfigError('maxQueuedRequests needs maxConcurrentRequests: the queue is for requests waiting for one of those slots');
    }

    const connectTls = buildConnector({
      ca,
      cert,
      key,
      minVersion: 'TLSv1.2',
      rejectUnauthorized: true,
      ...(opts.servername !== undefined ? { servername: opts.servername } : {}),
      timeout: this.timeoutMs,
    });
    // Wrapped only to count completed handshakes; the TLS work and checks are undici's/Node's.
    const connect: buildConnector.connector = (connectOpts, callback) => {
      connectTls(connectOpts, (...args) => {
        const [err, socket] = args;
        if (err === null) {
          this.stats.handshakes++;
          const tlsSocket = socket as TLSSocket;
          this.logger?.debug({ protocol: tlsSocket.getProtocol?.() }, 'keylime TLS connection established');
        }
        callback(...args);
      });
    };
    this.pool = new Pool(this.origin, {
      connect,
      connections: positiveInt(opts.connections ?? 1, 'connections'),
      pipelining: 1,
      keepAliveTimeout: 30_000,
      keepAliveMaxTimeout: 60_000,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
    });
  }

  /** A snapshot of the counters (for metrics). */
  counters(): KeylimeClientCounters {
    return { ...this.stats, failures: { ...this.stats.failures } };
  }

  /** In-flight and waiting requests now and at their peaks; undefined without maxConcurrentRequests. */
  load(): LimiterLoad | undefined {
    return this.limiter?.load();
  }

  /** Forgets the load peaks (a benchmark measuring one phase at a time). */
  resetLoadPeaks(): void {
    this.limiter?.resetPeaks();
  }

  /**
   * Whether the verifier announced itself as terroir's development stand-in (only possible with
   * allowDevelopmentStandIn); undefined until the API version was negotiated.
   */
  get developmentStandIn(): boolean | undefined {
    return this.standIn;
  }

  /** The API version in use: pinned, or the highest 2.x both sides support (asked once, cached). */
  async apiVersion(): Promise<string> {
    if (this.versionPromise === undefined) {
      this.versionPromise = this.negotiate().catch((err: unknown) => {
        this.versionPromise = undefined; // ask again next time: the verifier may come back
        throw err;
      });
    }
    return this.versionPromise;
  }

  /** One call to `/v{version}{path}`; returns the validated `results`. */
  async call<T>(opts: CallOptions<T>): Promise<CallResult<T>> {
    const version = await this.apiVersion();
    return this.send(`/v${version}${opts.path}`, opts);
  }

  async close(): Promise<void> {
    await this.pool.close();
  }

  private async negotiate(): Promise<string> {
    const { results } = await this.send('/version', { method: 'GET', path: '/version', results: versionResults, idempotent: true });
    if (results.terroir_development_stand_in === true) {
      if (!this.allowDevelopmentStandIn) {
        throw this.fail('stand_in', `the verifier at ${this.origin} is terroir's development stand-in, not a Keylime verifier: its verdicts prove `
          + 'nothing, so it is refused. Point keylime.verifierUrl at a real Keylime verifier (keylime.allowDevelopmentStandIn: true is for development configurations only)');
      }
      this.logger?.warn({ verifier: this.origin }, 'DEVELOPMENT STAND-IN: the Keylime verifier is terroir\'s test double, not Keylime; allowed by keylime.allowDevelopmentStandIn');
    }
    this.standIn = results.terroir_development_stand_in === true;
    const theirs = new Set(results.supported_versions);
    theirs.add(results.current_version);
    if (this.pinnedVersion !== undefined) {
      if (!theirs.has(this.pinnedVersion)) {
        throw this.fail('version', `verifier does not support pinned API version ${this.pinnedVersion} (it lists ${[...theirs].join(', ')})`);
      }
      return this.pinnedVersion;
    }
    const common = CLIENT_API_VERSIONS.filter((v) => theirs.has(v)).sort(compareVersions);
    const best = common[common.length - 1];
    if (best === undefined) {
      throw this.fail('version', `no common 2.x API version: verifier lists ${[...theirs].join(', ')}, client speaks ${CLIENT_API_VERSIONS.join(', ')}`);
    }
    this.logger?.info({ apiVersion: best }, 'keylime API version negotiated');
    return best;
  }

  private async send<T>(fullPath: string, opts: CallOptions<T>): Promise<CallResult<T>> {
    const report = this.onRequest;
    if (report === undefined) return this.sendWithRetries(fullPath, opts);
    const started = performance.now();
    const done = (result: KeylimeRequestReport['result']): void => {
      try {
        report({ kind: keylimeRequestKind(opts.method, opts.path), result, seconds: (performance.now() - started) / 1000 });
      } catch {
        // A metrics failure never fails a verifier call.
      }
    };
    try {
      const res = await this.sendWithRetries(fullPath, opts);
      done('ok');
      return res;
    } catch (err) {
      done(err instanceof KeylimeRequestError ? err.kind : 'error');
      throw err;
    }
  }

  private async sendWithRetries<T>(fullPath: string, opts: CallOptions<T>): Promise<CallResult<T>> {
    const attempts = opts.idempotent ? 1 + this.retries : 1;
    let lastError: KeylimeRequestError | undefined;
    for (let attempt = 0; attempt < attempts; attempt++) {
      if (attempt > 0) {
        this.stats.retries++;
        const delay = this.retryBaseDelayMs * 2 ** (attempt - 1);
        await sleep(delay / 2 + Math.random() * (delay / 2));
      }
      try {
        return await this.attempt(fullPath, opts);
      } catch (err) {
        if (!(err instanceof KeylimeRequestError)) throw err;
        lastError = err;
        if (!retryable(err)) break;
      }
    }
    throw lastError as KeylimeRequestError;
  }

  /** One request in a CLIENT span whose context travels to the verifier as `traceparent`. */
  private attempt<T>(fullPath: string, opts: CallOptions<T>): Promise<CallResult<T>> {
    return inSpan(`keylime ${opts.method}`, () => this.attemptUntraced(fullPath, opts), { 'http.request.method': opts.method, 'url.path': fullPath }, SpanKind.CLIENT);
  }

  private async attemptUntraced<T>(fullPath: string, opts: CallOptions<T>): Promise<CallResult<T>> {
    // One deadline from here: time spent waiting for a slot is part of this attempt's timeout.
    const signal = AbortSignal.timeout(this.timeoutMs);
    const release = await this.slot(signal, opts.method, fullPath);
    try {
      return await this.exchange(fullPath, opts, signal);
    } finally {
      release();
    }
  }

  /** A request slot, or `busy` (queue full) / `timeout` (no slot before the deadline). */
  private async slot(signal: AbortSignal, method: string, path: string): Promise<() => void> {
    if (this.limiter === undefined) return () => undefined;
    try {
      return await this.limiter.acquire(signal);
    } catch (err) {
      if (!(err instanceof LimiterRefusal)) throw err;
      if (err.reason === 'full') {
        throw this.fail('busy', `${method} ${path}: verifier busy, retry later: ${err.message} (keylime.maxConcurrentRequests ${this.limiter.maxConcurrent}, `
          + `keylime.maxQueuedRequests ${this.limiter.maxQueued}); the request was not sent`);
      }
      throw this.fail('timeout', `${method} ${path}: waited ${this.timeoutMs} ms for a verifier request slot: ${err.message}; the request was not sent`);
    }
  }

  private async exchange<T>(fullPath: string, opts: CallOptions<T>, signal: AbortSignal): Promise<CallResult<T>> {
    this.stats.requests++;
    const body = opts.body === undefined ? undefined : JSON.stringify(opts.body);
    let res: Dispatcher.ResponseData;
    try {
      res = await this.pool.request({
        path: fullPath,
        method: opts.method,
        headers: { accept: 'application/json', ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...traceHeaders() },
        ...(body !== undefined ? { body } : {}),
        signal,
      });
    } catch (err) {
      throw this.transportError(err, opts.method, fullPath);
    }
    const raw = await this.readBody(res, signal, opts.method, fullPath);
    let parsed: unknown;
    let isJson = true;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch {
      isJson = false;
    }
    const env = envelope.safeParse(parsed);
    const expect = opts.expect ?? [200];
    // The status decides first: a proxy's HTML 502 is an HTTP failure (retryable), not garbage.
    if (!expect.includes(res.statusCode)) {
      const detail = env.success ? `: ${env.data.status.slice(0, 200)}` : '';
      if (res.statusCode === 400) {
        // Keylime answers 400 only for input it refuses (a missing parameter, say): the caller's
        // request is wrong, the verifier is up, and sending it again cannot help.
        const failures = env.success ? keylimeFailures(env.data.results) : [];
        const named = failures.length > 0 ? `: ${failures.map((f) => `${f.type}: ${f.context}`).join('; ')}` : detail;
        throw this.fail('refused', `${opts.method} ${fullPath}: the verifier refused the request as malformed (HTTP 400)${named}; `
          + 'this is a configuration or protocol error, not an outage, and is not retried', res.statusCode, undefined, failures);
      }
      throw this.fail('http', `${opts.method} ${fullPath}: verifier answered HTTP ${res.statusCode}${detail}`, res.statusCode);
    }
    if (!isJson) {
      throw this.fail('malformed', `${opts.method} ${fullPath}: verifier answered ${res.statusCode} with a body that is not JSON`, res.statusCode);
    }
    if (!env.success) {
      throw this.fail('malformed', `${opts.method} ${fullPath}: response is not a Keylime envelope {code,status,results}: ${z.prettifyError(env.error)}`, res.statusCode);
    }
    const results = opts.results.safeParse(env.data.results);
    if (!results.success) {
      throw this.fail('malformed', `${opts.method} ${fullPath}: unexpected results: ${z.prettifyError(results.error)}`, res.statusCode);
    }
    return { status: res.statusCode, results: results.data };
  }

  private async readBody(res: Dispatcher.ResponseData, signal: AbortSignal, method: string, path: string): Promise<Buffer> {
    const declared = Number(res.headers['content-length']);
    if (Number.isFinite(declared) && declared > this.maxResponseBytes) {
      res.body.destroy();
      throw this.fail('oversized', `${method} ${path}: response declares ${declared} bytes, limit ${this.maxResponseBytes}`, res.statusCode);
    }
    const chunks: Buffer[] = [];
    let total = 0;
    try {
      for await (const chunk of res.body) {
        const buf = chunk as Buffer;
        total += buf.length;
        if (total > this.maxResponseBytes) {
          res.body.destroy();
          throw this.fail('oversized', `${method} ${path}: response exceeds ${this.maxResponseBytes} bytes`, res.statusCode);
        }
        chunks.push(buf);
      }
    } catch (err) {
      if (err instanceof KeylimeRequestError) throw err;
      if (signal.aborted) throw this.fail('timeout', `${method} ${path}: response body not complete within ${this.timeoutMs} ms`);
      throw this.transportError(err, method, path);
    }
    return Buffer.concat(chunks, total);
  }

  private transportError(err: unknown, method: string, path: string): KeylimeRequestError {
    const kind = classify(err);
    const reason = describe(err);
    const what = kind === 'timeout' ? `no answer within ${this.timeoutMs} ms` : kind === 'tls' ? `TLS failed (${reason})` : `connection failed (${reason})`;
    return this.fail(kind, `${method} ${path} to ${this.origin}: ${what}`, undefined, err);
  }

  private fail(kind: KeylimeFailureKind, message: string, status?: number, cause?: unknown, failures?: KeylimeFailure[]): KeylimeRequestError {
    this.stats.failures[kind]++;
    this.logger?.warn({ kind, status }, message);
    return new KeylimeRequestError(kind, message, {
      ...(status !== undefined ? { status } : {}), ...(cause !== undefined ? { cause } : {}), ...(failures !== undefined ? { failures } : {}),
    });
  }
}

const MAX_REPORTED_FAILURES = 16;
const MAX_FAILURE_TEXT = 512;
const failureList = z.object({ failures: z.array(z.object({ type: z.string(), context: z.unknown() })) });

/**
 * Keylime's failure list from a results object ({valid, claims, failures:[{type, context}]}), bounded
 * and flattened to text: `context` is a string or an object such as {"message": "..."}.
 */
export function keylimeFailures(results: unknown): KeylimeFailure[] {
  const parsed = failureList.safeParse(results);
  if (!parsed.success) return [];
  return parsed.data.failures.slice(0, MAX_REPORTED_FAILURES).map((f) => {
    const c = f.context;
    // {"message": "..."} alone reads best as its message; anything richer (an "error", "got") stays JSON.
    const onlyMessage = c !== null && typeof c === 'object' && Object.keys(c).length === 1 && typeof (c as { message?: unknown }).message === 'string';
    const text = typeof c === 'string' ? c : onlyMessage ? (c as { message: string }).message : contextJson(c);
    return { type: f.type.slice(0, MAX_FAILURE_TEXT), context: text.slice(0, MAX_FAILURE_TEXT) };
  });
}

/** A failure context as JSON text. A context nested a few thousand deep overflows JSON.stringify's stack. */
function contextJson(c: unknown): string {
  try {
    return JSON.stringify(c) ?? '';
  } catch {
    return '(context not printable as JSON)';
  }
}

function retryable(err: KeylimeRequestError): boolean {
  if (err.kind === 'connect' || err.kind === 'timeout') return true;
  // 5xx: the verifier (or a proxy in front of it) is failing; 4xx answers are final.
  return err.kind === 'http' && err.status !== undefined && err.status >= 500 && err.status <= 599;
}

const TLS_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID',
  'ERR_TLS_CERT_ALTNAME_INVALID', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'CERT_REJECTED',
]);

function classify(err: unknown): KeylimeFailureKind {
  const e = err as { code?: unknown; name?: unknown; cause?: unknown };
  const code = typeof e?.code === 'string' ? e.code : '';
  const name = typeof e?.name === 'string' ? e.name : '';
  if (name === 'TimeoutError' || code === 'UND_ERR_CONNECT_TIMEOUT' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return 'timeout';
  if (TLS_CODES.has(code) || code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) return 'tls';
  if (e?.cause !== undefined && e.cause !== err) {
    const inner = classify(e.cause);
    if (inner !== 'connect') return inner;
  }
  return 'connect';
}

function describe(err: unknown): string {
  const e = err as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? `${e.code}: ` : '';
  return `${code}${typeof e?.message === 'string' ? e.message : String(err)}`;
}

function readPem(inline: string | Buffer | undefined, file: string | undefined, what: string): Buffer {
  if ((inline === undefined) === (file === undefined)) throw new KeylimeConfigError(`give exactly one of the inline PEM or the file for the ${what}`);
  if (inline !== undefined) return Buffer.from(inline);
  try {
    return fs.readFileSync(file as string);
  } catch (err) {
    throw new KeylimeConfigError(`cannot read the ${what} from ${file}: ${(err as Error).message}`, { cause: err });
  }
}

function checkTlsMaterial(ca: Buffer, cert: Buffer, key: Buffer): void {
  const caBlocks = ca.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (caBlocks.length === 0) throw new KeylimeConfigError('the verifier CA is not a PEM certificate');
  for (const block of caBlocks) {
    try {
      new crypto.X509Certificate(block);
    } catch (err) {
      throw new KeylimeConfigError('the verifier CA contains a certificate that does not parse', { cause: err });
    }
  }
  let x509: crypto.X509Certificate;
  try {
    x509 = new crypto.X509Certificate(cert);
  } catch (err) {
    throw new KeylimeConfigError('the client certificate is not a PEM certificate', { cause: err });
  }
  let priv: crypto.KeyObject;
  try {
    priv = crypto.createPrivateKey(key);
  } catch (err) {
    throw new KeylimeConfigError('the client key is not a PEM private key (an encrypted key is not supported)', { cause: err });
  }
  if (!x509.checkPrivateKey(priv)) throw new KeylimeConfigError('the client key does not match the client certificate');
  const now = Date.now();
  if (Date.parse(x509.validTo) < now) throw new KeylimeConfigError(`the client certificate expired at ${x509.validTo}`);
  if (Date.parse(x509.validFrom) > now) throw new KeylimeConfigError(`the client certificate is not valid before ${x509.validFrom}`);
}

function compareVersions(a: string, b: string): number {
  const [am, an] = a.split('.').map(Number) as [number, number];
  const [bm, bn] = b.split('.').map(Number) as [number, number];
  return am - bm || an - bn;
}

function positive(n: number, name: string): number {
  if (!Number.isFinite(n) || n <= 0) throw new KeylimeConfigError(`${name} must be a positive number, got ${n}`);
  return n;
}

function positiveInt(n: number, name: string): number {
  if (!Number.isInteger(n) || n < 1) throw new KeylimeConfigError(`${name} must be a positive integer, got ${n}`);
  return n;
}

function nonNegativeInt(n: number, name: string): number {
  if (!Number.isInteger(n) || n < 0) throw new KeylimeConfigError(`${name} must be a non-negative integer, got ${n}`);
  return n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
