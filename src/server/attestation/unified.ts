// The Unified Identity attestation pipeline (featureFlags.unifiedIdentity, DESIGN.md steps 3-6). It
// runs after the TPM attestor proved the AK (activated secret, constant-time) and consumed the nonce,
// and checks, in order: the claims document (strict, size-limited, canonical), the quote locally
// (AK signature, extraData bound to nonce and claims, PCR digest), Keylime's one-shot verdict, and the
// sovereign-location policy (with the mobile operator's answer when configured). Only when all pass does it return the coarse claims the SVIDs carry.
// Nothing here writes state: the caller stores the claims after minting.
import crypto from 'node:crypto';
import fs from 'node:fs';
import YAML from 'yaml';
import type { Logger } from 'pino';
import type { UnifiedIdentityEvidence } from '../../api/agent-api.js';
import { MAX_CLAIMS_DOCUMENT_BYTES, unifiedIdentityQualifyingData } from '../../api/agent-api.js';
import {
  CamaraError, CamaraLocationVerifier, CamaraUnavailableError, canonicalClaims, evaluatePolicy, parsePolicies, readingFromJson,
  type CamaraDevice, type LandmarkDisk, type LocationReading, type OperatorVerification, type PolicyDecision, type PolicySet,
} from '../../geo/index.js';
import {
  encodeQuoteString, KeylimeConfigError, KeylimeEvidenceRejectedError, KeylimeRequestError, KeylimeVerifierClient,
  tpmPolicyJson, verifyEvidence, type EvidenceVerdict, type TpmPolicy,
} from '../../keylime/index.js';
import type { UnifiedIdentityClaims } from '../../spiffe/unified-identity.js';
import type { KeylimeRequestReport } from '../../keylime/client.js';
import type { LimiterLoad } from '../../keylime/limiter.js';
import { canonicalUnifiedIdentity, DEVELOPMENT_STAND_IN_VERIFIER } from '../../spiffe/unified-identity.js';
import { TpmQuoteError, verifyQuote, type TpmPublic } from '../../tpm/index.js';
import type { ServerConfig } from '../config.js';
import { ConfigError } from '../config.js';
import type { AttestedNode } from '../datastore/types.js';
import { AttestationError } from './errors.js';

export type UnifiedIdentitySettings = NonNullable<ServerConfig['unifiedIdentity']>;
type OperatorSettings = NonNullable<UnifiedIdentitySettings['operator']>;

/** Claims document version the agent builds ({"readings":[...],"v":1}). */
export const CLAIMS_DOCUMENT_VERSION = 1;
const MAX_READINGS = 16;
const MAX_SENSOR_EVIDENCE_BYTES = 64 * 1024;

/** Durations of the server-side stages of the last verification (ms), for the benchmark and logs. */
export interface PipelineStages {
  claims: number;
  quote: number;
  keylime: number;
  /** The mobile-operator round trip (0 when not asked). */
  operator: number;
  policy: number;
}

/** What the evidence log keeps of a verification, beyond the quote and claims document (docs/evidence-log.md). */
export interface VerificationFacts {
  keylime: { verifier: string; valid: boolean; failures: unknown[]; apiVersion?: string };
  /** The operator's answer as the policy counted it (times as ISO strings). */
  operator?: Record<string, unknown>;
  /** The landmark disks that counted (times as ISO strings). */
  latencyDisks?: Record<string, unknown>[];
  decision: { decision: string; reasons: string[] };
  policyName: string;
}

export interface VerifiedUnifiedIdentity {
  /** What the SVIDs carry (coarse: never coordinates). */
  claims: UnifiedIdentityClaims;
  facts: VerificationFacts;
  /** Precise readings and verdicts, for the audit log only. */
  audit: Record<string, unknown>;
  stages: PipelineStages;
}

export interface VerifyInput {
  agentId: string;
  /** The EK hash the server computed from the EK it verified (never the agent's word): selects the node's SIM. */
  ekHash: string;
  nonce: Buffer;
  ak: TpmPublic;
  /** The AK as sent (TPM2B_PUBLIC), for Keylime. */
  akPublic: Buffer;
  /** The EK as sent (TPM2B_PUBLIC): Keylime requires `tpm_ek` on every one-shot request (it does not check it). */
  ekPublic: Buffer;
  evidence: UnifiedIdentityEvidence | null | undefined;
}

export interface UnifiedIdentityPipelineOptions {
  settings: UnifiedIdentitySettings;
  /** The `keylime` section; absent: every attestation is refused (fail closed). */
  keylime: ServerConfig['keylime'];
  logger: Logger;
  now?: () => Date;
  /** Hooks for the server's metrics: verifier requests, policy evaluations, stage durations. */
  observer?: UnifiedIdentityObserver;
}

