import crypto, { type KeyObject } from 'node:crypto';
import {
  TPM_ALG, TPMA_OBJECT, algName, curveFromId, curveInfo, hashAlgFromId, digestSize, hashAlgId,
  type EccCurve, type HashAlg,
} from './constants.js';
import { TpmAkPolicyError, TpmParseError } from './errors.js';
import { TpmReader, TpmWriter } from './reader.js';

/** TPMA_OBJECT, as the raw number and one boolean per attribute. */
export interface ObjectAttributes {
  value: number;
  fixedTPM: boolean;
  stClear: boolean;
  fixedParent: boolean;
  sensitiveDataOrigin: boolean;
  userWithAuth: boolean;
  adminWithPolicy: boolean;
  noDA: boolean;
  encryptedDuplication: boolean;
  restricted: boolean;
  decrypt: boolean;
  sign: boolean;
  x509sign: boolean;
}

/** TPMT_SYM_DEF_OBJECT when not NULL (for XOR, keyBits holds the hash id and mode is 0). */
export interface SymmetricDef { alg: 'aes' | 'sm4' | 'camellia' | 'xor'; keyBits: number; mode: 'cfb' | 'ctr' | 'ofb' | 'cbc' | 'ecb' | null }

/** A key scheme or KDF when not NULL: algorithm and its hash (ECDAA adds a count). */
export interface Scheme { alg: string; algId: number; hashAlg: HashAlg | null; hashAlgId: number; count?: number }

export interface TpmPublicCommon {
  nameAlg: HashAlg;
  objectAttributes: ObjectAttributes;
  authPolicy: Buffer;
  /** The TPMT_PUBLIC bytes exactly as received; names and hashes are computed over these. */
  raw: Buffer;
}

export interface TpmRsaPublic extends TpmPublicCommon {
  type: 'rsa';
  parameters: { symmetric: SymmetricDef | null; scheme: Scheme | null; keyBits: number; /** 0 means 65537 on the wire */ exponent: number };
  unique: { n: Buffer };
}

export interface TpmEccPublic extends TpmPublicCommon {
  type: 'ecc';
  parameters: { symmetric: SymmetricDef | null; scheme: Scheme | null; curve: EccCurve; kdf: Scheme | null };
  unique: { x: Buffer; y: Buffer };
}

export type TpmPublic = TpmRsaPublic | TpmEccPublic;

// Capacities from the reference implementation's defaults (MAX_RSA_KEY_BYTES 512, MAX_ECC_KEY_BYTES 128,
// digests at most SHA-512).
const MAX_DIGEST = 64;
const MAX_RSA_BYTES = 512;
const MAX_ECC_BYTES = 128;
/** sizeof(TPMT_PUBLIC) bound: enough for every RSA/ECC public area a TPM can produce. */
export const MAX_TPMT_PUBLIC = 2 + 2 + 4 + 2 + MAX_DIGEST + 16 + 2 + MAX_RSA_BYTES;

export function decodeObjectAttributes(value: number): ObjectAttributes {
  const has = (bit: number): boolean => (value & bit) !== 0;
  return {
    value: value >>> 0,
    fixedTPM: has(TPMA_OBJECT.fixedTPM),
    stClear: has(TPMA_OBJECT.stClear),
    fixedParent: has(TPMA_OBJECT.fixedParent),
    sensitiveDataOrigin: has(TPMA_OBJECT.sensitiveDataOrigin),
    userWithAuth: has(TPMA_OBJECT.userWithAuth),
    adminWithPolicy: has(TPMA_OBJECT.adminWithPolicy),
    noDA: has(TPMA_OBJECT.noDA),
    encryptedDuplication: has(TPMA_OBJECT.encryptedDuplication),
    restricted: has(TPMA_OBJECT.restricted),
    decrypt: has(TPMA_OBJECT.decrypt),
    sign: has(TPMA_OBJECT.sign),
    x509sign: has(TPMA_OBJECT.x509sign),
  };
}

