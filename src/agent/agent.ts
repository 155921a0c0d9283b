// The agent core: attest the node (or resume from the stored SVID), keep the agent SVID fresh,
// keep the cache of bundles, entries and workload SVIDs in step with the server, and serve the
// Workload API from that cache — also while the server is unreachable, until the SVIDs expire.
import crypto from 'node:crypto';
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import pino, { type Logger } from 'pino';
import type {
  KeylimeQuoteEndpoint,
  AgentEvent, AttestationResult, BatchNewX509SvidResponse, FetchBundlesResponse, NewJwtSvidResponse,
  RegistrationEntry, RenewAgentResponse, SyncEntriesResponse,
} from '../api/agent-api.js';
import { AGENT_API_MAX_BATCH } from '../api/agent-api.js';
import { startQuoteEndpoint, type QuoteEndpoint } from '../keylime/index.js';
import type { RevocationNotification } from '../keylime/quote-endpoint.js';
import { Bundle, BundleSet, TrustDomain, pemToDer, validateJwtSvid, verifyX509Svid } from '../spiffe/index.js';
import { IdentityCache, type CacheEntry, type CachedSvid, type TrustBundle } from './cache.js';
import type { AgentConfig } from './config.js';
import { createCsr, generateKeyPair, pkcs8Der } from './csr.js';
import { HealthStatusWriter, type AttestationFailure } from './health-status.js';
import { fingerprint, presentedServerChain } from './insecure-bootstrap.js';
import { attestNode, NodeAttestationError, type TpmCredentialSource } from './node-attestor.js';
import { openUnifiedIdentity, type AgentUnifiedIdentity } from './unified-identity.js';
import { describeFeatureFlags, loadFeatureFlags } from '../../feature-flags/index.js';
import { connectToServer, unaryCall, type AgentClient } from './server-conn.js';
import { SvidStore, type StoredAgentState } from './svid-store.js';
import { UnixAttestor } from './attestor/unix.js';
import { WorkloadApiServer, type JwtProvider } from './workloadapi/server.js';

export interface AgentOptions {
  logger?: Logger;
  /** The TPM for `nodeAttestor.tpm` (opened by the caller, e.g. with openTpmCredentialSource). */
  tpm?: TpmCredentialSource;
  /** Stops the agent, also while start() still waits for a node attestation the server keeps refusing. */
  signal?: AbortSignal;
}

export class AgentStartError extends Error {
  readonly code = 'agent_start_failed';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentStartError';
  }
}

/**
 * When an SVID is replaced: at half its lifetime, minus up to 10 % jitter so a fleet does not renew
 * in lockstep. The lifetime counts from when we got it, not from NotBefore: servers backdate
 * NotBefore, which would otherwise put the half-life of a short-lived SVID in the past.
 */
function rotationTime(notBefore: number, notAfter: number): number {
  const start = Math.max(notBefore, Date.now());
  const life = Math.max(0, notAfter - start);
  return start + life * (0.5 - Math.random() * 0.1);
}

/**
 * Checks an SVID the server issued before it is used or handed out: the chain verifies against the
 * trust bundle (X.509-SVID rules included), it names the expected SPIFFE ID, and it certifies our key.
 */
export function checkIssuedSvid(chain: Buffer[], bundles: BundleSet, expectedId: string, key: crypto.KeyObject): { notBefore: number; notAfter: number } {
  let verified: ReturnType<typeof verifyX509Svid>;
  try {
    verified = verifyX509Svid(chain, bundles);
  } catch (e) {
    throw new Error(`the server issued an SVID that does not verify: ${(e as Error).message}`, { cause: e });
  }
  if (verified.id.toString() !== expectedId) throw new Error(`the server issued an SVID for ${verified.id.toString()}, expected ${expectedId}`);
  if (!verified.leaf.checkPrivateKey(key)) throw new Error(`the server issued an SVID for ${expectedId} that does not certify our key`);
  return { notBefore: Date.parse(verified.leaf.validFrom), notAfter: Date.parse(verified.leaf.validTo) };
}

function certTimes(der: Buffer): { notBefore: number; notAfter: number } {
  const c = new crypto.X509Certificate(der);
  return { notBefore: Date.parse(c.validFrom), notAfter: Date.parse(c.validTo) };
}

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/**
 * A refused node attestation is retried too (an operator may fix the server, its Keylime policy or
 * the registration), but more slowly than an unreachable server: each attempt can cost the server a
 * Keylime round trip, and nothing changes by itself.
 */
