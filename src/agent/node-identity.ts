// The node's identity towards the server: trust before the first attestation (the bootstrap bundle),
// node attestation with its backoff, and the agent SVID after it (adopted, renewed at half-life).
// SPIRE keeps these in pkg/agent/attestor/node and pkg/agent/svid (the rotator).
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { AttestationResult, KeylimeQuoteEndpoint, RenewAgentResponse } from '../api/agent-api.js';
import { BundleSet, pemToDer, type Bundle } from '../spiffe/index.js';
import { AgentStartError, MAX_BACKOFF_MS, MIN_BACKOFF_MS, type AgentContext } from './context.js';
import { createCsr, generateKeyPair, pkcs8Der } from './csr.js';
import type { AttestationFailure } from './health-status.js';
import { fingerprint, presentedServerChain } from './insecure-bootstrap.js';
import { advertisedProbeEndpoint } from './probe-endpoint.js';
import { attestNode, NodeAttestationError, type TpmCredentialSource } from './node-attestor.js';
import { connectToServer, unaryCall } from './server-conn.js';
import { certTimes, checkIssuedSvid, rotationTime } from './svid-check.js';
import type { StoredAgentState } from './svid-store.js';
import type { AgentUnifiedIdentity } from './unified-identity.js';

/**
 * A refused node attestation is retried too (an operator may fix the server, its Keylime policy or
 * the registration), but more slowly than an unreachable server: each attempt can cost the server a
 * Keylime round trip, and nothing changes by itself.
 */
const MAX_REFUSED_BACKOFF_MS = 120_000;

export interface NodeIdentityDeps {
  tpm: TpmCredentialSource | undefined;
  /** Where this node serves its Keylime quote endpoint, when it does. */
  quoteEndpoint(): KeylimeQuoteEndpoint | undefined;
  unifiedIdentity(): AgentUnifiedIdentity | undefined;
}

export class NodeIdentity {
  /** The Unified Identity claims the server vouched for at the last attestation (flag on). */
  lastClaims: Record<string, unknown> | undefined;
  /** When the agent SVID is due for renewal. */
  rotateAt = 0;
  /** The node attestation in flight, if any (there is at most one). */
  private attesting: Promise<void> | undefined;

  constructor(private readonly ctx: AgentContext, private readonly deps: NodeIdentityDeps) {}

  get inFlight(): Promise<void> | undefined {
    return this.attesting;
  }

  /** CA certificates to trust the server with before the first attestation. */
  async bootstrapRoots(): Promise<Buffer[]> {
    const { config, log } = this.ctx;
    const file = config.trustBundlePath;
    if (!file) {
      if (!config.insecureBootstrap) throw new AgentStartError('no trustBundlePath configured');
      const chain = await presentedServerChain(config.serverAddress, config.serverPort);
      const root = chain[chain.length - 1] as Buffer;
      log.error({ server: `${config.serverAddress}:${config.serverPort}`, trustedCaSha256: fingerprint(root) },
        'INSECURE BOOTSTRAP: trusting the CA of whichever server answered, without verification. For development only: ' +
        'anyone on the network path could impersonate the server. Configure trustBundlePath instead.');
      return [root];
    }
    let text: Buffer;
    try {
      text = fs.readFileSync(file);
    } catch (e) {
      throw new AgentStartError(`cannot read the bootstrap bundle ${file}: ${(e as Error).message}`);
    }
    const roots = text.includes('-----BEGIN CERTIFICATE-----')
      ? pemToDer(text.toString('utf8'))
      : this.ctx.bundles.parseOwn(text, `bootstrap bundle ${file}`).x509Authorities();
    if (roots.length === 0) throw new AgentStartError(`bootstrap bundle ${file} has no X.509 authorities`);
    return roots;
  }

