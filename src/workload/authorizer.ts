// Authorizers: after a peer's SVID has been verified (chain to its trust domain's bundle, or JWT
// signature/audience/expiry), an authorizer decides whether this identity may talk to us. One type
// serves X.509 and JWT peers; the Unified Identity authorizers read the claims from the X.509
// extension or from the `unified_identity` JWT claim, whichever the peer presented.
import { SpiffeId, TrustDomain } from '../spiffe/id.js';
import type { ValidatedJwtSvid } from '../spiffe/jwtsvid.js';
import {
  assuranceAtLeast, LOCATION_ASSURANCE_LEVELS, type LocationAssurance,
  DEVELOPMENT_STAND_IN_VERIFIER, unifiedIdentityFromCertificate, unifiedIdentityFromJwtClaims, UnifiedIdentityError, type UnifiedIdentityClaims,
} from '../spiffe/unified-identity.js';
import type { VerifiedX509Svid } from '../spiffe/x509svid.js';
import { AuthorizationError, WorkloadError } from './errors.js';

/** A verified peer: its SPIFFE ID and what it presented. Build one with x509Peer() or jwtPeer(). */
export interface Peer {
  id: SpiffeId;
  /** The verified X.509 chain, leaf first (X.509 peers). */
  x509Chain?: readonly Buffer[];
  /** The validated JWT-SVID claims (JWT peers). */
  jwtClaims?: Readonly<Record<string, unknown>>;
}

/** Throws AuthorizationError when `peer` is not allowed; returns normally when it is. */
export type Authorizer = (peer: Peer) => void;

export function x509Peer(v: VerifiedX509Svid): Peer {
  return { id: v.id, x509Chain: v.chain };
}

export function jwtPeer(v: ValidatedJwtSvid): Peer {
  return { id: v.id, jwtClaims: v.claims };
}

/** Any verified SPIFFE ID. */
export function authorizeAny(): Authorizer {
  return () => undefined;
}

/** Exactly this SPIFFE ID. */
export function authorizeId(id: SpiffeId | string): Authorizer {
  const want = toId(id);
  return (peer) => {
    if (!peer.id.equals(want)) throw new AuthorizationError(`peer ${peer.id.toString()} is not ${want.toString()}`);
  };
}

/** One of these SPIFFE IDs. */
export function authorizeOneOf(ids: ReadonlyArray<SpiffeId | string>): Authorizer {
  if (!Array.isArray(ids) || ids.length === 0) throw new WorkloadError('invalid-argument', 'authorizeOneOf needs at least one SPIFFE ID');
  const set = new Set(ids.map((i) => toId(i).toString()));
  return (peer) => {
    if (!set.has(peer.id.toString())) throw new AuthorizationError(`peer ${peer.id.toString()} is not one of ${[...set].join(', ')}`);
  };
}

/** Any SPIFFE ID of this trust domain. */
export function authorizeMemberOf(td: TrustDomain | string): Authorizer {
  const want = toTrustDomain(td, 'authorizeMemberOf');
  return (peer) => {
    if (!peer.id.trustDomain.equals(want)) {
      throw new AuthorizationError(`peer ${peer.id.toString()} is not a member of trust domain ${want.name}`);
    }
  };
}

/** Every one of `authorizers` must allow the peer (e.g. a trust domain AND a region). */
export function authorizeAll(...authorizers: Authorizer[]): Authorizer {
  if (authorizers.length === 0) throw new WorkloadError('invalid-argument', 'authorizeAll needs at least one authorizer');
  return (peer) => {
    for (const a of authorizers) a(peer);
  };
}

/** What a Unified Identity authorizer requires; each given list is "one of", all given lists must hold. */
export interface UnifiedIdentityRequirement {
  /**
   * The trust domain whose claims are believed. A federated partner's server can mint an SVID
   * asserting any region, so claims count only from this trust domain. Required unless
   * `anyTrustDomain: true` says, explicitly, that every trust domain in the bundle set is believed.
   */
  trustDomain?: TrustDomain | string;
  anyTrustDomain?: true;
  countries?: string[];
  regions?: string[];
  policies?: string[];
  /**
   * The weakest way of establishing the location accepted (default: any). Claims without an
   * `assurance` (minted before it existed) count as `self-reported`.
   */
  minAssurance?: LocationAssurance;
  /** Witnesses that must all be among the claims' `witnesses`, e.g. ['operator']. */
  requireWitnesses?: string[];
  /**
   * The latency witness (claims `latency`, docs/latency-witness.md), which this then requires:
   * `strength: 'tpm'` counts only TPM-signed probes; `minLandmarks` distinct landmarks of that
   * strength; `maxRadiusKm` bounds the tightest of their radii (the node's area is no larger).
   */
  latency?: { maxRadiusKm?: number; strength?: 'agent-key' | 'tpm'; minLandmarks?: number };
  /**
   * Accept claims whose `verifier` is the development Keylime stand-in (demos and tests only).
   * Default false: such claims were never checked by a Keylime verifier.
   */
  allowDevelopmentStandIn?: boolean;
}

