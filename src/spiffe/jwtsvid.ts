// JWT-SVIDs: minting with `jose` (kid always set, typ JWT) and validating per the JWT-SVID standard.
// Validation is done here rather than through jose's generic verifier, because the SPIFFE rules are
// stricter (alg allow-list without HMAC/none/EdDSA, a header allow-list, the key chosen by kid from the
// bundle of the subject's trust domain) and because checking the structure first and then calling
// node:crypto directly keeps validation close to the cost of the signature check itself.
import crypto, { type KeyObject } from 'node:crypto';
import { SignJWT } from 'jose';
import type { JwtBundleSource } from './bundle.js';
import { JwtSvidError, SpiffeIdError } from './errors.js';
import { SpiffeId } from './id.js';

export { JwtSvidError } from './errors.js';

export type JwtSvidMintAlgorithm = 'ES256' | 'ES384' | 'RS256' | 'PS256';

export interface JwtAuthorityKey {
  kid: string;
  privateKey: KeyObject;
  alg: JwtSvidMintAlgorithm;
}

export interface MintJwtSvidOptions {
  id: SpiffeId;
  audience: string[];
  ttlSeconds: number;
  key: JwtAuthorityKey;
  now?: Date;
  /** Additional claims (e.g. `unified_identity`); may not override sub, aud, exp or iat. */
  extraClaims?: Record<string, unknown>;
}

export interface ValidatedJwtSvid {
  id: SpiffeId;
  audience: string[];
  expiry: Date;
  claims: Record<string, unknown>;
}

/** Largest token accepted by the validator. */
export const MAX_JWT_BYTES = 16 * 1024;

interface AlgSpec {
  hash: string;
  keyType: 'ec' | 'rsa';
  curve?: string;
  pss?: boolean;
  /** ECDSA raw (r||s) signature length. */
  sigLength?: number;
}

/** Algorithms accepted on validation (the JWT-SVID standard's RS/ES/PS families). */
const ALGORITHMS: Record<string, AlgSpec> = {
  ES256: { hash: 'sha256', keyType: 'ec', curve: 'prime256v1', sigLength: 64 },
  ES384: { hash: 'sha384', keyType: 'ec', curve: 'secp384r1', sigLength: 96 },
  ES512: { hash: 'sha512', keyType: 'ec', curve: 'secp521r1', sigLength: 132 },
  RS256: { hash: 'sha256', keyType: 'rsa' },
  RS384: { hash: 'sha384', keyType: 'rsa' },
  RS512: { hash: 'sha512', keyType: 'rsa' },
  PS256: { hash: 'sha256', keyType: 'rsa', pss: true },
  PS384: { hash: 'sha384', keyType: 'rsa', pss: true },
  PS512: { hash: 'sha512', keyType: 'rsa', pss: true },
};
const MINT_ALGORITHMS = new Set(['ES256', 'ES384', 'RS256', 'PS256']);
const ALLOWED_HEADERS = new Set(['alg', 'kid', 'typ']);
const RESERVED_CLAIMS = new Set(['sub', 'aud', 'exp', 'iat']);
const B64URL = /^[A-Za-z0-9_-]+$/;

const keyShapes = new WeakMap<KeyObject, { type: string; curve?: string; bits?: number }>();

function keyFits(alg: AlgSpec, key: KeyObject): boolean {
  let shape = keyShapes.get(key);
  if (shape === undefined) {
    const d = key.asymmetricKeyDetails ?? {};
    shape = { type: String(key.asymmetricKeyType), ...(d.namedCurve ? { curve: d.namedCurve } : {}), ...(d.modulusLength ? { bits: d.modulusLength } : {}) };
    keyShapes.set(key, shape);
  }
  if (shape.type !== alg.keyType) return false;
  if (alg.keyType === 'ec') return shape.curve === alg.curve;
  return (shape.bits ?? 0) >= 2048;
}

