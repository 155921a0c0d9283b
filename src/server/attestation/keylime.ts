// Keylime continuous attestation for TPM nodes (issue 6). After a TPM node proved its EK and AK, the
// server enrolls it with the Keylime verifier (which then pulls quotes from the node's quote endpoint)
// and issues the agent SVID only once Keylime has verified a recent quote. From then on every signing
// for the node asks `check()`, and a `fail` from the monitor withdraws the node's SVIDs at once.
import crypto from 'node:crypto';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import {
  ContinuousAttestationMonitor, KeylimeConfigError, KeylimeError, KeylimeRequestError, KeylimeTenant, KeylimeVerifierClient,
  MonitorFailureError, tpmPolicyJson, type MonitorCounters, type MonitorFailure, type TpmPolicy,
} from '../../keylime/index.js';
import type { KeylimeQuoteEndpoint } from '../../api/agent-api.js';
import type { KeylimeRequestReport } from '../../keylime/client.js';
import type { Auditor } from '../audit.js';
import type { ServerConfig } from '../config.js';
import { ConfigError } from '../config.js';
import type { DataStore, Selector } from '../datastore/types.js';
import { rpcError, type RpcError } from '../agentapi/status.js';
import { AttestationError } from './errors.js';

export type KeylimeSettings = NonNullable<ServerConfig['keylime']>;

/** Quote endpoint API versions the verifier may be told to speak (what src/keylime's endpoint serves). */
const ENDPOINT_API_VERSIONS = new Set(['2.0', '2.1', '2.2']);
const MAX_CERT_PEM = 16 * 1024;
const ENROLL_CONFLICT_RETRIES = 20;
const ENROLL_CONFLICT_DELAY_MS = 100;

export interface AdmitRequest {
  /** The node's SPIFFE ID (spiffe://<td>/agent/tpm/<ek-hash>). */
  agentId: string;
  /** The EK hash: the node's Keylime agent id. */
  ekHash: string;
  /** The AK (TPM2B_PUBLIC), already proven by credential activation. */
  akPublic: Buffer;
  selectors: readonly Selector[];
  endpoint: KeylimeQuoteEndpoint | null | undefined;
  /** The address the agent attested from. */
  sourceAddress: string;
}

export interface KeylimeGateOptions {
  settings: KeylimeSettings;
  /** This server's trust domain: only nodes of it, enrolled by terroir, are ever removed from the verifier. */
  trustDomain: string;
  /** Where node standing (banned, last attestation) is read from when reconciling with the verifier. */
  store: Pick<DataStore, 'getNode'>;
  auditor: Auditor;
  logger: Logger;
  now?: () => Date;
  /** Told of every verifier request (the server's metrics). */
  onKeylimeRequest?: (e: KeylimeRequestReport) => void;
  /** Called when a trusted node stops being trusted: withdraw its SVIDs. */
  onUntrusted(agentId: string, reason: string): void;
}

interface Enrolled {
  keylimeId: string;
  /** Digest of everything enrolled (AK, endpoint, certificate, policy): a change means re-enrolling. */
  fingerprint: string;
}

/** The Keylime agent id of a TPM node's SPIFFE ID, or undefined if the ID is not a TPM node's. */
export function keylimeIdOf(agentId: string): string | undefined {
  return /\/agent\/tpm\/([0-9a-f]{64})$/.exec(agentId)?.[1];
}

/** What one reconcile() pass saw and did. */
export interface ReconcileReport {
  /** Agents the verifier holds. */
  listed: number;
  /** Of those, enrolled by terroir for this trust domain. */
  ours: number;
  /** Node SPIFFE IDs removed from the verifier. */
  removed: string[];
}

