/** TPM 2.0 constants used here (TPM 2.0 Library Part 2, "Structures"). */

export const TPM_ALG = {
  RSA: 0x0001,
  SHA1: 0x0004,
  HMAC: 0x0005,
  AES: 0x0006,
  KEYEDHASH: 0x0008,
  XOR: 0x000a,
  SHA256: 0x000b,
  SHA384: 0x000c,
  SHA512: 0x000d,
  NULL: 0x0010,
  SM4: 0x0013,
  RSASSA: 0x0014,
  RSAES: 0x0015,
  RSAPSS: 0x0016,
  OAEP: 0x0017,
  ECDSA: 0x0018,
  ECDH: 0x0019,
  ECDAA: 0x001a,
  SM2: 0x001b,
  ECSCHNORR: 0x001c,
  ECMQV: 0x001d,
  KDF1_SP800_56A: 0x0020,
  KDF2: 0x0021,
  KDF1_SP800_108: 0x0022,
  ECC: 0x0023,
  SYMCIPHER: 0x0025,
  CAMELLIA: 0x0026,
  CTR: 0x0040,
  OFB: 0x0041,
  CBC: 0x0042,
  CFB: 0x0043,
  ECB: 0x0044,
  MGF1: 0x0007,
} as const;

export const TPM_ECC_CURVE = { NIST_P192: 0x0001, NIST_P224: 0x0002, NIST_P256: 0x0003, NIST_P384: 0x0004, NIST_P521: 0x0005 } as const;

export const TPM_ST = {
  ATTEST_NV: 0x8014,
  ATTEST_COMMAND_AUDIT: 0x8015,
  ATTEST_SESSION_AUDIT: 0x8016,
  ATTEST_CERTIFY: 0x8017,
  ATTEST_QUOTE: 0x8018,
  ATTEST_TIME: 0x8019,
  ATTEST_CREATION: 0x801a,
  ATTEST_NV_DIGEST: 0x801c,
} as const;

/** TPM_GENERATED_VALUE: the magic that only the TPM puts at the start of data it signs. */
export const TPM_GENERATED_VALUE = 0xff544347;

/** TPMA_OBJECT bits. */
export const TPMA_OBJECT = {
  fixedTPM: 1 << 1,
  stClear: 1 << 2,
  fixedParent: 1 << 4,
  sensitiveDataOrigin: 1 << 5,
  userWithAuth: 1 << 6,
  adminWithPolicy: 1 << 7,
  noDA: 1 << 10,
  encryptedDuplication: 1 << 11,
  restricted: 1 << 16,
  decrypt: 1 << 17,
  sign: 1 << 18,
  x509sign: 1 << 19,
} as const;

export type HashAlg = 'sha1' | 'sha256' | 'sha384' | 'sha512';

const HASHES: { alg: HashAlg; id: number; size: number }[] = [
  { alg: 'sha1', id: TPM_ALG.SHA1, size: 20 },
  { alg: 'sha256', id: TPM_ALG.SHA256, size: 32 },
  { alg: 'sha384', id: TPM_ALG.SHA384, size: 48 },
  { alg: 'sha512', id: TPM_ALG.SHA512, size: 64 },
];

/** The hash name for a TPM_ALG_ID, or undefined when it is not a supported hash. */
export function hashAlgFromId(id: number): HashAlg | undefined {
  return HASHES.find((h) => h.id === id)?.alg;
}

export function hashAlgId(alg: HashAlg): number {
  const h = HASHES.find((x) => x.alg === alg);
  if (h === undefined) throw new TypeError(`unsupported hash algorithm ${String(alg)}`);
  return h.id;
}

export function digestSize(alg: HashAlg): number {
  const h = HASHES.find((x) => x.alg === alg);
  if (h === undefined) throw new TypeError(`unsupported hash algorithm ${String(alg)}`);
  return h.size;
}

export function isHashAlg(x: unknown): x is HashAlg {
  return HASHES.some((h) => h.alg === x);
}

export type EccCurve = 'p256' | 'p384' | 'p521';

const CURVES: { curve: EccCurve; id: number; bytes: number; jwk: string; openssl: string }[] = [
  { curve: 'p256', id: TPM_ECC_CURVE.NIST_P256, bytes: 32, jwk: 'P-256', openssl: 'prime256v1' },
  { curve: 'p384', id: TPM_ECC_CURVE.NIST_P384, bytes: 48, jwk: 'P-384', openssl: 'secp384r1' },
  { curve: 'p521', id: TPM_ECC_CURVE.NIST_P521, bytes: 66, jwk: 'P-521', openssl: 'secp521r1' },
];

export function curveFromId(id: number): EccCurve | undefined {
  return CURVES.find((c) => c.id === id)?.curve;
}

export function curveInfo(curve: EccCurve): { id: number; bytes: number; jwk: string; openssl: string } {
  const c = CURVES.find((x) => x.curve === curve);
  if (c === undefined) throw new TypeError(`unsupported curve ${String(curve)}`);
  return c;
}

/** Names for the algorithm ids that appear in schemes, for readable errors and decoded output. */
export function algName(id: number): string {
  for (const [k, v] of Object.entries(TPM_ALG)) if (v === id) return k.toLowerCase();
  return `0x${id.toString(16).padStart(4, '0')}`;
}
