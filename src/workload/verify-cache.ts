// A cache of successful SPIFFE chain verifications, so a peer that reconnects often does not pay for
// full path validation every handshake (verifyX509Svid costs about as much as the rest of a TLS 1.3
// handshake here). Sound because the result depends only on the chain bytes, the trust anchors and
// the time: the key hashes the chain AND every X.509 authority of every bundle (a changed bundle
// gives another key), and a hit is used only inside the validity window of every certificate in the
// chain and of the anchors. Failures are never cached. The authorizer always runs afresh.
import crypto from 'node:crypto';
import type { Bundle } from '../spiffe/bundle.js';
import { verifyX509Svid, type VerifiedX509Svid } from '../spiffe/x509svid.js';
import type { X509BundleSetSource } from './source.js';

interface Hit {
  verified: VerifiedX509Svid;
  from: number;
  until: number;
}

const MAX_ENTRIES = 1024;

export class VerificationCache {
  private readonly hits = new Map<string, Hit>();
  private anchorsOf: readonly Bundle[] | undefined;
  private anchorsDigest = '';
  private anchorsFrom = 0;
  private anchorsUntil = 0;

  verify(chain: Buffer[], bundles: X509BundleSetSource, now = Date.now()): VerifiedX509Svid {
    const anchors = this.anchors(bundles);
    const h = crypto.createHash('sha256').update(anchors);
    for (const c of chain) h.update(`${c.length}:`).update(c);
    const key = h.digest('base64');
    const hit = this.hits.get(key);
    if (hit !== undefined && now >= hit.from && now < hit.until) {
      // Refresh recency for the LRU order.
      this.hits.delete(key);
      this.hits.set(key, hit);
      return hit.verified;
    }
    const verified = verifyX509Svid(chain, bundles, { now: new Date(now) });
    let from = this.anchorsFrom;
    let until = this.anchorsUntil;
    for (const c of chain) {
      const x = new crypto.X509Certificate(c);
      from = Math.max(from, Date.parse(x.validFrom));
      until = Math.min(until, Date.parse(x.validTo));
    }
    if (this.hits.size >= MAX_ENTRIES) this.hits.delete(this.hits.keys().next().value as string);
    this.hits.set(key, { verified, from, until });
    return verified;
  }

  /** A digest of every trust anchor, recomputed each call (bundles may be mutated in place). */
  private anchors(bundles: X509BundleSetSource): string {
    const list = bundles.getX509Bundles();
    const h = crypto.createHash('sha256');
    const ders: Buffer[] = [];
    for (const b of list) {
      h.update(`${b.trustDomain.name}\n`);
      for (const a of b.x509Authorities()) {
        h.update(`${a.length}:`).update(a);
        ders.push(a);
      }
    }
    const digest = h.digest('base64');
    if (digest !== this.anchorsDigest || list !== this.anchorsOf) {
      let from = 0;
      let until = Number.MAX_SAFE_INTEGER;
      for (const a of ders) {
        const x = new crypto.X509Certificate(a);
        from = Math.max(from, Date.parse(x.validFrom));
        until = Math.min(until, Date.parse(x.validTo));
      }
      this.anchorsDigest = digest;
      this.anchorsOf = list;
      this.anchorsFrom = from;
      this.anchorsUntil = until;
      this.hits.clear();
    }
    return digest;
  }
}
