// Authorizers on verified peers (X.509 chains minted by src/spiffe, JWT claims as validated).
import { describe, expect, it } from 'vitest';
import { SpiffeId } from '../../src/spiffe/id.js';
import {
  AuthorizationError, authorizeAll, authorizeAny, authorizeId, authorizeMemberOf, authorizeOneOf, authorizeUnifiedIdentity, WorkloadError,
  type Peer,
} from '../../src/workload/index.js';
import { makeDomain } from './fixtures.js';

const ex = makeDomain('example.org');
const x509 = (p: string, claims?: Record<string, unknown>): Peer => {
  const s = ex.svid(p, claims ? { claims } : {});
  return { id: s.id, x509Chain: s.chain };
};
const jwt = (p: string, claims: Record<string, unknown>): Peer => ({ id: SpiffeId.parse(`spiffe://example.org${p}`), jwtClaims: claims });

describe('authorizers', () => {
  it('by ID, one of several IDs, trust domain, any', () => {
    const p = x509('/web');
    expect(() => authorizeId('spiffe://example.org/web')(p)).not.toThrow();
    expect(() => authorizeId('spiffe://example.org/api')(p)).toThrow(AuthorizationError);
    expect(() => authorizeOneOf(['spiffe://example.org/api', SpiffeId.parse('spiffe://example.org/web')])(p)).not.toThrow();
    expect(() => authorizeOneOf(['spiffe://example.org/api'])(p)).toThrow(/not one of/);
    expect(() => authorizeMemberOf('example.org')(p)).not.toThrow();
    expect(() => authorizeMemberOf('example.com')(p)).toThrow(/not a member of trust domain example.com/);
    expect(() => authorizeAny()(p)).not.toThrow();
    expect(() => authorizeAll(authorizeAny(), authorizeId('spiffe://example.org/x'))(p)).toThrow(AuthorizationError);
  });

  it('Unified Identity: every given list must hold, for X.509 and JWT peers alike', () => {
    const claims = { country: 'FR', region: 'EU', policy: 'eu-only' };
    const a = authorizeUnifiedIdentity({ trustDomain: 'example.org', countries: ['DE', 'FR'], regions: ['EU'], policies: ['eu-only'] });
    expect(() => a(x509('/a', claims))).not.toThrow();
    expect(() => a(jwt('/a', { unified_identity: claims }))).not.toThrow();
    expect(() => a(x509('/a', { ...claims, policy: 'global' }))).toThrow(/policy "global"/);
    expect(() => a(jwt('/a', { unified_identity: { country: 'FR', region: 'EU' } }))).toThrow(/no Unified Identity "policy" claim/);
    expect(() => a(jwt('/a', {}))).toThrow(/carries no Unified Identity claims/);
    expect(() => a(jwt('/a', { unified_identity: { country: 'France' } }))).toThrow(/malformed Unified Identity claims \(invalid-claims\)/);
    expect(() => a(x509('/a'))).toThrow(/carries no Unified Identity claims/);
  });

  it('Unified Identity: claims checked only by the development Keylime stand-in are refused unless allowed', () => {
    const standIn = { country: 'FR', region: 'EU', policy: 'eu', verifier: 'keylime-development-stand-in' };
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'] })(x509('/a', standIn))).toThrow(/checked only by terroir's development Keylime stand-in/);
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'] })(jwt('/a', { unified_identity: standIn }))).toThrow(/development Keylime stand-in/);
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'], allowDevelopmentStandIn: true })(x509('/a', standIn))).not.toThrow();
    // Allowing the stand-in relaxes nothing else.
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'], countries: ['DE'], allowDevelopmentStandIn: true })(x509('/a', standIn))).toThrow(/country "FR"/);
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'] })(x509('/a', { ...standIn, verifier: 'keylime' }))).not.toThrow();
  });

  it('refuses meaningless configurations', () => {
    expect(() => authorizeUnifiedIdentity({})).toThrow(WorkloadError);
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', countries: ['de'] })).toThrow(/upper case/);
    expect(() => authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: [] })).toThrow(/non-empty/);
    expect(() => authorizeOneOf([])).toThrow(WorkloadError);
    expect(() => authorizeId('http://example.org/x')).toThrow(WorkloadError);
    expect(() => authorizeMemberOf('Not A Domain')).toThrow(WorkloadError);
  });
});