export interface UnifiedIdentityObserver {
  keylimeRequest?(e: KeylimeRequestReport): void;
  /** One location policy evaluation: its result and, when allowed, the assurance it granted. */
  policyDecision?(policy: string, result: 'allow' | 'deny' | 'undecided', assurance: string | undefined): void;
  /** The stage durations of an accepted verification. */
  stages?(stages: PipelineStages): void;
}

function loadPolicies(s: UnifiedIdentitySettings): { set: PolicySet; text: string } {
  const lp = s.locationPolicies;
  let text: string;
  if (lp.file !== undefined) {
    try {
      text = fs.readFileSync(lp.file, 'utf8');
    } catch (err) {
      throw new ConfigError(`unifiedIdentity.locationPolicies.file: cannot read ${lp.file}: ${(err as Error).message}`, { cause: err });
    }
  } else {
    text = typeof lp.inline === 'string' ? lp.inline : YAML.stringify(lp.inline);
  }
  let set: PolicySet;
  try {
    set = parsePolicies(text);
  } catch (err) {
    throw new ConfigError(`unifiedIdentity.locationPolicies: ${(err as Error).message}`, { cause: err });
  }
  if (!set.has(s.defaultPolicy)) {
    throw new ConfigError(`unifiedIdentity.defaultPolicy "${s.defaultPolicy}" is not among the location policies (${set.names().join(', ')})`);
  }
  return { set, text };
}

/** Claims stored on a node: the SVID claims; `attestedAt` and `satisfiedPolicies` drive the signing checks. */
export function claimsOfNode(node: Pick<AttestedNode, 'claims'>): UnifiedIdentityClaims | undefined {
  const c = node.claims;
  if (c === undefined || c === null || typeof c !== 'object') return undefined;
  return c as UnifiedIdentityClaims;
}

/** What a node's last attestation rested on, kept so a later witness (landmarks) can re-decide its place. */
interface NodeEvidence {
  readings: LocationReading[];
  operatorResult?: OperatorVerification;
  /** The claims' attestedAt: a witness for an older attestation is not applied to a newer one. */
  attestedAt: string;
  /** The latest accepted landmark disks; they also count at the node's next attestation while fresh. */
  disks?: LandmarkDisk[];
}

/** What relocate() made of a latency round. */
export type Relocation =
  | { kind: 'updated'; claims: UnifiedIdentityClaims; reasons: string[] }
  /** The witness places the node outside (or contradicts its sensors): its claims must be withdrawn. */
  | { kind: 'contradicted'; reasons: string[] }
  /** The witness does not change the decision (e.g. its disk crosses a border): claims stay. */
  | { kind: 'unchanged'; reasons: string[] }
  /** The node attested again meanwhile, or this server did not attest it: nothing to apply to. */
  | { kind: 'stale'; reasons: string[] };

/** Nodes whose evidence one server keeps for the latency witness (oldest forgotten first). */
const MAX_REMEMBERED_NODES = 100_000;

export class UnifiedIdentityPipeline {
  readonly policies: PolicySet;
  /** The policy set as configured (YAML text): the evidence log records it, auditors recompute decisions under it. */
  readonly policyDocument: string;
  readonly pcrs: readonly number[];
  readonly reattestIntervalS: number;
  /**
   * How long a node's claims stay valid after the attestation that established them: the
   * re-attestation interval, and in one-shot mode at most unifiedIdentity.verdictMaxAge (a one-shot
   * verdict is never refreshed, so the claims must not outlive it).
   */
  readonly claimsLifetimeS: number;
  /** Which knob bounds claimsLifetimeS, with its value (named in refusals). */
  readonly lifetimeKnob: string;
  readonly defaultPolicy: string;
  /** Stage durations of the last successful verification (benchmark, debugging). */
  lastStages: PipelineStages | undefined;
  private readonly client: KeylimeVerifierClient | undefined;
  private readonly tpmPolicy: string | undefined;
  private readonly log: Logger;
  private readonly now: () => Date;
  private readonly operator: { client: CamaraLocationVerifier; settings: OperatorSettings } | undefined;
  private readonly evidence = new Map<string, NodeEvidence>();
  private readonly observer: UnifiedIdentityObserver | undefined;