  /**
   * Attests until it works: an unreachable server is retried quickly, a refusal (the server's reason
   * in the log and the health status each time) with a longer capped backoff. Other failures (this
   * node's TPM, a malformed answer, configuration) are thrown.
   */
  async attestWithRetry(roots: () => Buffer[]): Promise<void> {
    const { health, log, halt } = this.ctx;
    let delay = MIN_BACKOFF_MS;
    for (let attempt = 1; ; attempt++) {
      if (halt.aborted) throw new AgentStartError('the agent stopped before the node was attested');
      try {
        await this.attest(roots());
        return;
      } catch (e) {
        if (!(e instanceof NodeAttestationError) || (e.code !== 'unavailable' && e.code !== 'refused') || halt.aborted) throw e;
        const refused = e.code === 'refused';
        delay = Math.min(delay, refused ? MAX_REFUSED_BACKOFF_MS : MAX_BACKOFF_MS);
        // Up to 10 % less, so that a fleet refused together does not come back in lockstep.
        const wait = Math.round(delay * (1 - Math.random() * 0.1));
        health.retryingAt(Date.now() + wait);
        const fields = { err: e.message, code: e.grpcCode !== undefined ? grpc.status[e.grpcCode] : undefined, attempt, retryInMs: wait };
        if (refused) log.error(fields, 'the server refused node attestation; backing off');
        else log.warn(fields, 'server unreachable for node attestation; retrying');
        await this.sleep(wait);
        delay *= 2;
      }
    }
  }

  /** Resolves after `ms`, or at once when the agent stops. */
  private sleep(ms: number): Promise<void> {
    const halt = this.ctx.halt;
    return new Promise((resolve) => {
      if (halt.aborted) return resolve();
      const done = (): void => { clearTimeout(t); halt.removeEventListener('abort', done); resolve(); };
      const t = setTimeout(done, ms);
      halt.addEventListener('abort', done, { once: true });
    });
  }

  /**
   * Node attestation; stop() waits for one in flight, and a stopped agent starts none. A second
   * reason to attest while one runs (the server's drop push and a sync it refused, say) joins it:
   * it yields a fresh SVID either way, and a node still not trusted afterwards is told so again. Two
   * at once would only make the server (and Keylime) admit the node twice.
   */
  attest(roots: Buffer[]): Promise<void> {
    const { health, halt } = this.ctx;
    if (halt.aborted) return Promise.resolve();
    if (this.attesting) return this.attesting;
    health.attesting();
    const run = this.attestNow(roots).then(
      () => health.attested(this.ctx.state?.spiffeId ?? ''),
      (e: unknown) => {
        health.failed(failureOf(e));
        throw e;
      });
    this.attesting = run;
    const done = (): void => { if (this.attesting === run) this.attesting = undefined; };
    run.then(done, done);
    return run;
  }

