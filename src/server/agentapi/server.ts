// Serves the agent API over TLS. The server's identity is its own SVID (spiffe://<td>/spire/server),
// minted from the active CA and replaced at half-life or when the CA rotates. Client certificates
// are requested and, when presented, verified by TLS against the bundle's X.509 authorities
// ("verify if given", as SPIRE does): AttestAgent runs without one, every other RPC requires one.
//
// Connections are accepted by our own net.Server and handed to grpc-js (a connection injector), so
// that a connection over the per-source or total cap is closed before any TLS work. grpc-js then
// enforces the TLS handshake timeout (passed to its TLS server), the idle timeout, the maximum
// connection age (+ grace) and keepalive pings (server options). One gap is closed here: a peer that
// finishes TLS but never sends the HTTP/2 preface ignores grpc-js's idle GOAWAY and would stay; its
// session is destroyed when no SETTINGS arrived within the handshake timeout.
import crypto from 'node:crypto';
import type http2 from 'node:http2';
import net from 'node:net';
import type tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { experimental } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { agentServiceDefinition, AGENT_API_MAX_MESSAGE_BYTES } from '../../api/agent-api.js';
import type { CaManager } from '../ca/manager.js';
import type { SvidIssuer } from '../ca/issuer.js';
import { presentedIntermediates } from './auth.js';
import type { AgentService } from './service.js';

type CaListener = (u: { caCertificate: Buffer } | null) => void;
type IdentityListener = (u: { certificate: Buffer; privateKey: Buffer } | null) => void;

/** One provider for both the CA list and the identity, updated in place when either changes. */
class ServerTlsProvider implements experimental.CertificateProvider {
  private ca: Buffer | undefined;
  private identity: { certificate: Buffer; privateKey: Buffer } | undefined;
  private readonly caListeners = new Set<CaListener>();
  private readonly idListeners = new Set<IdentityListener>();
  private deliveredResolve!: () => void;
  /** Resolves once grpc-js has received the first identity (it drops connections until then). */
  readonly delivered = new Promise<void>((resolve) => { this.deliveredResolve = resolve; });

  setCa(pem: Buffer): void {
    this.ca = pem;
    for (const l of this.caListeners) l({ caCertificate: pem });
  }

  setIdentity(certificate: Buffer, privateKey: Buffer): void {
    this.identity = { certificate, privateKey };
    for (const l of this.idListeners) l(this.identity);
  }

  addCaCertificateListener(l: CaListener): void {
    this.caListeners.add(l);
    // Deferred: grpc-js registers its watcher only after adding the listener.
    setImmediate(() => { if (this.ca && this.caListeners.has(l)) l({ caCertificate: this.ca }); });
  }

  removeCaCertificateListener(l: CaListener): void {
    this.caListeners.delete(l);
  }

  addIdentityCertificateListener(l: IdentityListener): void {
    this.idListeners.add(l);
    setImmediate(() => {
      if (this.identity && this.idListeners.has(l)) l(this.identity);
      this.deliveredResolve();
    });
  }

  removeIdentityCertificateListener(l: IdentityListener): void {
    this.idListeners.delete(l);
  }
}

/** The service definition, with SyncEntries accepting an already encoded response (Buffer) as is. */
function preEncodedDefinition(): grpc.ServiceDefinition {
  const def = { ...agentServiceDefinition() };
  const sync = def.SyncEntries;
  if (!sync) throw new Error('agent.proto has no SyncEntries');
  const encode = sync.responseSerialize;
  def.SyncEntries = { ...sync, responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : encode(v)) };
  return def;
}

/** Connection limits of the agent API (config agentApi.connections). */
export interface AgentApiConnectionLimits {
  handshakeTimeoutMs: number;
  idleTimeoutMs: number;
  maxAgeMs: number;
  maxAgeGraceMs: number;
  maxPerSource: number;
  maxTotal: number;
  keepaliveTimeMs: number;
  keepaliveTimeoutMs: number;
}

export const DEFAULT_CONNECTION_LIMITS: AgentApiConnectionLimits = {
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 300_000,
  maxAgeMs: 3_600_000,
  maxAgeGraceMs: 300_000,
  maxPerSource: 256,
  maxTotal: 16_384,
  keepaliveTimeMs: 120_000,
  keepaliveTimeoutMs: 20_000,
};

