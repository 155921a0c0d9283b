/**
 * The node side of Keylime's pull model: a Keylime-agent-compatible quote endpoint the terroir agent
 * mounts, `GET /v{ver}/quotes/integrity?nonce=&mask=&partial=&ima_ml_entry=`, over mutual TLS (only
 * clients with a certificate from the pinned verifier CA get a TLS session).
 *
 * Before each quote it resets PCR 16 and extends it with the hash of the bound public key's PEM, and
 * always quotes PCR 16: that is how Keylime ties the quote to the key it was given. Quotes are
 * serialized because the reset/extend/quote sequence must not interleave.
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
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  logger?: Logger;
}

export interface QuoteEndpoint {
  readonly server: https.Server;
  readonly port: number;
  counters(): { quotes: number; rejected: number; errors: number };
  close(): Promise<void>;
}

const BINDING_PCR = 16;
const NONCE = /^[A-Za-z0-9]{1,64}$/;
const ALLOWED_PARAMS = new Set(['nonce', 'mask', 'partial', 'ima_ml_entry']);

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
  counters: () => { quotes: number; rejected: number; errors: number };
} {
  const versions = opts.apiVersions ?? ['2.0', '2.1', '2.2'];
  const hashAlg = opts.hashAlg ?? 'sha256';
  const binding = crypto.createHash(hashAlg).update(opts.pubkeyPem, 'utf8').digest();
  const log = opts.logger?.child({ component: 'keylime-quote-endpoint' });
  const stats = { quotes: 0, rejected: 0, errors: 0 };
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

  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'https://node.invalid');
    if (req.method !== 'GET') return reject(res, 405, 'Method not allowed: only GET');
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