function readHash(r: TpmReader, field: string): { alg: HashAlg; id: number } {
  const id = r.u16(field);
  const alg = hashAlgFromId(id);
  if (alg === undefined) throw new TpmParseError('unsupported-algorithm', `TPMT_PUBLIC: ${field} ${algName(id)} is not a supported hash (sha1, sha256, sha384, sha512)`);
  return { alg, id };
}

function readSymmetric(r: TpmReader): SymmetricDef | null {
  const id = r.u16('parameters.symmetric.algorithm');
  if (id === TPM_ALG.NULL) return null;
  if (id === TPM_ALG.XOR) return { alg: 'xor', keyBits: readHash(r, 'parameters.symmetric.hash').id, mode: null };
  const alg = id === TPM_ALG.AES ? 'aes' : id === TPM_ALG.SM4 ? 'sm4' : id === TPM_ALG.CAMELLIA ? 'camellia' : undefined;
  if (alg === undefined) throw new TpmParseError('unsupported-algorithm', `TPMT_PUBLIC: symmetric algorithm ${algName(id)} is not supported`);
  const keyBits = r.u16('parameters.symmetric.keyBits');
  const modeId = r.u16('parameters.symmetric.mode');
  const modes: Record<number, SymmetricDef['mode']> = { [TPM_ALG.CFB]: 'cfb', [TPM_ALG.CTR]: 'ctr', [TPM_ALG.OFB]: 'ofb', [TPM_ALG.CBC]: 'cbc', [TPM_ALG.ECB]: 'ecb', [TPM_ALG.NULL]: null };
  if (!(modeId in modes)) throw new TpmParseError('unsupported-algorithm', `TPMT_PUBLIC: symmetric mode ${algName(modeId)} is not supported`);
  return { alg, keyBits, mode: modes[modeId] ?? null };
}

// Which scheme ids carry a hash in their details (TPMU_ASYM_SCHEME / TPMU_KDF_SCHEME); RSAES carries nothing.
const HASHED_SCHEMES = new Set<number>([
  TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.OAEP, TPM_ALG.ECDSA, TPM_ALG.ECDH, TPM_ALG.ECDAA, TPM_ALG.SM2,
  TPM_ALG.ECSCHNORR, TPM_ALG.ECMQV, TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108,
]);

function readScheme(r: TpmReader, field: string, allowed: readonly number[]): Scheme | null {
  const id = r.u16(`${field}.scheme`);
  if (id === TPM_ALG.NULL) return null;
  if (!allowed.includes(id)) throw new TpmParseError('unsupported-algorithm', `TPMT_PUBLIC: ${field} ${algName(id)} is not valid here`);
  if (!HASHED_SCHEMES.has(id)) return { alg: algName(id), algId: id, hashAlg: null, hashAlgId: TPM_ALG.NULL };
  const h = readHash(r, `${field}.hashAlg`);
  const s: Scheme = { alg: algName(id), algId: id, hashAlg: h.alg, hashAlgId: h.id };
  if (id === TPM_ALG.ECDAA) s.count = r.u16(`${field}.count`);
  return s;
}

const RSA_SCHEMES = [TPM_ALG.RSASSA, TPM_ALG.RSAPSS, TPM_ALG.RSAES, TPM_ALG.OAEP];
const ECC_SCHEMES = [TPM_ALG.ECDSA, TPM_ALG.ECDH, TPM_ALG.ECDAA, TPM_ALG.SM2, TPM_ALG.ECSCHNORR, TPM_ALG.ECMQV];
const KDF_SCHEMES = [TPM_ALG.MGF1, TPM_ALG.KDF1_SP800_56A, TPM_ALG.KDF2, TPM_ALG.KDF1_SP800_108];