/** The address a connection counts against: IPv4-mapped IPv6 addresses as IPv4. */
function sourceOf(socket: net.Socket): string {
  const a = socket.remoteAddress ?? 'unknown';
  return a.startsWith('::ffff:') && a.includes('.') ? a.slice(7) : a;
}

/** Counts open connections per source and in total; refuses those over a cap. */
class ConnectionCaps {
  private readonly perSource = new Map<string, number>();
  private total = 0;
  readonly sockets = new Set<net.Socket>();
  private refused = 0;
  private lastReport = 0;

  constructor(private readonly limits: AgentApiConnectionLimits, private readonly logger: Logger) {}

  /** True when the socket is admitted (and counted until it closes); false when it was refused and destroyed. */
  admit(socket: net.Socket): boolean {
    const source = sourceOf(socket);
    const n = this.perSource.get(source) ?? 0;
    if (n >= this.limits.maxPerSource || this.total >= this.limits.maxTotal) {
      socket.on('error', () => {});
      socket.destroy();
      this.report(source, n >= this.limits.maxPerSource ? 'per-source' : 'total');
      return false;
    }
    this.perSource.set(source, n + 1);
    this.total++;
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.total--;
      const left = (this.perSource.get(source) ?? 1) - 1;
      if (left > 0) this.perSource.set(source, left);
      else this.perSource.delete(source);
    });
    return true;
  }

  /** One warning per 10 s at most, whatever the flood. */
  private report(source: string, cap: 'per-source' | 'total'): void {
    this.refused++;
    const t = Date.now();
    if (t - this.lastReport < 10_000) return;
    this.lastReport = t;
    this.logger.warn({ source, cap, refused: this.refused, open: this.total, maxPerSource: this.limits.maxPerSource, maxTotal: this.limits.maxTotal },
      'agent API connections refused: over the connection cap (agentApi.connections)');
    this.refused = 0;
  }
}

/**
 * The HTTP/2 server grpc-js made for `injector` (grpc-js keeps its servers in a private map; the
 * one the injector added is the one that was not there before). Throws if grpc-js changed.
 */
function injectorHttp2Server(server: grpc.Server, before: Set<unknown>): http2.Http2SecureServer {
  const map = (server as unknown as { http2Servers?: Map<http2.Http2SecureServer, unknown> }).http2Servers;
  const added = map instanceof Map ? [...map.keys()].filter((k) => !before.has(k)) : [];
  if (added.length !== 1 || typeof added[0]?.on !== 'function') throw new Error('@grpc/grpc-js internals changed: cannot find the connection injector\'s HTTP/2 server');
  return added[0];
}

function http2ServersOf(server: grpc.Server): Set<unknown> {
  const map = (server as unknown as { http2Servers?: Map<unknown, unknown> }).http2Servers;
  return new Set(map instanceof Map ? map.keys() : []);
}

/** Destroys a session whose peer has not sent its HTTP/2 preface and SETTINGS within `ms`. */
function requirePreface(h2: http2.Http2SecureServer, ms: number): void {
  h2.on('session', (session: http2.ServerHttp2Session) => {
    const timer = setTimeout(() => { if (!session.destroyed) session.destroy(); }, ms);
    timer.unref();
    session.once('remoteSettings', () => clearTimeout(timer));
    session.once('close', () => clearTimeout(timer));
  });
}

export interface AgentApiServerOptions {
  host: string;
  port: number;
  service: AgentService;
  ca: CaManager;
  issuer: SvidIssuer;
  dnsNames: string[];
  ipAddresses: string[];
  svidTtlSeconds: number;
  logger: Logger;
  now?: () => Date;
  /** Defaults: DEFAULT_CONNECTION_LIMITS. */
  connections?: Partial<AgentApiConnectionLimits>;
}

export interface AgentApiServer {
  readonly port: number;
  /** The current server SVID leaf (DER), for tests and diagnostics. */
  serverSvidDer(): Buffer;
  /** Re-mints the server SVID if it is past half-life or the CA rotated. */
  refreshIdentity(): void;
  close(): Promise<void>;
}

