// JWTSource: JWT-SVIDs fetched on demand from the SPIFFE Workload API (FetchJWTSVID) and the JWT
// bundles streamed by FetchJWTBundles, which validate peers' tokens locally. Bundle messages replace
// the whole set at once; a malformed one is logged and changes nothing.
import * as grpc from '@grpc/grpc-js';
import * as jose from 'jose';
import pino, { type Logger } from 'pino';
import { workloadMetadata, type JwtBundlesResponse, type JwtSvidResponse, type WorkloadApiClient } from '../api/workload-api.js';
import { Bundle, BundleSet, type JwtBundleSource } from '../spiffe/bundle.js';
import { SpiffeId, type TrustDomain } from '../spiffe/id.js';
import { MAX_JWT_BYTES, validateJwtSvid, type ValidatedJwtSvid } from '../spiffe/jwtsvid.js';
import type { JwtSvid, JwtSvidSource } from '../spiffe/svid-source.js';
import { jwtPeer, type Authorizer, type Peer } from './authorizer.js';
import { resolveEndpoint, workloadClient } from './endpoint.js';
import { WorkloadError } from './errors.js';
import { StreamWatcher, type Backoff } from './watcher.js';
import { trustDomainOfKey } from './x509-source.js';

export interface JWTSourceOptions {
  /** `unix:///path` or `tcp://IP:port`; default: the SPIFFE_ENDPOINT_SOCKET environment variable. */
  endpoint?: string;
  /** How long create() waits for the first bundles, and each fetchJwtSvid() for its answer (default 10 000 ms). */
  timeoutMs?: number;
  backoff?: Backoff;
  logger?: Logger;
}

export class JWTSource implements JwtSvidSource, JwtBundleSource {
  private bundles: BundleSet | undefined;
  private readonly listeners = new Set<() => void>();
  private readonly watcher: StreamWatcher<JwtBundlesResponse>;
  private readonly client: WorkloadApiClient;
  private readonly log: Logger;
  private readonly timeoutMs: number;
  private closed = false;

  private constructor(endpoint: string, opts: JWTSourceOptions) {
    this.log = (opts.logger ?? pino({ level: 'silent' })).child({ component: 'JWTSource' });
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.client = workloadClient(endpoint);
    this.watcher = new StreamWatcher<JwtBundlesResponse>({
      open: () => this.client.FetchJWTBundles({}, workloadMetadata()),
      onMessage: (m) => this.apply(m),
      onError: (e) => this.log.warn({ code: e.code, details: e.details }, 'Workload API JWT bundle stream failed; reconnecting'),
      ...(opts.backoff !== undefined ? { backoff: opts.backoff } : {}),
    });
  }

