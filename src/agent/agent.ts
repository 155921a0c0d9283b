// The agent: attest the node (or resume from the stored SVID), keep the agent SVID fresh, keep the
// cache of bundles, entries and workload SVIDs in step with the server, and serve the Workload API
// from that cache — also while the server is unreachable, until the SVIDs expire.
//
// This file is the lifecycle and the wiring (start, stop, the server connection and its watch
// stream); the jobs live beside it, as SPIRE divides them: node-identity.ts (bootstrap trust, node
// attestation with its backoff, the agent SVID and its renewal), svid-sync.ts (the sync loop, workload
// SVID signing, JWT-SVIDs), trust-bundles.ts (own and federated bundles), keylime-endpoint.ts (the
// Keylime quote endpoint and revocation notifications), workloadapi/ (the Workload API server).
import * as grpc from '@grpc/grpc-js';
import pino, { type Logger } from 'pino';
import type { AgentEvent, KeylimeQuoteEndpoint } from '../api/agent-api.js';
import type { RevocationNotification } from '../keylime/quote-endpoint.js';
import { TrustDomain } from '../spiffe/index.js';
import { describeFeatureFlags, loadFeatureFlags } from '../../feature-flags/index.js';
import { UnixAttestor } from './attestor/unix.js';
import { K8sAttestor, UnixAndK8sAttestor } from './attestor/k8s.js';
import { IdentityCache } from './cache.js';
import type { AgentConfig } from './config.js';
import { AgentStartError, MAX_BACKOFF_MS, MIN_BACKOFF_MS, type AgentContext, type AgentOptions, type AgentStats } from './context.js';
import { HealthStatusWriter } from './health-status.js';
import { revocationIsForThisNode, startAgentQuoteEndpoint, type AgentQuoteEndpoint } from './keylime-endpoint.js';
import { NodeIdentity } from './node-identity.js';
import { startAgentProbeEndpoint } from './probe-endpoint.js';
import type { ProbeResponder } from '../latency/responder.js';
import { connectToServer, type AgentClient } from './server-conn.js';
import { SvidStore, type StoredAgentState } from './svid-store.js';
import { SvidSync } from './svid-sync.js';
import { TrustBundles } from './trust-bundles.js';
import { openUnifiedIdentity, type AgentUnifiedIdentity } from './unified-identity.js';
import { WorkloadApiServer } from './workloadapi/server.js';
import { AgentMetrics, startAgentHealthListener, type AgentHealthListener } from './metrics.js';

export { AgentStartError, type AgentOptions, type AgentStats } from './context.js';
export { checkIssuedSvid } from './svid-check.js';
export { toTrustBundle } from './trust-bundles.js';

export class Agent {
  readonly cache: IdentityCache;
  readonly stats: AgentStats = { attestations: 0, syncs: 0, svidsSigned: 0, revocations: 0 };
  private readonly log: Logger;
  private readonly ctx: AgentContext;
  private readonly identity: NodeIdentity;
  private readonly sync: SvidSync;
  private readonly health: HealthStatusWriter;
  private workloadApi: WorkloadApiServer | undefined;
  /** The Kubernetes workload attestor (workloadAttestors.k8s), closed with the agent. */
  private k8sAttestor: K8sAttestor | undefined;
  private quoteEndpoint: AgentQuoteEndpoint | undefined;
  /** The latency probe endpoint (latencyProbe), started once the node holds an agent SVID. */
  private probeEndpoint: ProbeResponder | undefined;
  private unifiedIdentity: AgentUnifiedIdentity | undefined;
  private client: AgentClient | undefined;
  private watch: grpc.ClientReadableStream<AgentEvent> | undefined;
  private watchTimer: NodeJS.Timeout | undefined;
  private watchBackoffMs = MIN_BACKOFF_MS;
  private stopped = false;
  /** Aborted by stop(): ends backoff waits at once. */
  private readonly halt = new AbortController();
  /** The background re-attestation (after a drop), with its backoff; a second reason to drop joins it. */
  private reattesting: Promise<void> | undefined;
  /** The health listener (config `health`): /live and /metrics. */
  private healthListener: AgentHealthListener | undefined;
  private metrics: AgentMetrics | undefined;
  /** The watch stream is open and the server said READY: the server is reachable. */
  private watchReady = false;

