// Fetches federated trust domains' bundles from their bundle endpoints, each on its own refresh hint,
// and stores each under its own trust domain (bundles are never merged).
//  - https_web: the endpoint is authenticated by the web PKI (system roots, plus an optional CA file).
//  - https_spiffe: the endpoint must present an X.509-SVID with the configured SPIFFE ID, verified
//    against the bundle of THAT trust domain we already hold (bootstrap file or the last fetch).
import crypto from 'node:crypto';
import https from 'node:https';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { Bundle, BundleSet } from '../../spiffe/bundle.js';
import { TrustDomain } from '../../spiffe/id.js';
import { verifyX509Svid } from '../../spiffe/x509svid.js';
import type { DataStore, FederationRelationship } from '../datastore/types.js';
import type { Auditor } from '../audit.js';

export const MAX_FEDERATED_BUNDLE_BYTES = 1024 * 1024;

export class FederationError extends Error {
  override readonly name = 'FederationError';
  constructor(readonly code: 'no_bootstrap_bundle' | 'endpoint_unreachable' | 'endpoint_untrusted' | 'bad_response' | 'bad_bundle', message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface FetcherOptions {
  store: Pick<DataStore, 'getBundle' | 'setBundle' | 'listFederationRelationships'>;
  ownTrustDomain: string;
  defaultRefreshSeconds: number;
  /** Extra CA certificates (PEM) per trust domain for https_web endpoints. */
  webCas?: Map<string, Buffer>;
  logger?: Logger;
  auditor?: Auditor;
  timeoutMs?: number;
  /** Lower bound between two fetches of one trust domain (a hostile hint of 0 must not spin). */
  minRefreshSeconds?: number;
}

function get(url: string, options: https.RequestOptions, timeoutMs: number): Promise<{ status: number; type: string; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ...options, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (c: Buffer) => {
        size += c.length;
        if (size > MAX_FEDERATED_BUNDLE_BYTES) {
          req.destroy(new FederationError('bad_response', `bundle from ${url} is larger than ${MAX_FEDERATED_BUNDLE_BYTES} bytes`));
          return;
        }
        chunks.push(c);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new FederationError('endpoint_unreachable', `no answer from ${url} within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

export class BundleFetcher {
  private timers = new Map<string, NodeJS.Timeout>();
  private stopped = false;

  constructor(private readonly o: FetcherOptions) {}

  /** Fetches one relationship's bundle now and stores it; returns the stored bundle. */
  async fetchOnce(rel: FederationRelationship): Promise<Bundle> {
    if (rel.trustDomain === this.o.ownTrustDomain) {
      throw new FederationError('bad_bundle', `refusing to federate with our own trust domain ${rel.trustDomain}`);
    }
    const td = TrustDomain.parse(rel.trustDomain);
    const timeoutMs = this.o.timeoutMs ?? 10_000;
    let options: https.RequestOptions;
    if (rel.profile === 'https_spiffe') {
      const known = await this.o.store.getBundle(rel.trustDomain);
      if (!known) {
        throw new FederationError('no_bootstrap_bundle', `no bundle of ${rel.trustDomain} is known yet: set one first (bootstrapBundleFile or "bundle set") to authenticate its https_spiffe endpoint`);
      }
      const trusted = Bundle.parse(td, known.bundleJson);
      const roots = trusted.x509Authorities().map((d) => new crypto.X509Certificate(d).toString());
      if (roots.length === 0) throw new FederationError('no_bootstrap_bundle', `the known bundle of ${rel.trustDomain} has no X.509 authorities`);
      const expected = rel.endpointSpiffeId;
      if (!expected) throw new FederationError('endpoint_untrusted', `https_spiffe relationship with ${rel.trustDomain} has no endpoint SPIFFE ID`);
      const set = new BundleSet(trusted);
      options = {
        ca: roots,
        // The TLS layer checks the chain against THAT trust domain's roots; the SPIFFE ID replaces
        // the host name check (https_spiffe authenticates the endpoint by SPIFFE ID).
        checkServerIdentity: (_host, cert) => {
          try {
            // The presented chain (node passes the detailed certificate), minus the anchors themselves.
            const anchors = trusted.x509Authorities();
            const chain = [cert.raw];
            let c: tls.DetailedPeerCertificate | undefined = (cert as tls.DetailedPeerCertificate).issuerCertificate;
            while (c?.raw && chain.length < 10 && !chain.some((x) => x.equals(c!.raw)) && !anchors.some((a) => a.equals(c!.raw))) {
              chain.push(c.raw);
              c = c.issuerCertificate;
            }
            const v = verifyX509Svid(chain, set);
            if (v.id.toString() !== expected) return new Error(`bundle endpoint presented ${v.id.toString()}, expected ${expected}`);
            return undefined;
          } catch (err) {
            return new Error(`bundle endpoint SVID rejected: ${(err as Error).message}`);
          }
        },
      };
    } else {
      const extra = this.o.webCas?.get(rel.trustDomain);
      options = extra ? { ca: [...tls.rootCertificates, extra.toString()] } : {};
    }
    let res: { status: number; type: string; body: Buffer };
    try {
      res = await get(rel.bundleEndpointUrl, { ...options, agent: false }, timeoutMs);
    } catch (err) {
      if (err instanceof FederationError) throw err;
      const msg = (err as Error).message;
      const code = /certificate|SVID|self.signed|unable to verify|expected spiffe/i.test(msg) ? 'endpoint_untrusted' : 'endpoint_unreachable';
      throw new FederationError(code, `cannot fetch the bundle of ${rel.trustDomain} from ${rel.bundleEndpointUrl}: ${msg}`, { cause: err });
    }
    if (res.status !== 200) throw new FederationError('bad_response', `bundle endpoint ${rel.bundleEndpointUrl} answered HTTP ${res.status}`);
    let bundle: Bundle;
    try {
      bundle = Bundle.parse(td, res.body);
    } catch (err) {
      throw new FederationError('bad_bundle', `bundle of ${rel.trustDomain} from ${rel.bundleEndpointUrl} is invalid: ${(err as Error).message}`, { cause: err });
    }
    if (bundle.x509Authorities().length === 0 && bundle.jwtAuthorities().size === 0) {
      throw new FederationError('bad_bundle', `bundle of ${rel.trustDomain} from ${rel.bundleEndpointUrl} has no keys`);
    }
    const prev = await this.o.store.getBundle(rel.trustDomain);
    const json = bundle.toJSON();
    if (!prev || prev.bundleJson !== json) {
      await this.o.store.setBundle({ trustDomain: rel.trustDomain, bundleJson: json, sequence: bundle.sequenceNumber });
      this.o.logger?.info({ trustDomain: rel.trustDomain, sequence: bundle.sequenceNumber.toString() }, 'federated bundle updated');
      this.o.auditor?.record({ action: 'federation_refresh', caller: 'server', subject: rel.trustDomain, result: 'ok', details: { sequence: bundle.sequenceNumber.toString() } });
    }
    return bundle;
  }

  /** Polls every relationship in the datastore on its refresh hint; new relationships are picked up each round. */
  start(): void {
    const scan = async (): Promise<void> => {
      if (this.stopped) return;
      try {
        const rels = await this.o.store.listFederationRelationships();
        for (const rel of rels) if (!this.timers.has(rel.trustDomain)) this.schedule(rel.trustDomain, 0);
      } catch (err) {
        this.o.logger?.warn({ err }, 'cannot list federation relationships');
      }
      if (!this.stopped) this.timers.set('\u0000scan', setTimeout(() => void scan(), 30_000).unref());
    };
    void scan();
  }

  private schedule(trustDomain: string, delayMs: number): void {
    const t = setTimeout(() => void this.run(trustDomain), delayMs);
    t.unref();
    this.timers.set(trustDomain, t);
  }

  private async run(trustDomain: string): Promise<void> {
    if (this.stopped) return;
    const min = this.o.minRefreshSeconds ?? 5;
    let next = this.o.defaultRefreshSeconds;
    try {
      const rel = (await this.o.store.listFederationRelationships()).find((r) => r.trustDomain === trustDomain);
      if (!rel) { this.timers.delete(trustDomain); return; }
      const b = await this.fetchOnce(rel);
      next = b.refreshHintSeconds ?? this.o.defaultRefreshSeconds;
    } catch (err) {
      this.o.logger?.warn({ trustDomain, err: (err as Error).message }, 'federated bundle refresh failed; keeping the last bundle');
      this.o.auditor?.record({ action: 'federation_refresh', caller: 'server', subject: trustDomain, result: 'error', reason: (err as Error).message });
      next = Math.min(next, 60);
    }
    if (!this.stopped) this.schedule(trustDomain, Math.max(min, next) * 1000);
  }

  stop(): void {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}
