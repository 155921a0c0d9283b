// Trust bundles: the X.509 and JWT authorities of one trust domain, and their SPIFFE bundle JSON form
// (an RFC 7517 JWK Set whose keys carry `use` = "x509-svid" or "jwt-svid", with `spiffe_sequence` and
// `spiffe_refresh_hint`). Bundles of different trust domains are never merged: a BundleSet keys them
// by trust domain and validators only ever ask for the bundle of the identity's own domain.
import crypto, { type JsonWebKey, type KeyObject } from 'node:crypto';
import { parseCertificate } from './certificate.js';
import { BundleError, X509SvidError } from './errors.js';
import { TrustDomain } from './id.js';
import { derToPem } from './pem.js';

export { BundleError } from './errors.js';

/** Largest bundle document parsed, against memory exhaustion by a hostile bundle endpoint. */
export const MAX_BUNDLE_JSON_BYTES = 1024 * 1024;
/** Most JWK entries accepted in one bundle. */
export const MAX_BUNDLE_KEYS = 1000;
const MAX_SEQUENCE = (1n << 64n) - 1n;

export interface X509BundleSource {
  getX509BundleForTrustDomain(td: TrustDomain): Bundle | undefined;
}

export interface JwtBundleSource {
  getJwtBundleForTrustDomain(td: TrustDomain): Bundle | undefined;
}

const JWT_KEY_TYPES = new Set(['ec', 'rsa']);

export class Bundle {
  readonly trustDomain: TrustDomain;
  /** Monotonic version of the bundle (`spiffe_sequence`), at least 64 bits. */
  sequenceNumber = 0n;
  /** How often consumers should poll for a new bundle (`spiffe_refresh_hint`), in seconds. */
  refreshHintSeconds?: number;
  private x509: Buffer[] = [];
  private readonly jwt = new Map<string, KeyObject>();

  constructor(td: TrustDomain) {
    if (!(td instanceof TrustDomain)) throw new BundleError('invalid-argument', 'Bundle needs a TrustDomain');
    this.trustDomain = td;
  }

  /** The X.509 authorities (CA certificates, DER), in insertion order. */
  x509Authorities(): Buffer[] {
    return [...this.x509];
  }

  /** Adds a CA certificate (DER); a certificate already present is not added twice. */
  addX509Authority(der: Buffer): void {
    try {
      parseCertificate(der);
    } catch (e) {
      throw new BundleError('bad-x509-authority', `X.509 authority is not a valid certificate: ${(e as Error).message}`, { cause: e });
    }
    if (!this.x509.some((c) => c.equals(der))) this.x509.push(Buffer.from(der));
  }

  removeX509Authority(der: Buffer): void {
    this.x509 = this.x509.filter((c) => !c.equals(der));
  }

  /** JWT authorities by key id (a copy; use getJwtAuthority on hot paths). */
  jwtAuthorities(): Map<string, KeyObject> {
    return new Map(this.jwt);
  }

  getJwtAuthority(kid: string): KeyObject | undefined {
    return this.jwt.get(kid);
  }

  /** Adds or replaces the JWT authority `kid` (an EC or RSA public key). */
  addJwtAuthority(kid: string, key: KeyObject): void {
    if (typeof kid !== 'string' || kid === '') throw new BundleError('invalid-argument', 'JWT authority needs a non-empty key id (kid)');
    if (!(key instanceof crypto.KeyObject) || key.type !== 'public') {
      throw new BundleError('invalid-argument', `JWT authority ${JSON.stringify(kid)} must be a public KeyObject`);
    }
    if (!JWT_KEY_TYPES.has(String(key.asymmetricKeyType))) {
      throw new BundleError('invalid-argument', `JWT authority ${JSON.stringify(kid)} has key type ${String(key.asymmetricKeyType)}; JWT-SVIDs use EC or RSA keys`);
    }
    this.jwt.set(kid, key);
  }

  removeJwtAuthority(kid: string): void {
    this.jwt.delete(kid);
  }

  /** The X.509 authorities as concatenated PEM (e.g. for `openssl verify -CAfile` or node:tls `ca`). */
  x509AuthoritiesPem(): string {
    return this.x509.map((d) => derToPem(d)).join('');
  }

  clone(): Bundle {
    const b = new Bundle(this.trustDomain);
    b.sequenceNumber = this.sequenceNumber;
    if (this.refreshHintSeconds !== undefined) b.refreshHintSeconds = this.refreshHintSeconds;
    b.x509 = this.x509.map((d) => Buffer.from(d));
    for (const [kid, key] of this.jwt) b.jwt.set(kid, key);
    return b;
  }

  equals(other: Bundle): boolean {
    if (!(other instanceof Bundle) || !other.trustDomain.equals(this.trustDomain)) return false;
    if (other.sequenceNumber !== this.sequenceNumber || other.refreshHintSeconds !== this.refreshHintSeconds) return false;
    if (other.x509.length !== this.x509.length || !this.x509.every((d) => other.x509.some((o) => o.equals(d)))) return false;
    if (other.jwt.size !== this.jwt.size) return false;
    for (const [kid, key] of this.jwt) {
      const o = other.jwt.get(kid);
      if (o === undefined || !o.equals(key)) return false;
    }
    return true;
  }

