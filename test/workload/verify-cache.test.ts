// The verification cache never outlives what it cached: a changed bundle or a time outside the
// chain's validity means full verification again (and its failure).
import { describe, expect, it } from 'vitest';
import { BundleSet } from '../../src/spiffe/bundle.js';
import { X509SvidError } from '../../src/spiffe/errors.js';
import { VerificationCache } from '../../src/workload/verify-cache.js';
import { makeDomain } from './fixtures.js';

describe('VerificationCache', () => {
  const d = makeDomain('example.org');
  const svid = d.svid('/a', { ttlSeconds: 600 });

  it('a removed trust anchor is noticed at once, even for a cached chain', () => {
    const bundle = d.bundle();
    const set = new BundleSet(bundle);
    const src = { getX509BundleForTrustDomain: set.getX509BundleForTrustDomain.bind(set), getX509Bundles: () => set.all() };
    const cache = new VerificationCache();
    expect(cache.verify(svid.chain, src).id.toString()).toBe('spiffe://example.org/a');
    expect(cache.verify(svid.chain, src).id.toString()).toBe('spiffe://example.org/a');
    bundle.removeX509Authority(d.caDer);
    expect(() => cache.verify(svid.chain, src)).toThrow(X509SvidError);
    bundle.addX509Authority(makeDomain('example.org').caDer); // another CA of the same name
    expect(() => cache.verify(svid.chain, src)).toThrow(X509SvidError);
  });

  it('a cached chain past its notAfter fails as expired', () => {
    const set = new BundleSet(d.bundle());
    const src = { getX509BundleForTrustDomain: set.getX509BundleForTrustDomain.bind(set), getX509Bundles: () => set.all() };
    const cache = new VerificationCache();
    cache.verify(svid.chain, src);
    expect(() => cache.verify(svid.chain, src, Date.now() + 700_000)).toThrow(expect.objectContaining({ code: 'expired' }));
  });

  it('a different chain is never answered from the cache', () => {
    const set = new BundleSet(d.bundle());
    const src = { getX509BundleForTrustDomain: set.getX509BundleForTrustDomain.bind(set), getX509Bundles: () => set.all() };
    const cache = new VerificationCache();
    cache.verify(svid.chain, src);
    const foreign = makeDomain('example.org').svid('/a');
    expect(() => cache.verify(foreign.chain, src)).toThrow(X509SvidError);
  });
});
