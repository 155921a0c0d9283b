// X509Source: the workload's X.509-SVIDs and trust bundles, streamed from the SPIFFE Workload API
// (FetchX509SVID). Every stream message replaces the whole state at once (SVIDs and bundles of one
// message belong together); a message that does not parse or verify is logged and changes nothing.
// The agent answers PermissionDenied when it no longer has an identity for us (e.g. the node failed
// re-attestation): then the SVIDs are dropped at once, so TLS helpers stop presenting them.
import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import pino, { type Logger } from 'pino';
import { splitDerCertificates, workloadMetadata, type WorkloadApiClient, type X509SvidResponse } from '../api/workload-api.js';
import { Bundle, BundleSet } from '../spiffe/bundle.js';
import { parseCertificate } from '../spiffe/certificate.js';
import { SpiffeId, TrustDomain } from '../spiffe/id.js';
import type { X509Svid } from '../spiffe/svid-source.js';
import { parseX509SvidId, verifyX509Svid } from '../spiffe/x509svid.js';
import { resolveEndpoint, workloadClient } from './endpoint.js';
import { WorkloadError } from './errors.js';
import type { X509SourceLike } from './source.js';
import { StreamWatcher, type Backoff } from './watcher.js';

export interface X509SourceOptions {
  /** `unix:///path` or `tcp://IP:port`; default: the SPIFFE_ENDPOINT_SOCKET environment variable. */
  endpoint?: string;
  /** How long create() waits for the first SVID (default 10 000 ms). */
  timeoutMs?: number;
  backoff?: Backoff;
  /** Chooses the SVID getX509Svid() returns when the workload has several (default: the first). */
  pick?: (svids: readonly X509Svid[]) => X509Svid | undefined;
  logger?: Logger;
}

interface State {
  svids: X509Svid[];
  bundles: BundleSet;
  bundleList: readonly Bundle[];
}

export class X509Source implements X509SourceLike {
  private state: State | undefined;
  private readonly listeners = new Set<() => void>();
  private readonly watcher: StreamWatcher<X509SvidResponse>;
  private readonly client: WorkloadApiClient;
  private readonly log: Logger;
  private closed = false;

  private constructor(endpoint: string, private readonly opts: X509SourceOptions) {
    this.log = (opts.logger ?? pino({ level: 'silent' })).child({ component: 'X509Source' });
    this.client = workloadClient(endpoint);
    this.watcher = new StreamWatcher<X509SvidResponse>({
      open: () => this.client.FetchX509SVID({}, workloadMetadata()),
      onMessage: (m) => this.apply(m),
      onError: (e) => this.streamFailed(e),
      ...(opts.backoff !== undefined ? { backoff: opts.backoff } : {}),
    });
  }

  /** Connects and resolves once the first SVID has arrived; rejects with code 'timeout' otherwise. */
  static async create(opts: X509SourceOptions = {}): Promise<X509Source> {
    const src = new X509Source(resolveEndpoint(opts.endpoint), opts);
    try {
      await src.waitUntilUpdated(opts.timeoutMs ?? 10_000);
    } catch (e) {
      await src.close();
      throw e;
    }
    return src;
  }

  /** The current SVID (see `pick`). Throws 'no-svid' when there is none (yet, or any more). */
  getX509Svid(): X509Svid {
    const svids = this.getX509Svids();
    const chosen = this.opts.pick ? this.opts.pick(svids) : svids[0];
    if (chosen === undefined) throw new WorkloadError('no-svid', 'the Workload API has given this workload no X.509-SVID');
    return chosen;
  }

  /** All current SVIDs of this workload. */
  getX509Svids(): readonly X509Svid[] {
    if (this.closed) throw new WorkloadError('closed', 'X509Source is closed');
    const s = this.state;
    if (s === undefined || s.svids.length === 0) throw new WorkloadError('no-svid', 'the Workload API has given this workload no X.509-SVID');
    return s.svids;
  }

  getX509BundleForTrustDomain(td: TrustDomain): Bundle | undefined {
    return this.state?.bundles.get(td);
  }

  getX509Bundles(): readonly Bundle[] {
    return this.state?.bundleList ?? NO_BUNDLES;
  }

  /** Calls `fn` after every change (new SVIDs or bundles, or SVIDs withdrawn). Returns an unsubscribe. */
  onUpdate(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** Resolves when an SVID is available, at once if one already is. */
  waitUntilUpdated(timeoutMs: number): Promise<void> {
    if (this.state !== undefined && this.state.svids.length > 0) return Promise.resolve();
    this.watcher.start();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new WorkloadError('timeout', `no X.509-SVID from the Workload API within ${timeoutMs} ms; is the agent running and is this workload registered?`));
      }, timeoutMs);
      const off = this.onUpdate(() => {
        if (this.state === undefined || this.state.svids.length === 0) return;
        clearTimeout(timer);
        off();
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    this.client.close();
    this.state = undefined;
    this.listeners.clear();
  }

  private apply(m: X509SvidResponse): void {
    let next: State;
    try {
      next = parseX509Response(m);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'ignoring a malformed X.509-SVID response; keeping the current SVIDs');
      return;
    }
    this.state = next;
    this.log.info({ ids: next.svids.map((s) => s.id.toString()), trustDomains: next.bundleList.map((b) => b.trustDomain.name) }, 'X.509-SVIDs updated');
    this.notify();
  }

  private streamFailed(e: grpc.ServiceError): void {
    if (e.code === grpc.status.PERMISSION_DENIED) {
      // The agent no longer vouches for us: stop presenting the old SVIDs now, not at their expiry.
      this.log.warn({ details: e.details }, 'Workload API withdrew this workload\'s identity; SVIDs dropped');
      if (this.state !== undefined) {
        this.state = { ...this.state, svids: [] };
        this.notify();
      }
      return;
    }
    this.log.warn({ code: e.code, details: e.details }, 'Workload API stream failed; reconnecting');
  }

  private notify(): void {
    for (const fn of [...this.listeners]) {
      try {
        fn();
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'X509Source update listener threw');
      }
    }
  }
}