export async function startAgentApiServer(o: AgentApiServerOptions): Promise<AgentApiServer> {
  const now = o.now ?? (() => new Date());
  const provider = new ServerTlsProvider();
  let leafDer: Buffer = Buffer.alloc(0);
  let issuedAt = 0;
  let expiresAt = 0;
  let signedBy = '';

  const pushCa = (): void => {
    const pem = o.ca.x509Roots().map((d) => new crypto.X509Certificate(d).toString()).join('');
    provider.setCa(Buffer.from(pem));
  };
  const mintIdentity = (): void => {
    const svid = o.issuer.mintServerSvid(o.dnsNames, o.ipAddresses, o.svidTtlSeconds);
    leafDer = svid.leafDer;
    issuedAt = now().getTime();
    expiresAt = svid.notAfter.getTime();
    signedBy = o.ca.activeX509().id;
    provider.setIdentity(Buffer.from(svid.certChainPem), Buffer.from(svid.keyPem));
    o.logger.info({ notAfter: svid.notAfter.toISOString() }, 'agent API server SVID issued');
  };
  pushCa();
  mintIdentity();
  const unsubscribe = o.ca.onBundleChange(() => {
    pushCa();
    refreshIdentity();
  });

  function refreshIdentity(): void {
    const t = now().getTime();
    if (o.ca.activeX509().id !== signedBy || t >= issuedAt + (expiresAt - issuedAt) / 2) mintIdentity();
  }

  const limits: AgentApiConnectionLimits = { ...DEFAULT_CONNECTION_LIMITS, ...o.connections };
  // createCertificateProviderServerCredentials' declared parameter names do not match the order
  // grpc-js uses internally; one provider serving both roles makes the order irrelevant.
  const creds = experimental.createCertificateProviderServerCredentials(provider, provider, false);
  // grpc-js builds its TLS server from these options: bound the handshake, and a TLS connection that
  // did not negotiate h2 (ALPN), which node otherwise keeps for 10 s.
  const tlsOptions = creds._getConstructorOptions();
  if (tlsOptions === null) throw new Error('agent API credentials are not TLS credentials');
  Object.assign(tlsOptions, { handshakeTimeout: limits.handshakeTimeoutMs, unknownProtocolTimeout: limits.handshakeTimeoutMs });
  const server = new grpc.Server({
    'grpc.max_receive_message_length': AGENT_API_MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': AGENT_API_MAX_MESSAGE_BYTES,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.max_connection_idle_ms': limits.idleTimeoutMs,
    'grpc.max_connection_age_ms': limits.maxAgeMs,
    'grpc.max_connection_age_grace_ms': limits.maxAgeGraceMs,
    'grpc.keepalive_time_ms': limits.keepaliveTimeMs,
    'grpc.keepalive_timeout_ms': limits.keepaliveTimeoutMs,
  });
  server.addService(preEncodedDefinition(), o.service.handlers);
  const before = http2ServersOf(server);
  const injector = server.createConnectionInjector(creds);
  const h2 = injectorHttp2Server(server, before);
  requirePreface(h2, limits.handshakeTimeoutMs);
  h2.on('secureConnection', (socket: tls.TLSSocket) => presentedIntermediates.record(socket));
  const caps = new ConnectionCaps(limits, o.logger);
  const listener = net.createServer((socket) => {
    if (caps.admit(socket)) injector.injectConnection(socket);
  });
  const port = await new Promise<number>((resolve, reject) => {
    listener.once('error', reject);
    listener.listen({ host: o.host, port: o.port }, () => {
      listener.off('error', reject);
      resolve((listener.address() as net.AddressInfo).port);
    });
  });
  listener.on('error', (err) => o.logger.error({ err }, 'agent API listener error'));
  // Listening is not serving: wait until the TLS identity reached the server.
  await provider.delivered;
  o.logger.info({ host: o.host, port, connections: limits }, 'agent API listening');

  return {
    port,
    serverSvidDer: () => leafDer,
    refreshIdentity,
    async close() {
      unsubscribe();
      o.service.close();
      // Stop accepting; the connections still open are drained (GOAWAY) and destroyed below.
      listener.close();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          injector.destroy();
          for (const s of caps.sockets) s.destroy();
          resolve();
        }, 2000);
        force.unref();
        injector.drain(2000);
        server.tryShutdown(() => { clearTimeout(force); injector.destroy(); resolve(); });
      });
    },
  };
}
