// PKCS#10 certification requests: the server accepts an SVID's public key only from a CSR whose
// self-signature verifies, which proves the requester holds the private key.
//
// This is on the signing hot path (one verification per issued SVID), so EC keys on the named
// curves are checked without building a node:crypto KeyObject: OpenSSL 3's SPKI decoder and JWK
// import each cost more than the signature verification itself (the import runs a full point-order
// check). Instead the point goes straight into OpenSSL's ECDSA_verify through koffi (the same
// OpenSSL node:crypto runs on, found in the node process itself); OpenSSL still checks the point is
// on the curve and that the signature is strict DER. Where that library cannot be reached, and for
// RSA and Ed25519 keys, the node:crypto path is used.
//
// What a CSR may cost is bounded before any of that: the key is read from the SPKI bytes and must be
// EC P-256/P-384, Ed25519, or RSA of 2048 to 4096 bits with e = 65537 (CSR_KEY_POLICY). An RSA key
// with a 3072-bit exponent costs ~10 ms per verification; it is refused without one.
import crypto, { type KeyObject } from 'node:crypto';
import koffi, { type LibraryHandle } from 'koffi';
import { children, content, DerError, oidToString, readWhole, slice, TAG, type Tlv } from './der.js';
import { X509SvidError } from './errors.js';
import { OID } from './oids.js';
import { summarizeSpki, verifyX509Signature } from './signature.js';

export const MAX_CSR_BYTES = 64 * 1024;

const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';
interface Curve {
  /** OpenSSL NID. */
  nid: number;
  /** Field size in bytes. */
  size: number;
}
/** Named curves accepted for SVIDs. */
const CURVES: Record<string, Curve> = {
  '1.2.840.10045.3.1.7': { nid: 415, size: 32 }, // P-256
  '1.3.132.0.34': { nid: 715, size: 48 }, // P-384
};

/** The keys a CSR may carry, in words (error messages and docs). */
export const CSR_KEY_POLICY = 'EC P-256 or P-384, Ed25519, or RSA of 2048 to 4096 bits with public exponent 65537';
const RSA_MIN_BITS = 2048;
const RSA_MAX_BITS = 4096;
const CSR_CURVES = new Set(['P-256', 'P-384']);
const ECDSA_HASHES: Record<string, string> = {
  [OID.ecdsaWithSha256]: 'sha256',
  [OID.ecdsaWithSha384]: 'sha384',
  [OID.ecdsaWithSha512]: 'sha512',
};

const VERIFIED = Symbol('verified CSR key');

/**
 * The public key of a CSR whose self-signature verified: its SubjectPublicKeyInfo DER, ready to be
 * copied into a certificate. Only this module creates one, so holding one means the check was done.
 */
export class CsrPublicKey {
  private keyObject: KeyObject | undefined;

  /** @internal */
  constructor(token: typeof VERIFIED, readonly spki: Buffer, keyObject?: KeyObject) {
    if (token !== VERIFIED) throw new TypeError('CsrPublicKey comes only from verifyCsr');
    this.keyObject = keyObject;
  }

  /** The key as a node:crypto KeyObject (decoded on first use; the SVID path does not need it). */
  toKeyObject(): KeyObject {
    this.keyObject ??= crypto.createPublicKey({ key: this.spki, format: 'der', type: 'spki' });
    return this.keyObject;
  }
}

/**
 * Returns the public key of a DER PKCS#10 CSR after verifying its self-signature.
 * Throws X509SvidError 'malformed-csr', 'bad-csr-signature', 'unsupported-key' or
 * 'unsupported-signature-algorithm'. The CSR's subject and attributes are ignored: the SVID's
 * identity comes from the registration, never from the requester.
 */
export function publicKeyFromCsr(csrDer: Buffer): KeyObject {
  return verifyCsr(csrDer).toKeyObject();
}

/** As publicKeyFromCsr, but returns the key's SPKI bytes without decoding the key (the fast path for minting). */
export function verifyCsr(csrDer: Buffer): CsrPublicKey {
  const c = parseCsr(csrDer);
  // From the SPKI bytes alone, before any key decoding or signature arithmetic.
  checkCsrKey(c.spki);
  const fast = fastPath(c);
  if (fast === undefined) return verifyWithKeyObject(c);
  if (!fast.native.verify(fast.key, c.signature)) throw badSignature();
  return new CsrPublicKey(VERIFIED, Buffer.from(c.spki));
}

interface ParsedCsr {
  der: Buffer;
  info: Buffer;
  spki: Buffer;
  spkiT: Tlv;
  algOid: string;
  signature: Buffer;
}