  private constructor(readonly config: AgentConfig, private readonly opts: AgentOptions) {
    this.log = opts.logger ?? pino({ name: 'terroir-agent', level: config.logLevel });
    this.cache = new IdentityCache(config.trustDomain);
    this.health = new HealthStatusWriter(config.socketPath, this.log.child({ component: 'health-status' }));
    this.ctx = {
      config,
      log: this.log,
      cache: this.cache,
      store: new SvidStore(config.dataDir),
      stats: this.stats,
      bundles: new TrustBundles(TrustDomain.parse(config.trustDomain), this.cache),
      health: this.health,
      halt: this.halt.signal,
      state: undefined,
      serverClient: () => this.serverClient(),
      resetClient: () => this.resetClient(),
    };
    this.identity = new NodeIdentity(this.ctx, {
      tpm: opts.tpm,
      quoteEndpoint: () => this.quoteEndpoint?.advertised,
      unifiedIdentity: () => this.unifiedIdentity,
    });
    this.sync = new SvidSync(this.ctx, this.identity);
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
    return this.ctx.state?.spiffeId;
  }

  get socketPath(): string {
    return this.config.socketPath;
  }

  /** The Keylime quote endpoint, when configured (its port is known after start). */
  get keylimeQuoteEndpoint(): KeylimeQuoteEndpoint | undefined {
    return this.quoteEndpoint?.advertised;
  }

  /** The latency probe endpoint's port, when configured and started. */
  get latencyProbePort(): number | undefined {
    return this.probeEndpoint?.port;
  }

  /** The Unified Identity claims the server vouched for at the last attestation (flag on). */
  get lastClaims(): Record<string, unknown> | undefined {
    return this.identity.lastClaims;
  }

  /** The health listener's port (config `health`), once started. */
  get healthPort(): number | undefined {
    return this.healthListener?.port;
  }

  /** What `terroir-agent healthcheck` reads: the state of node attestation and its last failure. */
  get healthStatus(): HealthStatusWriter['current'] {
    return this.health.current;
  }

  /** One sync with the server; concurrent requests (timer, server push) are folded into one extra pass. */
  syncOnce(): Promise<void> {
    return this.sync.syncOnce();
  }

  private async boot(): Promise<void> {
    const { config, store, bundles } = this.ctx;
    const flags = config.flags ?? loadFeatureFlags(config.featureFlags, process.env);
    this.log.info({ featureFlags: describeFeatureFlags(flags) }, 'feature flags');
    // First, so /live answers while the node is still attesting.
    if (config.health) {
      const metrics = new AgentMetrics();
      metrics.bind({ stats: this.stats, cache: this.cache, agentSvidNotAfter: () => this.ctx.state?.notAfter, serverReachable: () => this.watchReady });
      this.metrics = metrics;
      this.healthListener = await startAgentHealthListener(config.health.bindAddress, config.health.port, metrics);
    }
    if (flags.flags.unifiedIdentity) {
      if (!config.unifiedIdentity || !this.opts.tpm) throw new AgentStartError('Unified Identity is enabled: configure nodeAttestor.tpm and unifiedIdentity.sensors');
      this.unifiedIdentity = openUnifiedIdentity(config.unifiedIdentity, this.opts.tpm);
    }
    // Before node attestation: an unreadable kubelet CA stops the agent without spending a join token.
    if (config.workloadAttestors.k8s) {
      try {
        this.k8sAttestor = new K8sAttestor(config.workloadAttestors.k8s);
      } catch (e) {
        throw new AgentStartError((e as Error).message, { cause: e });
      }
    }
    store.init();
    this.quoteEndpoint = await startAgentQuoteEndpoint(config, this.opts.tpm, this.log, (n) => this.onRevocation(n));
    const stored = store.load();
    // With Keylime and a transient AK, the AK enrolled with the verifier died with the last process:
    // attest again (re-enrolling the new AK) instead of resuming.
    // With Unified Identity the claims must be fresh, so a restart always attests.
    const akSurvives = (!this.quoteEndpoint || config.nodeAttestor.tpm?.akHandle !== undefined) && !this.unifiedIdentity;
    if (akSurvives && stored && stored.notAfter > Date.now() + 5_000 && stored.spiffeId.startsWith(`spiffe://${config.trustDomain}/`)) {
      this.identity.adopt(stored, bundles.parseOwn(stored.bundle, 'stored bundle'));
      this.log.info({ spiffeId: stored.spiffeId, expires: new Date(stored.notAfter).toISOString() },
        'resuming with the stored agent SVID; no node attestation needed');
    } else {
      const roots = await this.identity.bootstrapRoots();
      await this.identity.attestWithRetry(() => roots);
    }
    this.probeEndpoint = await startAgentProbeEndpoint(this.ctx, this.opts.tpm);
    try {
      await this.sync.syncOnce();
    } catch (e) {
      // A resumed agent whose server is down still starts; the loop keeps trying.
      this.log.warn({ err: (e as Error).message }, 'first sync with the server failed; retrying in the background');
    }
    this.workloadApi = await WorkloadApiServer.start({
      socketPath: config.socketPath,
      cache: this.cache,
      attestor: this.k8sAttestor
        ? new UnixAndK8sAttestor(new UnixAttestor(config.workloadAttestors.unix), this.k8sAttestor)
        : new UnixAttestor(config.workloadAttestors.unix),
      jwt: this.sync.jwtProvider(),
      logger: this.log.child({ component: 'workload-api' }),
      allowUnauthenticatedVerifiers: config.allowUnauthenticatedVerifiers,
      allowedForeignJwtClaims: config.allowedForeignJwtClaims,
      ...(this.metrics ? { metrics: this.metrics } : {}),
    });
    this.openWatch();
    this.sync.schedule(config.syncIntervalMs);
  }

