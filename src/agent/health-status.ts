// The agent's own account of its node attestation, for `terroir-agent healthcheck`: while the node is
// not attested there is no Workload API to ask, so the agent writes a small JSON file next to its
// socket (`<socketPath>.health.json`) saying what it is doing and why its last attempt failed.
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';

export interface AttestationFailure {
  at: string;
  /** 'refused': the server said no (a gRPC status other than UNAVAILABLE); 'unavailable': it could not be reached. */
  kind: 'refused' | 'unavailable' | 'protocol' | 'tpm' | 'other';
  /** The gRPC status name, when the server answered. */
  code?: string;
  message: string;
}

export interface AgentHealthStatus {
  pid: number;
  updatedAt: string;
  spiffeId?: string;
  attestation: {
    /** 'attesting': first attempt in flight; 'attested': the last attempt succeeded; 'failing': it did not. */
    state: 'attesting' | 'attested' | 'failing';
    /** Failed attempts since the last success. */
    failures: number;
    lastError?: AttestationFailure;
    nextAttemptAt?: string;
  };
}

const MAX_STATUS_BYTES = 64 * 1024;

export function healthStatusPath(socketPath: string): string {
  return `${socketPath}.health.json`;
}

/** Keeps `<socketPath>.health.json` current; removed when the agent stops. */
export class HealthStatusWriter {
  private status: AgentHealthStatus;
  private readonly file: string;
  private disabled = false;
  private written = false;

  constructor(socketPath: string, private readonly log: Logger) {
    this.file = healthStatusPath(socketPath);
    this.status = { pid: process.pid, updatedAt: new Date().toISOString(), attestation: { state: 'attesting', failures: 0 } };
  }

  get current(): AgentHealthStatus {
    return this.status;
  }

  /** An attempt begins: written only before the first outcome, so a probe can tell "still attesting". */
  attesting(): void {
    if (!this.written) this.write();
  }

  attested(spiffeId: string): void {
    this.status = { ...this.status, spiffeId, attestation: { state: 'attested', failures: 0 } };
    this.write();
  }

  failed(error: AttestationFailure): void {
    const a = this.status.attestation;
    this.status = { ...this.status, attestation: { state: 'failing', failures: a.failures + 1, lastError: error } };
    this.write();
  }

  /** After a failure: when the agent tries again. */
  retryingAt(at: number): void {
    this.status = { ...this.status, attestation: { ...this.status.attestation, nextAttemptAt: new Date(at).toISOString() } };
    this.write();
  }

  remove(): void {
    if (this.disabled) return;
    try {
      fs.unlinkSync(this.file);
    } catch {
      // already gone
    }
  }

  private write(): void {
    if (this.disabled) return;
    this.status = { ...this.status, updatedAt: new Date().toISOString() };
    const dir = path.dirname(this.file);
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
      // The same rule as for the socket: a directory others can write is not ours to write into.
      const st = fs.statSync(dir);
      if ((st.mode & 0o022) !== 0) {
        this.disabled = true;
        this.log.warn({ dir }, 'the socket directory is writable by group or others: no health status file is written');
        return;
      }
      // Written whole and renamed, so a reader never sees half a file. Readable by all: a health
      // probe may run as another user, and the file holds no secret (what the server refused and why).
      const tmp = `${this.file}.${process.pid}.tmp`;
      fs.writeFileSync(tmp, `${JSON.stringify(this.status)}\n`, { mode: 0o644 });
      fs.renameSync(tmp, this.file);
      this.written = true;
    } catch (e) {
      this.log.warn({ file: this.file, err: (e as Error).message }, 'could not write the health status file');
    }
  }
}

/**
 * Reads the status an agent wrote next to `socketPath`, if any, and whether the process that wrote
 * it still runs (a file left by a killed agent says nothing about the present).
 */
export function readHealthStatus(socketPath: string): { status: AgentHealthStatus; running: boolean } | undefined {
  let text: string;
  try {
    const fd = fs.openSync(healthStatusPath(socketPath), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      const buf = Buffer.alloc(MAX_STATUS_BYTES + 1);
      const n = fs.readSync(fd, buf, 0, buf.length, 0);
      if (n > MAX_STATUS_BYTES) return undefined;
      text = buf.subarray(0, n).toString('utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return undefined;
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return undefined;
  }
  const s = doc as AgentHealthStatus;
  if (typeof s !== 'object' || s === null || !Number.isInteger(s.pid) || s.pid <= 0 || typeof s.attestation !== 'object' || s.attestation === null
    || !['attesting', 'attested', 'failing'].includes(s.attestation.state)) return undefined;
  let running = true;
  try {
    process.kill(s.pid, 0);
  } catch (e) {
    running = (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  return { status: s, running };
}

/** One line for a person: what the last attestation attempt ran into, and when the next one is. */
export function describeAttestationFailure(s: AgentHealthStatus): string | undefined {
  const a = s.attestation;
  if (a.state !== 'failing' || !a.lastError) return undefined;
  const e = a.lastError;
  const what = e.kind === 'refused' ? 'node attestation refused' : e.kind === 'unavailable' ? 'server unreachable for node attestation' : 'node attestation failed';
  const next = a.nextAttemptAt ? `; next attempt at ${a.nextAttemptAt}` : '';
  return `${what} (${a.failures} failed attempt${a.failures === 1 ? '' : 's'}, last at ${e.at}${next}): ${e.code ? `${e.code}: ` : ''}${e.message}`;
}
