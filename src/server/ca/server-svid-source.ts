// The server's own SVID (spiffe://<td>/spire/server) as an X509SourceLike, for the mTLS it speaks as a
// client and as its own landmark: minted from the active CA, re-minted at half-life or after a CA
// rotation; its bundle is the server's current X.509 roots.
import crypto from 'node:crypto';
import { Bundle, TrustDomain } from '../../spiffe/index.js';
import { SpiffeId } from '../../spiffe/id.js';
import type { X509Svid } from '../../spiffe/svid-source.js';
import type { ProbeIdentity as X509SourceLike } from '../../latency/index.js';
import type { SvidIssuer } from './issuer.js';
import type { CaManager } from './manager.js';

export class ServerSvidSource implements X509SourceLike {
  private svid: X509Svid | undefined;
  private issuedAt = 0;
  private signedBy = '';
  private bundles: readonly Bundle[] = [];
  private rootsKey = '';
  private readonly listeners = new Set<() => void>();
  private readonly unsubscribe: () => void;
  private readonly td: TrustDomain;

  constructor(
    private readonly issuer: SvidIssuer,
    private readonly ca: CaManager,
    private readonly ttlSeconds = 3600,
    private readonly now: () => Date = () => new Date(),
    /** DNS names and IP addresses the certificate also carries (for clients that check a host name). */
    private readonly names: { dnsNames: string[]; ipAddresses: string[] } = { dnsNames: [], ipAddresses: [] },
  ) {
    this.td = TrustDomain.parse(ca.trustDomain);
    this.unsubscribe = ca.onBundleChange(() => { for (const l of [...this.listeners]) l(); });
  }

  getX509Svid(): X509Svid {
    const t = this.now().getTime();
    const s = this.svid;
    if (s === undefined || this.ca.activeX509().id !== this.signedBy || t >= this.issuedAt + (s.expiresAt.getTime() - this.issuedAt) / 2) {
      const m = this.issuer.mintServerSvid(this.names.dnsNames, this.names.ipAddresses, this.ttlSeconds);
      const chain = m.certChainPem.split(/(?=-----BEGIN CERTIFICATE-----)/).map((p) => Buffer.from(new crypto.X509Certificate(p).raw));
      this.svid = { id: SpiffeId.fromPath(this.td, '/spire/server'), certificatesDer: chain, privateKey: crypto.createPrivateKey(m.keyPem), expiresAt: m.notAfter };
      this.issuedAt = t;
      this.signedBy = this.ca.activeX509().id;
    }
    return this.svid as X509Svid;
  }

  getX509Bundles(): readonly Bundle[] {
    const roots = this.ca.x509Roots();
    const key = roots.map((r) => r.toString('base64')).join(',');
    if (key !== this.rootsKey) {
      const b = new Bundle(this.td);
      for (const r of roots) b.addX509Authority(r);
      this.bundles = [b];
      this.rootsKey = key;
    }
    return this.bundles;
  }

  getX509BundleForTrustDomain(td: TrustDomain): Bundle | undefined {
    return td.equals(this.td) ? this.getX509Bundles()[0] : undefined;
  }

  onUpdate(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  close(): void {
    this.unsubscribe();
    this.listeners.clear();
  }
}