  /** The SPIFFE bundle JSON document. */
  toJSON(): string {
    const keys: JsonWebKey[] = [];
    for (const der of this.x509) {
      const spki = parseCertificate(der).spki;
      const jwk = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' }).export({ format: 'jwk' });
      keys.push({ use: 'x509-svid', ...jwk, x5c: [der.toString('base64')] });
    }
    for (const [kid, key] of this.jwt) {
      keys.push({ use: 'jwt-svid', kid, ...key.export({ format: 'jwk' }) });
    }
    // spiffe_sequence is written from the bigint so values beyond 2^53 survive.
    const head = JSON.stringify({ keys, ...(this.refreshHintSeconds !== undefined ? { spiffe_refresh_hint: this.refreshHintSeconds } : {}) });
    return `${head.slice(0, -1)},"spiffe_sequence":${this.sequenceNumber.toString()}}`;
  }

  /** Parses a SPIFFE bundle JSON document for `td`. Anything malformed is a BundleError. */
  static parse(td: TrustDomain, json: string | Buffer): Bundle {
    const text = decodeText(json);
    let doc: unknown;
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new BundleError('malformed-json', `bundle is not valid JSON: ${(e as Error).message}`, { cause: e });
    }
    if (!isObject(doc)) throw new BundleError('malformed-bundle', 'bundle must be a JSON object (a JWK Set)');
    const keys = doc['keys'];
    if (!Array.isArray(keys)) throw new BundleError('malformed-bundle', 'bundle has no "keys" array');
    if (keys.length > MAX_BUNDLE_KEYS) throw new BundleError('malformed-bundle', `bundle has ${keys.length} keys, more than ${MAX_BUNDLE_KEYS}`);
    const bundle = new Bundle(td);
    if ('spiffe_sequence' in doc) bundle.sequenceNumber = parseSequence(doc['spiffe_sequence'], text);
    if ('spiffe_refresh_hint' in doc) {
      const hint = doc['spiffe_refresh_hint'];
      if (typeof hint !== 'number' || !Number.isSafeInteger(hint) || hint < 0) {
        throw new BundleError('malformed-bundle', 'spiffe_refresh_hint must be a non-negative integer number of seconds');
      }
      bundle.refreshHintSeconds = hint;
    }
    keys.forEach((k, i) => addKey(bundle, k, i));
    return bundle;
  }
}

function addKey(bundle: Bundle, k: unknown, i: number): void {
  const where = `bundle key #${i}`;
  if (!isObject(k)) throw new BundleError('malformed-bundle', `${where} is not a JSON object`);
  const use = k['use'];
  if (typeof use !== 'string') throw new BundleError('malformed-bundle', `${where} has no "use" (must be "x509-svid" or "jwt-svid")`);
  if (typeof k['kty'] !== 'string') throw new BundleError('malformed-bundle', `${where} has no "kty"`);
  if ('d' in k || 'p' in k || 'k' in k) {
    throw new BundleError('malformed-bundle', `${where} contains private or symmetric key material; a bundle holds public keys only`);
  }
  if (use === 'x509-svid') addX509Key(bundle, k, where);
  else if (use === 'jwt-svid') addJwtKey(bundle, k, where);
  // Any other use is ignored, as the SPIFFE bundle format asks of consumers.
}

function addX509Key(bundle: Bundle, k: Record<string, unknown>, where: string): void {
  if ('kid' in k) throw new BundleError('bad-x509-authority', `${where}: x509-svid keys must not have a "kid"`);
  if (!['EC', 'RSA', 'OKP'].includes(k['kty'] as string)) return; // unknown kty: ignored, per the bundle format
  const x5c = k['x5c'];
  if (!Array.isArray(x5c) || x5c.length !== 1 || typeof x5c[0] !== 'string') {
    throw new BundleError('bad-x509-authority', `${where}: x509-svid keys must carry exactly one certificate in "x5c"`);
  }
  const b64 = x5c[0];
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) {
    throw new BundleError('bad-x509-authority', `${where}: x5c[0] is not standard base64`);
  }
  const der = Buffer.from(b64, 'base64');
  let spki: Buffer;
  try {
    spki = parseCertificate(der).spki;
  } catch (e) {
    throw new BundleError('bad-x509-authority', `${where}: x5c[0] is not a valid certificate: ${(e as X509SvidError).message}`, { cause: e });
  }
  // The JWK's own key members must describe the certificate's key, or a consumer using them would
  // trust a different key than one using the certificate.
  const jwkKey = importJwk(k, where, 'bad-x509-authority');
  if (jwkKey === undefined || !jwkKey.export({ type: 'spki', format: 'der' }).equals(spki)) {
    throw new BundleError('bad-x509-authority', `${where}: the JWK key does not match the public key of its x5c certificate`);
  }
  bundle.addX509Authority(der);
}

