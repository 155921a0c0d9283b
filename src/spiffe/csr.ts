// PKCS#10 certification requests: the server accepts an SVID's public key only from a CSR whose
// self-signature verifies, which proves the requester holds the private key.
import crypto, { type KeyObject } from 'node:crypto';
import { children, content, DerError, oidToString, readWhole, slice, TAG } from './der.js';
import { X509SvidError } from './errors.js';
import { verifyX509Signature } from './signature.js';

export const MAX_CSR_BYTES = 64 * 1024;

/**
 * Returns the public key of a DER PKCS#10 CSR after verifying its self-signature.
 * Throws X509SvidError 'malformed-csr', 'bad-csr-signature', 'unsupported-key' or
 * 'unsupported-signature-algorithm'. The CSR's subject and attributes are ignored: the SVID's
 * identity comes from the registration, never from the requester.
 */
export function publicKeyFromCsr(csrDer: Buffer): KeyObject {
  if (!(csrDer instanceof Uint8Array)) throw new X509SvidError('malformed-csr', 'CSR must be DER bytes (Buffer)');
  const der = Buffer.isBuffer(csrDer) ? csrDer : Buffer.from(csrDer);
  if (der.length > MAX_CSR_BYTES) throw new X509SvidError('malformed-csr', `CSR is ${der.length} bytes, more than ${MAX_CSR_BYTES}`);
  let info: Buffer, spki: Buffer, algOid: string, signature: Buffer;
  try {
    const top = readWhole(der, TAG.SEQUENCE, 'CertificationRequest');
    const [criT, algT, sigT, ...extra] = children(der, top);
    if (!criT || !algT || !sigT || extra.length > 0 || criT.tag !== TAG.SEQUENCE || algT.tag !== TAG.SEQUENCE || sigT.tag !== TAG.BIT_STRING) {
      throw new DerError('expected SEQUENCE { certificationRequestInfo, signatureAlgorithm, signature }');
    }
    const [verT, subjT, spkiT] = children(der, criT);
    if (verT?.tag !== TAG.INTEGER || subjT?.tag !== TAG.SEQUENCE || spkiT?.tag !== TAG.SEQUENCE) {
      throw new DerError('certificationRequestInfo must start with version, subject, subjectPKInfo');
    }
    const ver = content(der, verT);
    if (ver.length !== 1 || ver[0] !== 0) throw new DerError('CSR version must be 1 (encoded 0)');
    const algOidT = children(der, algT)[0];
    if (algOidT?.tag !== TAG.OID) throw new DerError('bad signatureAlgorithm');
    const bits = content(der, sigT);
    if (bits.length < 2 || bits[0] !== 0) throw new DerError('signature BIT STRING must have no unused bits');
    info = slice(der, criT);
    spki = slice(der, spkiT);
    algOid = oidToString(content(der, algOidT));
    signature = bits.subarray(1);
  } catch (e) {
    throw new X509SvidError('malformed-csr', `malformed PKCS#10 CSR: ${(e as Error).message}`, { cause: e });
  }
  let key: KeyObject;
  try {
    key = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (e) {
    throw new X509SvidError('malformed-csr', `CSR public key is not a valid SubjectPublicKeyInfo: ${(e as Error).message}`, { cause: e });
  }
  checkSvidKey(key);
  if (!verifyX509Signature(algOid, info, signature, spki)) {
    throw new X509SvidError('bad-csr-signature', 'CSR self-signature does not verify: the requester did not prove possession of the private key');
  }
  return key;
}

/** Key types accepted for SVIDs: EC P-256/P-384/P-521, RSA >= 2048 bits, Ed25519. */
export function checkSvidKey(key: KeyObject): void {
  const t = key.asymmetricKeyType;
  const d = key.asymmetricKeyDetails;
  if (t === 'ec' && ['prime256v1', 'secp384r1', 'secp521r1'].includes(String(d?.namedCurve))) return;
  if (t === 'rsa' && (d?.modulusLength ?? 0) >= 2048) return;
  if (t === 'ed25519') return;
  const what = t === 'ec' ? `EC curve ${String(d?.namedCurve)}` : t === 'rsa' ? `RSA-${d?.modulusLength}` : String(t);
  throw new X509SvidError('unsupported-key', `unsupported SVID key ${what} (use EC P-256/P-384/P-521, RSA >= 2048 or Ed25519)`);
}