  constructor(o: UnifiedIdentityPipelineOptions) {
    this.log = o.logger.child({ component: 'unified-identity' });
    this.observer = o.observer;
    this.now = o.now ?? (() => new Date());
    const loaded = loadPolicies(o.settings);
    this.policies = loaded.set;
    this.policyDocument = loaded.text;
    this.defaultPolicy = o.settings.defaultPolicy;
    this.pcrs = [...new Set(o.settings.pcrs)].sort((a, b) => a - b);
    this.reattestIntervalS = o.settings.reattestInterval;
    const oneShot = o.keylime?.mode === 'oneshot';
    if (oneShot && o.settings.verdictMaxAge < o.settings.reattestInterval) {
      this.claimsLifetimeS = o.settings.verdictMaxAge;
      this.lifetimeKnob = `unifiedIdentity.verdictMaxAge ${o.settings.verdictMaxAge} s`;
    } else {
      this.claimsLifetimeS = o.settings.reattestInterval;
      this.lifetimeKnob = `unifiedIdentity.reattestInterval ${o.settings.reattestInterval} s`;
    }
    const policy = o.settings.tpmPolicy ?? o.keylime?.tpmPolicy;
    if (o.keylime) {
      if (policy === undefined) throw new ConfigError('unifiedIdentity: set unifiedIdentity.tpmPolicy or keylime.tpmPolicy: Keylime needs a PCR allowlist to check quotes against');
      try {
        this.tpmPolicy = tpmPolicyJson(policy as TpmPolicy);
      } catch (err) {
        throw new ConfigError(`unifiedIdentity.tpmPolicy: ${(err as Error).message}`, { cause: err });
      }
      // PCR 23 (and 16) can be reset by software at locality 0: root on the node can put back the
      // golden value after a change, so pinning it proves little. Allowed (tests use it), said loudly.
      const resettable = Object.keys(policy).filter((k) => k === '23' || k === '16');
      if (resettable.length > 0) {
        this.log.warn({ pcrs: resettable }, 'the Keylime PCR policy pins a PCR that software can reset at locality 0 (16, 23): root on a node can restore its golden value; pin measured-boot PCRs (0-7) or IMA PCR 10 for integrity');
      }
      try {
        this.client = new KeylimeVerifierClient({
          url: o.keylime.verifierUrl, caFile: o.keylime.caFile, certFile: o.keylime.certFile, keyFile: o.keylime.keyFile,
          ...(o.keylime.servername !== undefined ? { servername: o.keylime.servername } : {}),
          timeoutMs: o.keylime.requestTimeoutMs, allowDevelopmentStandIn: o.keylime.allowDevelopmentStandIn, logger: this.log,
          maxConcurrentRequests: o.keylime.maxConcurrentRequests, maxQueuedRequests: o.keylime.maxQueuedRequests, connections: o.keylime.maxConcurrentRequests,
          ...(o.observer?.keylimeRequest ? { onRequest: (e: KeylimeRequestReport) => o.observer?.keylimeRequest?.(e) } : {}),
        });
      } catch (err) {
        if (err instanceof KeylimeConfigError) throw new ConfigError(`keylime: ${err.message}`, { cause: err });
        throw err;
      }
    }
    this.operator = o.settings.operator ? { client: operatorClient(o.settings.operator), settings: o.settings.operator } : undefined;
    if (!this.operator) {
      const needing = this.policies.names().filter((n) => this.policies.get(n).operatorRequired);
      if (needing.includes(this.defaultPolicy)) {
        this.log.error({ policy: this.defaultPolicy }, 'the default location policy requires the mobile operator but unifiedIdentity.operator is not configured: every attestation will be refused (fail closed)');
      } else if (needing.length > 0) {
        this.log.warn({ policies: needing }, 'these location policies require the mobile operator but unifiedIdentity.operator is not configured: no node will satisfy them');
      }
    }
    // The default policy gates every attestation, and landmarks probe a node only after it attested.
    if (this.policies.get(this.defaultPolicy).latencyRequired) {
      throw new ConfigError(`unifiedIdentity.defaultPolicy "${this.defaultPolicy}" requires the latency witness, which can only measure a node after its attestation: `
        + 'keep the default policy without it and name a latency policy in the registration entries (locationPolicy) instead');
    }
    const needLatency = this.policies.names().filter((n) => this.policies.get(n).latencyRequired);
    if (needLatency.length > 0 && !o.settings.latency) {
      this.log.warn({ policies: needLatency }, 'these location policies require the latency witness but unifiedIdentity.latency is not configured: no node will satisfy them');
    }
    if (!o.keylime) {
      this.log.error('UNIFIED IDENTITY IS ON BUT NO KEYLIME VERIFIER IS CONFIGURED: every TPM node attestation will be refused (fail closed); add a `keylime` section');
    }
  }

  async close(): Promise<void> {
    await Promise.all([this.client?.close(), this.operator?.client.close()]);
  }

  /** Verifier requests in flight and waiting, now and at their peaks (then reset when asked): metrics, the load bench. */
  keylimeLoad(resetPeaks = false): LimiterLoad | undefined {
    const load = this.client?.load();
    if (resetPeaks) this.client?.resetLoadPeaks();
    return load;
  }

  /** Throws unless a verdict is possible at all (Keylime configured). */
  assertReady(): void {
    if (this.client === undefined) {
      throw new AttestationError('failed_precondition', 'Unified Identity is enabled but this server has no Keylime verifier configured (keylime section): attestation refused (fail closed)');
    }
  }