const NO_BUNDLES: readonly Bundle[] = Object.freeze([]);

function parseX509Response(m: X509SvidResponse): State {
  if (!Array.isArray(m?.svids) || m.svids.length === 0) throw new WorkloadError('bad-response', 'X509SVIDResponse has no SVIDs');
  const bundles = new BundleSet();
  const svids: X509Svid[] = [];
  for (const [i, s] of m.svids.entries()) {
    const where = `svid #${i}`;
    let id: SpiffeId;
    try {
      id = SpiffeId.parse(s.spiffe_id);
    } catch (e) {
      throw new WorkloadError('bad-response', `${where}: invalid spiffe_id: ${(e as Error).message}`, { cause: e });
    }
    const own = bundleFromDer(id.trustDomain, s.bundle, `${where} bundle`);
    const existing = bundles.get(id.trustDomain);
    if (existing === undefined) bundles.set(own);
    else for (const a of own.x509Authorities()) existing.addX509Authority(a);
    svids.push(parseSvid(s.x509_svid, s.x509_svid_key, id, s.hint, where));
  }
  for (const [key, der] of Object.entries(m.federated_bundles ?? {})) {
    const td = trustDomainOfKey(key);
    if (bundles.has(td)) continue; // never let a federated entry replace our own trust domain's bundle
    bundles.set(bundleFromDer(td, der, `federated bundle ${key}`));
  }
  // The agent checks what it hands out; checking again here means a broken SVID is never presented.
  for (const s of svids) {
    try {
      verifyX509Svid(s.certificatesDer, bundles);
    } catch (e) {
      throw new WorkloadError('bad-response', `SVID ${s.id.toString()} does not verify against its bundle: ${(e as Error).message}`, { cause: e });
    }
  }
  return { svids, bundles, bundleList: Object.freeze(bundles.all()) };
}

export function parseSvid(chainDer: Buffer, keyDer: Buffer, id: SpiffeId, hint: string | undefined, where: string): X509Svid {
  let chain: Buffer[];
  try {
    chain = splitDerCertificates(chainDer).map((c) => Buffer.from(c));
  } catch (e) {
    throw new WorkloadError('bad-response', `${where}: x509_svid: ${(e as Error).message}`, { cause: e });
  }
  if (chain.length === 0) throw new WorkloadError('bad-response', `${where}: x509_svid is empty`);
  const leaf = chain[0] as Buffer;
  let leafId: SpiffeId;
  let spki: Buffer;
  let notAfter: Date;
  try {
    leafId = parseX509SvidId(leaf);
    const view = parseCertificate(leaf);
    spki = view.spki;
    notAfter = view.notAfter;
  } catch (e) {
    throw new WorkloadError('bad-response', `${where}: leaf certificate: ${(e as Error).message}`, { cause: e });
  }
  if (!leafId.equals(id)) throw new WorkloadError('bad-response', `${where}: leaf certificate is for ${leafId.toString()}, not ${id.toString()}`);
  let privateKey: crypto.KeyObject;
  try {
    privateKey = crypto.createPrivateKey({ key: keyDer, format: 'der', type: 'pkcs8' });
  } catch (e) {
    throw new WorkloadError('bad-response', `${where}: x509_svid_key is not an unencrypted PKCS#8 key: ${(e as Error).message}`, { cause: e });
  }
  const pub = crypto.createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  if (!pub.equals(spki)) throw new WorkloadError('bad-response', `${where}: x509_svid_key does not match the leaf certificate`);
  return { id, certificatesDer: chain, privateKey, ...(hint ? { hint } : {}), expiresAt: notAfter };
}

function bundleFromDer(td: TrustDomain, der: Buffer, where: string): Bundle {
  const b = new Bundle(td);
  try {
    for (const c of splitDerCertificates(der)) b.addX509Authority(Buffer.from(c));
  } catch (e) {
    throw new WorkloadError('bad-response', `${where}: ${(e as Error).message}`, { cause: e });
  }
  if (b.x509Authorities().length === 0) throw new WorkloadError('bad-response', `${where} has no X.509 authorities`);
  return b;
}

/** Bundle map keys are trust domain IDs ("spiffe://example.org"); a bare name is accepted too. */
export function trustDomainOfKey(key: string): TrustDomain {
  try {
    return key.startsWith('spiffe://') ? SpiffeId.parse(key).trustDomain : TrustDomain.parse(key);
  } catch (e) {
    throw new WorkloadError('bad-response', `bundle key ${JSON.stringify(key)} is not a trust domain: ${(e as Error).message}`, { cause: e });
  }
}