export class KeylimeGate {
  private readonly client: KeylimeVerifierClient;
  private readonly tenant: KeylimeTenant;
  private readonly monitor: ContinuousAttestationMonitor;
  private readonly log: Logger;
  private readonly enrolled = new Map<string, Enrolled>();
  private readonly byKeylimeId = new Map<string, string>();
  /** Nodes whose last admission Keylime refused, with why (until they attest again). */
  private readonly refused = new Map<string, string>();
  private readonly admitting = new Set<string>();
  /** Admissions per node run one after another (an agent may attest twice at once). */
  private readonly admissions = new Map<string, Promise<void>>();
  private readonly defaultPolicy: string | undefined;
  private readonly groupPolicies: { selectors: string[]; policy: string }[];
  private readonly now: () => Date;
  private sweepTimer: NodeJS.Timeout | undefined;
  private reconciling: Promise<ReconcileReport> | undefined;

  constructor(private readonly o: KeylimeGateOptions) {
    const s = o.settings;
    this.log = o.logger.child({ component: 'keylime' });
    this.now = o.now ?? (() => new Date());
    try {
      this.client = new KeylimeVerifierClient({
        url: s.verifierUrl, caFile: s.caFile, certFile: s.certFile, keyFile: s.keyFile,
        ...(s.servername !== undefined ? { servername: s.servername } : {}),
        timeoutMs: s.requestTimeoutMs, allowDevelopmentStandIn: s.allowDevelopmentStandIn, logger: this.log,
        ...(o.onKeylimeRequest ? { onRequest: o.onKeylimeRequest } : {}),
      });
    } catch (err) {
      if (err instanceof KeylimeConfigError) throw new ConfigError(`keylime: ${err.message}`, { cause: err });
      throw err;
    }
    const toJson = (p: Record<string, string[]>, where: string): string => {
      try {
        return tpmPolicyJson(p as TpmPolicy, [16]);
      } catch (err) {
        throw new ConfigError(`${where}: ${(err as Error).message}`, { cause: err });
      }
    };
    this.defaultPolicy = s.tpmPolicy && toJson(s.tpmPolicy, 'keylime.tpmPolicy');
    this.groupPolicies = s.policies.map((p, i) => ({ selectors: p.selectors, policy: toJson(p.tpmPolicy, `keylime.policies[${i}].tpmPolicy`) }));
    this.tenant = new KeylimeTenant(this.client);
    this.monitor = new ContinuousAttestationMonitor(this.tenant, {
      pollIntervalMs: s.pollIntervalMs,
      maxAttestationAgeMs: s.maxAttestationAge * 1000,
      pendingTimeoutMs: s.enrollTimeout * 1000,
      logger: this.log,
    });
    this.monitor.on('fail', (keylimeId, failure) => this.onFail(keylimeId, failure));
    this.monitor.on('pass', (keylimeId) => {
      const agentId = this.byKeylimeId.get(keylimeId);
      if (agentId !== undefined && !this.admitting.has(agentId)) this.log.info({ agent: agentId }, 'Keylime trusts the node again');
    });
  }

  /** Starts polling verdicts, and reconciles the verifier's enrollments now and every removeAfter/4 (at most hourly). */
  start(): void {
    this.monitor.start();
    const sweep = (): void => {
      this.reconcile().catch((err: unknown) => this.log.warn({ err: (err as Error).message }, 'Keylime: reconciling the verifier\'s enrollments failed; trying again later'));
    };
    sweep();
    this.sweepTimer = setInterval(sweep, Math.min(this.o.settings.removeAfter * 250, 3_600_000));
    this.sweepTimer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    await this.reconciling?.catch(() => undefined);
    await this.monitor.stop();
    await this.client.close();
  }

  /**
   * Enrollment hygiene: lists the verifier's agents and removes those terroir enrolled for this trust
   * domain (the enrollment metadata says so) whose node is gone from the datastore, banned, or has not
   * attested for keylime.removeAfter. Agents anyone else enrolled are never touched; nor is one whose
   * enrollment is younger than twice enrollTimeout (another server may be admitting it right now).
   * Each removal is audited. Concurrent calls share one run.
   */
  reconcile(): Promise<ReconcileReport> {
    if (this.reconciling === undefined) {
      const run = this.reconcileNow();
      this.reconciling = run;
      const done = (): void => { if (this.reconciling === run) this.reconciling = undefined; };
      run.then(done, done);
    }
    return this.reconciling;
  }

