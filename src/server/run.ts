// Starts a terroir server from its configuration: datastore, CA, agent API, federation, health and
// the periodic housekeeping (CA rotation, server SVID renewal, pruning used nonces and join tokens).
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { Bundle } from '../spiffe/bundle.js';
import { TrustDomain } from '../spiffe/id.js';
import { openDataStore } from './datastore/index.js';
import type { DataStore } from './datastore/types.js';
import type { ServerConfig } from './config.js';
import { CaManager } from './ca/manager.js';
import { diskKeyStore, memoryKeyStore } from './ca/keys.js';
import { loadUpstream, parseCertificates, type LoadedUpstream } from './ca/certs.js';
import { SvidIssuer } from './ca/issuer.js';
import { pinoAuditor, type Auditor } from './audit.js';
import { RateLimiter } from './ratelimit.js';
import { TpmAttestor } from './attestation/tpm.js';
import { KeylimeGate } from './attestation/keylime.js';
import { ConfigError } from './config.js';
import { UnifiedIdentityPipeline } from './attestation/unified.js';
import { LatencyWitness } from './attestation/latency-witness.js';
import { ServerSvidSource } from './ca/server-svid-source.js';
import { describeFeatureFlags, loadFeatureFlags } from '../../feature-flags/index.js';
import { createAgentService, type AgentService } from './agentapi/service.js';
import { startAgentApiServer, type AgentApiServer } from './agentapi/server.js';
import { startBundleEndpoint, type BundleEndpoint } from './federation/endpoint.js';
import { BundleFetcher } from './federation/fetcher.js';
import { startHealthServer, type HealthServer } from './health.js';
import { ServerMetrics } from './metrics.js';
import { createAdminService, startAdminServer } from './admin/index.js';
import { EvidenceLog } from './evidence/log.js';
import { startEvidenceApi, type EvidenceApi } from './evidence/api.js';
import { earFromAttestation, signEar } from '../evidence/ear.js';
import type { AttestationRecord } from '../evidence/record.js';
import { evidenceAuditor } from './evidence/auditor.js';
import { loadOrCreateAuditKey, type AuditKey } from './evidence/key.js';
import { DashboardFeed, DashboardSvidSource, DashboardView, isLoopbackAddress, startDashboard, type DashboardServer } from './dashboard/index.js';

export interface StartServerOptions {
  logger?: Logger;
  /** Injectable clock for tests. */
  now?: () => Date;
  /** Housekeeping period; default derived from the CA TTL (at most 30 s). */
  tickMs?: number;
}

export interface RunningServer {
  readonly trustDomain: string;
  readonly agentApiPort: number;
  readonly healthPort: number | undefined;
  readonly bundleEndpointPort: number | undefined;
  /** The dashboard's port, when `dashboard.enabled`. */
  readonly dashboardPort?: number;
  readonly adminSocketPath: string | undefined;
  readonly store: DataStore;
  readonly ca: CaManager;
  readonly agentService: AgentService;
  readonly auditor: Auditor;
  /** The evidence log, when evidenceLog.enabled. */
  readonly evidenceLog?: EvidenceLog;
  /** The evidence API's port, when evidenceLog.api.enabled. */
  readonly evidenceApiPort?: number;
  /** The audit public key (C2SP verifier key), when the evidence log is on. */
  readonly auditVerifierKey?: string;
  /** The Prometheus registry behind /metrics (absent when metrics.enabled is false). */
  readonly metrics?: ServerMetrics;
  /** Keylime continuous attestation, when configured (the `keylime` section). */
  readonly keylime: KeylimeGate | undefined;
  /** The Unified Identity pipeline, when the flag is on. */
  readonly unifiedIdentity: UnifiedIdentityPipeline | undefined;
  /** Withdraw a node's SVIDs: tells its agent to drop them (issue 6/8 hook; also used on ban/evict). */
  dropNode(agentId: string, reason: string): void;
  /** Runs one housekeeping round now (rotation, SVID renewal, pruning). */
  tick(): Promise<void>;
  stop(): Promise<void>;
}

