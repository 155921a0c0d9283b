// Maps a signing key to its X.509 signature algorithm and a synchronous node:crypto sign function.
// Resolved once per KeyObject (WeakMap) so the minting hot path does no key inspection.
import crypto, { type KeyObject } from 'node:crypto';
import { NULL, oid, seq } from './der.js';
import { OID } from './oids.js';

export interface CertSigner {
  /** DER AlgorithmIdentifier for the certificate's signature and signatureAlgorithm fields. */
  readonly algorithmIdentifier: Buffer;
  readonly description: string;
  sign(data: Buffer): Buffer;
}

/** Thrown for keys that cannot sign certificates here; callers wrap it into their error type. */
export class UnsupportedKeyError extends Error {}

const cache = new WeakMap<KeyObject, CertSigner>();

export function certSignerFor(key: KeyObject): CertSigner {
  let s = cache.get(key);
  if (s === undefined) {
    s = makeSigner(key);
    cache.set(key, s);
  }
  return s;
}

function makeSigner(key: KeyObject): CertSigner {
  if (key.type !== 'private') throw new UnsupportedKeyError('the signing key must be a private KeyObject');
  const type = key.asymmetricKeyType;
  if (type === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const pick = curve === 'prime256v1' ? (['sha256', OID.ecdsaWithSha256] as const)
      : curve === 'secp384r1' ? (['sha384', OID.ecdsaWithSha384] as const)
        : curve === 'secp521r1' ? (['sha512', OID.ecdsaWithSha512] as const) : undefined;
    if (pick === undefined) throw new UnsupportedKeyError(`unsupported EC curve ${String(curve)} (use P-256, P-384 or P-521)`);
    const [hash, alg] = pick;
    return { algorithmIdentifier: seq(oid(alg)), description: `ECDSA ${curve} ${hash}`, sign: (d) => crypto.sign(hash, d, key) };
  }
  if (type === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < 2048) throw new UnsupportedKeyError(`RSA key of ${bits} bits is too small (need at least 2048)`);
    return {
      algorithmIdentifier: seq(oid(OID.sha256WithRsa), NULL),
      description: `RSA-${bits} PKCS#1 v1.5 sha256`,
      sign: (d) => crypto.sign('sha256', d, { key, padding: crypto.constants.RSA_PKCS1_PADDING }),
    };
  }
  if (type === 'ed25519') {
    return { algorithmIdentifier: seq(oid(OID.ed25519)), description: 'Ed25519', sign: (d) => crypto.sign(null, d, key) };
  }
  throw new UnsupportedKeyError(`unsupported signing key type ${String(type)} (use EC P-256/P-384/P-521, RSA or Ed25519)`);
}