  private async reconcileNow(): Promise<ReconcileReport> {
    const report: ReconcileReport = { listed: 0, ours: 0, removed: [] };
    const ids = await this.tenant.listAgents();
    report.listed = ids.length;
    const prefix = `spiffe://${this.o.trustDomain}/agent/tpm/`;
    for (const keylimeId of ids) {
      if (!/^[0-9a-f]{64}$/.test(keylimeId)) continue;
      let status: Awaited<ReturnType<KeylimeTenant['getAgentStatus']>>;
      try {
        status = await this.tenant.getAgentStatus(keylimeId);
      } catch (err) {
        if (err instanceof KeylimeRequestError && err.status === 404) continue; // removed meanwhile
        throw err;
      }
      const agentId = status.metadata?.['terroir_agent'];
      if (agentId !== `${prefix}${keylimeId}`) continue;
      report.ours++;
      if (this.admissions.has(agentId)) continue;
      const enrolledAt = Date.parse(String(status.metadata?.['terroir_enrolled_at'] ?? ''));
      const nowMs = this.now().getTime();
      if (!Number.isNaN(enrolledAt) && nowMs - enrolledAt < 2 * this.o.settings.enrollTimeout * 1000) continue;
      const node = await this.o.store.getNode(agentId);
      const idleS = node === undefined ? 0 : Math.round((nowMs - node.updatedAt.getTime()) / 1000);
      const why = node === undefined
        ? 'the node is not in the datastore (evicted, or its attestation never finished)'
        : node.banned
          ? 'the node is banned'
          : idleS > this.o.settings.removeAfter
            ? `the node has not attested for ${idleS} s (keylime.removeAfter ${this.o.settings.removeAfter} s)`
            : undefined;
      if (why === undefined) continue;
      await this.inTurn(agentId, () => this.removeFromVerifier(agentId, why));
      report.removed.push(agentId);
    }
    if (report.removed.length > 0) this.log.info({ removed: report.removed.length, ours: report.ours, listed: report.listed }, 'Keylime: removed stale enrollments from the verifier');
    return report;
  }

  counters(): MonitorCounters {
    return this.monitor.counters();
  }

  /**
   * Enrolls (or re-enrolls) a freshly attested TPM node and waits until Keylime verified a quote.
   * Throws AttestationError: `failed_precondition` without a quote endpoint, `unavailable` when the
   * verifier cannot be reached, `permission_denied` when Keylime refuses the node.
   */
  async admit(r: AdmitRequest): Promise<void> {
    await this.inTurn(r.agentId, () => this.admitNow(r));
  }

  /**
   * Runs `step` after every admission or eviction of this node queued before it. An evicted agent
   * attests again at once; its admission must not race the eviction's removal from the verifier
   * (both delete the same Keylime agent id, and the later delete would remove the new enrollment).
   * The client's single connection orders requests today too; this keeps the order if that changes.
   */
  private async inTurn(agentId: string, step: () => Promise<void>): Promise<void> {
    const queued = this.admissions.get(agentId);
    if (queued !== undefined) this.log.info({ agent: agentId }, 'Keylime: waiting for this node\'s previous admission or eviction to finish');
    const previous = queued ?? Promise.resolve();
    const run = previous.catch(() => undefined).then(step);
    this.admissions.set(agentId, run);
    try {
      await run;
    } finally {
      if (this.admissions.get(agentId) === run) this.admissions.delete(agentId);
    }
  }