function readTpmtPublic(r: TpmReader): TpmPublic {
  const start = r.offset;
  const typeId = r.u16('type');
  if (typeId !== TPM_ALG.RSA && typeId !== TPM_ALG.ECC) {
    throw new TpmParseError('unsupported-algorithm', `TPMT_PUBLIC: object type ${algName(typeId)} is not supported (only RSA and ECC keys)`);
  }
  const nameAlg = readHash(r, 'nameAlg').alg;
  const objectAttributes = decodeObjectAttributes(r.u32('objectAttributes'));
  const authPolicy = r.tpm2b('authPolicy', MAX_DIGEST);
  if (authPolicy.length !== 0 && authPolicy.length !== digestSize(nameAlg)) {
    throw new TpmParseError('bad-size', `TPMT_PUBLIC: authPolicy is ${authPolicy.length} bytes; with nameAlg ${nameAlg} it must be empty or ${digestSize(nameAlg)}`);
  }
  const symmetric = readSymmetric(r);
  if (typeId === TPM_ALG.RSA) {
    const scheme = readScheme(r, 'parameters.scheme', RSA_SCHEMES);
    const keyBits = r.u16('parameters.keyBits');
    if (keyBits < 1024 || keyBits > 4096 || keyBits % 8 !== 0) throw new TpmParseError('bad-value', `TPMT_PUBLIC: RSA keyBits ${keyBits} is not a valid key size`);
    const exponent = r.u32('parameters.exponent');
    const n = r.tpm2b('unique.rsa', MAX_RSA_BYTES);
    if (n.length !== 0 && n.length !== keyBits / 8) throw new TpmParseError('bad-size', `TPMT_PUBLIC: RSA modulus is ${n.length} bytes, keyBits says ${keyBits / 8}`);
    return { type: 'rsa', nameAlg, objectAttributes, authPolicy, parameters: { symmetric, scheme, keyBits, exponent }, unique: { n }, raw: r.consumed(start) };
  }
  const scheme = readScheme(r, 'parameters.scheme', ECC_SCHEMES);
  const curveId = r.u16('parameters.curveID');
  const curve = curveFromId(curveId);
  if (curve === undefined) throw new TpmParseError('unsupported-algorithm', `TPMT_PUBLIC: ECC curve 0x${curveId.toString(16)} is not supported (P-256, P-384, P-521)`);
  const kdf = readScheme(r, 'parameters.kdf', KDF_SCHEMES);
  const x = r.tpm2b('unique.ecc.x', MAX_ECC_BYTES);
  const y = r.tpm2b('unique.ecc.y', MAX_ECC_BYTES);
  const bytes = curveInfo(curve).bytes;
  if (x.length > bytes || y.length > bytes) throw new TpmParseError('bad-size', `TPMT_PUBLIC: ECC point coordinates are longer than ${bytes} bytes for ${curve}`);
  return { type: 'ecc', nameAlg, objectAttributes, authPolicy, parameters: { symmetric, scheme, curve, kdf }, unique: { x, y }, raw: r.consumed(start) };
}

/** Parses a TPMT_PUBLIC (the public area without the TPM2B size prefix). */
export function parseTpmtPublic(buf: Buffer): TpmPublic {
  const r = new TpmReader(buf, 'TPMT_PUBLIC');
  const pub = readTpmtPublic(r);
  r.end();
  return pub;
}

/** Parses a TPM2B_PUBLIC (UINT16 size, then a TPMT_PUBLIC of exactly that size). */
export function parseTpm2bPublic(buf: Buffer): TpmPublic {
  const outer = new TpmReader(buf, 'TPM2B_PUBLIC');
  const inner = outer.tpm2b('publicArea', MAX_TPMT_PUBLIC);
  outer.end();
  if (inner.length === 0) throw new TpmParseError('bad-size', 'TPM2B_PUBLIC: empty public area');
  return parseTpmtPublic(inner);
}

/** TPM2B_PUBLIC wire bytes for a parsed public area. */
export function toTpm2bPublic(pub: TpmPublic): Buffer {
  return new TpmWriter().tpm2b(pub.raw).finish();
}

/** The object's Name: nameAlg (UINT16) || H_nameAlg(TPMT_PUBLIC). */
export function objectName(pub: TpmPublic): Buffer {
  const id = Buffer.alloc(2);
  id.writeUInt16BE(hashAlgId(pub.nameAlg));
  return Buffer.concat([id, crypto.createHash(pub.nameAlg).update(pub.raw).digest()]);
}

const keyCache = new WeakMap<TpmPublic, KeyObject>();

function b64u(b: Buffer): string { return b.toString('base64url'); }