  private async attestNow(roots: Buffer[]): Promise<void> {
    const { config, log } = this.ctx;
    const keys = generateKeyPair();
    const client = connectToServer({ servers: config.servers, trustDomain: config.trustDomain, roots });
    const quoteEndpoint = this.deps.quoteEndpoint();
    const probeEndpoint = advertisedProbeEndpoint(this.ctx);
    const unifiedIdentity = this.deps.unifiedIdentity();
    let result: AttestationResult;
    try {
      const na = config.nodeAttestor;
      if (na.tpm && !this.deps.tpm) throw new AgentStartError('nodeAttestor.tpm is configured but no TPM was opened');
      result = await attestNode(client, {
        csr: createCsr(keys),
        ...(na.joinToken ? { joinToken: na.joinToken.token } : { tpm: this.deps.tpm as TpmCredentialSource }),
        ...(quoteEndpoint ? { keylimeQuoteEndpoint: quoteEndpoint } : {}),
        ...(probeEndpoint ? { latencyProbeEndpoint: probeEndpoint } : {}),
        ...(unifiedIdentity ? { unifiedIdentity } : {}),
      });
    } finally {
      client.close();
    }
    this.ctx.stats.attestations++;
    this.lastClaims = undefined;
    if (result.unifiedIdentityClaims && result.unifiedIdentityClaims.length > 0) {
      try {
        this.lastClaims = JSON.parse(result.unifiedIdentityClaims.toString('utf8')) as Record<string, unknown>;
      } catch {
        throw new NodeAttestationError('protocol', 'attestation result carries unreadable Unified Identity claims');
      }
      log.info({ claims: this.lastClaims }, 'Unified Identity claims issued');
    } else if (unifiedIdentity) {
      log.warn('Unified Identity is enabled here but the server issued a plain SVID (its flag is off)');
    }
    if (result.svidChain.length === 0) throw new NodeAttestationError('protocol', 'attestation result carries no SVID');
    const bundle = this.ctx.bundles.parseOwn(result.bundle, 'bundle from the attestation result');
    if (!result.spiffeId.startsWith(`spiffe://${config.trustDomain}/`)) {
      throw new NodeAttestationError('protocol', `attestation result names ${result.spiffeId}, outside trust domain ${config.trustDomain}`);
    }
    const { notAfter } = checkIssuedSvid(result.svidChain, new BundleSet(bundle), result.spiffeId, keys.privateKey);
    const state: StoredAgentState = {
      spiffeId: result.spiffeId,
      chain: result.svidChain,
      key: pkcs8Der(keys.privateKey),
      bundle: result.bundle,
      canRenew: result.canRenew,
      notAfter,
    };
    this.ctx.store.save(state);
    this.adopt(state, bundle);
    log.info({ spiffeId: result.spiffeId, expires: new Date(notAfter).toISOString() }, 'node attested');
  }

  /** Takes an agent SVID (attested, renewed, or stored by an earlier run) into use. */
  adopt(state: StoredAgentState, bundle: Bundle): void {
    this.ctx.state = state;
    const { notBefore, notAfter } = certTimes(state.chain[0] as Buffer);
    this.rotateAt = rotationTime(notBefore, notAfter);
    this.ctx.bundles.adopt(bundle);
    this.ctx.resetClient();
  }

  /** Renews the agent SVID at half-life: RenewAgent for join-token nodes, re-attestation for TPM nodes. */
  async renew(): Promise<void> {
    const { bundles, log } = this.ctx;
    const state = this.ctx.state as StoredAgentState;
    if (!state.canRenew) {
      log.info('agent SVID at half-life: re-attesting');
      await this.attest(bundles.ownRoots());
      return;
    }
    const keys = generateKeyPair();
    const res = await unaryCall<{ csr: Buffer }, RenewAgentResponse>(this.ctx.serverClient(), 'RenewAgent', { csr: createCsr(keys) });
    if (!res.svid || res.svid.certChain.length === 0) throw new Error('RenewAgent returned no SVID');
    const { notAfter } = checkIssuedSvid(res.svid.certChain, bundles.all, state.spiffeId, keys.privateKey);
    const next: StoredAgentState = {
      ...state,
      chain: res.svid.certChain,
      key: pkcs8Der(keys.privateKey),
      bundle: Buffer.from(bundles.own()?.toJSON() ?? state.bundle),
      notAfter,
    };
    this.ctx.store.save(next);
    this.adopt(next, bundles.own() as Bundle);
    log.info({ expires: new Date(next.notAfter).toISOString() }, 'agent SVID renewed');
  }
}

/** A failed attestation as the health status records it (the server's words, without our prefix). */
function failureOf(e: unknown): AttestationFailure {
  const at = new Date().toISOString();
  if (e instanceof NodeAttestationError) {
    const message = e.message.replace(/^node attestation (refused|failed): /, '');
    return { at, kind: e.code, ...(e.grpcCode !== undefined ? { code: grpc.status[e.grpcCode] } : {}), message };
  }
  return { at, kind: 'other', message: (e as Error)?.message ?? String(e) };
}