  private async admitNow(r: AdmitRequest): Promise<void> {
    const ep = r.endpoint;
    if (!ep) {
      throw new AttestationError('failed_precondition', 'this server requires Keylime continuous attestation for TPM nodes: configure keylime.quoteEndpoint on the agent');
    }
    const target = this.endpointTarget(ep, r.sourceAddress);
    const policy = this.policyFor(r.selectors);
    if (policy === undefined) {
      throw new AttestationError('permission_denied', `no Keylime PCR policy applies to node ${r.agentId} (selectors ${r.selectors.map((s) => `${s.type}:${s.value}`).join(', ')}); add keylime.tpmPolicy or a matching keylime.policies item`);
    }
    const keylimeId = r.ekHash;
    const fingerprint = crypto.createHash('sha256')
      .update(JSON.stringify([r.akPublic.toString('base64'), target.ip, target.port, ep.tlsCertificatePem, target.apiVersion, policy]))
      .digest('hex');
    const current = this.enrolled.get(r.agentId);
    // Re-attestation with the same AK and endpoint (TPM nodes renew this way): nothing to enroll, but
    // the last verdict predates this attestation. An agent re-attests at once when Keylime pushed a
    // revocation, and Keylime pushes before it records the failure: only a quote Keylime verifies
    // from now on vouches for the node (at most one quote interval of waiting).
    if (current?.fingerprint === fingerprint && this.monitor.isTrusted(keylimeId)) {
      const count = this.monitor.lastStatus(keylimeId)?.attestationCount ?? 0;
      try {
        await this.monitor.awaitFreshQuote(keylimeId, count, this.o.settings.enrollTimeout * 1000);
      } catch (err) {
        throw this.admissionError(r.agentId, err);
      }
      return;
    }

    this.admitting.add(r.agentId);
    this.forget(r.agentId);
    this.monitor.unwatch(keylimeId);
    try {
      // Whatever the verifier holds for this node (an older AK, a failed state) is replaced.
      await this.tenant.deleteAgent(keylimeId);
      await this.enroll(keylimeId, {
        akPublic: r.akPublic, tpmPolicy: policy, quoteEndpoint: { ip: target.ip, port: target.port },
        quoteEndpointCert: ep.tlsCertificatePem, agentApiVersion: target.apiVersion,
        // Marks the enrollment as terroir's (reconcile() only ever removes these) and when it was made.
        metadata: { terroir_agent: r.agentId, terroir_enrolled_at: this.now().toISOString() },
      });
      this.monitor.watch(keylimeId);
      await this.monitor.awaitTrusted(keylimeId, this.o.settings.enrollTimeout * 1000);
      this.enrolled.set(r.agentId, { keylimeId, fingerprint });
      this.byKeylimeId.set(keylimeId, r.agentId);
      this.refused.delete(r.agentId);
      this.log.info({ agent: r.agentId, keylimeId, endpoint: `${target.ip}:${target.port}` }, 'Keylime verified the node');
    } catch (err) {
      this.monitor.unwatch(keylimeId);
      // Best effort: a refused node should not keep the verifier busy.
      this.tenant.deleteAgent(keylimeId).catch(() => undefined);
      throw this.admissionError(r.agentId, err);
    } finally {
      this.admitting.delete(r.agentId);
    }
  }

  /**
   * The signing gate for a node: undefined when it may be served, else the gRPC error to answer.
   * Non-TPM nodes (join tokens) are not Keylime-attested and pass through.
   */
  check(agentId: string, attestationType: string): RpcError | undefined {
    if (attestationType !== 'tpm') return undefined;
    const e = this.enrolled.get(agentId);
    if (e !== undefined) {
      if (this.monitor.isTrusted(e.keylimeId)) return undefined;
      if (this.monitor.verdict(e.keylimeId) === 'pending' && e.fingerprint === '') return this.pending(agentId);
      const why = this.monitor.failure(e.keylimeId)?.message ?? 'no recent verified quote';
      return rpcError(grpc.status.PERMISSION_DENIED, `node ${agentId} is not trusted by Keylime: ${why}; nothing is signed for it`);
    }
    if (this.admitting.has(agentId)) return rpcError(grpc.status.PERMISSION_DENIED, `node ${agentId} is not trusted until Keylime verifies its new attestation; retry when it has`);
    const refused = this.refused.get(agentId);
    if (refused !== undefined) return rpcError(grpc.status.PERMISSION_DENIED, `node ${agentId} was refused by Keylime: ${refused}`);
    const keylimeId = keylimeIdOf(agentId);
    if (keylimeId === undefined) {
      return rpcError(grpc.status.UNAUTHENTICATED, `node ${agentId} has no current Keylime attestation on this server; attest again with AttestAgent`);
    }
    // Attested through another server sharing the datastore, or before this server restarted: the
    // verifier may well be attesting it already. Watch it and sign once Keylime's verdict says so; a
    // verifier that does not know it (404) or fails it withdraws it like any other node.
    this.enrolled.set(agentId, { keylimeId, fingerprint: '' });
    this.byKeylimeId.set(keylimeId, agentId);
    this.monitor.watch(keylimeId);
    this.log.info({ agent: agentId, keylimeId }, 'node attested elsewhere: reading its Keylime verdict');
    return this.pending(agentId);
  }

