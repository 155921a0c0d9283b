// Unified Identity claims: the coarse facts the server vouches for about a node (country, region,
// location policy, sensor kinds, times, PCR digest, verifier), carried in X.509-SVIDs as a
// non-critical extension whose extnValue is a DER UTF8String holding RFC 8785 canonical JSON, and in
// JWT-SVIDs as the `unified_identity` claim. One codec, used by the server to mint and by relying
// services to read, so both ends agree byte for byte. Decoding is strict: a claims document that is
// oversized, not canonical, or has a known field of the wrong shape is an error, never "no claims".
import canonicalize from 'canonicalize';
import { MAX_CERTIFICATE_BYTES } from './certificate.js';
import { children, content, DerError, oidToString, readTlv, readWhole, TAG, tlv, type Tlv } from './der.js';
import { SpiffeError } from './errors.js';
import type { ExtraExtension } from './x509svid.js';

/** The X.509 extension OID of the Unified Identity claims (a UUID-derived 2.25 arc). */
export const UNIFIED_IDENTITY_OID = '2.25.250341728606082657925786220697128205103';
/** The JWT-SVID claim name. */
export const UNIFIED_IDENTITY_JWT_CLAIM = 'unified_identity';
/** Largest canonical claims document accepted or produced, in bytes. Real claims are a few hundred. */
export const MAX_UNIFIED_IDENTITY_BYTES = 4096;
/** The `verifier` claim of evidence checked only by terroir's development Keylime stand-in, never by Keylime. */
export const DEVELOPMENT_STAND_IN_VERIFIER = 'keylime-development-stand-in';
const MAX_DEPTH = 4;

export type UnifiedIdentityErrorCode = 'invalid-claims' | 'too-large' | 'malformed-extension' | 'not-canonical' | 'duplicate-extension';

/**
 * How the location in the claims was established, weakest first (docs/unified-identity.md "Assurance"):
 * `self-reported` — the node's own sensors, bound to its attested TPM quote: it proves which node said
 * it and that its software was intact, not where its antenna was; `operator-witnessed` — the mobile
 * operator placed the node's SIM in a disk that lies inside the area and the country;
 * `latency-bounded` — landmarks bounded the node's distance by the speed of light.
 */
export type LocationAssurance = 'self-reported' | 'operator-witnessed' | 'latency-bounded';
export const LOCATION_ASSURANCE_LEVELS: readonly LocationAssurance[] = ['self-reported', 'operator-witnessed', 'latency-bounded'];

/** Whether `have` is at least `want` (LOCATION_ASSURANCE_LEVELS' order). */
export function assuranceAtLeast(have: LocationAssurance, want: LocationAssurance): boolean {
  return LOCATION_ASSURANCE_LEVELS.indexOf(have) >= LOCATION_ASSURANCE_LEVELS.indexOf(want);
}

/** One landmark's bound in the claims' `latency` list. */
export interface UnifiedIdentityLatencyWitness {
  landmark: string;
  radiusKm: number;
  strength: string;
}
/** The `latency` claim lists at most this many landmarks. */
export const MAX_LATENCY_WITNESSES = 16;

/** A Unified Identity claims document or its encoding is malformed. */
export class UnifiedIdentityError extends SpiffeError<UnifiedIdentityErrorCode> {}

/**
 * The claims document. The named fields are type-checked; any further member must be plain JSON
 * (strings, finite numbers, booleans, null, arrays, objects), nested at most four levels.
 */
export interface UnifiedIdentityClaims {
  /** ISO 3166-1 alpha-2 country code, upper case. */
  country?: string;
  /** Coarse region, e.g. "EU". */
  region?: string;
  /** Id of the sovereign-location policy the node satisfied. */
  policy?: string;
  sensorKinds?: string[];
  /** How the location was established; absent in claims minted before it existed (read as self-reported). */
  assurance?: LocationAssurance;
  /** The witnesses that placed the node inside the area: `node:<kind>`, `node:<kind>-remote`, `operator`, `latency`. */
  witnesses?: string[];
  /**
   * The landmark disks behind the `latency` witness: the landmark's SPIFFE ID, the bound on the node's
   * distance in km (rounded up to 0.1 km) and what signed the replies (`agent-key` or `tpm`).
   */
  latency?: UnifiedIdentityLatencyWitness[];
  [member: string]: unknown;
}