/** Mints a JWT-SVID: header {alg, kid, typ: "JWT"}, claims sub, aud, iat, exp (+ extraClaims). */
export async function mintJwtSvid(opts: MintJwtSvidOptions): Promise<string> {
  if (!(opts?.id instanceof SpiffeId)) throw new JwtSvidError('invalid-argument', 'id must be a SpiffeId');
  const aud = opts.audience;
  if (!Array.isArray(aud) || aud.length === 0 || !aud.every((a) => typeof a === 'string' && a !== '')) {
    throw new JwtSvidError('invalid-argument', 'audience must be a non-empty array of non-empty strings');
  }
  if (typeof opts.ttlSeconds !== 'number' || !Number.isFinite(opts.ttlSeconds) || opts.ttlSeconds < 1) {
    throw new JwtSvidError('invalid-argument', `ttlSeconds must be at least 1, got ${String(opts.ttlSeconds)}`);
  }
  const { kid, privateKey, alg } = opts.key ?? ({} as JwtAuthorityKey);
  if (typeof kid !== 'string' || kid === '') throw new JwtSvidError('invalid-argument', 'the signing key needs a non-empty kid');
  if (!MINT_ALGORITHMS.has(alg)) throw new JwtSvidError('invalid-argument', `alg must be one of ${[...MINT_ALGORITHMS].join(', ')}`);
  const spec = ALGORITHMS[alg] as AlgSpec;
  if (!(privateKey instanceof crypto.KeyObject) || privateKey.type !== 'private' || !keyFits(spec, privateKey)) {
    throw new JwtSvidError('unsupported-key', `the private key does not fit ${alg} (need ${spec.keyType === 'ec' ? `EC ${spec.curve}` : 'RSA >= 2048'})`);
  }
  const extra = opts.extraClaims ?? {};
  if (typeof extra !== 'object' || extra === null || Array.isArray(extra)) throw new JwtSvidError('invalid-argument', 'extraClaims must be an object');
  for (const c of Object.keys(extra)) {
    if (RESERVED_CLAIMS.has(c)) throw new JwtSvidError('invalid-argument', `extraClaims may not set "${c}"`);
  }
  const iat = Math.floor((opts.now ?? new Date()).getTime() / 1000);
  return new SignJWT({ ...extra })
    .setProtectedHeader({ alg, kid, typ: 'JWT' })
    .setSubject(opts.id.toString())
    .setAudience(aud.length === 1 ? (aud[0] as string) : aud)
    .setIssuedAt(iat)
    .setExpirationTime(iat + Math.floor(opts.ttlSeconds))
    .sign(privateKey);
}