  async stop(): Promise<void> {
    if (!this.stopped) this.halt.abort();
    this.stopped = true;
    this.sync.stop();
    clearTimeout(this.watchTimer);
    this.watch?.cancel();
    // An attestation in flight (renewal, re-attestation after a drop) must not outlive the agent.
    await this.identity.inFlight?.catch(() => undefined);
    this.client?.close();
    await this.workloadApi?.close();
    this.k8sAttestor?.close();
    await this.quoteEndpoint?.server.close();
    this.quoteEndpoint = undefined;
    await this.probeEndpoint?.close();
    this.probeEndpoint = undefined;
    await this.unifiedIdentity?.close();
    this.unifiedIdentity = undefined;
    this.health.remove();
    await this.healthListener?.close();
    this.healthListener = undefined;
  }

  // ------------------------------------------------------------------ server connection

  private serverClient(): AgentClient {
    if (!this.client) {
      const state = this.ctx.state as StoredAgentState;
      this.client = connectToServer({
        servers: this.config.servers,
        trustDomain: this.config.trustDomain,
        roots: this.ctx.bundles.ownRoots(),
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

  // ------------------------------------------------------------------ drops: the server's push, Keylime's notification

  /**
   * Drops every workload SVID now (open Workload API streams see it at once) and attests again in the
   * background, backing off while the server refuses. Used for the server's DROP_SVIDS push and for
   * Keylime's revocation notification. A drop while a re-attestation is under way joins it: the
   * server decides from the verifier's current status anyway, and a node Keylime keeps failing must
   * not turn each notification into one more attempt.
   */
  private dropAndReattest(): void {
    this.sync.suspend();
    this.sync.dropAll();
    if (this.stopped || this.reattesting) return;
    const run = this.identity.attestWithRetry(() => this.ctx.bundles.ownRoots())
      .then(() => { this.sync.resume(); return this.sync.syncOnce(); })
      .catch((e: unknown) => { if (!this.stopped) this.log.error({ err: (e as Error).message }, 're-attestation after a drop failed'); })
      .finally(() => { if (this.reattesting === run) this.reattesting = undefined; });
    this.reattesting = run;
  }

  /**
   * Keylime's push (POST /v{ver}/notifications/revocation), authenticated by the quote endpoint's
   * mTLS. Dropping our own SVIDs only lowers privilege, so that is enough to act on; whether the node
   * gets new ones is the server's decision, from the verifier's status.
   */
  private onRevocation(n: RevocationNotification): void {
    if (!revocationIsForThisNode(n, this.ctx.state?.spiffeId, this.log)) return;
    this.stats.revocations++;
    this.dropAndReattest();
  }

  // ------------------------------------------------------------------ watch (server push)

  private openWatch(): void {
    if (this.stopped || !this.ctx.state) return;
    clearTimeout(this.watchTimer);
    this.watchReady = false;
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
          this.watchReady = true;
          // Anything that changed while the watch was down is picked up now.
          void this.sync.syncOnce().catch(() => undefined);
          break;
        case 'ENTRIES_CHANGED':
        case 'BUNDLE_CHANGED':
          void this.sync.syncOnce().catch(() => undefined);
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
      this.watchReady = false;
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
}
