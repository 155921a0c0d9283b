// Verification of X.509 / PKCS#10 signatures with node:crypto, for an allow-list of algorithms.
import crypto from 'node:crypto';
import { X509SvidError } from './errors.js';
import { OID } from './oids.js';

const ALGORITHMS: Record<string, { hash: string | null; keyType: string }> = {
  [OID.ecdsaWithSha256]: { hash: 'sha256', keyType: 'ec' },
  [OID.ecdsaWithSha384]: { hash: 'sha384', keyType: 'ec' },
  [OID.ecdsaWithSha512]: { hash: 'sha512', keyType: 'ec' },
  [OID.sha256WithRsa]: { hash: 'sha256', keyType: 'rsa' },
  [OID.sha384WithRsa]: { hash: 'sha384', keyType: 'rsa' },
  [OID.sha512WithRsa]: { hash: 'sha512', keyType: 'rsa' },
  [OID.ed25519]: { hash: null, keyType: 'ed25519' },
};

/**
 * True when `signature` over `data` verifies with the SubjectPublicKeyInfo `spki` under `algorithmOid`.
 * An algorithm outside the allow-list (SHA-1, MD5, RSA-PSS, ...) throws 'unsupported-signature-algorithm';
 * a key of the wrong type or a bad signature is simply false.
 */
export function verifyX509Signature(algorithmOid: string, data: Buffer, signature: Buffer, spki: Buffer): boolean {
  const alg = ALGORITHMS[algorithmOid];
  if (alg === undefined) {
    throw new X509SvidError('unsupported-signature-algorithm', `signature algorithm ${algorithmOid} is not supported (use ECDSA, RSA PKCS#1 v1.5 with SHA-2, or Ed25519)`);
  }
  try {
    const key = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' });
    if (key.asymmetricKeyType !== alg.keyType) return false;
    if (alg.keyType === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) return false;
    return crypto.verify(alg.hash, data, { key, dsaEncoding: 'der' }, signature);
  } catch {
    return false;
  }
}
