// Builds DER X.509 v3 certificates from prepared parts and signs them with node:crypto. This is the
// fast path behind X.509-SVID minting: the constant extensions are encoded once at module load, the
// per-key parts (SPKI, key id) once per KeyObject, and a mint only concatenates bytes and signs.
import crypto, { type KeyObject } from 'node:crypto';
import {
  bitString, bool, children, ctxConstructed, ctxPrimitive, octetString, oid, printableString, readTlv, seq, set,
  time, uintFromBytes, utf8String,
} from './der.js';
import { OID } from './oids.js';
import type { CertSigner } from './signer.js';

const VERSION_V3 = ctxConstructed(0, Buffer.from([0x02, 0x01, 0x02]));

/** One encoded Extension: SEQUENCE { extnID, critical DEFAULT FALSE, extnValue OCTET STRING }. */
export function extension(extnId: string, critical: boolean, value: Buffer): Buffer {
  return critical ? seq(oid(extnId), bool(true), octetString(value)) : seq(oid(extnId), octetString(value));
}

// KeyUsage BIT STRINGs, DER-minimal (trailing zero bits counted as unused).
const KU_DIGITAL_SIGNATURE = bitString(Buffer.from([0x80]), 7);
const KU_CERT_SIGN_CRL_SIGN = bitString(Buffer.from([0x06]), 1);

/** Constant extensions of the SPIFFE templates. */
export const EXT = {
  leafKeyUsage: extension(OID.keyUsage, true, KU_DIGITAL_SIGNATURE),
  caKeyUsage: extension(OID.keyUsage, true, KU_CERT_SIGN_CRL_SIGN),
  leafBasicConstraints: extension(OID.basicConstraints, true, seq()),
  caBasicConstraints: extension(OID.basicConstraints, true, seq(bool(true))),
  serverClientAuth: extension(OID.extKeyUsage, false, seq(oid(OID.serverAuth), oid(OID.clientAuth))),
} as const;

export function subjectKeyIdentifier(keyId: Buffer): Buffer {
  return extension(OID.subjectKeyIdentifier, false, octetString(keyId));
}

export function authorityKeyIdentifier(keyId: Buffer): Buffer {
  return extension(OID.authorityKeyIdentifier, false, seq(ctxPrimitive(0, keyId)));
}

/** SubjectAltName with URIs and DNS names; critical when the subject is empty (RFC 5280 4.2.1.6). */
export function subjectAltName(uris: string[], dnsNames: string[], critical: boolean): Buffer {
  const names = [
    ...uris.map((u) => ctxPrimitive(6, Buffer.from(u, 'latin1'))),
    ...dnsNames.map((d) => ctxPrimitive(2, Buffer.from(d, 'latin1'))),
  ];
  return extension(OID.subjectAltName, critical, seq(...names));
}

export interface NameFields {
  country?: string;
  organization?: string;
  commonName?: string;
}

/** A distinguished name (C, O, CN in that order; absent fields left out). An empty object gives an empty Name. */
export function encodeName(n: NameFields): Buffer {
  const rdns: Buffer[] = [];
  if (n.country !== undefined) rdns.push(set(seq(oid(OID.countryName), printableString(n.country))));
  if (n.organization !== undefined) rdns.push(set(seq(oid(OID.organizationName), utf8String(n.organization))));
  if (n.commonName !== undefined) rdns.push(set(seq(oid(OID.commonName), utf8String(n.commonName))));
  return seq(...rdns);
}

export const EMPTY_NAME = seq();

/** SubjectPublicKeyInfo DER and the RFC 5280 method-1 key identifier (SHA-1 of the key bits). */
export interface PublicKeyInfo {
  spki: Buffer;
  keyId: Buffer;
}

const keyInfoCache = new WeakMap<KeyObject, PublicKeyInfo>();

export function publicKeyInfo(key: KeyObject): PublicKeyInfo {
  let info = keyInfoCache.get(key);
  if (info === undefined) {
    const pub = key.type === 'private' ? crypto.createPublicKey(key) : key;
    const spki = pub.export({ type: 'spki', format: 'der' });
    info = { spki, keyId: keyIdFromSpki(spki) };
    keyInfoCache.set(key, info);
  }
  return info;
}

/** SHA-1 over the subjectPublicKey BIT STRING contents (without the unused-bits byte). */
export function keyIdFromSpki(spki: Buffer): Buffer {
  // SPKI = SEQUENCE { AlgorithmIdentifier, subjectPublicKey BIT STRING }.
  const parts = children(spki, readTlv(spki, 0));
  const bits = parts[1];
  if (bits === undefined) throw new Error('malformed SubjectPublicKeyInfo');
  return crypto.createHash('sha1').update(spki.subarray(bits.contentStart + 1, bits.end)).digest();
}

// Serial numbers: 128 random bits (top bit cleared so the INTEGER stays positive and short), drawn
// from a refilled pool because one randomBytes call per certificate is measurably slow.
const SERIAL_BYTES = 16;
const POOL_SERIALS = 256;
let pool = Buffer.alloc(0);
let poolOffset = 0;

export function randomSerial(): Buffer {
  if (poolOffset + SERIAL_BYTES > pool.length) {
    pool = crypto.randomBytes(SERIAL_BYTES * POOL_SERIALS);
    poolOffset = 0;
  }
  const raw = Buffer.from(pool.subarray(poolOffset, poolOffset + SERIAL_BYTES));
  poolOffset += SERIAL_BYTES;
  raw[0] = ((raw[0] as number) & 0x7f) | 0x40; // positive, never a leading zero byte
  return raw;
}

export interface CertificateParts {
  /** Serial magnitude bytes (big endian, positive). */
  serial: Buffer;
  issuerName: Buffer;
  notBefore: Date;
  notAfter: Date;
  subjectName: Buffer;
  spki: Buffer;
  /** Encoded Extension elements, in order. */
  extensions: Buffer[];
}

/** Encodes the TBSCertificate, signs it and returns the DER Certificate. */
export function buildCertificate(parts: CertificateParts, signer: CertSigner): Buffer {
  const tbs = seq(
    VERSION_V3,
    uintFromBytes(parts.serial),
    signer.algorithmIdentifier,
    parts.issuerName,
    seq(time(parts.notBefore), time(parts.notAfter)),
    parts.subjectName,
    parts.spki,
    ctxConstructed(3, seq(...parts.extensions)),
  );
  return seq(tbs, signer.algorithmIdentifier, bitString(signer.sign(tbs)));
}