/** Checks a claims document and returns its canonical JSON bytes. */
export function canonicalUnifiedIdentity(claims: UnifiedIdentityClaims): Buffer {
  checkClaims(claims);
  let text: string | undefined;
  try {
    text = canonicalize(claims);
  } catch (e) {
    throw new UnifiedIdentityError('invalid-claims', `claims cannot be canonicalised: ${(e as Error).message}`, { cause: e });
  }
  if (text === undefined) throw new UnifiedIdentityError('invalid-claims', 'claims cannot be canonicalised');
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length > MAX_UNIFIED_IDENTITY_BYTES) {
    throw new UnifiedIdentityError('too-large', `claims are ${bytes.length} bytes canonical, more than ${MAX_UNIFIED_IDENTITY_BYTES}; keep them coarse`);
  }
  return bytes;
}

/** The extension to pass to mintX509Svid({ extraExtensions }): non-critical, DER UTF8String of canonical JSON. */
export function unifiedIdentityExtension(claims: UnifiedIdentityClaims): ExtraExtension {
  return { oid: UNIFIED_IDENTITY_OID, critical: false, value: tlv(TAG.UTF8_STRING, canonicalUnifiedIdentity(claims)) };
}

/** The claims value to put under `unified_identity` in a JWT-SVID (a checked deep copy). */
export function unifiedIdentityJwtClaim(claims: UnifiedIdentityClaims): UnifiedIdentityClaims {
  return JSON.parse(canonicalUnifiedIdentity(claims).toString('utf8')) as UnifiedIdentityClaims;
}

/** Decodes an extnValue (the OCTET STRING contents): exactly one DER UTF8String of canonical JSON. */
export function decodeUnifiedIdentityExtension(value: Buffer): UnifiedIdentityClaims {
  if (!Buffer.isBuffer(value)) throw new UnifiedIdentityError('malformed-extension', 'extension value must be a Buffer');
  if (value.length > MAX_UNIFIED_IDENTITY_BYTES + 8) {
    throw new UnifiedIdentityError('too-large', `Unified Identity extension is ${value.length} bytes, more than ${MAX_UNIFIED_IDENTITY_BYTES} of claims allow`);
  }
  let content: Buffer;
  try {
    const t = readTlv(value, 0);
    if (t.tag !== TAG.UTF8_STRING) throw new DerError(`expected a UTF8String (tag 0x0c), found tag 0x${t.tag.toString(16)}`);
    if (t.end !== value.length) throw new DerError('trailing bytes after the UTF8String');
    content = value.subarray(t.contentStart, t.end);
  } catch (e) {
    throw new UnifiedIdentityError('malformed-extension', `Unified Identity extension is not a DER UTF8String: ${(e as Error).message}`, { cause: e });
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(content);
  } catch (e) {
    throw new UnifiedIdentityError('malformed-extension', 'Unified Identity extension is not valid UTF-8', { cause: e });
  }
  const claims = parseJson(text);
  // Canonical form is required so that the bytes the server signed have one meaning only.
  if (!canonicalUnifiedIdentity(claims).equals(content)) {
    throw new UnifiedIdentityError('not-canonical', 'Unified Identity claims are not in RFC 8785 canonical form');
  }
  return claims;
}

/**
 * The claims of an X.509 certificate (DER), or undefined when it has no Unified Identity extension.
 * A malformed or repeated extension throws: a certificate that tries to say something unreadable
 * must not pass as one that says nothing.
 */
export function unifiedIdentityFromCertificate(der: Buffer): UnifiedIdentityClaims | undefined {
  const values = extensionValues(der, UNIFIED_IDENTITY_OID);
  if (values.length === 0) return undefined;
  if (values.length > 1) throw new UnifiedIdentityError('duplicate-extension', 'certificate carries the Unified Identity extension more than once');
  return decodeUnifiedIdentityExtension(values[0] as Buffer);
}

/**
 * The extnValue contents of every extension `oid` in a certificate. A direct DER walk to the
 * extensions: this runs on every TLS handshake of a consumer, and a full certificate decode costs
 * several times more than the rest of the claims check (the chain itself is validated elsewhere).
 */
export function extensionValues(der: Buffer, oid: string): Buffer[] {
  if (!Buffer.isBuffer(der) || der.length > MAX_CERTIFICATE_BYTES) {
    throw new UnifiedIdentityError('malformed-extension', `certificate must be DER bytes of at most ${MAX_CERTIFICATE_BYTES} bytes`);
  }
  try {
    const cert = readWhole(der, TAG.SEQUENCE, 'Certificate');
    const tbs = children(der, cert)[0];
    if (tbs === undefined || tbs.tag !== TAG.SEQUENCE) throw new DerError('Certificate has no TBSCertificate');
    const wrapper = children(der, tbs).find((t) => t.tag === 0xa3); // extensions [3] EXPLICIT
    if (wrapper === undefined) return [];
    const list = children(der, wrapper);
    if (list.length !== 1 || (list[0] as Tlv).tag !== TAG.SEQUENCE) throw new DerError('malformed extensions field');
    const out: Buffer[] = [];
    for (const ext of children(der, list[0] as Tlv)) {
      const parts = children(der, ext);
      const id = parts[0];
      const value = parts[parts.length - 1];
      if (ext.tag !== TAG.SEQUENCE || id?.tag !== TAG.OID || value?.tag !== TAG.OCTET_STRING || parts.length > 3) {
        throw new DerError('malformed Extension');
      }
      if (oidToString(content(der, id)) === oid) out.push(content(der, value));
    }
    return out;
  } catch (e) {
    if (e instanceof UnifiedIdentityError) throw e;
    throw new UnifiedIdentityError('malformed-extension', `cannot read the certificate's extensions: ${(e as Error).message}`, { cause: e });
  }
}

