// The records of terroir's evidence log (docs/evidence-log.md): what each leaf of the Merkle tree
// holds. A leaf is the RFC 8785 canonical JSON of one record, so the bytes an auditor hashes are the
// bytes the server hashed, whatever JSON library either side uses. Binary values are base64
// (standard alphabet), digests lowercase hex, times ISO 8601 in UTC with milliseconds.
import { canonicalClaims } from '../geo/claims.js';

/** Version of the record format; a record of another version is refused, never half-read. */
export const EVIDENCE_RECORD_VERSION = 1;

/** A record is at most this large (an attestation with a 16 KiB EK chain digest list, claims, quote). */
export const MAX_RECORD_BYTES = 256 * 1024;

/** A TPM2_Quote as the node sent it. */
export interface RecordedQuote {
  /** TPMS_ATTEST, base64. */
  attest: string;
  /** TPMT_SIGNATURE, base64. */
  signature: string;
  /** The sha256 PCR values quoted, index → hex. */
  pcrs: Record<string, string>;
}

/** The TPM part of an attestation: enough to check the quote again and to tie it to the node's ID. */
export interface RecordedTpmEvidence {
  ekHash: string;
  /** TPM2B_PUBLIC of the EK, base64 (its hash is ekHash, the node's SPIFFE ID ends in it). */
  ekPublic: string;
  /** TPM2B_PUBLIC of the AK, base64: the key every quote of this attestation must be signed by. */
  akPublic: string;
  /** SHA-256 of the EK certificate followed by its intermediates (DER, concatenated); absent when none was sent. */
  ekCertificateChainSha256?: string;
  /** How the EK was trusted: `certificate` (chain to a manufacturer CA) or `enrolled` (its hash listed). */
  ekTrust?: 'certificate' | 'enrolled';
  /** The server's single-use challenge nonce, base64. */
  nonce: string;
  /** The PCR-selector quote (nodeAttestation.tpm.pcrSelectors), when the challenge asked for one. */
  pcrSelectorQuote?: RecordedQuote;
}

/** The Unified Identity part: the quote over the claims document, Keylime's verdict, the policy decision. */
export interface RecordedUnifiedEvidence {
  quote: RecordedQuote;
  /** The node's claims document (canonical JSON bytes), base64. */
  claimsDocument: string;
  /** SHA-256 of the opaque sensor evidence the node sent, when it sent any. */
  sensorEvidenceSha256?: string;
  /** Keylime's one-shot verdict as received (who checked: `keylime` or the development stand-in). */
  keylime?: { verifier: string; valid: boolean; failures: unknown[]; apiVersion?: string };
  /** The mobile operator's answer the policy counted (as OperatorVerification JSON), when asked. */
  operator?: Record<string, unknown>;
  /** Landmark disks that counted at this decision (LandmarkDisk JSON, measuredAt ISO). */
  latencyDisks?: Record<string, unknown>[];
  /** The policy set the decision was taken under: the log index of its `policy` record and its digest. */
  policy?: { record: number; sha256: string; name: string };
  /** The decision as taken: allow/deny/undecided and the evaluator's reasons. */
  decision?: { decision: string; reasons: string[] };
  /** The claims the SVIDs carry (accepted attestations only). */
  claims?: Record<string, unknown>;
}

interface RecordBase {
  v: typeof EVIDENCE_RECORD_VERSION;
  /** When the server wrote the record. */
  time: string;
  /** Which server wrote it (its configured name, or host name). */
  server: string;
}

/** One node attestation, accepted or refused. */
export interface AttestationRecord extends RecordBase {
  kind: 'attestation';
  result: 'accepted' | 'refused';
  method: 'tpm' | 'join_token' | 'unknown';
  /** The node's SPIFFE ID (absent when refused before it was known). */
  agentId?: string;
  /** The peer address the attestation came from. */
  source?: string;
  /** Why it was refused (refused records). */
  reason?: string;
  tpm?: RecordedTpmEvidence;
  unified?: RecordedUnifiedEvidence;
  /** Join-token attestations: SHA-256 of the token (the token itself is a secret, and single use). */
  joinTokenSha256?: string;
}

