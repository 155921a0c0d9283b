// Issue 14, finding 9: a federated partner's server can mint an SVID asserting any region. A relying
// party's Unified Identity authorizer must name whose claims it believes (trustDomain), or say
// explicitly that it believes every federated trust domain (anyTrustDomain: true).
import { describe, expect, it } from 'vitest';
import { authorizeUnifiedIdentity, WorkloadError, type Peer } from '../../src/workload/index.js';
import { makeDomain } from '../workload/fixtures.js';

const eu = { country: 'FR', region: 'EU', policy: 'eu-only', verifier: 'keylime' };
const partner = makeDomain('partner.example');
const ours = makeDomain('example.org');
const peerOf = (d: ReturnType<typeof makeDomain>): Peer => {
  const s = d.svid('/svc', { claims: eu });
  return { id: s.id, x509Chain: s.chain };
};

describe('Unified Identity claims from another trust domain', () => {
  it('a partner SVID claiming EU is refused by an authorizer for our trust domain', () => {
    const a = authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'] });
    expect(() => a(peerOf(ours))).not.toThrow();
    expect(() => a(peerOf(partner))).toThrow("peer spiffe://partner.example/svc's Unified Identity claims come from trust domain partner.example; only example.org's are believed");
  });

  it('an authorizer must say whose claims it believes', () => {
    expect(() => authorizeUnifiedIdentity({ regions: ['EU'] })).toThrow(WorkloadError);
    expect(() => authorizeUnifiedIdentity({ regions: ['EU'] })).toThrow(/exactly one of trustDomain .* or anyTrustDomain: true/);
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', anyTrustDomain: true, regions: ['EU'] })).toThrow(WorkloadError);
    // Believing everyone is possible, but only when said.
    expect(() => authorizeUnifiedIdentity({ anyTrustDomain: true, regions: ['EU'] })(peerOf(partner))).not.toThrow();
  });
});
