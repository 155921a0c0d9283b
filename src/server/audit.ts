// Audit records: one structured log line per security-relevant event (attestation, issuance, admin
// change), saying who did what and how it ended. Emitted through pino as `audit: true` records so a
// log pipeline can route them apart from operational logs.
import type { Logger } from 'pino';

export type AuditAction =
  | 'attest_agent'
  | 'renew_agent'
  | 'sign_x509_svid'
  | 'sign_jwt_svid'
  | 'admin'
  | 'federation_refresh'
  | 'ca_rotate'
  /** Keylime continuous attestation: a node lost trust, or was removed from the verifier. */
  | 'keylime'
  /** A latency witness round (landmarks probed a node) and what it did to the node's claims. */
  | 'latency_witness';

export interface AuditRecord {
  action: AuditAction;
  /** Who: an agent SPIFFE ID, a source address, "admin", "server". */
  caller: string;
  /** What the action was about: a SPIFFE ID, an entry id, an RPC name. */
  subject?: string;
  result: 'ok' | 'denied' | 'error';
  /** Why it was refused or failed. */
  reason?: string;
  /** Extra facts (never secrets or private keys). */
  details?: Record<string, unknown>;
}

export interface Auditor {
  record(rec: AuditRecord): void;
}

/** An auditor writing to a pino logger (child `component: audit`). */
export function pinoAuditor(logger: Logger): Auditor {
  const log = logger.child({ component: 'audit' });
  return {
    record(rec) {
      const line = { audit: true, ...rec };
      if (rec.result === 'ok') log.info(line, `${rec.action} ok`);
      else log.warn(line, `${rec.action} ${rec.result}`);
    },
  };
}
