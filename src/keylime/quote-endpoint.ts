/**
 * The node side of Keylime's pull model: a Keylime-agent-compatible quote endpoint the terroir agent
 * mounts, `GET /v{ver}/quotes/integrity?nonce=&mask=&partial=&ima_ml_entry=`, over mutual TLS (only
 * clients with a certificate from the pinned verifier CA get a TLS session).
 *
 * Before each quote it resets PCR 16 and extends it with the hash of the bound public key's PEM, and
 * always quotes PCR 16: that is how Keylime ties the quote to the key it was given. Quotes are
 * serialized because the reset/extend/quote sequence must not interleave.
 *
 * It also takes the verifier's push, `POST /v{ver}/notifications/revocation`, when `onRevocation` is
 * given (else 405, as before): see parseRevocationNotification.
 */
import crypto from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { pcrIndicesFromMask } from './policy.js';
import { encodeQuoteString, type KeylimeQuote, type PcrHashAlg } from './quote-string.js';

/** The TPM operations the endpoint needs; `TpmDevice` (src/tpm) can back it. */
export interface NodeQuoter {
  /** Quotes the PCRs (in the hash bank given to the endpoint) with the given qualifyingData. */
  quote(pcrs: readonly number[], qualifyingData: Uint8Array): Promise<KeylimeQuote>;
  pcrReset(index: number): Promise<void>;
  /** Extends the PCR in the endpoint's hash bank with a digest of that algorithm. */
  pcrExtend(index: number, digest: Uint8Array): Promise<void>;
}

export interface QuoteEndpointOptions {
  quoter: NodeQuoter;
  /** PEM of the public key bound into PCR 16 (Keylime's NK); sent when the verifier asks (partial=0). */
  pubkeyPem: string;
  /** PCR bank quoted and used for the PCR16 binding. Default sha256. */
  hashAlg?: Exclude<PcrHashAlg, 'sm3_256'>;
  /** The AK's algorithms as Keylime names them. */
  encAlg: 'ecc' | 'rsa';
  signAlg: 'ecdsa' | 'rsassa' | 'rsapss' | 'ecschnorr';
  /** Server certificate and key (PEM), and the CA whose client certificates (the verifier's) are accepted. */
  cert: string | Buffer;
  key: string | Buffer;
  clientCa: string | Buffer;
  /** Agent API versions served. Default 2.0, 2.1, 2.2. */
  apiVersions?: readonly string[];
  /** Quote requests queued at once before answering 503 (the TPM quotes one at a time). Default 8. */
  maxPendingQuotes?: number;
  /**
   * Called for each valid revocation notification (after the 200 is sent). Without it the endpoint
   * answers POSTs with 405, as an agent that takes no notifications.
   */
  onRevocation?: (notification: RevocationNotification) => void;
  /** Largest notification body accepted (bytes). Default 64 KiB. */
  maxNotificationBytes?: number;
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  logger?: Logger;
}

export interface QuoteEndpoint {
  readonly server: https.Server;
  readonly port: number;
  counters(): QuoteEndpointCounters;
  close(): Promise<void>;
}

export interface QuoteEndpointCounters {
  quotes: number;
  rejected: number;
  errors: number;
  /** Valid revocation notifications received. */
  notifications: number;
}

/**
 * What a Keylime verifier pushes when a node it polls fails. The wire body (keylime/keylime
 * keylime/cloud_verifier_common.py `prepare_error`, sent by `invoke_notify_error` in
 * keylime/cloud_verifier_tornado.py; rust-keylime keylime-agent/src/notifications_handler.rs and
 * revocation.rs read it as `Revocation { msg: String, signature: String }`) is JSON
 * `{"msg": "<JSON text>", "signature": "<base64 RSA-PSS signature, or empty>"}`; `msg` holds
 * `{"type", "ip", "agent_id", "port", "tpm_policy", "meta_data", "event_time"[, "event_id",
 * "severity_label", "context"]}`.
 */