/** The location policy set in force: appended when a server starts with a set not yet in the log. */
export interface PolicyRecord extends RecordBase {
  kind: 'policy';
  /** SHA-256 of `document` (UTF-8). */
  sha256: string;
  /** The policy set as configured (YAML text). */
  document: string;
  defaultPolicy: string;
  /** The PCRs the server asks every node to quote. */
  pcrs: number[];
}

/** What was issued on an attestation: the agent SVID (and the EAR for relying parties). */
export interface IssuanceRecord extends RecordBase {
  kind: 'issuance';
  /** Log index of the attestation record this rests on. */
  attestation: number;
  agentId: string;
  svid: { serial: string; notAfter: string };
  /** The signed EAT Attestation Result (compact JWS), when the server produces them. */
  ear?: string;
}

/** Every other audit event (workload SVID signing, admin change, revocation, Keylime, latency witness). */
export interface EventRecord extends RecordBase {
  kind: 'event';
  action: string;
  caller: string;
  subject?: string;
  result: 'ok' | 'denied' | 'error';
  reason?: string;
  details?: Record<string, unknown>;
}

export type EvidenceRecord = AttestationRecord | PolicyRecord | IssuanceRecord | EventRecord;
export type EvidenceRecordKind = EvidenceRecord['kind'];

export class EvidenceRecordError extends Error {
  override readonly name = 'EvidenceRecordError';
}

/** The leaf bytes of a record: its RFC 8785 canonical JSON. */
export function encodeRecord(record: EvidenceRecord): Buffer {
  const bytes = canonicalClaims(record);
  if (bytes.length > MAX_RECORD_BYTES) {
    throw new EvidenceRecordError(`an evidence record of kind ${record.kind} is ${bytes.length} bytes, more than ${MAX_RECORD_BYTES}`);
  }
  return bytes;
}

const KINDS = new Set<EvidenceRecordKind>(['attestation', 'policy', 'issuance', 'event']);

/**
 * Reads leaf bytes back into a record: UTF-8 JSON, canonical (one spelling per record, so an edited
 * spelling is caught even before its hash), known version and kind. The kind's fields are checked by
 * whoever uses them (the auditor's re-verification names a missing or ill-typed field).
 */
export function decodeRecord(bytes: Uint8Array): EvidenceRecord {
  if (bytes.length === 0 || bytes.length > MAX_RECORD_BYTES) throw new EvidenceRecordError(`a record must be 1..${MAX_RECORD_BYTES} bytes, got ${bytes.length}`);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (err) {
    throw new EvidenceRecordError(`a record is not UTF-8 JSON: ${(err as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new EvidenceRecordError('a record must be a JSON object');
  if (!Buffer.from(bytes).equals(canonicalClaims(value))) throw new EvidenceRecordError('a record is not in RFC 8785 canonical form');
  const r = value as Record<string, unknown>;
  if (r['v'] !== EVIDENCE_RECORD_VERSION) throw new EvidenceRecordError(`record version ${JSON.stringify(r['v'])} is not ${EVIDENCE_RECORD_VERSION}`);
  if (!KINDS.has(r['kind'] as EvidenceRecordKind)) throw new EvidenceRecordError(`unknown record kind ${JSON.stringify(r['kind'])}`);
  if (typeof r['time'] !== 'string' || Number.isNaN(Date.parse(r['time']))) throw new EvidenceRecordError('a record has no valid time');
  if (typeof r['server'] !== 'string') throw new EvidenceRecordError('a record has no server');
  return value as EvidenceRecord;
}

/** The quote as recorded: base64 bytes, hex PCR values. */
export function recordQuote(q: { attest: Buffer; signature: Buffer; pcrs?: Record<string, Buffer> | Map<number, Buffer> }): RecordedQuote {
  const entries = q.pcrs instanceof Map ? [...q.pcrs].map(([k, v]) => [String(k), v] as const) : Object.entries(q.pcrs ?? {});
  return {
    attest: q.attest.toString('base64'),
    signature: q.signature.toString('base64'),
    pcrs: Object.fromEntries(entries.map(([k, v]) => [k, v.toString('hex')])),
  };
}