  private pending(agentId: string): RpcError {
    return rpcError(grpc.status.UNAVAILABLE, `node ${agentId}: this server is still reading its Keylime verdict (attested through another server or before a restart); retry shortly`);
  }

  /** The node was evicted or banned: stop watching it and remove it from the verifier. */
  async evict(agentId: string): Promise<void> {
    // Stop trusting it now; the verifier is told in turn with the node's admissions (see inTurn).
    this.withdraw(agentId);
    await this.inTurn(agentId, () => this.removeFromVerifier(agentId, 'node evicted or banned'));
  }

  private withdraw(agentId: string): string | undefined {
    const keylimeId = this.enrolled.get(agentId)?.keylimeId ?? keylimeIdOf(agentId);
    this.forget(agentId);
    this.refused.delete(agentId);
    if (keylimeId !== undefined) this.monitor.unwatch(keylimeId);
    return keylimeId;
  }

  private async removeFromVerifier(agentId: string, why: string): Promise<void> {
    // Again: an admission that was in flight at the eviction may have enrolled the node since.
    const keylimeId = this.withdraw(agentId);
    if (keylimeId === undefined) return;
    try {
      const outcome = await this.tenant.deleteAgent(keylimeId);
      this.o.auditor.record({ action: 'keylime', caller: 'server', subject: agentId, result: 'ok', reason: `removed from the Keylime verifier: ${why}`, details: { keylimeId, outcome } });
    } catch (err) {
      this.o.auditor.record({ action: 'keylime', caller: 'server', subject: agentId, result: 'error', reason: `${why}, but the Keylime verifier could not be told: ${(err as Error).message}`, details: { keylimeId } });
    }
  }

  private forget(agentId: string): void {
    const e = this.enrolled.get(agentId);
    if (e === undefined) return;
    this.enrolled.delete(agentId);
    if (this.byKeylimeId.get(e.keylimeId) === agentId) this.byKeylimeId.delete(e.keylimeId);
  }

  private onFail(keylimeId: string, failure: MonitorFailure): void {
    const agentId = this.byKeylimeId.get(keylimeId);
    // Failures while admitting are the attestation's answer, not a withdrawal.
    if (agentId === undefined || this.admitting.has(agentId)) return;
    const reason = `Keylime no longer trusts node ${agentId}: ${failure.message}`;
    this.o.auditor.record({
      action: 'keylime', caller: 'keylime-verifier', subject: agentId, result: 'denied', reason,
      details: { kind: failure.kind, keylimeId, ...(failure.lastEventId !== undefined ? { lastEventId: failure.lastEventId } : {}) },
    });
    this.o.onUntrusted(agentId, reason);
  }

  private enrollRetryable(err: unknown): boolean {
    return err instanceof KeylimeRequestError && err.kind === 'http' && err.status === 409;
  }