  /** Runs the pipeline; throws AttestationError naming the first check that failed. */
  async verify(input: VerifyInput): Promise<VerifiedUnifiedIdentity> {
    this.assertReady();
    const ev = input.evidence;
    if (!ev || !ev.quote) {
      throw new AttestationError('failed_precondition', 'Unified Identity is enabled: the challenge response must carry unified_identity (quote and claims document); enable featureFlags.unifiedIdentity and unifiedIdentity.sensors on the agent');
    }
    if ((ev.sensorEvidence?.length ?? 0) > MAX_SENSOR_EVIDENCE_BYTES) {
      throw new AttestationError('invalid_argument', `unified_identity.sensor_evidence is larger than ${MAX_SENSOR_EVIDENCE_BYTES} bytes`);
    }
    let t = performance.now();
    const lap = (): number => { const n = performance.now(); const d = n - t; t = n; return d; };

    const readings = parseClaimsDocument(ev.claimsDocument);
    const claimsMs = lap();

    const pcrValues = this.parsePcrs(ev.quote.pcrs);
    const expected = unifiedIdentityQualifyingData(input.nonce, ev.claimsDocument);
    let quoteInfo;
    try {
      quoteInfo = verifyQuote({
        akPublic: input.ak, attest: ev.quote.attest, signature: ev.quote.signature,
        pcrs: [{ alg: 'sha256', values: pcrValues }], expectedExtraData: expected,
      });
    } catch (err) {
      if (err instanceof TpmQuoteError) {
        const why = err.code === 'extra-data-mismatch'
          ? 'the quote is not bound to this challenge and claims document (replayed quote, wrong nonce, or claims changed after quoting)'
          : err.message;
        throw new AttestationError(err.code.startsWith('malformed') ? 'invalid_argument' : 'permission_denied', `quote verification failed (${err.code}): ${why}`, { cause: err });
      }
      throw err;
    }
    const quoteMs = lap();

    let keylimeVerdict: EvidenceVerdict;
    try {
      keylimeVerdict = await verifyEvidence(this.client as KeylimeVerifierClient, {
        quote: encodeQuoteString({ attest: ev.quote.attest, signature: ev.quote.signature, pcrs: [{ alg: 'sha256', values: pcrValues }] }),
        nonce: expected.toString('ascii'),
        akPublic: input.akPublic,
        ekPublic: input.ekPublic,
        hashAlg: 'sha256',
        tpmPolicy: this.tpmPolicy as string,
      });
    } catch (err) {
      throw keylimeRefusal(err);
    }
    const keylimeMs = lap();

    const op = await this.askOperator(input.agentId, input.ekHash, readings);
    const operatorMs = lap();

    const now = this.now();
    const validUntil = new Date(now.getTime() + this.claimsLifetimeS * 1000);
    // Landmark disks from this node's last round still count while fresh (the policy's age rule): a node
    // the speed of light placed elsewhere cannot attest its way around it.
    const disks = this.evidence.get(input.agentId)?.disks;
    const ctx = { now, ...(op.result ? { operatorResult: op.result } : {}), ...(disks ? { latency: { disks } } : {}) };
    const decision = evaluatePolicy(this.policies.get(this.defaultPolicy), readings, ctx);
    this.observer?.policyDecision?.(this.defaultPolicy, decision.decision, decision.claims?.assurance);
    if (!decision.allowed || !decision.claims) {
      throw new AttestationError('permission_denied', `location policy ${this.defaultPolicy} ${decision.decision === 'deny' ? 'denied' : 'could not decide'}: ${decision.reasons.join('; ')}`);
    }
    const satisfied = this.policies.names().filter((name) => {
      if (name === this.defaultPolicy) return true;
      const d = evaluatePolicy(this.policies.get(name), readings, ctx);
      this.observer?.policyDecision?.(name, d.decision, d.claims?.assurance);
      return d.allowed;
    });
    const policyMs = lap();

    const claims: UnifiedIdentityClaims = {
      ...placeClaims(decision),
      pcrDigest: quoteInfo.pcrDigest.toString('hex'),
      // Relying parties can tell (and authorizeUnifiedIdentity refuses by default) evidence that only
      // the development stand-in checked.
      verifier: this.client?.developmentStandIn === true ? DEVELOPMENT_STAND_IN_VERIFIER : 'keylime',
      attestedAt: now.toISOString(),
      // No SVID carrying these claims outlives them (the signing paths clamp NotAfter to this).
      validUntil: validUntil.toISOString(),
      satisfiedPolicies: satisfied,
    };
    canonicalUnifiedIdentity(claims); // the SVID extension must be able to carry them: fail here, not at minting
    this.remember(input.agentId, {
      readings, attestedAt: claims['attestedAt'] as string, ...(op.result ? { operatorResult: op.result } : {}), ...(disks ? { disks } : {}),
    });
    const stages = { claims: claimsMs, quote: quoteMs, keylime: keylimeMs, operator: operatorMs, policy: policyMs };
    this.lastStages = stages;
    this.observer?.stages?.(stages);
    const verifierName = claims['verifier'] as string;
    return {
      claims,
      facts: {
        keylime: { verifier: verifierName, valid: keylimeVerdict.valid, failures: keylimeVerdict.failures as unknown[], ...(keylimeVerdict.apiVersion !== undefined ? { apiVersion: String(keylimeVerdict.apiVersion) } : {}) },
        ...(op.result ? { operator: jsonOf(op.result) as Record<string, unknown> } : {}),
        ...(disks ? { latencyDisks: disks.map((d) => jsonOf(d) as Record<string, unknown>) } : {}),
        decision: { decision: decision.decision, reasons: decision.reasons },
        policyName: this.defaultPolicy,
      },
      audit: {
        readings: readings.map((r) => ({ kind: r.kind, sensorId: r.sensorId, time: r.time.toISOString(), lat: r.lat, lon: r.lon, horizontalErrorM: r.horizontalErrorM, attested: r.attested })),
        policyReasons: decision.reasons,
        claimsDocumentSha256: crypto.createHash('sha256').update(ev.claimsDocument).digest('hex'),
        // Keylime's verdict, not its echo of the request (the quote, AK and EK, several KB).
        keylime: { valid: keylimeVerdict.valid, failures: keylimeVerdict.failures, apiVersion: keylimeVerdict.apiVersion },
        ...(op.audit ? { operator: op.audit } : {}),
        ...(ev.sensorEvidence && ev.sensorEvidence.length > 0 ? { sensorEvidenceSha256: crypto.createHash('sha256').update(ev.sensorEvidence).digest('hex') } : {}),
      },
      stages,
    };
  }