function parseCsr(csrDer: Buffer): ParsedCsr {
  if (!(csrDer instanceof Uint8Array)) throw new X509SvidError('malformed-csr', 'CSR must be DER bytes (Buffer)');
  const der = Buffer.isBuffer(csrDer) ? csrDer : Buffer.from(csrDer);
  if (der.length > MAX_CSR_BYTES) throw new X509SvidError('malformed-csr', `CSR is ${der.length} bytes, more than ${MAX_CSR_BYTES}`);
  try {
    const top = readWhole(der, TAG.SEQUENCE, 'CertificationRequest');
    const [criT, algT, sigT, ...extra] = children(der, top);
    if (!criT || !algT || !sigT || extra.length > 0 || criT.tag !== TAG.SEQUENCE || algT.tag !== TAG.SEQUENCE || sigT.tag !== TAG.BIT_STRING) {
      throw new DerError('expected SEQUENCE { certificationRequestInfo, signatureAlgorithm, signature }');
    }
    const [verT, subjT, keyT] = children(der, criT);
    if (verT?.tag !== TAG.INTEGER || subjT?.tag !== TAG.SEQUENCE || keyT?.tag !== TAG.SEQUENCE) {
      throw new DerError('certificationRequestInfo must start with version, subject, subjectPKInfo');
    }
    const ver = content(der, verT);
    if (ver.length !== 1 || ver[0] !== 0) throw new DerError('CSR version must be 1 (encoded 0)');
    const algOidT = children(der, algT)[0];
    if (algOidT?.tag !== TAG.OID) throw new DerError('bad signatureAlgorithm');
    const bits = content(der, sigT);
    if (bits.length < 2 || bits[0] !== 0) throw new DerError('signature BIT STRING must have no unused bits');
    return {
      der, info: slice(der, criT), spki: slice(der, keyT), spkiT: keyT, algOid: oidToString(content(der, algOidT)), signature: bits.subarray(1),
    };
  } catch (e) {
    throw new X509SvidError('malformed-csr', `malformed PKCS#10 CSR: ${(e as Error).message}`, { cause: e });
  }
}

/** The node:crypto path: decode the SPKI, check the key type, verify. */
function verifyWithKeyObject(c: ParsedCsr): CsrPublicKey {
  let key: KeyObject;
  try {
    key = crypto.createPublicKey({ key: c.spki, format: 'der', type: 'spki' });
  } catch (e) {
    throw badSpki(e);
  }
  checkSvidKey(key);
  if (!verifyX509Signature(c.algOid, c.info, c.signature, c.spki)) throw badSignature();
  return new CsrPublicKey(VERIFIED, Buffer.from(c.spki), key);
}

interface FastCheck {
  native: NativeEcdsa;
  /** An EC_KEY holding the CSR's point, with the digest to verify against it. */
  key: LoadedKey;
}

/** Sets up the OpenSSL check for an ECDSA CSR on an accepted curve; undefined for everything else. */
function fastPath(c: ParsedCsr): FastCheck | undefined {
  const hash = ECDSA_HASHES[c.algOid];
  if (hash === undefined) return undefined;
  const ec = ecPublicKey(c.der, c.spkiT);
  if (ec === undefined) return undefined;
  const native = nativeEcdsa();
  if (native === undefined) return undefined;
  const digest = crypto.createHash(hash).update(c.info).digest();
  return { native, key: native.load(ec.curve, ec.point, digest) };
}

function badSignature(): X509SvidError {
  return new X509SvidError('bad-csr-signature', 'CSR self-signature does not verify: the requester did not prove possession of the private key');
}

function badSpki(e: unknown): X509SvidError {
  return new X509SvidError('malformed-csr', `CSR public key is not a valid SubjectPublicKeyInfo: ${(e as Error).message}`, { cause: e });
}

/**
 * The curve and point of an id-ecPublicKey SPKI on an accepted named curve; undefined for any other
 * key (left to the node:crypto path). A malformed EC SPKI is refused here, as the decoder would.
 */
function ecPublicKey(der: Buffer, spkiT: Tlv): { curve: Curve; point: Buffer } | undefined {
  try {
    const [algT, bitsT, ...rest] = children(der, spkiT);
    if (algT?.tag !== TAG.SEQUENCE) return undefined;
    const [oidT, curveT, ...algRest] = children(der, algT);
    if (oidT?.tag !== TAG.OID || oidToString(content(der, oidT)) !== OID_EC_PUBLIC_KEY) return undefined;
    const curve = curveT?.tag === TAG.OID && algRest.length === 0 ? CURVES[oidToString(content(der, curveT))] : undefined;
    if (curve === undefined) return undefined;
    if (bitsT?.tag !== TAG.BIT_STRING || rest.length > 0) throw new DerError('expected SEQUENCE { algorithm, subjectPublicKey BIT STRING }');
    const bits = content(der, bitsT);
    const point = bits.subarray(1);
    // Uncompressed (04 || X || Y) or compressed (02/03 || X). Never the one-byte point at infinity,
    // which OpenSSL would take as a public key that every forged signature matches.
    const ok = bits[0] === 0 && (point[0] === 4 ? point.length === 1 + 2 * curve.size : (point[0] === 2 || point[0] === 3) && point.length === 1 + curve.size);
    if (!ok) throw new DerError('EC point must be an uncompressed or compressed point of the named curve');
    return { curve, point };
  } catch (e) {
    throw badSpki(e);
  }
}

/** Whether EC CSRs are verified through OpenSSL directly (wherever the node binary exports its OpenSSL). */
export function nativeCsrVerification(): boolean {
  return nativeEcdsa() !== undefined;
}