const MAX_REFUSED_BACKOFF_MS = 120_000;
/** The SPIFFE ID of a TPM node ends in its EK hash, which is also its Keylime agent id (server: keylimeIdOf). */
const TPM_NODE_ID = /\/agent\/tpm\/([0-9a-f]{64})$/;
const MAX_JWT_CACHE = 1000;
/**
 * CSRs per BatchNewX509Svid call: well under the API's limit, so the keys, requests and
 * verification garbage of one batch stay small and the agent's peak memory stays low.
 */
const SIGN_BATCH = Math.min(100, AGENT_API_MAX_BATCH);

export interface AgentStats {
  /** Node attestations this process performed (0 after a restart that resumed from disk). */
  attestations: number;
  syncs: number;
  svidsSigned: number;
  /** Keylime revocation notifications about this node that the agent acted on. */
  revocations: number;
}

export class Agent {
  readonly cache: IdentityCache;
  readonly stats: AgentStats = { attestations: 0, syncs: 0, svidsSigned: 0, revocations: 0 };
  private readonly log: Logger;
  private readonly store: SvidStore;
  private readonly trustDomain: TrustDomain;
  private workloadApi: WorkloadApiServer | undefined;
  private quoteEndpoint: { server: QuoteEndpoint; advertised: KeylimeQuoteEndpoint } | undefined;
  private unifiedIdentity: AgentUnifiedIdentity | undefined;
  /** The Unified Identity claims the server vouched for at the last attestation (flag on). */
  lastClaims: Record<string, unknown> | undefined;
  private state: StoredAgentState | undefined;
  private agentRotateAt = 0;
  private bundles = new BundleSet();
  private bundleSequence = 0;
  private bundlesDigest = '';
  private revision = '';
  private readonly rotateAt = new Map<string, number>();
  private readonly jwtCache = new Map<string, { token: string; refreshAt: number; expiresAt: number }>();
  private client: AgentClient | undefined;
  private watch: grpc.ClientReadableStream<AgentEvent> | undefined;
  /** The node attestation in flight, if any (there is at most one). */
  private attesting: Promise<void> | undefined;
  private syncTimer: NodeJS.Timeout | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private syncing: Promise<void> | undefined;
  private syncAgain = false;
  private backoffMs = MIN_BACKOFF_MS;
  private watchBackoffMs = MIN_BACKOFF_MS;
  private stopped = false;
  /** Aborted by stop(): ends backoff waits at once. */
  private readonly halt = new AbortController();
  /** The background re-attestation (after a drop), with its backoff; a second reason to drop joins it. */
  private reattesting: Promise<void> | undefined;
  private readonly health: HealthStatusWriter;

  private constructor(readonly config: AgentConfig, private readonly opts: AgentOptions) {
    this.log = opts.logger ?? pino({ name: 'terroir-agent', level: config.logLevel });
    this.trustDomain = TrustDomain.parse(config.trustDomain);
    this.cache = new IdentityCache(config.trustDomain);
    this.store = new SvidStore(config.dataDir);
    this.health = new HealthStatusWriter(config.socketPath, this.log.child({ component: 'health-status' }));
  }

