// The evidence reference an SVID carries: which log, and the index of the attestation record the
// identity rests on (docs/evidence-log.md). With it a relying party (or an auditor handed an SVID)
// goes from the identity to its evidence and asks the log for an inclusion proof.
// X.509: a non-critical extension, DER SEQUENCE { log UTF8String, index INTEGER }.
// JWT: the claim `terroir_evidence` = {"log": "<origin>", "index": <n>}.
import { children, content, DerError, readWhole, seq, TAG, uintFromBytes, utf8String } from './der.js';
import { extensionValues, UnifiedIdentityError } from './unified-identity.js';
import type { ExtraExtension } from './x509svid.js';

/** A UUID-derived 2.25 arc of its own (not under the Unified Identity OID: the log is on with the flag off too). */
export const EVIDENCE_REF_OID = '2.25.305423284964344341615238004651143903300';
export const EVIDENCE_REF_JWT_CLAIM = 'terroir_evidence';
const MAX_LOG_NAME = 200;

export interface EvidenceRef {
  /** The log's origin (its checkpoints' first line). */
  log: string;
  /** Log index of the attestation record. */
  index: number;
}

export class EvidenceRefError extends Error {
  override readonly name = 'EvidenceRefError';
}

function check(ref: EvidenceRef): EvidenceRef {
  if (typeof ref.log !== 'string' || ref.log.length === 0 || ref.log.length > MAX_LOG_NAME) throw new EvidenceRefError(`evidence log name must be 1..${MAX_LOG_NAME} characters`);
  if (!Number.isSafeInteger(ref.index) || ref.index < 0) throw new EvidenceRefError(`evidence log index must be a non-negative integer, got ${String(ref.index)}`);
  return ref;
}

export function evidenceRefExtension(ref: EvidenceRef): ExtraExtension {
  check(ref);
  const hex = ref.index.toString(16);
  const bytes = Buffer.from(hex.length % 2 === 1 ? `0${hex}` : hex, 'hex');
  return { oid: EVIDENCE_REF_OID, critical: false, value: seq(utf8String(ref.log), uintFromBytes(bytes)) };
}

export function decodeEvidenceRefExtension(value: Buffer): EvidenceRef {
  try {
    const whole = readWhole(value, TAG.SEQUENCE, 'evidence reference');
    const parts = children(value, whole);
    const [name, index] = parts;
    if (parts.length !== 2 || name?.tag !== TAG.UTF8_STRING || index?.tag !== TAG.INTEGER) throw new DerError('expected SEQUENCE { UTF8String, INTEGER }');
    const n = content(value, index);
    if (n.length === 0 || n.length > 8 || ((n[0] as number) & 0x80) !== 0 || (n.length > 1 && n[0] === 0 && ((n[1] as number) & 0x80) === 0)) {
      throw new DerError('the index is not a minimal non-negative INTEGER of at most 8 bytes');
    }
    const log = new TextDecoder('utf-8', { fatal: true }).decode(content(value, name));
    return check({ log, index: Number(BigInt(`0x${n.toString('hex')}`)) });
  } catch (err) {
    if (err instanceof EvidenceRefError) throw err;
    throw new EvidenceRefError(`malformed evidence reference extension: ${(err as Error).message}`, { cause: err });
  }
}

/** The evidence reference of a certificate (DER); undefined when it has none; throws when malformed or repeated. */
export function evidenceRefFromCertificate(der: Buffer): EvidenceRef | undefined {
  let values: Buffer[];
  try {
    values = extensionValues(der, EVIDENCE_REF_OID);
  } catch (err) {
    if (err instanceof UnifiedIdentityError) throw new EvidenceRefError(err.message, { cause: err });
    throw err;
  }
  if (values.length === 0) return undefined;
  if (values.length > 1) throw new EvidenceRefError('certificate carries the evidence reference extension more than once');
  return decodeEvidenceRefExtension(values[0] as Buffer);
}

/** The `terroir_evidence` claim of JWT-SVID claims, checked; undefined when absent. */
export function evidenceRefFromJwtClaims(claims: Record<string, unknown>): EvidenceRef | undefined {
  if (!Object.prototype.hasOwnProperty.call(claims, EVIDENCE_REF_JWT_CLAIM)) return undefined;
  const v = claims[EVIDENCE_REF_JWT_CLAIM];
  if (v === null || typeof v !== 'object' || Array.isArray(v) || Object.keys(v).sort().join(',') !== 'index,log') {
    throw new EvidenceRefError(`${EVIDENCE_REF_JWT_CLAIM} must be {"log": <name>, "index": <n>}`);
  }
  return check(v as EvidenceRef);
}
