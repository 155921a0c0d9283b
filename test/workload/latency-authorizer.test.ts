// A relying party's demand on the latency witness (authorizeUnifiedIdentity({ latency })): the
// witness must be there, with enough landmarks of the asked strength and a tight enough radius.
import { describe, expect, it } from 'vitest';
import type { UnifiedIdentityClaims } from '../../src/spiffe/unified-identity.js';
import { authorizeUnifiedIdentity, AuthorizationError, WorkloadError, type Peer } from '../../src/workload/index.js';
import { makeDomain } from './fixtures.js';

const d = makeDomain('example.org');
const base: UnifiedIdentityClaims = { country: 'FR', region: 'EU', policy: 'eu', verifier: 'keylime', assurance: 'latency-bounded', witnesses: ['latency', 'node:gnss'] };
const PARIS = 'spiffe://example.org/landmark/paris';
const LYON = 'spiffe://example.org/landmark/lyon';
function peer(claims: UnifiedIdentityClaims): Peer {
  const svid = d.svid('/web', { claims });
  return { id: svid.id, x509Chain: svid.chain };
}
const allow = (claims: UnifiedIdentityClaims, latency: Parameters<typeof authorizeUnifiedIdentity>[0]['latency']): void =>
  authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'], latency })(peer(claims));

describe('authorizeUnifiedIdentity: latency requirements', () => {
  const two = { ...base, latency: [{ landmark: LYON, radiusKm: 140.2, strength: 'agent-key' }, { landmark: PARIS, radiusKm: 18.5, strength: 'tpm' }] };

  it('accepts claims whose witness meets every demand', () => {
    expect(() => allow(two, {})).not.toThrow();
    expect(() => allow(two, { strength: 'tpm', maxRadiusKm: 20 })).not.toThrow();
    expect(() => allow(two, { minLandmarks: 2, maxRadiusKm: 20 })).not.toThrow();
  });

  it('refuses claims without the witness, with too few landmarks, the wrong strength or too wide a disk', () => {
    const { latency: _none, ...self } = { ...two, assurance: 'self-reported' as const, witnesses: ['node:gnss'] };
    expect(() => allow(self, {})).toThrow(/not witnessed by latency/);
    expect(() => allow(two, { minLandmarks: 3 })).toThrow(/rests on 2 landmark\(s\); 3 required/);
    expect(() => allow(two, { strength: 'tpm', minLandmarks: 2 })).toThrow(/1 landmark\(s\) with TPM-signed probes/);
    expect(() => allow(two, { maxRadiusKm: 10 })).toThrow(/bounds it to 18.5 km; at most 10 km/);
    // A witness name without the list it rests on proves nothing.
    expect(() => allow({ ...base }, {})).toThrow(/rests on 0 landmark/);
    expect(() => allow(two, { strength: 'tpm', maxRadiusKm: 10 })).toThrow(AuthorizationError);
  });

  it('refuses a malformed requirement at construction', () => {
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'], latency: { maxRadiusKm: -1 } })).toThrow(WorkloadError);
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'], latency: { minLandmarks: 0 } })).toThrow(WorkloadError);
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'], latency: { strength: 'gps' as never } })).toThrow(WorkloadError);
  });
});