function readFileOr(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`${what}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
  }
}

export async function startServer(config: ServerConfig, opts: StartServerOptions = {}): Promise<RunningServer> {
  const logger = opts.logger ?? pino({ level: config.logLevel, base: { service: 'terroir-server' } });
  const now = opts.now ?? (() => new Date());
  const td = TrustDomain.parse(config.trustDomain);
  const cleanups: (() => Promise<void> | void)[] = [];
  const stopAll = async (): Promise<void> => {
    while (cleanups.length) {
      try {
        await cleanups.pop()?.();
      } catch (err) {
        logger.warn({ err }, 'error while stopping');
      }
    }
  };

  try {
    fs.mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
    const metrics = config.metrics?.enabled === false ? undefined
      : new ServerMetrics({ nodesMaxAgeSeconds: config.metrics?.nodesMaxAgeSeconds ?? 15, now });
    const rawStore = await openDataStore(config.dataStore.type === 'sqlite'
      ? { type: 'sqlite', path: config.dataStore.path }
      : { type: 'postgres', connectionString: config.dataStore.connectionString, poolSize: config.dataStore.poolSize });
    // Every datastore call timed for the metrics.
    const store = metrics ? metrics.instrumentStore(rawStore) : rawStore;
    cleanups.push(() => store.close());
    // The dashboard follows the audit stream through a tee (it keeps coarse facts only, never readings).
    const dashboardFeed = config.dashboard.enabled ? new DashboardFeed({ now }) : undefined;
    const logged = dashboardFeed ? DashboardFeed.tee(pinoAuditor(logger), dashboardFeed) : pinoAuditor(logger);
    // Audit records are also counted for the metrics on their way to the log.
    const counted = metrics ? metrics.auditor(logged) : logged;
    // The evidence log (docs/evidence-log.md): its own key, apart from the CA's.
    let evidenceLog: EvidenceLog | undefined;
    let auditKey: AuditKey | undefined;
    if (config.evidenceLog.enabled) {
      auditKey = loadOrCreateAuditKey(config.evidenceLog.keyFile, config.evidenceLog.origin);
      evidenceLog = new EvidenceLog({
        store: store.evidence, origin: config.evidenceLog.origin, serverName: config.evidenceLog.serverName ?? os.hostname(),
        signer: auditKey.signer, logger, now,
      });
    }
    const auditor = evidenceLog ? evidenceAuditor(counted, evidenceLog) : counted;

    let upstream: LoadedUpstream | undefined;
    if (config.ca.upstream) {
      const u = config.ca.upstream;
      upstream = loadUpstream(readFileOr(u.certFile, 'ca.upstream.certFile'), readFileOr(u.keyFile, 'ca.upstream.keyFile'),
        u.bundleFile ? readFileOr(u.bundleFile, 'ca.upstream.bundleFile') : undefined, now());
    }
    const keyStore = config.ca.keyStore === 'disk' ? diskKeyStore(config.ca.keyDir as string) : memoryKeyStore();
    const ca = await CaManager.start({
      trustDomain: td.name,
      keyType: config.ca.keyType,
      ttlSeconds: config.ca.ttl,
      subject: config.ca.subject,
      keyStore,
      upstream,
      journalPath: config.ca.keyStore === 'disk' ? path.join(config.ca.keyDir as string, 'journal.json') : undefined,
      store,
      refreshHintSeconds: config.ca.bundleRefreshHint,
      now,
      logger: logger.child({ component: 'ca' }),
    });
    const maxTtl = Math.floor(config.ca.ttl / 6);
    const issuer = new SvidIssuer({ ca, maxTtlSeconds: maxTtl, jwtIssuer: config.ca.jwtIssuer, now });

    let tpm: TpmAttestor | undefined;
    if (config.nodeAttestation.tpm.enabled) {
      const cas = config.nodeAttestation.tpm.manufacturerCaFiles.flatMap((f) => parseCertificates(readFileOr(f, 'nodeAttestation.tpm.manufacturerCaFiles'), f));
      tpm = new TpmAttestor({
        trustDomain: td,
        manufacturerCasDer: cas,
        enrolledEkHashes: config.nodeAttestation.tpm.enrolledEkHashes,
        pcrSelectors: config.nodeAttestation.tpm.pcrSelectors,
        challengeTtlSeconds: config.nodeAttestation.challengeTtl,
        store,
        now,
      });
    }

    const flags = config.flags ?? loadFeatureFlags(config.featureFlags, process.env);
    const flagInfo = describeFeatureFlags(flags);
    logger.info({ featureFlags: flagInfo }, 'feature flags');
    let unifiedIdentity: UnifiedIdentityPipeline | undefined;
    let latencyWitness: LatencyWitness | undefined;
    if (flags.flags.unifiedIdentity) {
      if (!config.unifiedIdentity) throw new ConfigError('Unified Identity is enabled (UNIFIED_IDENTITY_ENABLED / featureFlags.unifiedIdentity) but the unifiedIdentity section is missing: configure locationPolicies and defaultPolicy');
      if (!config.nodeAttestation.tpm.enabled) logger.error('Unified Identity is enabled but nodeAttestation.tpm is off: no node can get claims');
      unifiedIdentity = new UnifiedIdentityPipeline({
        settings: config.unifiedIdentity, keylime: config.keylime, logger,
        ...(metrics ? { observer: { keylimeRequest: metrics.keylimeRequest, policyDecision: metrics.policyDecision, stages: metrics.attestationStages } } : {}),
      });
      const ui = unifiedIdentity;
      cleanups.push(() => ui.close());
      if (config.unifiedIdentity.latency) {
        const source = new ServerSvidSource(issuer, ca, config.ca.x509SvidTtl, now);
        const lw = new LatencyWitness(config.unifiedIdentity.latency, source, logger.child({ component: 'latency-witness' }), now);
        latencyWitness = lw;
        cleanups.push(() => { lw.close(); source.close(); });
      }
    }

    // Constructed first so a missing or bad verifier CA / client certificate fails start-up.
    let dropOnKeylimeFailure = (_id: string, _reason: string): void => undefined;
    let keylime: KeylimeGate | undefined;
    if (config.keylime && config.keylime.mode === 'continuous') {
      keylime = new KeylimeGate({
        settings: config.keylime,
        trustDomain: td.name,
        store,
        auditor,
        now,
        logger,
        onUntrusted: (id, reason) => dropOnKeylimeFailure(id, reason),
        ...(metrics ? { onKeylimeRequest: metrics.keylimeRequest } : {}),
      });
      const gate = keylime;
      cleanups.push(() => gate.close());
      keylime.start();
    }

    let evidence: { log: EvidenceLog; policy?: { index: number; sha256: string }; ear: (record: AttestationRecord, index: number) => Promise<string> } | undefined;
    if (evidenceLog) {
      const log = evidenceLog;
      // Attestation records cite the policy set they were decided under; the auditor recomputes with it.
      const policy = unifiedIdentity
        ? await log.ensurePolicy({ document: unifiedIdentity.policyDocument, defaultPolicy: unifiedIdentity.defaultPolicy, pcrs: [...unifiedIdentity.pcrs] })
        : undefined;
      const key = auditKey as AuditKey;
      // EARs for relying parties, signed with the audit key (docs/ear.md); kept in the issuance record.
      const ear = async (record: AttestationRecord, index: number): Promise<string> =>
        signEar(earFromAttestation(record, { logIndex: index, logOrigin: log.origin, issuedAt: now(), verifierBuild: 'terroir-server' }), key.privateKey, key.kid);
      evidence = { log, ear, ...(policy ? { policy } : {}) };
      const signCheckpoint = async (): Promise<void> => {
        try {
          await log.checkpoint();
        } catch (err) {
          logger.error({ err }, 'the evidence log checkpoint could not be signed; retrying at the next interval');
        }
      };
      const cpTimer = setInterval(() => void signCheckpoint(), config.evidenceLog.checkpointInterval * 1000);
      cpTimer.unref();
      // Stopping: what was appended is committed and covered by a checkpoint.
      cleanups.push(async () => { clearInterval(cpTimer); await log.close(); await signCheckpoint(); });
    }

    metrics?.bind({ store, ca, unifiedIdentity: unifiedIdentity !== undefined });
    const limited = (l: RateLimiter, name: 'attestation' | 'rpc' | 'signing'): RateLimiter => (metrics ? metrics.countRefusals(l, name) : l);
    const agentService = createAgentService({
      trustDomain: td,
      store,
      ca,
      issuer,
      joinTokens: config.nodeAttestation.joinToken.enabled,
      tpm,
      keylime,
      unifiedIdentity,
      ...(latencyWitness ? { latencyWitness } : {}),
      ...(evidence ? { evidence } : {}),
      rateLimiter: limited(new RateLimiter(config.agentApi.attestationRateLimit), 'attestation'),
      rpcRateLimiter: limited(new RateLimiter(config.agentApi.rpcRateLimit), 'rpc'),
      signingRateLimiter: limited(new RateLimiter(config.agentApi.signingRateLimit), 'signing'),
      auditor,
      logger,
      x509SvidTtl: config.ca.x509SvidTtl,
      jwtSvidTtl: config.ca.jwtSvidTtl,
      watchIntervalMs: config.agentApi.watchIntervalMs,
      now,
    });
    dropOnKeylimeFailure = (id, reason) => agentService.watchHub.dropNode(id, reason);
    let agentApi: AgentApiServer;
    try {
      agentApi = await startAgentApiServer({
        host: config.agentApi.bindAddress,
        port: config.agentApi.port,
        service: agentService,
        ca,
        issuer,
        dnsNames: config.agentApi.dnsNames,
        ipAddresses: config.agentApi.ipAddresses,
        svidTtlSeconds: config.ca.x509SvidTtl,
        logger: logger.child({ component: 'agentapi' }),
        connections: config.agentApi.connections,
        now,
      });
    } catch (err) {
      agentService.close();
      throw err;
    }
    cleanups.push(() => agentApi.close());

    const adminService = createAdminService({
      store,
      trustDomain: td,
      logger,
      auditor,
      bundleProvider: () => Bundle.parse(td, ca.bundle().bundleJson),
      // Banned or evicted: the agent's watch streams get DROP_SVIDS at once, not at the next poll.
      onNodeEvicted: (id) => {
        agentService.watchHub.dropNode(id, `agent ${id} was banned or evicted by an operator`);
        dashboardFeed?.revoked(id, 'banned or evicted by an operator');
        // An evicted node is no longer Keylime's business either.
        void keylime?.evict(id);
      },
      onEntriesChanged: () => void agentService.watchHub.poll(),
      locationPoliciesEnforced: unifiedIdentity !== undefined,
    });
    const admin = await startAdminServer(config.adminApi.socketPath, adminService, { logger: logger.child({ component: 'admin' }) });
    cleanups.push(() => admin.close());

    // Federation: configured relationships are upserted; their bootstrap bundles seed https_spiffe trust.
    const webCas = new Map<string, Buffer>();
    for (const f of config.federation.federatesWith) {
      const rel = { trustDomain: f.trustDomain, bundleEndpointUrl: f.bundleEndpointUrl, profile: f.profile, endpointSpiffeId: f.endpointSpiffeId };
      if (await store.getFederationRelationship(f.trustDomain)) await store.updateFederationRelationship(rel);
      else await store.createFederationRelationship(rel);
      if (f.caFile) webCas.set(f.trustDomain, readFileOr(f.caFile, `federation.federatesWith[${f.trustDomain}].caFile`));
      if (f.bootstrapBundleFile && !(await store.getBundle(f.trustDomain))) {
        const b = Bundle.parse(TrustDomain.parse(f.trustDomain), readFileOr(f.bootstrapBundleFile, 'bootstrapBundleFile'));
        await store.setBundle({ trustDomain: f.trustDomain, bundleJson: b.toJSON(), sequence: b.sequenceNumber });
      }
    }
    const fetcher = new BundleFetcher({
      store, ownTrustDomain: td.name, defaultRefreshSeconds: config.federation.defaultRefreshHint, webCas,
      logger: logger.child({ component: 'federation' }), auditor,
    });
    fetcher.start();
    cleanups.push(() => fetcher.stop());

    let endpoint: BundleEndpoint | undefined;
    // https_spiffe endpoint identity: re-issued when the bundle changes and at half-life (from tick).
    let refreshEndpointSvid = (): void => undefined;
    if (config.federation.bundleEndpoint.enabled) {
      const be = config.federation.bundleEndpoint;
      let svid = issuer.mintServerSvid(config.agentApi.dnsNames, config.agentApi.ipAddresses, config.ca.x509SvidTtl);
      let issuedAt = now().getTime();
      endpoint = await startBundleEndpoint({
        host: be.bindAddress, port: be.port, profile: be.profile, certFile: be.certFile, keyFile: be.keyFile,
        spiffeIdentity: () => ({ certPem: Buffer.from(svid.certChainPem), keyPem: Buffer.from(svid.keyPem) }),
        bundleJson: () => ca.bundle().bundleJson,
        logger: logger.child({ component: 'bundle-endpoint' }),
      });
      const ep = endpoint;
      const reissue = (): void => {
        svid = issuer.mintServerSvid(config.agentApi.dnsNames, config.agentApi.ipAddresses, config.ca.x509SvidTtl);
        issuedAt = now().getTime();
        ep.reloadTls();
      };
      if (be.profile === 'https_spiffe') {
        refreshEndpointSvid = () => {
          if (now().getTime() >= issuedAt + (svid.notAfter.getTime() - issuedAt) / 2) reissue();
        };
      }
      const unsub = ca.onBundleChange(() => { if (be.profile === 'https_spiffe') reissue(); });
      cleanups.push(async () => { unsub(); await ep.close(); });
    }

    let health: HealthServer | undefined;
    if (config.health.enabled) {
      health = await startHealthServer(config.health.bindAddress, config.health.port, {
        datastore: async () => { await store.entriesRevision(); },
        ca: async () => { ca.activeX509(); ca.activeJwt(); },
      }, flagInfo, metrics ? () => metrics.scrape() : undefined);
      const h = health;
      cleanups.push(() => h.close());
    }

    let evidenceApi: EvidenceApi | undefined;
    if (evidenceLog && auditKey && config.evidenceLog.api.enabled) {
      const a = config.evidenceLog.api;
      const identity = new ServerSvidSource(issuer, ca, config.ca.x509SvidTtl, now, { dnsNames: config.agentApi.dnsNames, ipAddresses: config.agentApi.ipAddresses });
      const api = await startEvidenceApi({
        host: a.bindAddress, port: a.port, log: evidenceLog, verifierKey: auditKey.verifierKey, identity, trustDomain: td,
        ...(a.allowedIds ? { allowedIds: a.allowedIds } : {}), auditorIds: a.auditorIds, logger: logger.child({ component: 'evidence-api' }),
        ear: (evidence as NonNullable<typeof evidence>).ear,
      });
      evidenceApi = api;
      cleanups.push(async () => { await api.close(); identity.close(); });
    }

    let dashboard: DashboardServer | undefined;
    if (dashboardFeed) {
      const dc = config.dashboard;
      const ui = unifiedIdentity;
      const view = new DashboardView({
        store, trustDomain: td.name, feed: dashboardFeed, now,
        ...(ui ? { policies: () => ({ names: ui.policies.names(), defaultPolicy: ui.defaultPolicy }) } : {}),
      });
      // Remote access: mTLS with the server's own SVID (spiffe://<td>/spire/server), named for browsers.
      const bindIp = net.isIP(dc.bindAddress) !== 0 && !isLoopbackAddress(dc.bindAddress) && dc.bindAddress !== '0.0.0.0' && dc.bindAddress !== '::' ? [dc.bindAddress] : [];
      const identity = dc.remote ? new DashboardSvidSource(issuer, ca, {
        dnsNames: dc.remote.dnsNames ?? config.agentApi.dnsNames,
        ipAddresses: dc.remote.ipAddresses ?? [...new Set([...config.agentApi.ipAddresses, ...bindIp])],
      }, config.ca.x509SvidTtl, now) : undefined;
      const db = await startDashboard({
        host: dc.bindAddress, port: dc.port, view, feed: dashboardFeed, logger: logger.child({ component: 'dashboard' }),
        ...(identity && dc.remote ? { remote: { identity, allowedSpiffeIds: dc.remote.allowedSpiffeIds } } : {}),
      });
      dashboard = db;
      cleanups.push(async () => { await db.close(); identity?.close(); });
    }

    const tick = async (): Promise<void> => {
      try {
        await ca.tick();
        agentApi.refreshIdentity();
        refreshEndpointSvid();
        await store.pruneNonces(now());
        await store.pruneJoinTokens(now());
        const days = config.evidenceLog.retentionDays;
        if (evidenceLog && days !== undefined) {
          const pruned = await evidenceLog.prune(new Date(now().getTime() - days * 86_400_000));
          if (pruned > 0) logger.info({ pruned, retentionDays: days }, 'evidence bodies past the retention horizon pruned (leaf hashes and checkpoints kept)');
        }
      } catch (err) {
        logger.error({ err }, 'housekeeping failed; retrying at the next interval');
      }
    };
    const tickMs = opts.tickMs ?? Math.min(30_000, Math.max(1000, (config.ca.ttl * 1000) / 100));
    const timer = setInterval(() => void tick(), tickMs);
    timer.unref();
    cleanups.push(() => clearInterval(timer));

    logger.info({ trustDomain: td.name, agentApiPort: agentApi.port, healthPort: health?.port, dataStore: config.dataStore.type, keylime: config.keylime ? config.keylime.verifierUrl : 'off' }, 'terroir server started');
    return {
      trustDomain: td.name,
      agentApiPort: agentApi.port,
      healthPort: health?.port,
      bundleEndpointPort: endpoint?.port,
      ...(dashboard ? { dashboardPort: dashboard.port } : {}),
      adminSocketPath: admin.socketPath,
      store,
      ca,
      agentService,
      auditor,
      ...(evidenceLog ? { evidenceLog } : {}),
      ...(evidenceApi ? { evidenceApiPort: evidenceApi.port } : {}),
      ...(auditKey ? { auditVerifierKey: auditKey.verifierKey } : {}),
      ...(metrics ? { metrics } : {}),
      keylime,
      unifiedIdentity,
      dropNode: (id, reason) => agentService.watchHub.dropNode(id, reason),
      tick,
      async stop() {
        await stopAll();
        logger.info('terroir server stopped');
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
