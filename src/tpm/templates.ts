import { TPMA_OBJECT } from './constants.js';
import { decodeObjectAttributes, marshalTpmtPublic, scheme, type TpmEccPublic, type TpmRsaPublic } from './public.js';

/** The EK kinds a TPM may carry (TCG EK Credential Profile 2.x). */
export type EkKind = 'rsa2048' | 'ecc-p256' | 'ecc-p384';

/** NV indexes of the EK certificates. */
export const EK_NV_INDEX: Record<EkKind, number> = { rsa2048: 0x01c00002, 'ecc-p256': 0x01c0000a, 'ecc-p384': 0x01c00016 };

/** Persistent handles where provisioning (swtpm_setup, OEMs) leaves the EKs. */
export const EK_PERSISTENT_HANDLE: Record<EkKind, number> = { rsa2048: 0x81010001, 'ecc-p256': 0x81010002, 'ecc-p384': 0x81010016 };

/** PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the low-range EK policy ("PolicyA"). */
const POLICY_A_SHA256 = Buffer.from('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa', 'hex');
/** The high-range SHA-384 EK policy ("PolicyB"). */
const POLICY_B_SHA384 = Buffer.from('b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12', 'hex');

const EK_LOW = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.adminWithPolicy | TPMA_OBJECT.restricted | TPMA_OBJECT.decrypt;
/** High-range templates also set userWithAuth, so the EK is usable with an empty password. */
const EK_HIGH = EK_LOW | TPMA_OBJECT.userWithAuth;

/**
 * TPMT_PUBLIC of the TCG default EK templates: L-1 (RSA-2048), L-2 (ECC P-256) and the high-range
 * ECC P-384 template (SHA-384, AES-256) that swtpm provisions. A TPM recreates the same EK from
 * the same template, so these give the key the EK certificate certifies.
 */
export function ekTemplate(kind: EkKind): Buffer {
  if (kind === 'rsa2048') {
    const t: Omit<TpmRsaPublic, 'raw'> = {
      type: 'rsa', nameAlg: 'sha256', objectAttributes: decodeObjectAttributes(EK_LOW), authPolicy: POLICY_A_SHA256,
      parameters: { symmetric: { alg: 'aes', keyBits: 128, mode: 'cfb' }, scheme: null, keyBits: 2048, exponent: 0 },
      unique: { n: Buffer.alloc(256) },
    };
    return marshalTpmtPublic(t);
  }
  if (kind === 'ecc-p256') {
    const t: Omit<TpmEccPublic, 'raw'> = {
      type: 'ecc', nameAlg: 'sha256', objectAttributes: decodeObjectAttributes(EK_LOW), authPolicy: POLICY_A_SHA256,
      parameters: { symmetric: { alg: 'aes', keyBits: 128, mode: 'cfb' }, scheme: null, curve: 'p256', kdf: null },
      unique: { x: Buffer.alloc(32), y: Buffer.alloc(32) },
    };
    return marshalTpmtPublic(t);
  }
  const t: Omit<TpmEccPublic, 'raw'> = {
    type: 'ecc', nameAlg: 'sha384', objectAttributes: decodeObjectAttributes(EK_HIGH), authPolicy: POLICY_B_SHA384,
    parameters: { symmetric: { alg: 'aes', keyBits: 256, mode: 'cfb' }, scheme: null, curve: 'p384', kdf: null },
    unique: { x: Buffer.alloc(0), y: Buffer.alloc(0) },
  };
  return marshalTpmtPublic(t);
}

/** Attributes of an attestation key: a restricted signing key that never leaves the TPM. */
const AK_ATTRIBUTES = TPMA_OBJECT.fixedTPM | TPMA_OBJECT.fixedParent | TPMA_OBJECT.sensitiveDataOrigin | TPMA_OBJECT.userWithAuth | TPMA_OBJECT.restricted | TPMA_OBJECT.sign;

/**
 * TPMT_PUBLIC of an AK: ECC P-256 with ECDSA-SHA256, or RSA-2048 with RSASSA-SHA256. `unique` (any
 * bytes) makes each created primary AK a distinct key.
 */
export function akTemplate(alg: 'ecc-p256' | 'rsa2048', unique: Buffer = Buffer.alloc(0)): Buffer {
  if (alg === 'rsa2048') {
    return marshalTpmtPublic({
      type: 'rsa', nameAlg: 'sha256', objectAttributes: decodeObjectAttributes(AK_ATTRIBUTES), authPolicy: Buffer.alloc(0),
      parameters: { symmetric: null, scheme: scheme('rsassa', 'sha256'), keyBits: 2048, exponent: 0 },
      unique: { n: unique },
    });
  }
  return marshalTpmtPublic({
    type: 'ecc', nameAlg: 'sha256', objectAttributes: decodeObjectAttributes(AK_ATTRIBUTES), authPolicy: Buffer.alloc(0),
    parameters: { symmetric: null, scheme: scheme('ecdsa', 'sha256'), curve: 'p256', kdf: null },
    unique: { x: unique, y: Buffer.alloc(0) },
  });
}