function leftPad(b: Buffer, size: number): Buffer {
  return b.length >= size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/** The public key as a node KeyObject (cached per parsed structure, since verifiers call this per quote). */
export function publicKeyFromTpmPublic(pub: TpmPublic): KeyObject {
  const cached = keyCache.get(pub);
  if (cached !== undefined) return cached;
  let key: KeyObject;
  try {
    if (pub.type === 'rsa') {
      if (pub.unique.n.length === 0) throw new Error('the modulus is empty (this is a template, not a key)');
      const e = Buffer.alloc(4);
      e.writeUInt32BE(pub.parameters.exponent === 0 ? 65537 : pub.parameters.exponent);
      let i = 0;
      while (i < 3 && e[i] === 0) i++;
      key = crypto.createPublicKey({ key: { kty: 'RSA', n: b64u(pub.unique.n), e: b64u(e.subarray(i)) }, format: 'jwk' });
    } else {
      const info = curveInfo(pub.parameters.curve);
      if (pub.unique.x.length === 0 || pub.unique.y.length === 0) throw new Error('the point is empty (this is a template, not a key)');
      key = crypto.createPublicKey({
        key: { kty: 'EC', crv: info.jwk, x: b64u(leftPad(pub.unique.x, info.bytes)), y: b64u(leftPad(pub.unique.y, info.bytes)) },
        format: 'jwk',
      });
    }
  } catch (err) {
    throw new TpmParseError('bad-key', `TPMT_PUBLIC: not a usable ${pub.type.toUpperCase()} public key: ${(err as Error).message}`, { cause: err });
  }
  keyCache.set(pub, key);
  return key;
}

/** SubjectPublicKeyInfo DER of the key. */
export function spkiDer(pub: TpmPublic): Buffer {
  return publicKeyFromTpmPublic(pub).export({ type: 'spki', format: 'der' });
}

/**
 * A stable identifier for an EK: lowercase hex SHA-256 of the EK public key's SubjectPublicKeyInfo DER
 * (RSA as rsaEncryption with n and e; ECC as id-ecPublicKey, named curve, uncompressed point). It is
 * the same whether computed from the TPM2B_PUBLIC or from the EK certificate's key, so an EK can be
 * enrolled by hash before its node ever connects. Used in SPIFFE IDs spiffe://<td>/agent/tpm/<ekHash>.
 */
export function ekHash(ekPublic: TpmPublic): string {
  return crypto.createHash('sha256').update(spkiDer(ekPublic)).digest('hex');
}

/** Options for checkAkAttributes: what a verifier accepts beyond the fixed requirements. */
export interface AkPolicy {
  /** Hashes accepted for the signing scheme (default sha256, sha384, sha512). */
  hashes?: HashAlg[];
  /** Minimum RSA modulus size (default 2048). */
  minRsaBits?: number;
}

/**
 * Throws TpmAkPolicyError unless `pub` is an attestation key a verifier can trust: fixedTPM,
 * fixedParent, sensitiveDataOrigin, restricted and sign set; decrypt clear; no symmetric algorithm;
 * a signing scheme fixed in the key (RSASSA/RSAPSS for RSA, ECDSA for ECC) with an accepted hash.
 * Every problem is named, not just the first.
 */
export function checkAkAttributes(pub: TpmPublic, policy: AkPolicy = {}): void {
  const hashes = policy.hashes ?? ['sha256', 'sha384', 'sha512'];
  const problems: string[] = [];
  const a = pub.objectAttributes;
  for (const name of ['fixedTPM', 'fixedParent', 'sensitiveDataOrigin', 'restricted', 'sign'] as const) {
    if (!a[name]) problems.push(`${name} is not set`);
  }
  if (a.decrypt) problems.push('decrypt is set (an AK must be a signing-only key)');
  if (pub.parameters.symmetric !== null) problems.push('a symmetric algorithm is set (a signing key has none)');
  // Credential activation binds the AK to the EK through the AK's name, a digest under nameAlg: with
  // SHA-1 that binding would rest on a broken hash.
  if (!hashes.includes(pub.nameAlg)) problems.push(`the name algorithm ${pub.nameAlg} is not one of ${hashes.join(', ')} (the AK's name binds it to the EK)`);
  const scheme = pub.parameters.scheme;
  const expected = pub.type === 'rsa' ? ['rsassa', 'rsapss'] : ['ecdsa'];
  if (scheme === null) {
    problems.push(`the signing scheme is NULL (a restricted signing key must fix one of ${expected.join(', ')})`);
  } else {
    if (!expected.includes(scheme.alg)) problems.push(`the signing scheme ${scheme.alg} is not one of ${expected.join(', ')}`);
    if (scheme.hashAlg === null || !hashes.includes(scheme.hashAlg)) problems.push(`the scheme hash ${scheme.hashAlg ?? 'none'} is not one of ${hashes.join(', ')}`);
  }
  if (pub.type === 'rsa' && pub.parameters.keyBits < (policy.minRsaBits ?? 2048)) {
    problems.push(`the RSA key has ${pub.parameters.keyBits} bits, fewer than ${policy.minRsaBits ?? 2048}`);
  }
  if (pub.type === 'ecc' && pub.parameters.kdf !== null) problems.push('a KDF is set (an ECDSA AK has none)');
  if (problems.length > 0) throw new TpmAkPolicyError(problems);
}

/** Serializes a public area (template or key) to TPMT_PUBLIC wire bytes, the inverse of parseTpmtPublic. */
export function marshalTpmtPublic(p: Omit<TpmRsaPublic, 'raw'> | Omit<TpmEccPublic, 'raw'>): Buffer {
  const w = new TpmWriter();
  w.u16(p.type === 'rsa' ? TPM_ALG.RSA : TPM_ALG.ECC).u16(hashAlgId(p.nameAlg)).u32(p.objectAttributes.value).tpm2b(p.authPolicy);
  const sym = p.parameters.symmetric;
  if (sym === null) w.u16(TPM_ALG.NULL);
  else if (sym.alg === 'xor') w.u16(TPM_ALG.XOR).u16(sym.keyBits);
  else {
    const modeIds = { cfb: TPM_ALG.CFB, ctr: TPM_ALG.CTR, ofb: TPM_ALG.OFB, cbc: TPM_ALG.CBC, ecb: TPM_ALG.ECB } as const;
    const algIds = { aes: TPM_ALG.AES, sm4: TPM_ALG.SM4, camellia: TPM_ALG.CAMELLIA } as const;
    w.u16(algIds[sym.alg]).u16(sym.keyBits).u16(sym.mode === null ? TPM_ALG.NULL : modeIds[sym.mode]);
  }
  const writeScheme = (s: Scheme | null): void => {
    if (s === null) { w.u16(TPM_ALG.NULL); return; }
    w.u16(s.algId);
    if (HASHED_SCHEMES.has(s.algId)) w.u16(s.hashAlgId);
    if (s.algId === TPM_ALG.ECDAA) w.u16(s.count ?? 0);
  };
  writeScheme(p.parameters.scheme);
  if (p.type === 'rsa') {
    w.u16(p.parameters.keyBits).u32(p.parameters.exponent).tpm2b(p.unique.n);
  } else {
    w.u16(curveInfo(p.parameters.curve).id);
    writeScheme(p.parameters.kdf);
    w.tpm2b(p.unique.x).tpm2b(p.unique.y);
  }
  return w.finish();
}

/** A Scheme value for templates. */
export function scheme(alg: 'rsassa' | 'rsapss' | 'ecdsa' | 'oaep' | 'rsaes' | 'ecdh', hashAlg: HashAlg | null): Scheme {
  const ids = { rsassa: TPM_ALG.RSASSA, rsapss: TPM_ALG.RSAPSS, ecdsa: TPM_ALG.ECDSA, oaep: TPM_ALG.OAEP, rsaes: TPM_ALG.RSAES, ecdh: TPM_ALG.ECDH } as const;
  return { alg, algId: ids[alg], hashAlg, hashAlgId: hashAlg === null ? TPM_ALG.NULL : hashAlgId(hashAlg) };
}