  /**
   * Re-decides a node's place with a latency round's disks and the evidence of its last attestation
   * on this server: new claims (assurance, witnesses, latency, satisfied policies) when it is still
   * allowed, `contradicted` when the landmarks put it outside or against its own sensors.
   */
  relocate(agentId: string, current: UnifiedIdentityClaims, disks: LandmarkDisk[]): Relocation {
    const ev = this.evidence.get(agentId);
    if (ev === undefined || ev.attestedAt !== current['attestedAt']) {
      return { kind: 'stale', reasons: ['the node attested again (or elsewhere) since the probe began'] };
    }
    ev.disks = disks;
    const ctx = { now: this.now(), ...(ev.operatorResult ? { operatorResult: ev.operatorResult } : {}), latency: { disks } };
    const decision = evaluatePolicy(this.policies.get(this.defaultPolicy), ev.readings, ctx);
    if (decision.decision === 'deny') return { kind: 'contradicted', reasons: decision.reasons };
    if (!decision.allowed || !decision.claims) return { kind: 'unchanged', reasons: decision.reasons };
    const satisfied = this.policies.names().filter((name) => name === this.defaultPolicy || evaluatePolicy(this.policies.get(name), ev.readings, ctx).allowed);
    const rest = Object.fromEntries(Object.entries(current).filter(([k]) => !PLACE_FIELDS.has(k)));
    const claims: UnifiedIdentityClaims = { ...rest, ...placeClaims(decision), satisfiedPolicies: satisfied };
    canonicalUnifiedIdentity(claims);
    return { kind: 'updated', claims, reasons: decision.reasons };
  }

  /** The landmark disks of this node's last latency round on this server (undefined: none yet). */
  latencyDisks(agentId: string): readonly LandmarkDisk[] | undefined {
    return this.evidence.get(agentId)?.disks;
  }

  private remember(agentId: string, ev: NodeEvidence): void {
    this.evidence.delete(agentId);
    this.evidence.set(agentId, ev);
    if (this.evidence.size > MAX_REMEMBERED_NODES) this.evidence.delete(this.evidence.keys().next().value as string);
  }

  /**
   * Why nothing may be signed for this node now (undefined: it may be served). Nodes attested with
   * the flag on carry claims; claims older than the re-attestation interval are expired; an entry
   * naming a location policy needs it among the node's satisfied policies.
   */
  signingRefusal(node: AttestedNode, locationPolicy: string | undefined): string | undefined {
    const claims = claimsOfNode(node);
    if (claims === undefined) {
      if (node.attestationType === 'tpm') return `node ${node.spiffeId} has no Unified Identity claims; it must attest again`;
      return locationPolicy !== undefined ? `entry requires location policy ${locationPolicy} but node ${node.spiffeId} has no Unified Identity claims (join-token nodes never do)` : undefined;
    }
    const expired = this.expiredBy(claims);
    if (expired !== undefined) return `node ${node.spiffeId}'s Unified Identity claims expired ${expired}; it must attest again`;
    if (locationPolicy !== undefined) {
      const satisfied = Array.isArray(claims['satisfiedPolicies']) ? claims['satisfiedPolicies'] as unknown[] : [];
      if (!satisfied.includes(locationPolicy)) return `node ${node.spiffeId} does not satisfy location policy ${locationPolicy} (it satisfies: ${satisfied.join(', ') || 'none'})`;
    }
    return undefined;
  }