/** The `unified_identity` claim of validated JWT-SVID claims, checked; undefined when absent. */
export function unifiedIdentityFromJwtClaims(claims: Record<string, unknown>): UnifiedIdentityClaims | undefined {
  if (claims === null || typeof claims !== 'object') throw new UnifiedIdentityError('invalid-claims', 'JWT claims must be an object');
  if (!Object.prototype.hasOwnProperty.call(claims, UNIFIED_IDENTITY_JWT_CLAIM)) return undefined;
  const v = claims[UNIFIED_IDENTITY_JWT_CLAIM];
  canonicalUnifiedIdentity(v as UnifiedIdentityClaims);
  return v as UnifiedIdentityClaims;
}

function parseJson(text: string): UnifiedIdentityClaims {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new UnifiedIdentityError('invalid-claims', `Unified Identity claims are not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  checkClaims(v);
  return v as UnifiedIdentityClaims;
}

function checkClaims(v: unknown): asserts v is UnifiedIdentityClaims {
  if (!isPlainObject(v)) throw new UnifiedIdentityError('invalid-claims', 'Unified Identity claims must be a JSON object');
  const c = v as Record<string, unknown>;
  if ('country' in c && (typeof c['country'] !== 'string' || !/^[A-Z]{2}$/.test(c['country']))) {
    throw new UnifiedIdentityError('invalid-claims', 'claim "country" must be an ISO 3166-1 alpha-2 code in upper case, e.g. "DE"');
  }
  for (const k of ['region', 'policy'] as const) {
    if (k in c && (typeof c[k] !== 'string' || c[k] === '')) throw new UnifiedIdentityError('invalid-claims', `claim "${k}" must be a non-empty string`);
  }
  for (const k of ['sensorKinds', 'witnesses'] as const) {
    if (!(k in c)) continue;
    const s = c[k];
    if (!Array.isArray(s) || !s.every((x) => typeof x === 'string')) {
      throw new UnifiedIdentityError('invalid-claims', `claim "${k}" must be an array of strings`);
    }
  }
  if ('assurance' in c && !LOCATION_ASSURANCE_LEVELS.includes(c['assurance'] as LocationAssurance)) {
    throw new UnifiedIdentityError('invalid-claims', `claim "assurance" must be one of ${LOCATION_ASSURANCE_LEVELS.join(', ')}`);
  }
  if ('latency' in c) {
    const l = c['latency'];
    const entryOk = (e: unknown): boolean => isPlainObject(e)
      && typeof e['landmark'] === 'string' && e['landmark'] !== ''
      && typeof e['radiusKm'] === 'number' && Number.isFinite(e['radiusKm']) && e['radiusKm'] >= 0
      && typeof e['strength'] === 'string' && e['strength'] !== '';
    if (!Array.isArray(l) || l.length > MAX_LATENCY_WITNESSES || !l.every(entryOk)) {
      throw new UnifiedIdentityError('invalid-claims', `claim "latency" must be an array of at most ${MAX_LATENCY_WITNESSES} { landmark: string, radiusKm: number ≥ 0, strength: string }`);
    }
  }
  checkJson(c, '$', 0);
}

function checkJson(v: unknown, where: string, depth: number): void {
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new UnifiedIdentityError('invalid-claims', `claims ${where}: numbers must be finite`);
    return;
  }
  if (depth >= MAX_DEPTH) throw new UnifiedIdentityError('invalid-claims', `claims ${where}: nested deeper than ${MAX_DEPTH} levels`);
  if (Array.isArray(v)) {
    v.forEach((x, i) => checkJson(x, `${where}[${i}]`, depth + 1));
    return;
  }
  if (!isPlainObject(v)) throw new UnifiedIdentityError('invalid-claims', `claims ${where}: not a JSON value`);
  for (const [k, x] of Object.entries(v)) checkJson(x, `${where}.${k}`, depth + 1);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return false;
  const p = Object.getPrototypeOf(v) as unknown;
  return p === Object.prototype || p === null;
}