  /** Attests (or resumes), performs a first sync, and starts serving the Workload API. */
  static async start(config: AgentConfig, opts: AgentOptions = {}): Promise<Agent> {
    const agent = new Agent(config, opts);
    const onAbort = (): void => void agent.stop();
    if (opts.signal?.aborted) throw new AgentStartError('stopped before the agent started');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await agent.boot();
    } catch (e) {
      opts.signal?.removeEventListener('abort', onAbort);
      await agent.stop();
      throw e;
    }
    return agent;
  }

  /** The agent's own SPIFFE ID (after attestation). */
  get spiffeId(): string | undefined {
    return this.state?.spiffeId;
  }

  get socketPath(): string {
    return this.config.socketPath;
  }

  /** The Keylime quote endpoint, when configured (its port is known after start). */
  get keylimeQuoteEndpoint(): KeylimeQuoteEndpoint | undefined {
    return this.quoteEndpoint?.advertised;
  }

  private async boot(): Promise<void> {
    const flags = this.config.flags ?? loadFeatureFlags(this.config.featureFlags, process.env);
    this.log.info({ featureFlags: describeFeatureFlags(flags) }, 'feature flags');
    if (flags.flags.unifiedIdentity) {
      if (!this.config.unifiedIdentity || !this.opts.tpm) throw new AgentStartError('Unified Identity is enabled: configure nodeAttestor.tpm and unifiedIdentity.sensors');
      this.unifiedIdentity = openUnifiedIdentity(this.config.unifiedIdentity, this.opts.tpm);
    }
    this.store.init();
    await this.startQuoteEndpoint();
    const stored = this.store.load();
    // With Keylime and a transient AK, the AK enrolled with the verifier died with the last process:
    // attest again (re-enrolling the new AK) instead of resuming.
    // With Unified Identity the claims must be fresh, so a restart always attests.
    const akSurvives = (!this.quoteEndpoint || this.config.nodeAttestor.tpm?.akHandle !== undefined) && !this.unifiedIdentity;
    if (akSurvives && stored && stored.notAfter > Date.now() + 5_000 && stored.spiffeId.startsWith(`spiffe://${this.config.trustDomain}/`)) {
      this.adoptState(stored, this.parseOwnBundle(stored.bundle, 'stored bundle'));
      this.log.info({ spiffeId: stored.spiffeId, expires: new Date(stored.notAfter).toISOString() },
        'resuming with the stored agent SVID; no node attestation needed');
    } else {
      const roots = await this.bootstrapRoots();
      await this.attestWithRetry(() => roots);
    }
    try {
      await this.syncOnce();
    } catch (e) {
      // A resumed agent whose server is down still starts; the loop keeps trying.
      this.log.warn({ err: (e as Error).message }, 'first sync with the server failed; retrying in the background');
    }
    this.workloadApi = await WorkloadApiServer.start({
      socketPath: this.config.socketPath,
      cache: this.cache,
      attestor: new UnixAttestor(this.config.workloadAttestors.unix),
      jwt: this.jwtProvider(),
      logger: this.log.child({ component: 'workload-api' }),
      allowUnauthenticatedVerifiers: this.config.allowUnauthenticatedVerifiers,
    });
    this.openWatch();
    this.scheduleSync(this.config.syncIntervalMs);
  }

  async stop(): Promise<void> {
    if (!this.stopped) this.halt.abort();
    this.stopped = true;
    clearTimeout(this.syncTimer);
    clearTimeout(this.watchTimer);
    this.watch?.cancel();
    // An attestation in flight (renewal, re-attestation after a drop) must not outlive the agent.
    await this.attesting?.catch(() => undefined);
    this.client?.close();
    await this.workloadApi?.close();
    await this.quoteEndpoint?.server.close();
    this.quoteEndpoint = undefined;
    await this.unifiedIdentity?.close();
    this.unifiedIdentity = undefined;
    this.health.remove();
  }

  /** What `terroir-agent healthcheck` reads: the state of node attestation and its last failure. */
  get healthStatus(): HealthStatusWriter['current'] {
    return this.health.current;
  }

  /**
   * Serves the Keylime quote endpoint (keylime.quoteEndpoint) backed by the attestation TPM and AK;
   * the key bound into PCR 16 is the endpoint certificate's, which the verifier pins.
   */
  private async startQuoteEndpoint(): Promise<void> {
    const qe = this.config.keylime?.quoteEndpoint;
    if (!qe) return;
    const quoter = this.opts.tpm?.quoter?.();
    if (!quoter) throw new AgentStartError('keylime.quoteEndpoint is configured but the TPM session cannot quote (open it with openTpmCredentialSource)');
    const read = (file: string, what: string): string => {
      try {
        return fs.readFileSync(file, 'utf8');
      } catch (e) {
        throw new AgentStartError(`keylime.quoteEndpoint.${what}: cannot read ${file}: ${(e as Error).message}`);
      }
    };
    const cert = read(qe.certFile, 'certFile');
    const key = read(qe.keyFile, 'keyFile');
    const clientCa = read(qe.clientCaFile, 'clientCaFile');
    let pubkeyPem: string;
    try {
      const x = new crypto.X509Certificate(cert);
      if (!x.checkPrivateKey(crypto.createPrivateKey(key))) throw new Error('the key does not belong to the certificate');
      pubkeyPem = x.publicKey.export({ type: 'spki', format: 'pem' }).toString();
    } catch (e) {
      throw new AgentStartError(`keylime.quoteEndpoint: certFile/keyFile unusable: ${(e as Error).message}`);
    }
    const server = await startQuoteEndpoint({
      quoter, pubkeyPem, encAlg: 'ecc', signAlg: 'ecdsa', cert, key, clientCa,
      host: qe.bindAddress, port: qe.port, logger: this.log.child({ component: 'keylime-quote-endpoint' }),
      onRevocation: (n) => this.onRevocation(n),
    });
    this.quoteEndpoint = {
      server,
      advertised: { host: qe.advertiseAddress ?? qe.bindAddress, port: server.port, tlsCertificatePem: cert, apiVersion: '2.2' },
    };
    this.log.info({ host: qe.bindAddress, port: server.port }, 'Keylime quote endpoint listening');
  }

  // ------------------------------------------------------------------ trust

  /** CA certificates to trust the server with before the first attestation. */
  private async bootstrapRoots(): Promise<Buffer[]> {
    const file = this.config.trustBundlePath;
    if (!file) {
      if (!this.config.insecureBootstrap) throw new AgentStartError('no trustBundlePath configured');
      const chain = await presentedServerChain(this.config.serverAddress, this.config.serverPort);
      const root = chain[chain.length - 1] as Buffer;
      this.log.error({ server: `${this.config.serverAddress}:${this.config.serverPort}`, trustedCaSha256: fingerprint(root) },
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
      : this.parseOwnBundle(text, `bootstrap bundle ${file}`).x509Authorities();
    if (roots.length === 0) throw new AgentStartError(`bootstrap bundle ${file} has no X.509 authorities`);
    return roots;
  }

  private parseOwnBundle(json: Buffer, what: string): Bundle {
    try {
      return Bundle.parse(this.trustDomain, json);
    } catch (e) {
      throw new AgentStartError(`${what} is not a valid SPIFFE bundle for ${this.config.trustDomain}: ${(e as Error).message}`);
    }
  }

  private ownRoots(): Buffer[] {
    return this.bundles.get(this.trustDomain)?.x509Authorities() ?? [];
  }

  // ------------------------------------------------------------------ node attestation

  /**
   * Attests until it works: an unreachable server is retried quickly, a refusal (the server's reason
   * in the log and the health status each time) with a longer capped backoff. Other failures (this
   * node's TPM, a malformed answer, configuration) are thrown.
   */
  private async attestWithRetry(roots: () => Buffer[]): Promise<void> {
    let delay = MIN_BACKOFF_MS;
    for (let attempt = 1; ; attempt++) {
      if (this.stopped) throw new AgentStartError('the agent stopped before the node was attested');
      try {
        await this.attest(roots());
        return;
      } catch (e) {
        if (!(e instanceof NodeAttestationError) || (e.code !== 'unavailable' && e.code !== 'refused') || this.stopped) throw e;
        const refused = e.code === 'refused';
        delay = Math.min(delay, refused ? MAX_REFUSED_BACKOFF_MS : MAX_BACKOFF_MS);
        // Up to 10 % less, so that a fleet refused together does not come back in lockstep.
        const wait = Math.round(delay * (1 - Math.random() * 0.1));
        this.health.retryingAt(Date.now() + wait);
        const fields = { err: e.message, code: e.grpcCode !== undefined ? grpc.status[e.grpcCode] : undefined, attempt, retryInMs: wait };
        if (refused) this.log.error(fields, 'the server refused node attestation; backing off');
        else this.log.warn(fields, 'server unreachable for node attestation; retrying');
        await this.sleep(wait);
        delay *= 2;
      }
    }
  }

  /** Resolves after `ms`, or at once when the agent stops. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.halt.signal.aborted) return resolve();
      const done = (): void => { clearTimeout(t); this.halt.signal.removeEventListener('abort', done); resolve(); };
      const t = setTimeout(done, ms);
      this.halt.signal.addEventListener('abort', done, { once: true });
    });
  }

  /**
   * Node attestation; stop() waits for one in flight, and a stopped agent starts none. A second
   * reason to attest while one runs (the server's drop push and a sync it refused, say) joins it:
   * it yields a fresh SVID either way, and a node still not trusted afterwards is told so again. Two
   * at once would only make the server (and Keylime) admit the node twice.
   */
  private attest(roots: Buffer[]): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.attesting) return this.attesting;
    this.health.attesting();
    const run = this.attestNow(roots).then(
      () => this.health.attested(this.state?.spiffeId ?? ''),
      (e: unknown) => {
        this.health.failed(failureOf(e));
        throw e;
      });
    this.attesting = run;
    const done = (): void => { if (this.attesting === run) this.attesting = undefined; };
    run.then(done, done);
    return run;
  }

  private async attestNow(roots: Buffer[]): Promise<void> {
    const keys = generateKeyPair();
    const client = connectToServer({ address: this.config.serverAddress, port: this.config.serverPort, trustDomain: this.config.trustDomain, roots });
    let result: AttestationResult;
    try {
      const na = this.config.nodeAttestor;
      if (na.tpm && !this.opts.tpm) throw new AgentStartError('nodeAttestor.tpm is configured but no TPM was opened');
      result = await attestNode(client, {
        csr: createCsr(keys),
        ...(na.joinToken ? { joinToken: na.joinToken.token } : { tpm: this.opts.tpm as TpmCredentialSource }),
        ...(this.quoteEndpoint ? { keylimeQuoteEndpoint: this.quoteEndpoint.advertised } : {}),
        ...(this.unifiedIdentity ? { unifiedIdentity: this.unifiedIdentity } : {}),
      });
    } finally {
      client.close();
    }
    this.stats.attestations++;
    this.lastClaims = undefined;
    if (result.unifiedIdentityClaims && result.unifiedIdentityClaims.length > 0) {
      try {
        this.lastClaims = JSON.parse(result.unifiedIdentityClaims.toString('utf8')) as Record<string, unknown>;
      } catch {
        throw new NodeAttestationError('protocol', 'attestation result carries unreadable Unified Identity claims');
      }
      this.log.info({ claims: this.lastClaims }, 'Unified Identity claims issued');
    } else if (this.unifiedIdentity) {
      this.log.warn('Unified Identity is enabled here but the server issued a plain SVID (its flag is off)');
    }
    if (result.svidChain.length === 0) throw new NodeAttestationError('protocol', 'attestation result carries no SVID');
    const bundle = this.parseOwnBundle(result.bundle, 'bundle from the attestation result');
    if (!result.spiffeId.startsWith(`spiffe://${this.config.trustDomain}/`)) {
      throw new NodeAttestationError('protocol', `attestation result names ${result.spiffeId}, outside trust domain ${this.config.trustDomain}`);
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
    this.store.save(state);
    this.adoptState(state, bundle);
    this.log.info({ spiffeId: result.spiffeId, expires: new Date(notAfter).toISOString() }, 'node attested');
  }

  private adoptState(state: StoredAgentState, bundle: Bundle): void {
    this.state = state;
    const { notBefore, notAfter } = certTimes(state.chain[0] as Buffer);
    this.agentRotateAt = rotationTime(notBefore, notAfter);
    if (!this.bundles.get(this.trustDomain) || bundle.sequenceNumber >= BigInt(this.bundleSequence)) {
      this.bundles.set(bundle);
      this.bundleSequence = Number(bundle.sequenceNumber);
      this.publishBundles();
    }
    this.resetClient();
  }

  /** Renews the agent SVID at half-life: RenewAgent for join-token nodes, re-attestation for TPM nodes. */
  private async renewAgentSvid(): Promise<void> {
    const state = this.state as StoredAgentState;
    if (!state.canRenew) {
      this.log.info('agent SVID at half-life: re-attesting');
      await this.attest(this.ownRoots());
      return;
    }
    const keys = generateKeyPair();
    const res = await unaryCall<{ csr: Buffer }, RenewAgentResponse>(this.serverClient(), 'RenewAgent', { csr: createCsr(keys) });
    if (!res.svid || res.svid.certChain.length === 0) throw new Error('RenewAgent returned no SVID');
    const { notAfter } = checkIssuedSvid(res.svid.certChain, this.bundles, state.spiffeId, keys.privateKey);
    const next: StoredAgentState = {
      ...state,
      chain: res.svid.certChain,
      key: pkcs8Der(keys.privateKey),
      bundle: Buffer.from(this.bundles.get(this.trustDomain)?.toJSON() ?? state.bundle),
      notAfter,
    };
    this.store.save(next);
    this.adoptState(next, this.bundles.get(this.trustDomain) as Bundle);
    this.log.info({ expires: new Date(next.notAfter).toISOString() }, 'agent SVID renewed');
  }

  // ------------------------------------------------------------------ server connection

  private serverClient(): AgentClient {
    if (!this.client) {
      const state = this.state as StoredAgentState;
      this.client = connectToServer({
        address: this.config.serverAddress,
        port: this.config.serverPort,
        trustDomain: this.config.trustDomain,
        roots: this.ownRoots(),
        identity: { chain: state.chain, key: state.key },
      });
    }
    return this.client;
  }

  /** New credentials (SVID or roots): reconnect, and restart the watch on the new channel. */
  private resetClient(): void {
    this.client?.close();
    this.client = undefined;
    if (this.watch) {
      this.watch.cancel();
      this.watch = undefined;
      if (!this.stopped) this.openWatch();
    }
  }

  // ------------------------------------------------------------------ sync

  private scheduleSync(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.syncTimer);
    this.syncTimer = setTimeout(() => void this.syncLoopTick(), Math.max(0, delayMs));
  }

  private async syncLoopTick(): Promise<void> {
    try {
      await this.syncOnce();
      this.backoffMs = MIN_BACKOFF_MS;
      this.scheduleSync(Math.min(this.config.syncIntervalMs, this.nextRotationIn()));
    } catch (e) {
      this.cache.pruneExpired();
      this.log.warn({ err: (e as Error).message, retryInMs: this.backoffMs }, 'sync with the server failed; serving cached SVIDs');
      this.scheduleSync(this.backoffMs);
      this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    }
  }

  private nextRotationIn(): number {
    let next = this.agentRotateAt;
    for (const t of this.rotateAt.values()) next = Math.min(next, t);
    return Math.max(50, next - Date.now());
  }

  /** One sync; concurrent requests (timer, server push) are folded into one extra pass. */
  syncOnce(): Promise<void> {
    if (this.syncing) {
      this.syncAgain = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      try {
        do {
          this.syncAgain = false;
          try {
            await this.syncPass();
          } catch (e) {
            // A pass asked for meanwhile (after a fresh attestation, say) still runs: it may well succeed.
            if (!this.syncAgain || this.stopped) throw e;
          }
        } while (this.syncAgain && !this.stopped);
      } finally {
        this.syncing = undefined;
      }
    })();
    return this.syncing;
  }

  private async syncPass(): Promise<void> {
    if (this.stopped || !this.state) return;
    this.stats.syncs++;
    const svid = this.state.chain[0];
    if (Date.now() >= this.state.notAfter) {
      // The server was out of reach for longer than the SVID lived: only a new attestation helps.
      this.log.warn('the agent SVID has expired: attesting again');
      await this.attest(this.ownRoots());
    } else if (Date.now() >= this.agentRotateAt) {
      try {
        await this.renewAgentSvid();
      } catch (e) {
        await this.handleAuthFailure(e, svid);
        throw e;
      }
    }
    try {
      await this.syncBundles();
      await this.syncEntries();
      await this.signDue();
    } catch (e) {
      await this.handleAuthFailure(e, svid);
      throw e;
    }
    this.cache.pruneExpired();
  }

  /**
   * The server no longer knows our SVID (evicted, replaced): re-attest, unless `svid` (the agent SVID
   * the failed pass started with) was replaced meanwhile; banned: drop everything.
   */
  private async handleAuthFailure(e: unknown, svid: Buffer | undefined): Promise<void> {
    const code = (e as grpc.ServiceError).code;
    if (code === grpc.status.PERMISSION_DENIED && /banned/i.test((e as grpc.ServiceError).details ?? '')) {
      this.log.error({ err: (e as Error).message }, 'this node is banned: dropping every SVID');
      this.dropAll();
      return;
    }
    if (code === grpc.status.UNAUTHENTICATED) {
      // A re-attestation finished since this pass began: the next pass uses its SVID.
      if (this.state?.chain[0] !== svid && this.attesting === undefined) return;
      this.log.warn({ err: (e as Error).message }, 'the server no longer accepts the agent SVID: re-attesting');
      await this.attest(this.ownRoots());
    }
  }

  private dropAll(): void {
    this.cache.dropSvids();
    this.rotateAt.clear();
    this.jwtCache.clear();
  }

  /**
   * Drops every workload SVID now (open Workload API streams see it at once) and attests again in the
   * background, backing off while the server refuses. Used for the server's DROP_SVIDS push and for
   * Keylime's revocation notification. A drop while a re-attestation is under way joins it: the
   * server decides from the verifier's current status anyway, and a node Keylime keeps failing must
   * not turn each notification into one more attempt.
   */
  private dropAndReattest(): void {
    this.dropAll();
    if (this.stopped || this.reattesting) return;
    const run = this.attestWithRetry(() => this.ownRoots())
      .then(() => this.syncOnce())
      .catch((e: unknown) => { if (!this.stopped) this.log.error({ err: (e as Error).message }, 're-attestation after a drop failed'); })
      .finally(() => { if (this.reattesting === run) this.reattesting = undefined; });
    this.reattesting = run;
  }

  /**
   * Keylime's push (POST /v{ver}/notifications/revocation), authenticated by the quote endpoint's
   * mTLS (the verifier's client CA only). Dropping our own SVIDs only lowers privilege, so that is
   * enough to act on; whether the node gets new ones is the server's decision, from the verifier's
   * status. Keylime notifies every node it polls about any node's failure: only one naming this node
   * counts.
   */
  private onRevocation(n: RevocationNotification): void {
    const own = TPM_NODE_ID.exec(this.state?.spiffeId ?? '')?.[1];
    const fields = { type: n.type, keylimeAgentId: n.agentId, eventId: n.eventId, severity: n.severityLabel };
    if (own === undefined || n.agentId !== own) {
      this.log.info(fields, 'Keylime revocation notification about another node: nothing to drop here');
      return;
    }
    this.log.warn(fields, 'Keylime revoked this node: dropping every SVID and attesting again');
    this.stats.revocations++;
    this.dropAndReattest();
  }

  private async syncBundles(): Promise<void> {
    const res = await unaryCall<{ knownSequence: number }, FetchBundlesResponse>(this.serverClient(), 'FetchBundles', { knownSequence: this.bundleSequence });
    if (res.bundle.length === 0) return;
    // Nothing changed: nothing to parse or publish (workloads are only told about real changes).
    const digest = crypto.createHash('sha256').update(res.bundle);
    for (const name of Object.keys(res.federatedBundles ?? {}).sort()) digest.update(`\n${name}\n`).update(res.federatedBundles[name] as Buffer);
    const d = digest.digest('hex');
    if (d === this.bundlesDigest) return;
    const own = this.parseOwnBundle(res.bundle, 'bundle from FetchBundles');
    const set = new BundleSet(own);
    for (const [name, json] of Object.entries(res.federatedBundles ?? {})) {
      try {
        const td = TrustDomain.parse(name);
        if (td.equals(this.trustDomain)) continue;
        set.set(Bundle.parse(td, json));
      } catch (e) {
        this.log.warn({ trustDomain: name, err: (e as Error).message }, 'ignoring an invalid federated bundle');
      }
    }
    const rootsChanged = !sameDers(own.x509Authorities(), this.ownRoots());
    this.bundles = set;
    this.bundleSequence = res.sequence;
    this.bundlesDigest = d;
    this.publishBundles();
    if (rootsChanged) {
      // Keep the stored bundle current, so a restart trusts the server's current CAs.
      if (this.state) {
        this.state = { ...this.state, bundle: Buffer.from(own.toJSON()) };
        this.store.save(this.state);
      }
      this.resetClient();
    }
  }

  private publishBundles(): void {
    const own = this.bundles.get(this.trustDomain);
    if (!own) return;
    const fed = this.bundles.all().filter((b) => !b.trustDomain.equals(this.trustDomain));
    this.cache.setBundles(toTrustBundle(own), fed.map(toTrustBundle));
  }

  private async syncEntries(): Promise<void> {
    const res = await unaryCall<{ knownRevision: string }, SyncEntriesResponse>(this.serverClient(), 'SyncEntries', { knownRevision: this.revision });
    if (res.unchanged) return;
    this.revision = res.revision;
    const entries = res.entries.map(toCacheEntry);
    const ids = new Set(entries.map((e) => e.id));
    for (const id of [...this.rotateAt.keys()]) if (!ids.has(id)) this.rotateAt.delete(id);
    for (const k of [...this.jwtCache.keys()]) if (!ids.has(k.slice(0, k.indexOf('\n')))) this.jwtCache.delete(k);
    this.cache.setEntries(entries);
  }

  /** Signs SVIDs for entries that have none, whose SVID is at half-life, or whose ID changed. */
  private async signDue(): Promise<void> {
    const now = Date.now();
    const due = this.cache.entryList().filter((e) => {
      const s = this.cache.svid(e.id);
      return !s || s.spiffeId !== e.spiffeId || now >= (this.rotateAt.get(e.id) ?? 0);
    });
    for (let i = 0; i < due.length; i += SIGN_BATCH) {
      const batch = due.slice(i, i + SIGN_BATCH);
      const keys = new Map(batch.map((e) => [e.id, generateKeyPair()]));
      const res = await unaryCall<object, BatchNewX509SvidResponse>(this.serverClient(), 'BatchNewX509Svid', {
        params: batch.map((e) => ({ entryId: e.id, csr: createCsr(keys.get(e.id)!, e.spiffeId) })),
      });
      const fresh = new Map<string, CachedSvid>();
      for (const r of res.results) {
        const k = keys.get(r.entryId);
        if (!k) continue;
        if (r.errorCode !== 0 || !r.svid || r.svid.certChain.length === 0) {
          this.log.warn({ entryId: r.entryId, code: r.errorCode, err: r.errorMessage }, 'server refused to sign an SVID');
          continue;
        }
        const entry = this.cache.entry(r.entryId);
        if (!entry) continue;
        let times: { notBefore: number; notAfter: number };
        try {
          times = checkIssuedSvid(r.svid.certChain, this.bundles, entry.spiffeId, k.privateKey);
        } catch (e) {
          this.log.error({ entryId: r.entryId, err: (e as Error).message }, 'discarding an SVID from the server');
          continue;
        }
        const { notBefore, notAfter } = times;
        fresh.set(r.entryId, { spiffeId: entry.spiffeId, chain: r.svid.certChain, key: pkcs8Der(k.privateKey), notBefore, notAfter });
        this.rotateAt.set(r.entryId, rotationTime(notBefore, notAfter));
      }
      this.stats.svidsSigned += fresh.size;
      this.log.info({ count: fresh.size, requested: batch.length }, 'workload SVIDs signed');
      this.cache.putSvids(fresh);
    }
  }

  // ------------------------------------------------------------------ watch (server push)

  private openWatch(): void {
    if (this.stopped || !this.state) return;
    clearTimeout(this.watchTimer);
    let call: grpc.ClientReadableStream<AgentEvent>;
    try {
      const fn = this.serverClient()['WatchAgent'] as (req: object) => grpc.ClientReadableStream<AgentEvent>;
      call = fn.call(this.serverClient(), {});
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'could not open the watch stream');
      this.retryWatch();
      return;
    }
    this.watch = call;
    call.on('data', (ev: AgentEvent) => {
      switch (ev.kind) {
        case 'READY':
          // Only a watch the server accepted resets the backoff (a refused one sends DROP_SVIDS and ends).
          this.watchBackoffMs = MIN_BACKOFF_MS;
          // Anything that changed while the watch was down is picked up now.
          void this.syncOnce().catch(() => undefined);
          break;
        case 'ENTRIES_CHANGED':
        case 'BUNDLE_CHANGED':
          void this.syncOnce().catch(() => undefined);
          break;
        case 'DROP_SVIDS':
          this.log.warn({ reason: ev.reason }, 'server told the agent to drop its SVIDs; re-attesting');
          this.dropAndReattest();
          break;
        default:
          break;
      }
    });
    const ended = () => {
      if (this.watch !== call) return;
      this.watch = undefined;
      this.retryWatch();
    };
    call.on('error', ended);
    call.on('end', ended);
  }

  private retryWatch(): void {
    if (this.stopped) return;
    clearTimeout(this.watchTimer);
    this.watchTimer = setTimeout(() => this.openWatch(), this.watchBackoffMs);
    this.watchBackoffMs = Math.min(this.watchBackoffMs * 2, MAX_BACKOFF_MS);
  }

  // ------------------------------------------------------------------ JWT-SVIDs

  private jwtProvider(): JwtProvider {
    return {
      fetchJwtSvid: async (entry: CacheEntry, audience: string[]) => {
        const key = `${entry.id}\n${[...new Set(audience)].sort().join('\n')}`;
        const now = Date.now();
        const hit = this.jwtCache.get(key);
        if (hit && now < hit.refreshAt) return hit.token;
        const res = await unaryCall<object, NewJwtSvidResponse>(this.serverClient(), 'NewJwtSvid', { entryId: entry.id, audience });
        const expiresAt = res.expiresAt * 1000;
        if (this.jwtCache.size >= MAX_JWT_CACHE) this.jwtCache.delete(this.jwtCache.keys().next().value as string);
        this.jwtCache.set(key, { token: res.token, expiresAt, refreshAt: now + (expiresAt - now) / 2 });
        return res.token;
      },
      validateJwtSvid: async (token: string, audience: string) => {
        const v = await validateJwtSvid(token, this.bundles, audience);
        return { spiffeId: v.id.toString(), claims: v.claims };
      },
    };
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

function sameDers(a: Buffer[], b: Buffer[]): boolean {
  return a.length === b.length && a.every((d, i) => d.equals(b[i] as Buffer));
}

function toCacheEntry(e: RegistrationEntry): CacheEntry {
  return {
    id: e.id,
    spiffeId: e.spiffeId,
    selectors: e.selectors.map((s) => ({ type: s.type, value: s.value })),
    federatesWith: e.federatesWith,
    hint: e.hint,
    jwtSvidTtl: e.jwtSvidTtl,
  };
}

/** A spiffe Bundle in the forms the Workload API sends: DER CAs, and a JWK Set of the JWT authorities only. */
export function toTrustBundle(b: Bundle): TrustBundle {
  const doc = JSON.parse(b.toJSON()) as { keys: Array<{ use?: string }> } & Record<string, unknown>;
  const jwks = { ...doc, keys: doc.keys.filter((k) => k.use === 'jwt-svid') };
  return {
    trustDomain: b.trustDomain.name,
    x509Authorities: b.x509Authorities(),
    jwks: Buffer.from(JSON.stringify(jwks)),
    sequence: Number(b.sequenceNumber),
  };
}
