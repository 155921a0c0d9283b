// The audit stream into the evidence log: every audit record other than the attestation outcome
// (which attest.ts writes with its evidence) becomes an `event` leaf — admin changes, workload SVID
// signing, revocations, Keylime and latency witness rounds. Appended in the background (the audit
// interface is synchronous); a failure is logged and counted, never dropped silently.
import type { AuditRecord, Auditor } from '../audit.js';
import type { EvidenceLog } from './log.js';

/** Plain JSON for a record: bigints as strings, Dates as ISO strings, undefined members dropped. */
function plain(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x))) as unknown;
}

export function evidenceAuditor(inner: Auditor, log: EvidenceLog): Auditor {
  return {
    record(rec: AuditRecord) {
      inner.record(rec);
      // Attestation outcomes are attestation records already; a withdrawal is an event of its own.
      if (rec.action === 'attest_agent' && rec.details?.['withdrawn'] !== true) return;
      log.appendLater({
        kind: 'event', action: rec.action, caller: rec.caller, result: rec.result,
        ...(rec.subject !== undefined ? { subject: rec.subject } : {}),
        ...(rec.reason !== undefined ? { reason: rec.reason } : {}),
        ...(rec.details !== undefined ? { details: plain(rec.details) as Record<string, unknown> } : {}),
      }, rec.subject);
    },
  };
}