  /** Enrolls; a 409 right after a delete means the verifier is still finishing it (202): wait briefly. */
  private async enroll(keylimeId: string, req: Parameters<KeylimeTenant['enrollAgent']>[1]): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.tenant.enrollAgent(keylimeId, req);
        return;
      } catch (err) {
        if (!this.enrollRetryable(err) || attempt >= ENROLL_CONFLICT_RETRIES) throw err;
        await new Promise((r) => setTimeout(r, ENROLL_CONFLICT_DELAY_MS));
        await this.tenant.deleteAgent(keylimeId);
      }
    }
  }

  private endpointTarget(ep: KeylimeQuoteEndpoint, source: string): { ip: string; port: number; apiVersion: string } {
    const bad = (m: string): AttestationError => new AttestationError('invalid_argument', `keylime_quote_endpoint: ${m}`);
    if (!Number.isInteger(ep.port) || ep.port < 1 || ep.port > 65535) throw bad(`port ${ep.port} is not a TCP port`);
    const want = this.o.settings.quoteEndpointPort;
    if (want !== undefined && ep.port !== want) throw new AttestationError('permission_denied', `keylime_quote_endpoint: port ${ep.port} is not the port this server allows (keylime.quoteEndpointPort ${want})`);
    const apiVersion = ep.apiVersion === '' ? '2.2' : ep.apiVersion;
    if (!ENDPOINT_API_VERSIONS.has(apiVersion)) throw bad(`api_version ${JSON.stringify(apiVersion.slice(0, 16))} is not one of ${[...ENDPOINT_API_VERSIONS].join(', ')}`);
    if (ep.tlsCertificatePem.length === 0 || ep.tlsCertificatePem.length > MAX_CERT_PEM) throw bad(`tls_certificate_pem must be a PEM certificate of at most ${MAX_CERT_PEM} bytes`);
    try {
      const cert = new crypto.X509Certificate(ep.tlsCertificatePem);
      if (Date.parse(cert.validTo) <= Date.now()) throw bad('tls_certificate_pem has expired');
    } catch (err) {
      if (err instanceof AttestationError) throw err;
      throw bad(`tls_certificate_pem is not a PEM certificate: ${(err as Error).message}`);
    }
    let ip: string;
    if (this.o.settings.quoteEndpointAddress === 'source') {
      ip = source.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, '');
      if (net.isIP(ip) === 0) throw new AttestationError('failed_precondition', `cannot tell the verifier where the node is: source address ${JSON.stringify(source)} is not an IP address`);
    } else {
      ip = ep.host;
      if (ip === '') throw bad('host is empty (keylime.quoteEndpointAddress is "advertised")');
    }
    return { ip, port: ep.port, apiVersion };
  }

  /** The first policy group whose selectors the node has, else the default. */
  private policyFor(selectors: readonly Selector[]): string | undefined {
    const have = new Set(selectors.map((s) => `${s.type}:${s.value}`));
    for (const g of this.groupPolicies) if (g.selectors.every((s) => have.has(s))) return g.policy;
    return this.defaultPolicy;
  }

  private admissionError(agentId: string, err: unknown): AttestationError {
    if (err instanceof AttestationError) return err;
    if (err instanceof MonitorFailureError) {
      if (err.failure.kind === 'verifier_unreachable') {
        return new AttestationError('unavailable', `Keylime verifier unreachable, node ${agentId} cannot be attested (fail closed): ${err.failure.message}`, { cause: err });
      }
      const event = err.failure.lastEventId !== undefined ? ` [${err.failure.lastEventId}]` : '';
      const msg = `Keylime refused the node: ${err.failure.message}${event}`;
      this.refused.set(agentId, msg);
      return new AttestationError('permission_denied', msg, { cause: err });
    }
    if (err instanceof KeylimeRequestError) {
      return new AttestationError('unavailable', `Keylime verifier unreachable or failing, node ${agentId} cannot be attested (fail closed): ${err.message}`, { cause: err });
    }
    // Inputs src/keylime refused before sending anything (e.g. an advertised host that is no host name).
    if (err instanceof KeylimeError) return new AttestationError('invalid_argument', `Keylime enrollment refused: ${err.message}`, { cause: err });
    const message = err instanceof Error ? err.message : String(err);
    return new AttestationError('failed_precondition', `Keylime enrollment failed: ${message}`, { cause: err });
  }
}