interface LoadedKey {
  /** EC_KEY* of the curve, now holding the CSR's point. */
  handle: unknown;
  digest: Buffer;
}

interface NativeEcdsa {
  /** The curve's EC_KEY set to `point` (OpenSSL checks it is on the curve); throws malformed-csr otherwise. */
  load(curve: Curve, point: Buffer, digest: Buffer): LoadedKey;
  /** ECDSA_verify of a DER ECDSA-Sig-Value (OpenSSL refuses non-DER and out-of-range values). */
  verify(key: LoadedKey, signature: Buffer): boolean;
}

let native: NativeEcdsa | null | undefined;

/** OpenSSL's legacy EC API from the running node process, or undefined when it is not exported. */
function nativeEcdsa(): NativeEcdsa | undefined {
  if (native === undefined) native = loadNativeEcdsa();
  return native ?? undefined;
}

function loadNativeEcdsa(): NativeEcdsa | null {
  let f: Record<'newKey' | 'setPoint' | 'ecdsaVerify' | 'clearErrors', ReturnType<LibraryHandle['func']>>;
  try {
    const lib = koffi.load(null);
    f = {
      newKey: lib.func('void *EC_KEY_new_by_curve_name(int nid)'),
      setPoint: lib.func('void *o2i_ECPublicKey(_Inout_ void **key, _Inout_ uint8_t **pp, long len)'),
      ecdsaVerify: lib.func('int ECDSA_verify(int type, const uint8_t *dgst, int dgstlen, const uint8_t *sig, int siglen, void *key)'),
      clearErrors: lib.func('void ERR_clear_error()'),
    };
  } catch {
    return null; // a node whose OpenSSL does not export the legacy EC API
  }
  // One EC_KEY per curve, reused: this runs on one thread per isolate, and o2i replaces the point.
  const keys = new Map<number, unknown>();
  return {
    load(curve, point, digest) {
      let handle = keys.get(curve.nid);
      if (handle === undefined) {
        handle = f.newKey(curve.nid) as unknown;
        if (handle === null) throw new X509SvidError('malformed-csr', `this OpenSSL has no curve ${curve.nid}`);
        keys.set(curve.nid, handle);
      }
      if (f.setPoint([handle], [point], point.length) === null) {
        f.clearErrors();
        throw badSpki(new Error('EC point is not on the curve'));
      }
      return { handle, digest };
    },
    verify(k, sig) {
      const r = f.ecdsaVerify(0, k.digest, k.digest.length, sig, sig.length, k.handle) as number;
      // A refused signature may leave an OpenSSL error behind; node:crypto must not find it later.
      if (r !== 1) f.clearErrors();
      return r === 1;
    },
  };
}

/**
 * Refuses, from its DER alone, an SPKI that is not a key a CSR may carry (CSR_KEY_POLICY):
 * 'unsupported-key', or 'malformed-csr' when the SPKI cannot be read. Costs microseconds whatever the key.
 */
export function checkCsrKey(spki: Buffer): void {
  let s;
  try {
    s = summarizeSpki(spki);
  } catch (e) {
    throw badSpki(e);
  }
  if (s.type === 'ed25519') return;
  if (s.type === 'ec') {
    if (CSR_CURVES.has(s.curve)) return;
    throw unsupportedKey(`EC curve ${s.curve}`);
  }
  if (s.type === 'rsa') {
    if (s.modulusBits < RSA_MIN_BITS || s.modulusBits > RSA_MAX_BITS) throw unsupportedKey(`RSA-${s.modulusBits} (RSA keys must be ${RSA_MIN_BITS} to ${RSA_MAX_BITS} bits)`);
    if (!s.exponentIs65537) throw unsupportedKey(`RSA-${s.modulusBits} with a ${s.exponentBits}-bit public exponent (the RSA public exponent must be 65537)`);
    return;
  }
  throw unsupportedKey(`algorithm ${s.algorithm}`);
}

function unsupportedKey(what: string): X509SvidError {
  return new X509SvidError('unsupported-key', `unsupported CSR key ${what}; use ${CSR_KEY_POLICY}`);
}

/**
 * Key types accepted in SVIDs (verifyX509Svid, and minting from a KeyObject): EC P-256/P-384/P-521,
 * RSA >= 2048 bits, Ed25519. Wider than what a CSR may carry (checkCsrKey), so SVIDs from other
 * SPIFFE implementations still validate.
 */
export function checkSvidKey(key: KeyObject): void {
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails;
  if (t === 'ec' && ['prime256v1', 'secp384r1', 'secp521r1'].includes(String(d?.namedCurve))) return;
  if (t === 'rsa' && (d?.modulusLength ?? 0) >= 2048) return;
  if (t === 'ed25519') return;
  const what = t === 'ec' ? `EC curve ${String(d?.namedCurve)}` : t === 'rsa' ? `RSA-${d?.modulusLength}` : String(t);
  throw new X509SvidError('unsupported-key', `unsupported SVID key ${what} (use EC P-256/P-384/P-521, RSA >= 2048 or Ed25519)`);
}