export interface RevocationNotification {
  /** `revocation` (a quote failed) or `comm_error` (the node stopped answering). */
  type: 'revocation' | 'comm_error';
  /**
   * The Keylime agent id the verdict is about. Keylime sends the notification to every node it
   * polls, not only the failed one, so a receiver must compare it with its own id.
   */
  agentId: string;
  eventId?: string;
  severityLabel?: string;
  eventTime?: string;
  /** Whether the verifier signed it (with the enrollment's revocation_key; terroir enrolls without one). */
  signed: boolean;
}

/** Why a notification body was refused (the endpoint answers 400 with this message). */
export class RevocationNotificationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RevocationNotificationError';
  }
}

const BINDING_PCR = 16;
const NONCE = /^[A-Za-z0-9]{1,64}$/;
const ALLOWED_PARAMS = new Set(['nonce', 'mask', 'partial', 'ima_ml_entry']);
const DEFAULT_MAX_NOTIFICATION_BYTES = 64 * 1024;
/** Keylime's agent id rule (keylime/common/validators.py `valid_agent_id`: `[\w.-]+`), bounded. */
const KEYLIME_AGENT_ID = /^[A-Za-z0-9_.-]{1,255}$/;
/** Base64 of an RSA signature up to 16384 bits, or empty (no revocation key). */
const SIGNATURE = /^[A-Za-z0-9+/]{0,2800}={0,2}$/;
const NOTIFICATION_TYPES = new Set(['revocation', 'comm_error']);
/** The `msg` fields Keylime writes, with the JSON type each must have; others are ignored (a newer Keylime may add some). */
const MSG_FIELDS: Record<string, 'string' | 'number' | 'string|number' | 'any'> = {
  type: 'string', agent_id: 'string', ip: 'string', port: 'string|number', tpm_policy: 'string', meta_data: 'string',
  event_time: 'string', event_id: 'string', severity_label: 'string', context: 'any',
};

/**
 * Parses a revocation notification body strictly: a JSON object with exactly `msg` (a string holding
 * a JSON object with a known `type` and a Keylime agent id) and `signature` (base64 or empty).
 * Throws RevocationNotificationError saying what is wrong.
 */
export function parseRevocationNotification(body: Buffer | string): RevocationNotification {
  const bad = (why: string): RevocationNotificationError => new RevocationNotificationError(why);
  let outer: unknown;
  try {
    outer = JSON.parse(typeof body === 'string' ? body : body.toString('utf8'));
  } catch {
    throw bad('body is not JSON');
  }
  if (typeof outer !== 'object' || outer === null || Array.isArray(outer)) throw bad('body must be a JSON object {"msg", "signature"}');
  const keys = Object.keys(outer);
  const extra = keys.find((k) => k !== 'msg' && k !== 'signature');
  if (extra !== undefined) throw bad(`unexpected field ${JSON.stringify(extra.slice(0, 32))} (expected only "msg" and "signature")`);
  const { msg, signature } = outer as { msg?: unknown; signature?: unknown };
  if (typeof msg !== 'string' || msg.length === 0) throw bad('"msg" must be a non-empty string (the JSON-encoded revocation message)');
  if (typeof signature !== 'string') throw bad('"signature" must be a string (base64, or empty when the verifier has no revocation key)');
  if (!SIGNATURE.test(signature)) throw bad('"signature" must be base64');
  let inner: unknown;
  try {
    inner = JSON.parse(msg);
  } catch {
    throw bad('"msg" is not JSON');
  }
  if (typeof inner !== 'object' || inner === null || Array.isArray(inner)) throw bad('"msg" must hold a JSON object');
  const m = inner as Record<string, unknown>;
  for (const [field, kind] of Object.entries(MSG_FIELDS)) {
    const v = m[field];
    if (v === undefined || kind === 'any') continue;
    const ok = kind === 'string|number' ? typeof v === 'string' || typeof v === 'number' : typeof v === kind;
    if (!ok) throw bad(`"msg".${field} must be a ${kind.replace('|', ' or ')}`);
  }
  if (typeof m.type !== 'string' || !NOTIFICATION_TYPES.has(m.type)) {
    throw bad(`"msg".type must be "revocation" or "comm_error", got ${JSON.stringify(String(m.type).slice(0, 32))}`);
  }
  if (typeof m.agent_id !== 'string' || !KEYLIME_AGENT_ID.test(m.agent_id)) throw bad('"msg".agent_id must be a Keylime agent id (1..255 of A-Z a-z 0-9 _ . -)');
  const short = (v: unknown): string | undefined => (typeof v === 'string' ? v.slice(0, 256) : undefined);
  const out: RevocationNotification = { type: m.type as RevocationNotification['type'], agentId: m.agent_id, signed: signature.length > 0 };
  const eventId = short(m.event_id);
  const severityLabel = short(m.severity_label);
  const eventTime = short(m.event_time);
  if (eventId !== undefined) out.eventId = eventId;
  if (severityLabel !== undefined) out.severityLabel = severityLabel;
  if (eventTime !== undefined) out.eventTime = eventTime;
  return out;
}

