// The server's own SPIFFE bundle document (RFC 7517 JWK set with spiffe_sequence and
// spiffe_refresh_hint), built from the authorities the CA publishes.
import crypto, { type KeyObject } from 'node:crypto';

export interface BundleKey {
  /** `x509-svid`: a CA certificate (DER); `jwt-svid`: a public key with its kid. */
  use: 'x509-svid' | 'jwt-svid';
  certificateDer?: Buffer;
  publicKey?: KeyObject;
  kid?: string;
  /** When relying parties may stop trusting it; used to drop expired keys. */
  notAfter: Date;
}

type Jwk = Record<string, unknown>;

function publicJwk(key: KeyObject): Jwk {
  const jwk = key.export({ format: 'jwk' }) as Jwk;
  // Only the public members: export of a public KeyObject already omits private ones.
  const { kty, crv, x, y, n, e } = jwk;
  return Object.fromEntries(Object.entries({ kty, crv, x, y, n, e }).filter(([, v]) => v !== undefined));
}

export function bundleKeyToJwk(k: BundleKey): Jwk {
  if (k.use === 'x509-svid') {
    const der = k.certificateDer as Buffer;
    const cert = new crypto.X509Certificate(der);
    return { use: 'x509-svid', ...publicJwk(cert.publicKey), x5c: [der.toString('base64')] };
  }
  return { use: 'jwt-svid', kid: k.kid, ...publicJwk(k.publicKey as KeyObject) };
}

/** A stable identity for a bundle key (its certificate, or kid + key), for merging and change detection. */
export function jwkIdentity(jwk: Jwk): string {
  if (jwk.use === 'x509-svid' && Array.isArray(jwk.x5c)) return `x509:${String(jwk.x5c[0])}`;
  return `jwt:${String(jwk.kid)}:${String(jwk.x ?? jwk.n)}`;
}

/** Expiry of a JWK from a stored bundle: the certificate's notAfter, or the `exp` hint we write for JWT keys. */
export function jwkNotAfter(jwk: Jwk): Date | undefined {
  if (jwk.use === 'x509-svid' && Array.isArray(jwk.x5c) && typeof jwk.x5c[0] === 'string') {
    try {
      return new Date(new crypto.X509Certificate(Buffer.from(jwk.x5c[0], 'base64')).validTo);
    } catch {
      return undefined;
    }
  }
  return undefined;
}

export function renderBundle(keys: Jwk[], sequence: bigint, refreshHintSeconds: number): string {
  // spiffe_sequence is a 64-bit value; JSON numbers lose precision past 2^53, which a counter bumped
  // per change will never reach.
  return JSON.stringify({ keys, spiffe_sequence: Number(sequence), spiffe_refresh_hint: refreshHintSeconds });
}

export function parseStoredKeys(json: string): Jwk[] {
  const doc = JSON.parse(json) as { keys?: unknown };
  return Array.isArray(doc.keys) ? (doc.keys.filter((k) => k !== null && typeof k === 'object') as Jwk[]) : [];
}
