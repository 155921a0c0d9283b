// Serves the agent API over TLS. The server's identity is its own SVID (spiffe://<td>/spire/server),
// minted from the active CA and replaced at half-life or when the CA rotates. Client certificates
// are requested and, when presented, verified by TLS against the bundle's X.509 authorities
// ("verify if given", as SPIRE does): AttestAgent runs without one, every other RPC requires one.
import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { experimental } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { agentServiceDefinition, AGENT_API_MAX_MESSAGE_BYTES } from '../../api/agent-api.js';
import type { CaManager } from '../ca/manager.js';
import type { SvidIssuer } from '../ca/issuer.js';
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

  // createCertificateProviderServerCredentials' declared parameter names do not match the order
  // grpc-js uses internally; one provider serving both roles makes the order irrelevant.
  const creds = experimental.createCertificateProviderServerCredentials(provider, provider, false);
  const server = new grpc.Server({
    'grpc.max_receive_message_length': AGENT_API_MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': AGENT_API_MAX_MESSAGE_BYTES,
    'grpc.keepalive_permit_without_calls': 1,
  });
  server.addService(preEncodedDefinition(), o.service.handlers);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${o.host.includes(':') ? `[${o.host}]` : o.host}:${o.port}`, creds, (err, p) => (err ? reject(err) : resolve(p)));
  });
  // Listening is not serving: wait until the TLS identity reached the server.
  await provider.delivered;
  o.logger.info({ host: o.host, port }, 'agent API listening');

  return {
    port,
    serverSvidDer: () => leafDer,
    refreshIdentity,
    async close() {
      unsubscribe();
      o.service.close();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => { server.forceShutdown(); resolve(); }, 2000);
        force.unref();
        server.tryShutdown(() => { clearTimeout(force); resolve(); });
      });
    },
  };
}