/**
 * The peer must carry Unified Identity claims (X.509 extension or `unified_identity` JWT claim) whose
 * country, region and policy are among the allowed ones. No claims, malformed claims or a missing
 * field: refused.
 */
export function authorizeUnifiedIdentity(req: UnifiedIdentityRequirement): Authorizer {
  if ((req?.trustDomain === undefined) === (req?.anyTrustDomain !== true)) {
    throw new WorkloadError('invalid-argument', 'authorizeUnifiedIdentity needs exactly one of trustDomain (whose claims are believed, e.g. your own) '
      + 'or anyTrustDomain: true (believe every federated trust domain\'s claims)');
  }
  const td = req.trustDomain === undefined ? undefined : toTrustDomain(req.trustDomain, 'authorizeUnifiedIdentity');
  const countries = listOf(req?.countries, 'countries');
  const regions = listOf(req?.regions, 'regions');
  const policies = listOf(req?.policies, 'policies');
  if (countries === undefined && regions === undefined && policies === undefined) {
    throw new WorkloadError('invalid-argument', 'authorizeUnifiedIdentity needs at least one of countries, regions or policies');
  }
  if (req.minAssurance !== undefined && !LOCATION_ASSURANCE_LEVELS.includes(req.minAssurance)) {
    throw new WorkloadError('invalid-argument', `minAssurance must be one of ${LOCATION_ASSURANCE_LEVELS.join(', ')}`);
  }
  const witnesses = listOf(req?.requireWitnesses, 'requireWitnesses');
  const lat = req.latency;
  if (lat !== undefined) {
    if (lat === null || typeof lat !== 'object') throw new WorkloadError('invalid-argument', 'latency must be an object');
    if (lat.maxRadiusKm !== undefined && !(typeof lat.maxRadiusKm === 'number' && lat.maxRadiusKm > 0)) throw new WorkloadError('invalid-argument', 'latency.maxRadiusKm must be a positive number');
    if (lat.strength !== undefined && lat.strength !== 'agent-key' && lat.strength !== 'tpm') throw new WorkloadError('invalid-argument', 'latency.strength must be agent-key or tpm');
    if (lat.minLandmarks !== undefined && !(Number.isInteger(lat.minLandmarks) && lat.minLandmarks >= 1)) throw new WorkloadError('invalid-argument', 'latency.minLandmarks must be a positive integer');
  }
  if (countries !== undefined && ![...countries].every((c) => /^[A-Z]{2}$/.test(c))) {
    throw new WorkloadError('invalid-argument', 'countries must be ISO 3166-1 alpha-2 codes in upper case, e.g. "DE"');
  }
  return (peer) => {
    if (td !== undefined && !peer.id.trustDomain.equals(td)) {
      throw new AuthorizationError(`peer ${peer.id.toString()}'s Unified Identity claims come from trust domain ${peer.id.trustDomain.name}; only ${td.name}'s are believed`);
    }
    const claims = unifiedIdentityOf(peer);
    if (claims === undefined) throw new AuthorizationError(`peer ${peer.id.toString()} carries no Unified Identity claims`);
    if (claims['verifier'] === DEVELOPMENT_STAND_IN_VERIFIER && req.allowDevelopmentStandIn !== true) {
      throw new AuthorizationError(`peer ${peer.id.toString()}'s claims were checked only by terroir's development Keylime stand-in, not by Keylime `
        + '(pass allowDevelopmentStandIn: true to accept them in a demo)');
    }
    check(peer, claims, 'country', countries);
    check(peer, claims, 'region', regions);
    check(peer, claims, 'policy', policies);
    if (req.minAssurance !== undefined) {
      const have = claims.assurance ?? 'self-reported';
      if (!assuranceAtLeast(have, req.minAssurance)) {
        throw new AuthorizationError(`peer ${peer.id.toString()}'s location is ${have}; ${req.minAssurance} or better is required`);
      }
    }
    for (const w of [...(witnesses ?? []), ...(lat !== undefined ? ['latency'] : [])]) {
      if (!(claims.witnesses ?? []).includes(w)) {
        throw new AuthorizationError(`peer ${peer.id.toString()}'s location was not witnessed by ${w} (witnesses: ${(claims.witnesses ?? []).join(', ') || 'none named'})`);
      }
    }
    if (lat !== undefined) checkLatency(peer, claims, lat);
  };
}

