// Gathers, step by step through one AttestAgent exchange, what the evidence log keeps of it: the
// TPM inputs once they parsed, the node's answer, the Unified Identity verdicts and decision. At the
// end it yields one attestation record, accepted or refused (docs/evidence-log.md).
import crypto from 'node:crypto';
import type { ChallengeResponse, TpmAttestation } from '../../api/agent-api.js';
import { MAX_CLAIMS_DOCUMENT_BYTES } from '../../api/agent-api.js';
import { recordQuote, type AttestationRecord, type RecordedTpmEvidence, type RecordedUnifiedEvidence } from '../../evidence/record.js';
import type { EvidenceRef } from '../../spiffe/evidence-ref.js';
import type { AttestedNode } from '../datastore/types.js';
import type { PendingTpmAttestation } from '../attestation/tpm.js';
import type { VerifiedUnifiedIdentity } from '../attestation/unified.js';
import type { RecordInput } from './log.js';

/** Refused attempts come from anyone: their quote parts are kept only within the sizes a TPM produces. */
const MAX_QUOTE_PART_BYTES = 1024;

type AttestationInput = Extract<RecordInput, { kind: 'attestation' }>;

export class AttestationRecorder {
  method: AttestationRecord['method'] = 'unknown';
  agentId: string | undefined;
  private tpm: RecordedTpmEvidence | undefined;
  private unified: RecordedUnifiedEvidence | undefined;
  private joinTokenSha256: string | undefined;

  constructor(private readonly source: string, private readonly policy?: { index: number; sha256: string }) {}

  joinToken(token: string): void {
    this.method = 'join_token';
    this.joinTokenSha256 = crypto.createHash('sha256').update(token, 'utf8').digest('hex');
  }

  /** After the server parsed the EK and AK and built the challenge (so the sizes are bounded). */
  tpmChallenge(params: TpmAttestation, pending: PendingTpmAttestation): void {
    this.method = 'tpm';
    const chain = params.ekCertificate.length > 0
      ? crypto.createHash('sha256').update(Buffer.concat([params.ekCertificate, ...params.ekIntermediates])).digest('hex')
      : undefined;
    this.tpm = {
      ekHash: pending.ekHash,
      ekPublic: params.ekPublic.toString('base64'),
      akPublic: params.akPublic.toString('base64'),
      ...(chain !== undefined ? { ekCertificateChainSha256: chain } : {}),
      ekTrust: pending.ekCertificate ? 'certificate' : 'enrolled',
      nonce: pending.challenge.nonce.toString('base64'),
    };
  }

  /** The node's answer: its PCR-selector quote and its Unified Identity quote and claims document. */
  response(r: ChallengeResponse): void {
    const fits = (q: { attest: Buffer; signature: Buffer } | null | undefined): boolean =>
      q != null && q.attest.length > 0 && q.attest.length <= MAX_QUOTE_PART_BYTES && q.signature.length <= MAX_QUOTE_PART_BYTES;
    if (this.tpm && r.pcrQuote && fits(r.pcrQuote)) this.tpm.pcrSelectorQuote = recordQuote(r.pcrQuote);
    const ev = r.unifiedIdentity;
    if (ev && fits(ev.quote) && ev.claimsDocument.length > 0 && ev.claimsDocument.length <= MAX_CLAIMS_DOCUMENT_BYTES) {
      this.unified = {
        quote: recordQuote(ev.quote!),
        claimsDocument: ev.claimsDocument.toString('base64'),
        ...(ev.sensorEvidence && ev.sensorEvidence.length > 0 ? { sensorEvidenceSha256: crypto.createHash('sha256').update(ev.sensorEvidence).digest('hex') } : {}),
      };
    }
  }

  /** The pipeline accepted the evidence: its verdicts, decision and the claims. */
  verified(v: VerifiedUnifiedIdentity): void {
    if (!this.unified) return;
    const f = v.facts;
    Object.assign(this.unified, {
      keylime: f.keylime,
      ...(f.operator ? { operator: f.operator } : {}),
      ...(f.latencyDisks ? { latencyDisks: f.latencyDisks } : {}),
      ...(this.policy ? { policy: { record: this.policy.index, sha256: this.policy.sha256, name: f.policyName } } : {}),
      decision: f.decision,
      claims: JSON.parse(JSON.stringify(v.claims)) as Record<string, unknown>,
    });
  }

  private base(): Omit<AttestationInput, 'result'> {
    return {
      kind: 'attestation',
      method: this.method,
      source: this.source,
      ...(this.agentId !== undefined ? { agentId: this.agentId } : {}),
      ...(this.tpm ? { tpm: this.tpm } : {}),
      ...(this.unified ? { unified: this.unified } : {}),
      ...(this.joinTokenSha256 !== undefined ? { joinTokenSha256: this.joinTokenSha256 } : {}),
    };
  }

  accepted(agentId: string): AttestationInput {
    this.agentId = agentId;
    return { ...this.base(), result: 'accepted' };
  }

  refused(reason: string): AttestationInput {
    return { ...this.base(), result: 'refused', reason: reason.slice(0, 2000) };
  }
}

/** The evidence reference of a node's last accepted attestation (kept in its attestation data). */
export function nodeEvidenceRef(node: Pick<AttestedNode, 'attestationData'>): EvidenceRef | undefined {
  const v = node.attestationData['evidence'];
  if (v === null || typeof v !== 'object') return undefined;
  const { log, index } = v as Record<string, unknown>;
  return typeof log === 'string' && typeof index === 'number' && Number.isSafeInteger(index) && index >= 0 ? { log, index } : undefined;
}