function addJwtKey(bundle: Bundle, k: Record<string, unknown>, where: string): void {
  const kid = k['kid'];
  if (typeof kid !== 'string' || kid === '') throw new BundleError('bad-jwt-authority', `${where}: jwt-svid keys must have a non-empty "kid"`);
  const kty = k['kty'];
  if (kty !== 'EC' && kty !== 'RSA') return; // unknown or unusable kty: ignored, per the bundle format
  const key = importJwk(k, where, 'bad-jwt-authority');
  if (key === undefined) return;
  if (bundle.getJwtAuthority(kid) !== undefined) throw new BundleError('duplicate-kid', `${where}: key id ${JSON.stringify(kid)} appears twice`);
  bundle.addJwtAuthority(kid, key);
}

/** Imports the public key members of a JWK; undefined for a kty this runtime does not know. */
function importJwk(k: Record<string, unknown>, where: string, code: 'bad-x509-authority' | 'bad-jwt-authority'): KeyObject | undefined {
  const kty = k['kty'];
  const members: Record<string, readonly string[]> = { EC: ['crv', 'x', 'y'], RSA: ['n', 'e'], OKP: ['crv', 'x'] };
  const names = typeof kty === 'string' ? members[kty] : undefined;
  if (names === undefined) return undefined;
  const jwk: JsonWebKey = { kty: kty as string };
  for (const n of names) {
    const v = k[n];
    if (typeof v !== 'string' || !/^[A-Za-z0-9_-]+$/.test(v)) throw new BundleError(code, `${where}: JWK member "${n}" is missing or not base64url`);
    jwk[n] = v;
  }
  try {
    return crypto.createPublicKey({ key: jwk, format: 'jwk' });
  } catch (e) {
    throw new BundleError(code, `${where}: JWK is not a valid ${String(kty)} public key: ${(e as Error).message}`, { cause: e });
  }
}

function parseSequence(v: unknown, text: string): bigint {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new BundleError('malformed-bundle', 'spiffe_sequence must be a non-negative integer');
  }
  if (Number.isSafeInteger(v)) return BigInt(v);
  // Beyond 2^53 JSON.parse has rounded the number: take the digits from the document itself. An
  // unescaped `"spiffe_sequence"` can only be a member name, so exactly one occurrence is the top-level one.
  const hits = [...text.matchAll(/"spiffe_sequence"\s*:\s*(\d+)\s*[,}]/g)];
  if (hits.length !== 1) throw new BundleError('malformed-bundle', 'spiffe_sequence is too large to read unambiguously');
  const big = BigInt((hits[0] as RegExpMatchArray)[1] as string);
  if (big > MAX_SEQUENCE) throw new BundleError('malformed-bundle', 'spiffe_sequence does not fit in 64 bits');
  return big;
}

function decodeText(json: string | Buffer): string {
  if (typeof json === 'string') {
    if (json.length > MAX_BUNDLE_JSON_BYTES) throw new BundleError('too-large', `bundle is larger than ${MAX_BUNDLE_JSON_BYTES} bytes`);
    return json;
  }
  if (!(json instanceof Uint8Array)) throw new BundleError('invalid-argument', 'bundle JSON must be a string or a Buffer');
  if (json.length > MAX_BUNDLE_JSON_BYTES) throw new BundleError('too-large', `bundle is ${json.length} bytes, more than ${MAX_BUNDLE_JSON_BYTES}`);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch (e) {
    throw new BundleError('malformed-json', 'bundle is not valid UTF-8', { cause: e });
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Bundles keyed by trust domain; the source validators consult. */
export class BundleSet implements X509BundleSource, JwtBundleSource {
  private readonly bundles = new Map<string, Bundle>();

  constructor(...bundles: Bundle[]) {
    for (const b of bundles) this.set(b);
  }

  /** Adds or replaces the bundle of `b.trustDomain`. */
  set(b: Bundle): void {
    if (!(b instanceof Bundle)) throw new BundleError('invalid-argument', 'BundleSet.set needs a Bundle');
    this.bundles.set(b.trustDomain.name, b);
  }

  get(td: TrustDomain): Bundle | undefined {
    return this.bundles.get(td.name);
  }

  delete(td: TrustDomain): boolean {
    return this.bundles.delete(td.name);
  }

  has(td: TrustDomain): boolean {
    return this.bundles.has(td.name);
  }

  trustDomains(): TrustDomain[] {
    return [...this.bundles.values()].map((b) => b.trustDomain);
  }

  all(): Bundle[] {
    return [...this.bundles.values()];
  }

  getX509BundleForTrustDomain(td: TrustDomain): Bundle | undefined {
    return this.get(td);
  }

  getJwtBundleForTrustDomain(td: TrustDomain): Bundle | undefined {
    return this.get(td);
  }
}