function decodeJsonPart(part: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
  } catch {
    throw new JwtSvidError('malformed-token', `JWT ${what} is not base64url-encoded JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new JwtSvidError('malformed-token', `JWT ${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/**
 * Validates a JWT-SVID for `audience`: structure and header allow-list, signature with the key named
 * by `kid` in the JWT bundle of the subject's trust domain, then aud, exp and nbf.
 * Throws JwtSvidError with a `code` for every failure.
 */
export async function validateJwtSvid(token: string, bundles: JwtBundleSource, audience: string, opts: { now?: Date } = {}): Promise<ValidatedJwtSvid> {
  return validateJwtSvidSync(token, bundles, audience, opts);
}

/** The synchronous core of validateJwtSvid (there is no I/O in validation). */
export function validateJwtSvidSync(token: string, bundles: JwtBundleSource, audience: string, opts: { now?: Date } = {}): ValidatedJwtSvid {
  if (typeof audience !== 'string' || audience === '') throw new JwtSvidError('invalid-argument', 'the expected audience must be a non-empty string');
  if (typeof token !== 'string') throw new JwtSvidError('malformed-token', 'token must be a string');
  if (token.length > MAX_JWT_BYTES) throw new JwtSvidError('token-too-large', `token is longer than ${MAX_JWT_BYTES} bytes`);
  const parts = token.split('.');
  if (parts.length !== 3) {
    throw new JwtSvidError('malformed-token', `token has ${parts.length} part(s); a JWT-SVID is a compact JWS: header.payload.signature, base64url, separated by dots`);
  }
  const [h, p, s] = parts as [string, string, string];
  if (!B64URL.test(h) || !B64URL.test(p)) throw new JwtSvidError('malformed-token', 'token header and payload must be non-empty base64url');
  const header = decodeJsonPart(h, 'header');
  // Said before the signature's shape: an unsigned token ("alg": "none", empty signature) is refused for what it is.
  if (header['alg'] === 'none') throw new JwtSvidError('unsupported-algorithm', 'JWT alg "none" is not allowed: an unsigned token proves nothing (RS/ES/PS 256/384/512 only)');
  if (!B64URL.test(s)) throw new JwtSvidError('malformed-token', 'token signature must be non-empty base64url');
  for (const name of Object.keys(header)) {
    if (!ALLOWED_HEADERS.has(name)) throw new JwtSvidError('unexpected-header', `JWT header "${name}" is not allowed (only alg, kid, typ)`);
  }
  const algName = header['alg'];
  const alg = typeof algName === 'string' && Object.hasOwn(ALGORITHMS, algName) ? ALGORITHMS[algName] : undefined;
  if (alg === undefined) {
    throw new JwtSvidError('unsupported-algorithm', `JWT alg ${JSON.stringify(algName)} is not allowed (RS/ES/PS 256/384/512 only)`);
  }
  const kid = header['kid'];
  if (typeof kid !== 'string' || kid === '') throw new JwtSvidError('missing-kid', 'JWT header has no kid');
  const typ = header['typ'];
  if (typ !== undefined && typ !== 'JWT' && typ !== 'JOSE') throw new JwtSvidError('bad-typ', `JWT typ ${JSON.stringify(typ)} is not "JWT" or "JOSE"`);

  const claims = decodeJsonPart(p, 'payload');
  const sub = claims['sub'];
  if (typeof sub !== 'string') throw new JwtSvidError('invalid-subject', 'JWT has no sub claim');
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(sub);
  } catch (e) {
    if (e instanceof SpiffeIdError) throw new JwtSvidError('invalid-subject', `JWT sub is not a SPIFFE ID: ${e.message}`, { cause: e });
    throw e;
  }
  const bundle = bundles.getJwtBundleForTrustDomain(id.trustDomain);
  if (bundle === undefined) throw new JwtSvidError('no-bundle', `no JWT bundle for trust domain "${id.trustDomain.name}"`);
  const key = bundle.getJwtAuthority(kid);
  if (key === undefined) throw new JwtSvidError('unknown-kid', `no JWT authority with kid ${JSON.stringify(kid)} in the bundle of "${id.trustDomain.name}"`);
  if (!keyFits(alg, key)) throw new JwtSvidError('key-algorithm-mismatch', `JWT authority ${JSON.stringify(kid)} cannot be used with ${algName as string}`);
  const sig = Buffer.from(s, 'base64url');
  if (alg.sigLength !== undefined && sig.length !== alg.sigLength) throw new JwtSvidError('bad-signature', 'JWT signature has the wrong length');
  const signingInput = Buffer.from(token.slice(0, h.length + 1 + p.length), 'latin1');
  const ok = crypto.verify(alg.hash, signingInput, alg.keyType === 'ec'
    ? { key, dsaEncoding: 'ieee-p1363' }
    : alg.pss ? { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: crypto.constants.RSA_PSS_SALTLEN_DIGEST } : { key }, sig);
  if (!ok) throw new JwtSvidError('bad-signature', 'JWT signature does not verify');

  const aud = claims['aud'];
  const auds = typeof aud === 'string' ? [aud] : Array.isArray(aud) && aud.every((a) => typeof a === 'string') ? (aud as string[]) : undefined;
  if (auds === undefined || auds.length === 0) throw new JwtSvidError('missing-audience', 'JWT has no aud claim');
  if (!auds.includes(audience)) throw new JwtSvidError('audience-mismatch', `JWT audience ${JSON.stringify(auds)} does not include ${JSON.stringify(audience)}`);
  const exp = claims['exp'];
  if (typeof exp !== 'number' || !Number.isFinite(exp)) throw new JwtSvidError('missing-expiry', 'JWT has no numeric exp claim');
  const nowMs = (opts.now ?? new Date()).getTime();
  if (nowMs >= exp * 1000) throw new JwtSvidError('expired', `JWT-SVID expired at ${new Date(exp * 1000).toISOString()}`);
  const nbf = claims['nbf'];
  if (nbf !== undefined && (typeof nbf !== 'number' || !Number.isFinite(nbf))) throw new JwtSvidError('bad-claim', 'JWT nbf is not a number');
  if (typeof nbf === 'number' && nowMs < nbf * 1000) throw new JwtSvidError('not-yet-valid', `JWT-SVID is not valid before ${new Date(nbf * 1000).toISOString()}`);
  const iat = claims['iat'];
  if (iat !== undefined && (typeof iat !== 'number' || !Number.isFinite(iat))) throw new JwtSvidError('bad-claim', 'JWT iat is not a number');
  return { id, audience: auds, expiry: new Date(exp * 1000), claims };
}