  /** A description of how long ago the claims expired, or undefined while they are fresh. */
  expiredBy(claims: UnifiedIdentityClaims): string | undefined {
    const expiry = this.claimsExpiry(claims);
    if (expiry === undefined) return 'at an unknown time (no attestedAt)';
    const overMs = this.now().getTime() - expiry.getTime();
    return overMs >= 0 ? `${Math.round(overMs / 1000)} s ago (${this.lifetimeKnob})` : undefined;
  }

  /**
   * When the claims expire: attestedAt plus this server's claims lifetime, or their validUntil if
   * earlier (claims written by a server with a shorter bound, or before a configuration change).
   * Undefined when they carry no readable attestedAt (treated as expired).
   */
  claimsExpiry(claims: UnifiedIdentityClaims): Date | undefined {
    const at = typeof claims['attestedAt'] === 'string' ? Date.parse(claims['attestedAt']) : NaN;
    if (Number.isNaN(at)) return undefined;
    let end = at + this.claimsLifetimeS * 1000;
    const until = typeof claims['validUntil'] === 'string' ? Date.parse(claims['validUntil']) : NaN;
    if (!Number.isNaN(until) && until < end) end = until;
    return new Date(end);
  }

  /**
   * The TTL (s) an SVID carrying these claims may have: the requested one, cut so that NotAfter is
   * no later than the claims' expiry. At least 1 (callers refuse expired claims before asking).
   */
  clampTtl(claims: UnifiedIdentityClaims, ttlS: number): number {
    const expiry = this.claimsExpiry(claims);
    if (expiry === undefined) return 1;
    const leftS = Math.floor((expiry.getTime() - this.now().getTime()) / 1000);
    return Math.max(1, Math.min(ttlS, leftS));
  }

  /**
   * Asks the node's mobile operator whether its SIM lies within radiusM of its attested GNSS
   * position, when the default policy requires it or the node has a device mapping. Throws (fail
   * closed) when the default policy requires the operator and no answer can be had; otherwise a
   * failure leaves the result out, so policies requiring the operator are simply not satisfied.
   * The audit part carries the operator's answer, never the SIM's identifier or coordinates.
   */
  private async askOperator(agentId: string, ekHash: string, readings: LocationReading[]): Promise<{ result?: OperatorVerification; audit?: Record<string, unknown> }> {
    const required = this.policies.get(this.defaultPolicy).operatorRequired;
    const device = this.operator?.settings.devices[ekHash.toLowerCase()];
    const refuse = (code: 'failed_precondition' | 'permission_denied' | 'unavailable', why: string, cause?: unknown): never => {
      throw new AttestationError(code, `location policy ${this.defaultPolicy} requires the mobile operator's check: ${why}; attestation refused (fail closed)`, cause !== undefined ? { cause } : undefined);
    };
    if (!this.operator) {
      if (required) refuse('failed_precondition', 'this server has no unifiedIdentity.operator section');
      return {};
    }
    if (device === undefined) {
      if (required) refuse('failed_precondition', `node ${agentId} has no SIM mapped to its EK hash in unifiedIdentity.operator.devices`);
      return {};
    }
    const gnss = freshestAttestedGnss(readings);
    if (gnss === undefined) {
      if (required) refuse('permission_denied', 'the claims document has no attested GNSS reading to ask the operator about');
      return { audit: { skipped: 'no attested GNSS reading' } };
    }
    const s = this.operator.settings;
    const deviceKind = 'phoneNumber' in device ? 'phoneNumber' : 'ipv6Address' in device ? 'ipv6Address' : 'ipv4Address';
    try {
      const area = { lat: gnss.lat, lon: gnss.lon, radiusM: s.radiusM };
      const answer = await this.operator.client.verify(device as CamaraDevice, area, s.maxAgeS !== undefined ? { maxAgeS: s.maxAgeS } : {});
      // The policy counts a TRUE only where this whole disk lies inside its area.
      const result: OperatorVerification = { ...answer, area };
      return {
        result,
        audit: {
          result: result.result,
          ...(result.matchRate !== undefined ? { matchRate: result.matchRate } : {}),
          ...(result.lastLocationTime ? { lastLocationTime: result.lastLocationTime.toISOString() } : {}),
          radiusM: s.radiusM, gnssSensorId: gnss.sensorId, deviceKind,
        },
      };
    } catch (err) {
      if (!(err instanceof CamaraError)) throw err;
      this.log.warn({ agentId, code: err.code, status: err.status, required }, `mobile operator check failed: ${err.message}`);
      if (required) {
        refuse(err instanceof CamaraUnavailableError ? 'unavailable' : 'failed_precondition', `the operator gave no answer (${err.code}): ${err.message}`, err);
      }
      return { audit: { error: err.code, ...(err.status !== undefined ? { status: err.status } : {}), radiusM: s.radiusM, deviceKind } };
    }
  }