/** The peer's Unified Identity claims, or undefined when it has none; malformed claims throw AuthorizationError. */
export function unifiedIdentityOf(peer: Peer): UnifiedIdentityClaims | undefined {
  try {
    if (peer.x509Chain !== undefined) {
      const leaf = peer.x509Chain[0];
      return leaf === undefined ? undefined : unifiedIdentityFromCertificate(leaf);
    }
    if (peer.jwtClaims !== undefined) return unifiedIdentityFromJwtClaims(peer.jwtClaims as Record<string, unknown>);
    return undefined;
  } catch (e) {
    if (e instanceof UnifiedIdentityError) {
      throw new AuthorizationError(`peer ${peer.id.toString()} has malformed Unified Identity claims (${e.code}): ${e.message}`, { cause: e });
    }
    throw e;
  }
}

function check(peer: Peer, claims: UnifiedIdentityClaims, field: 'country' | 'region' | 'policy', allowed: Set<string> | undefined): void {
  if (allowed === undefined) return;
  const v = claims[field];
  if (typeof v !== 'string') throw new AuthorizationError(`peer ${peer.id.toString()} has no Unified Identity "${field}" claim`);
  if (!allowed.has(v)) {
    throw new AuthorizationError(`peer ${peer.id.toString()} has ${field} "${v}", not one of ${[...allowed].join(', ')}`);
  }
}

function listOf(v: string[] | undefined, name: string): Set<string> | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'string' && x !== '')) {
    throw new WorkloadError('invalid-argument', `${name} must be a non-empty list of non-empty strings`);
  }
  return new Set(v);
}

function toTrustDomain(td: TrustDomain | string, who: string): TrustDomain {
  if (td instanceof TrustDomain) return td;
  try {
    return TrustDomain.parse(td);
  } catch (e) {
    throw new WorkloadError('invalid-argument', `${who}: ${(e as Error).message}`, { cause: e });
  }
}

function toId(id: SpiffeId | string): SpiffeId {
  if (id instanceof SpiffeId) return id;
  try {
    return SpiffeId.parse(id);
  } catch (e) {
    throw new WorkloadError('invalid-argument', `not a SPIFFE ID: ${(e as Error).message}`, { cause: e });
  }
}

/** The claims' latency witness meets `lat` (strength, landmarks, tightest radius), or throws. */
function checkLatency(peer: Peer, claims: UnifiedIdentityClaims, lat: NonNullable<UnifiedIdentityRequirement['latency']>): void {
  const who = peer.id.toString();
  const list = Array.isArray(claims['latency']) ? claims['latency'] as { landmark?: unknown; radiusKm?: unknown; strength?: unknown }[] : [];
  const usable = list.filter((l) => typeof l.landmark === 'string' && typeof l.radiusKm === 'number' && (lat.strength !== 'tpm' || l.strength === 'tpm'));
  const landmarks = new Set(usable.map((l) => l.landmark));
  if (landmarks.size < (lat.minLandmarks ?? 1)) {
    throw new AuthorizationError(`peer ${who}'s latency witness rests on ${landmarks.size} landmark(s)${lat.strength === 'tpm' ? ' with TPM-signed probes' : ''}; ${lat.minLandmarks ?? 1} required`);
  }
  if (lat.maxRadiusKm !== undefined) {
    const tightest = Math.min(...usable.map((l) => l.radiusKm as number));
    if (!(tightest <= lat.maxRadiusKm)) throw new AuthorizationError(`peer ${who}'s latency witness bounds it to ${tightest} km; at most ${lat.maxRadiusKm} km required`);
  }
}
