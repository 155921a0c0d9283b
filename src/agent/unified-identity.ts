// The agent's half of Unified Identity attestation: read every configured location sensor, build the
// canonical claims document ({"readings":[...],"v":1}, RFC 8785), and quote the PCRs the server asked
// for with qualifyingData bound to the server's nonce and to that document. The server recomputes the
// same binding, so a changed document or a quote from another challenge fails verification.
import type { UnifiedIdentityEvidence } from '../api/agent-api.js';
import { MAX_CLAIMS_DOCUMENT_BYTES, unifiedIdentityQualifyingData } from '../api/agent-api.js';
import { canonicalClaims, createSensor, readingToJson, type LocationReading, type SensorPlugin } from '../geo/index.js';
import type { UnifiedIdentityAgentConfig } from './config.js';
import type { TpmCredentialSource, UnifiedIdentityProvider } from './node-attestor.js';

export class UnifiedIdentityAgentError extends Error {
  readonly code = 'unified_identity';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UnifiedIdentityAgentError';
  }
}

export interface AgentUnifiedIdentity extends UnifiedIdentityProvider {
  close(): Promise<void>;
}

/** Pause before a sensor's background reader tries again after an error. */
const RETRY_MS = 1000;

/**
 * Opens the configured sensors and keeps reading them in the background, so an attestation uses the
 * latest reading instead of waiting for the receiver's next fix (GNSS receivers report at about 1 Hz).
 * A reading older than `readingMaxAgeMs` is not used: evidence() then waits for a fresh one. The
 * server's policy still judges each reading's own time.
 */
export function openUnifiedIdentity(cfg: UnifiedIdentityAgentConfig, tpm: TpmCredentialSource): AgentUnifiedIdentity {
  if (!tpm.quote) throw new UnifiedIdentityAgentError('the TPM session cannot quote (open it with openTpmCredentialSource)');
  const quote = tpm.quote.bind(tpm);
  const sensors: SensorPlugin[] = cfg.sensors.map((s) => createSensor(s));
  const allowed = cfg.pcrs ? new Set(cfg.pcrs) : undefined;
  const latest = new Map<SensorPlugin, { reading: LocationReading; receivedAt: number }>();
  let closed = false;
  const retries = new Set<NodeJS.Timeout>();
  const pump = (s: SensorPlugin): void => {
    if (closed) return;
    s.read({ timeoutMs: cfg.sensorTimeoutMs }).then(
      (reading) => { latest.set(s, { reading, receivedAt: Date.now() }); pump(s); },
      () => {
        // evidence() reports the sensor's error when it reads for itself; here just try again soon.
        const t = setTimeout(() => { retries.delete(t); pump(s); }, RETRY_MS);
        t.unref();
        retries.add(t);
      },
    );
  };
  for (const s of sensors) pump(s);

  const readingOf = async (s: SensorPlugin): Promise<LocationReading> => {
    const l = latest.get(s);
    if (l !== undefined && Date.now() - l.receivedAt <= cfg.readingMaxAgeMs) return l.reading;
    try {
      return await s.read({ timeoutMs: cfg.sensorTimeoutMs });
    } catch (e) {
      throw new UnifiedIdentityAgentError(`sensor ${s.id} (${s.kind}) gave no reading: ${(e as Error).message}`, { cause: e });
    }
  };

  return {
    async evidence(nonce: Buffer, pcrs: number[]): Promise<UnifiedIdentityEvidence> {
      if (nonce.length !== 32) throw new UnifiedIdentityAgentError(`the challenge nonce must be 32 bytes, got ${nonce.length}`);
      const refused = allowed ? pcrs.filter((p) => !allowed.has(p)) : [];
      if (refused.length > 0) throw new UnifiedIdentityAgentError(`the server asks to quote PCR(s) ${refused.join(', ')}, outside unifiedIdentity.pcrs`);
      const readings = await Promise.all(sensors.map(readingOf));
      // Evidence (raw sensor messages) stays out of the document: it would only make it larger.
      const doc = canonicalClaims({ v: 1, readings: readings.map((r) => { const { evidence: _e, ...rest } = readingToJson(r); return rest; }) });
      if (doc.length > MAX_CLAIMS_DOCUMENT_BYTES) throw new UnifiedIdentityAgentError(`claims document is ${doc.length} bytes, more than ${MAX_CLAIMS_DOCUMENT_BYTES}`);
      const q = await quote(pcrs, unifiedIdentityQualifyingData(nonce, doc));
      const wirePcrs: Record<string, Buffer> = {};
      for (const [i, v] of q.pcrs) wirePcrs[String(i)] = v;
      return { quote: { attest: q.attest, signature: q.signature, pcrs: wirePcrs }, claimsDocument: doc };
    },
    async close(): Promise<void> {
      closed = true;
      for (const t of retries) clearTimeout(t);
      retries.clear();
      await Promise.all(sensors.map((s) => s.close().catch(() => undefined)));
    },
  };
}