  /** Connects and resolves once the first JWT bundles have arrived; rejects with code 'timeout' otherwise. */
  static async create(opts: JWTSourceOptions = {}): Promise<JWTSource> {
    const src = new JWTSource(resolveEndpoint(opts.endpoint), opts);
    src.watcher.start();
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          off();
          reject(new WorkloadError('timeout', `no JWT bundles from the Workload API within ${src.timeoutMs} ms; is the agent running and is this workload registered?`));
        }, src.timeoutMs);
        const off = src.onUpdate(() => {
          clearTimeout(timer);
          off();
          resolve();
        });
      });
    } catch (e) {
      await src.close();
      throw e;
    }
    return src;
  }

  /** A JWT-SVID for `audience` (and `subject`, when the workload has several identities). */
  fetchJwtSvid(p: { audience: string[]; subject?: SpiffeId }): Promise<JwtSvid> {
    if (this.closed) return Promise.reject(new WorkloadError('closed', 'JWTSource is closed'));
    if (!Array.isArray(p?.audience) || p.audience.length === 0 || !p.audience.every((a) => typeof a === 'string' && a !== '')) {
      return Promise.reject(new WorkloadError('invalid-argument', 'audience must be a non-empty list of non-empty strings'));
    }
    const req = { audience: p.audience, spiffe_id: p.subject?.toString() ?? '' };
    return new Promise((resolve, reject) => {
      this.client.FetchJWTSVID(req, workloadMetadata(), { deadline: Date.now() + this.timeoutMs }, (err, res) => {
        if (err) {
          reject(new WorkloadError('fetch-failed', `FetchJWTSVID failed (${grpc.status[err.code] ?? err.code}): ${err.details}`, { cause: err }));
          return;
        }
        try {
          resolve(parseJwtSvidResponse(res, p.subject));
        } catch (e) {
          reject(e);
        }
      });
    });
  }

  getJwtBundleForTrustDomain(td: TrustDomain): Bundle | undefined {
    return this.bundles?.get(td);
  }

  /** Validates a peer's JWT-SVID for `audience` against the streamed bundles (signature, exp, aud, sub). */
  validateJwtSvid(token: string, audience: string): Promise<ValidatedJwtSvid> {
    if (this.closed) return Promise.reject(new WorkloadError('closed', 'JWTSource is closed'));
    return validateJwtSvid(token, this, audience);
  }

  /** validateJwtSvid, then `authorizer` (e.g. authorizeUnifiedIdentity); resolves to the authorized peer. */
  async authorizeJwtSvid(token: string, audience: string, authorizer: Authorizer): Promise<Peer> {
    const peer = jwtPeer(await this.validateJwtSvid(token, audience));
    authorizer(peer);
    return peer;
  }

  onUpdate(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    this.client.close();
    this.bundles = undefined;
    this.listeners.clear();
  }

  private apply(m: JwtBundlesResponse): void {
    const next = new BundleSet();
    try {
      for (const [key, jwks] of Object.entries(m?.bundles ?? {})) {
        const td = trustDomainOfKey(key);
        try {
          next.set(Bundle.parse(td, jwks));
        } catch (e) {
          throw new WorkloadError('bad-response', `JWT bundle of ${td.name}: ${(e as Error).message}`, { cause: e });
        }
      }
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'ignoring a malformed JWT bundles response; keeping the current bundles');
      return;
    }
    this.bundles = next;
    this.log.info({ trustDomains: next.trustDomains().map((t) => t.name) }, 'JWT bundles updated');
    for (const fn of [...this.listeners]) {
      try {
        fn();
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'JWTSource update listener threw');
      }
    }
  }
}

function parseJwtSvidResponse(res: JwtSvidResponse | undefined, subject: SpiffeId | undefined): JwtSvid {
  const svids = res?.svids ?? [];
  const s = subject === undefined ? svids[0] : svids.find((x) => x.spiffe_id === subject.toString());
  if (s === undefined) throw new WorkloadError('bad-response', 'FetchJWTSVID answered without a matching JWT-SVID');
  if (typeof s.svid !== 'string' || s.svid.length > MAX_JWT_BYTES) throw new WorkloadError('bad-response', 'JWT-SVID missing or larger than allowed');
  let id: SpiffeId;
  let claims: jose.JWTPayload;
  try {
    id = SpiffeId.parse(s.spiffe_id);
    // The token came from our own agent over its socket; peers validate it, we only read it.
    claims = jose.decodeJwt(s.svid);
  } catch (e) {
    throw new WorkloadError('bad-response', `FetchJWTSVID returned an unreadable JWT-SVID: ${(e as Error).message}`, { cause: e });
  }
  if (claims.sub !== id.toString()) throw new WorkloadError('bad-response', `JWT-SVID subject ${String(claims.sub)} is not ${id.toString()}`);
  if (typeof claims.exp !== 'number') throw new WorkloadError('bad-response', 'JWT-SVID has no exp');
  const audience = Array.isArray(claims.aud) ? claims.aud : typeof claims.aud === 'string' ? [claims.aud] : [];
  return { id, token: s.svid, audience, expiry: new Date(claims.exp * 1000), claims: claims as Record<string, unknown> };
}