export async function startQuoteEndpoint(opts: QuoteEndpointOptions): Promise<QuoteEndpoint> {
  const handler = createQuoteHandler(opts);
  const server = https.createServer({
    cert: opts.cert,
    key: opts.key,
    ca: opts.clientCa,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
  }, handler.handle);
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    counters: handler.counters,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

/** The request handler alone, for mounting on a server the agent already runs (it must require client certs). */
export function createQuoteHandler(opts: QuoteEndpointOptions): {
  handle: (req: IncomingMessage, res: ServerResponse) => void;
  counters: () => QuoteEndpointCounters;
} {
  const versions = opts.apiVersions ?? ['2.0', '2.1', '2.2'];
  const hashAlg = opts.hashAlg ?? 'sha256';
  const binding = crypto.createHash(hashAlg).update(opts.pubkeyPem, 'utf8').digest();
  const log = opts.logger?.child({ component: 'keylime-quote-endpoint' });
  const stats: QuoteEndpointCounters = { quotes: 0, rejected: 0, errors: 0, notifications: 0 };
  const maxNotification = opts.maxNotificationBytes ?? DEFAULT_MAX_NOTIFICATION_BYTES;
  let queue: Promise<unknown> = Promise.resolve();
  let pending = 0;
  const maxPending = opts.maxPendingQuotes ?? 8;

  const reply = (res: ServerResponse, code: number, status: string, results: Record<string, unknown> = {}): void => {
    const body = JSON.stringify({ code, status, results });
    res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };
  const reject = (res: ServerResponse, code: number, status: string): void => {
    stats.rejected++;
    log?.warn({ code }, `quote request refused: ${status}`);
    reply(res, code, status);
  };

  /**
   * POST /v{ver}/notifications/revocation. The TLS layer already limits peers to the verifier's
   * client CA; here the body is bounded and checked before anything acts on it.
   */
  const notification = (req: IncomingMessage, res: ServerResponse, onRevocation: (n: RevocationNotification) => void): void => {
    const refuse = (code: number, status: string): void => {
      stats.rejected++;
      log?.warn({ code }, `revocation notification refused: ${status}`);
      // Do not read on: the rest of an oversized or unwanted body is dropped with the connection.
      res.setHeader('connection', 'close');
      reply(res, code, status);
      req.resume();
    };
    const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
    if (type !== 'application/json') return refuse(415, 'Unsupported media type: a revocation notification is application/json');
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > maxNotification) return refuse(413, `Payload too large: a revocation notification is at most ${maxNotification} bytes`);
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (chunk: Buffer) => {
      if (over) return;
      size += chunk.length;
      if (size > maxNotification) {
        over = true;
        chunks.length = 0;
        refuse(413, `Payload too large: a revocation notification is at most ${maxNotification} bytes`);
        return;
      }
      chunks.push(chunk);
    });
    req.on('error', () => undefined);
    req.on('end', () => {
      if (over) return;
      let n: RevocationNotification;
      try {
        n = parseRevocationNotification(Buffer.concat(chunks));
      } catch (err) {
        return refuse(400, `Bad request: ${(err as Error).message}`);
      }
      stats.notifications++;
      log?.info({ type: n.type, keylimeAgentId: n.agentId, eventId: n.eventId, severity: n.severityLabel }, 'Keylime revocation notification received');
      reply(res, 200, 'Success');
      try {
        onRevocation(n);
      } catch (err) {
        log?.error({ err: (err as Error).message }, 'acting on a revocation notification failed');
      }
    });
  };

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'https://node.invalid');
    if (req.method === 'POST' && opts.onRevocation) {
      const n = /^\/v(\d+\.\d+)\/notifications\/revocation$/.exec(url.pathname);
      if (n === null) return reject(res, 404, `Not found: ${url.pathname.slice(0, 64)} (POST takes only /v{ver}/notifications/revocation)`);
      // Keylime re-negotiates on a 400 whose status says "API version not supported".
      if (!versions.includes(n[1] as string)) return reject(res, 400, `API version not supported: ${n[1]} (supported: ${versions.join(', ')})`);
      if (url.search !== '') return reject(res, 400, 'a revocation notification takes no query parameters');
      return notification(req, res, opts.onRevocation);
    }
    if (req.method !== 'GET') return reject(res, 405, `Method not allowed: only GET${opts.onRevocation ? ' (and POST to notifications/revocation)' : ''}`);
    if (url.pathname === '/version') return reply(res, 200, 'Success', { supported_version: versions[versions.length - 1] });
    const m = /^\/v(\d+\.\d+)\/quotes\/integrity$/.exec(url.pathname);
    if (m === null) return reject(res, 404, `Not found: ${url.pathname.slice(0, 64)}`);
    if (!versions.includes(m[1] as string)) return reject(res, 400, `API version ${m[1]} not supported (supported: ${versions.join(', ')})`);

    const params = new Map<string, string>();
    for (const [k, v] of url.searchParams) {
      if (!ALLOWED_PARAMS.has(k)) return reject(res, 400, `unknown query parameter ${JSON.stringify(k.slice(0, 32))}`);
      if (params.has(k)) return reject(res, 400, `query parameter ${k} given twice`);
      params.set(k, v);
    }
    const nonce = params.get('nonce');
    if (nonce === undefined || !NONCE.test(nonce)) return reject(res, 400, 'nonce must be 1..64 ASCII letters or digits');
    const maskText = params.get('mask');
    if (maskText === undefined) return reject(res, 400, 'mask is required (hex PCR bitmask)');
    let pcrs: number[];
    try {
      pcrs = pcrIndicesFromMask(maskText);
    } catch (err) {
      return reject(res, 400, (err as Error).message);
    }
    const partial = params.get('partial') ?? '0';
    if (partial !== '0' && partial !== '1') return reject(res, 400, 'partial must be 0 or 1');
    const imaEntry = params.get('ima_ml_entry');
    if (imaEntry !== undefined && !/^\d{1,9}$/.test(imaEntry)) return reject(res, 400, 'ima_ml_entry must be a non-negative integer');
    if (!pcrs.includes(BINDING_PCR)) pcrs.push(BINDING_PCR);
    pcrs.sort((a, b) => a - b);

    if (pending >= maxPending) return reject(res, 503, 'busy: too many quote requests in flight');
    pending++;
    const job = queue.then(async () => {
      await opts.quoter.pcrReset(BINDING_PCR);
      await opts.quoter.pcrExtend(BINDING_PCR, binding);
      return opts.quoter.quote(pcrs, Buffer.from(nonce, 'utf8'));
    });
    queue = job.catch(() => undefined);
    void job.finally(() => { pending--; }).catch(() => undefined);
    job.then((quote) => {
      stats.quotes++;
      const results: Record<string, unknown> = {
        quote: encodeQuoteString(quote),
        hash_alg: hashAlg,
        enc_alg: opts.encAlg,
        sign_alg: opts.signAlg,
      };
      if (partial === '0') results.pubkey = opts.pubkeyPem;
      log?.debug({ pcrs }, 'quote served');
      reply(res, 200, 'Success', results);
    }, (err: unknown) => {
      stats.errors++;
      log?.error({ err: (err as Error).message }, 'quote failed');
      reply(res, 500, 'Quote failed: the TPM did not produce a quote');
    });
  };
  return { handle, counters: () => ({ ...stats }) };
}