  private parsePcrs(pcrs: Record<string, Buffer> | undefined): Map<number, Buffer> {
    const out = new Map<number, Buffer>();
    for (const [k, v] of Object.entries(pcrs ?? {})) {
      const idx = /^\d{1,2}$/.test(k) ? Number(k) : NaN;
      if (!this.pcrs.includes(idx)) throw new AttestationError('invalid_argument', `unified_identity.quote.pcrs has PCR ${k.slice(0, 8)}, which this server did not ask for (${this.pcrs.join(', ')})`);
      if (!Buffer.isBuffer(v) || v.length !== 32) throw new AttestationError('invalid_argument', `unified_identity.quote.pcrs[${idx}] must be a 32-byte sha256 value`);
      out.set(idx, v);
    }
    const missing = this.pcrs.filter((p) => !out.has(p));
    if (missing.length > 0) throw new AttestationError('invalid_argument', `unified_identity.quote.pcrs lacks PCR(s) ${missing.join(', ')}: quote every PCR of the challenge's quote_pcrs`);
    return out;
  }
}

/**
 * The attestation error for a failed one-shot verification. Refused evidence is the node's
 * problem (permission_denied: its earlier claims are withdrawn); a request Keylime refused as
 * malformed (HTTP 400) is this server's (failed_precondition: configuration or protocol, never
 * retried, never called an outage); only an unreachable or failing verifier is `unavailable`.
 */
function keylimeRefusal(err: unknown): AttestationError {
  if (err instanceof KeylimeEvidenceRejectedError) {
    return new AttestationError('permission_denied', `Keylime refused the evidence: ${err.message}`, { cause: err });
  }
  if (err instanceof KeylimeRequestError && !err.unreachable) {
    return new AttestationError('failed_precondition', `Keylime refused the request (HTTP ${err.status ?? 400}: ${err.failures.map((f) => `${f.type}: ${f.context}`).join('; ') || 'no failures named'}): `
      + 'a configuration or protocol error between this server and its verifier, not an outage; attestation refused (fail closed). Check the verifier\'s version and the server\'s log', { cause: err });
  }
  if (err instanceof KeylimeRequestError && err.kind === 'busy') {
    return new AttestationError('unavailable', `Keylime verifier busy, retry: this server's verifier requests are all in use (fail closed): ${err.message}`, { cause: err });
  }
  if (err instanceof KeylimeRequestError) {
    return new AttestationError('unavailable', `Keylime verifier unreachable or failing, attestation refused (fail closed): ${err.message}`, { cause: err });
  }
  return new AttestationError('invalid_argument', `Keylime refused to check the evidence: ${(err as Error).message}`, { cause: err });
}

function operatorClient(s: OperatorSettings): CamaraLocationVerifier {
  const read = (file: string, field: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (err) {
      throw new ConfigError(`unifiedIdentity.operator.${field}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
  };
  // A credential from its file or from the environment variable the config names (never inline).
  const credential = (fileField: 'clientSecretFile' | 'privateKeyFile', envField: 'clientSecretEnv' | 'privateKeyEnv', what: string): string => {
    const file = s[fileField];
    const name = s[envField];
    const value = file !== undefined ? read(file, fileField).toString('utf8').trim() : (process.env[name ?? ''] ?? '').trim();
    if (value === '') {
      throw new ConfigError(file !== undefined
        ? `unifiedIdentity.operator.${fileField}: ${file} is empty; put ${what} in it`
        : `unifiedIdentity.operator.${envField}: the environment variable ${name} is not set or empty in the server's environment; export ${what} in it`);
    }
    return value;
  };
  try {
    return new CamaraLocationVerifier({
      baseUrl: s.baseUrl, tokenUrl: s.tokenUrl, clientId: s.clientId,
      ...(s.clientAuthMethod === 'private_key_jwt'
        ? { privateKeyJwt: { key: credential('privateKeyFile', 'privateKeyEnv', 'the client private key (PEM)'), alg: s.signingAlg!, ...(s.keyId !== undefined ? { kid: s.keyId } : {}) } }
        : { clientSecret: credential('clientSecretFile', 'clientSecretEnv', "the operator's OAuth2 client secret") }),
      ...(s.caFile !== undefined ? { ca: read(s.caFile, 'caFile') } : {}),
      timeoutMs: s.requestTimeoutMs, clockSkewS: s.clockSkewS, maxRetryWaitMs: s.maxRetryWaitMs,
    });
  } catch (err) {
    if (err instanceof CamaraError) throw new ConfigError(`unifiedIdentity.operator: ${err.message}`, { cause: err });
    throw err;
  }
}

/** The newest attested GNSS reading (ties: the more precise one): the position the operator is asked to confirm. */
function freshestAttestedGnss(readings: LocationReading[]): LocationReading | undefined {
  let best: LocationReading | undefined;
  for (const r of readings) {
    if (r.kind !== 'gnss' || !r.attested) continue;
    const t = r.time.getTime();
    if (best === undefined || t > best.time.getTime() || (t === best.time.getTime() && r.horizontalErrorM < best.horizontalErrorM)) best = r;
  }
  return best;
}

/** A plain-JSON copy (Dates as ISO strings, undefined members dropped) for the evidence log. */
function jsonOf(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v)) as unknown;
}

