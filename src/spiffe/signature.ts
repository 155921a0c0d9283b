// Verification of X.509 / PKCS#10 signatures with node:crypto, for an allow-list of algorithms.
// Also a cheap reading of a SubjectPublicKeyInfo (key type, RSA size and exponent, EC curve) from its
// DER, so that what a key would cost to use is known before any signature work is done with it.
import crypto from 'node:crypto';
import { children, content, DerError, oidToString, readWhole, TAG } from './der.js';
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

const OID_RSA_ENCRYPTION = '1.2.840.113549.1.1.1';
const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';
/** Named curves by OID, with the names node:crypto reports. */
const CURVE_NAMES: Record<string, string> = {
  '1.2.840.10045.3.1.7': 'P-256',
  '1.3.132.0.34': 'P-384',
  '1.3.132.0.35': 'P-521',
  '1.3.132.0.10': 'secp256k1',
};

/**
 * Largest RSA modulus and public exponent any signature is checked with (CA and peer keys included).
 * A verification costs about (modulus bits)^2 x (exponent bits): a 3072-bit exponent makes one
 * verification ~10 ms, a 16384-bit modulus ~5 ms. Real keys use e = 65537 (17 bits).
 */
export const MAX_RSA_MODULUS_BITS = 16384;
export const MAX_RSA_EXPONENT_BITS = 33;

/** What a SubjectPublicKeyInfo holds, read from its DER without decoding the key. */
export type SpkiSummary =
  | { type: 'rsa'; modulusBits: number; exponentBits: number; exponentIs65537: boolean }
  | { type: 'ec'; curve: string }
  | { type: 'ed25519' }
  | { type: 'other'; algorithm: string };

/** Bit length of a DER INTEGER's content (leading zero bytes ignored); 0 for zero or a negative number. */
function uintBits(b: Buffer): number {
  if (b.length === 0 || ((b[0] as number) & 0x80) !== 0) return 0;
  let i = 0;
  while (i < b.length && b[i] === 0) i++;
  if (i === b.length) return 0;
  return (b.length - i - 1) * 8 + (32 - Math.clz32(b[i] as number));
}

/** Reads the key type and size of a DER SubjectPublicKeyInfo. Throws DerError when it is malformed. */
export function summarizeSpki(spki: Buffer): SpkiSummary {
  const top = readWhole(spki, TAG.SEQUENCE, 'SubjectPublicKeyInfo');
  const [algT, bitsT, ...rest] = children(spki, top);
  if (algT?.tag !== TAG.SEQUENCE || bitsT?.tag !== TAG.BIT_STRING || rest.length > 0) throw new DerError('expected SEQUENCE { algorithm, subjectPublicKey BIT STRING }');
  const [oidT, paramT] = children(spki, algT);
  if (oidT?.tag !== TAG.OID) throw new DerError('bad SubjectPublicKeyInfo algorithm');
  const alg = oidToString(content(spki, oidT));
  const bits = content(spki, bitsT);
  if (bits.length < 1 || bits[0] !== 0) throw new DerError('subjectPublicKey BIT STRING must have no unused bits');
  if (alg === OID_RSA_ENCRYPTION) {
    const key = bits.subarray(1);
    const keyTop = readWhole(key, TAG.SEQUENCE, 'RSAPublicKey');
    const [nT, eT, ...more] = children(key, keyTop);
    if (nT?.tag !== TAG.INTEGER || eT?.tag !== TAG.INTEGER || more.length > 0) throw new DerError('expected RSAPublicKey SEQUENCE { modulus, publicExponent }');
    const e = content(key, eT);
    const exponentBits = uintBits(e);
    const modulusBits = uintBits(content(key, nT));
    if (modulusBits === 0 || exponentBits === 0) throw new DerError('RSA modulus and exponent must be positive');
    return { type: 'rsa', modulusBits, exponentBits, exponentIs65537: exponentBits === 17 && e.subarray(e.length - 3).equals(Buffer.from([1, 0, 1])) };
  }
  if (alg === OID_EC_PUBLIC_KEY) {
    const curveOid = paramT?.tag === TAG.OID ? oidToString(content(spki, paramT)) : 'explicit parameters';
    return { type: 'ec', curve: CURVE_NAMES[curveOid] ?? curveOid };
  }
  if (alg === OID.ed25519) return { type: 'ed25519' };
  return { type: 'other', algorithm: alg };
}

/**
 * True when `signature` over `data` verifies with the SubjectPublicKeyInfo `spki` under `algorithmOid`.
 * An algorithm outside the allow-list (SHA-1, MD5, RSA-PSS, ...) throws 'unsupported-signature-algorithm';
 * a key of the wrong type, an RSA key beyond MAX_RSA_MODULUS_BITS / MAX_RSA_EXPONENT_BITS (refused
 * before any arithmetic) or a bad signature is simply false.
 */
export function verifyX509Signature(algorithmOid: string, data: Buffer, signature: Buffer, spki: Buffer): boolean {
  const alg = ALGORITHMS[algorithmOid];
  if (alg === undefined) {
    throw new X509SvidError('unsupported-signature-algorithm', `signature algorithm ${algorithmOid} is not supported (use ECDSA, RSA PKCS#1 v1.5 with SHA-2, or Ed25519)`);
  }
  try {
    const s = summarizeSpki(spki);
    if (s.type === 'rsa' && (s.modulusBits > MAX_RSA_MODULUS_BITS || s.exponentBits > MAX_RSA_EXPONENT_BITS)) return false;
    const key = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' });
    if (key.asymmetricKeyType !== alg.keyType) return false;
    if (alg.keyType === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) < 2048) return false;
    return crypto.verify(alg.hash, data, { key, dsaEncoding: 'der' }, signature);
  } catch {
    return false;
  }
}