/** Parses the agent's claims document strictly: size, UTF-8, JSON, canonical form, shape, readings. */
export function parseClaimsDocument(doc: Buffer): LocationReading[] {
  const bad = (m: string): AttestationError => new AttestationError('invalid_argument', `unified_identity.claims_document ${m}`);
  if (!Buffer.isBuffer(doc) || doc.length === 0) throw bad('is missing');
  if (doc.length > MAX_CLAIMS_DOCUMENT_BYTES) throw bad(`is ${doc.length} bytes, more than ${MAX_CLAIMS_DOCUMENT_BYTES}`);
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(doc));
  } catch (err) {
    throw bad(`is not UTF-8 JSON: ${(err as Error).message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad('must be a JSON object');
  const o = value as Record<string, unknown>;
  const extra = Object.keys(o).filter((k) => k !== 'v' && k !== 'readings');
  if (extra.length > 0) throw bad(`has unknown member(s) ${extra.slice(0, 5).join(', ')}`);
  if (o['v'] !== CLAIMS_DOCUMENT_VERSION) throw bad(`must have "v": ${CLAIMS_DOCUMENT_VERSION}`);
  const rs = o['readings'];
  if (!Array.isArray(rs) || rs.length === 0 || rs.length > MAX_READINGS) throw bad(`must carry 1..${MAX_READINGS} readings`);
  let canonical: Buffer;
  try {
    canonical = canonicalClaims(value);
  } catch (err) {
    throw bad(`cannot be canonicalised: ${(err as Error).message}`);
  }
  // The digest binds these exact bytes; a second spelling of the same JSON would be a second document.
  if (!canonical.equals(doc)) throw bad('is not in RFC 8785 canonical form');
  return rs.map((r, i) => {
    let reading: LocationReading;
    try {
      reading = readingFromJson(r);
    } catch (err) {
      throw bad(`readings[${i}]: ${(err as Error).message}`);
    }
    const why = unproducible(reading);
    if (why !== undefined) throw new AttestationError('permission_denied', `unified_identity.claims_document readings[${i}] (sensor ${reading.sensorId.slice(0, 64)}): ${why}; attestation refused`);
    return reading;
  });
}

/**
 * Why no agent can have produced this reading (undefined: one can). A node's document carries what
 * its own sensors read: GNSS receivers (gpsd, NMEA: `gnss`, attested hardware) and configured
 * positions (`static`, never attested). Mobile-network positions come only from the operator, which
 * the server asks itself; a node claiming one, or an attested configured position, is lying.
 */
function unproducible(r: LocationReading): string | undefined {
  if (r.kind === 'mobile') return 'a mobile-network reading cannot come from a node (the server asks the operator itself)';
  if (r.kind === 'static' && r.attested) return 'a static (configured) position is never attested';
  return undefined;
}

export const PLACE_FIELDS = new Set(['country', 'region', 'policy', 'sensorKinds', 'assurance', 'witnesses', 'latency', 'readingTime']);

/** The place part of the claims from an allowing decision: coarse, with how it was established. */
export function placeClaims(decision: PolicyDecision): UnifiedIdentityClaims {
  const c = decision.claims as NonNullable<PolicyDecision['claims']>;
  return {
    country: c.country,
    ...(c.region !== undefined ? { region: c.region } : {}),
    policy: c.policy,
    sensorKinds: c.sensorKinds,
    // How the place was established: the node's word unless a witness placed it (docs/unified-identity.md).
    assurance: c.assurance,
    witnesses: c.witnesses,
    ...(c.latency !== undefined ? { latency: c.latency } : {}),
    readingTime: c.readingTime,
  };
}
