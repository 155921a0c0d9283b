// The agent's gRPC connection to the terroir server. The server is authenticated by its X.509-SVID:
// the chain must verify against the trust bundle we hold (TLS does that with the bundle's CAs as the
// only roots), and the certificate's SPIFFE ID must be exactly spiffe://<td>/spire/server (checked
// here in place of the meaningless DNS host name check).
import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { AGENT_API_CHANNEL_OPTIONS, agentServiceClient } from '../api/agent-api.js';
import { derToPem } from '../spiffe/index.js';
import { serverChannelOptions, serverTarget, type ServerAddress } from './server-target.js';
import type { PeerCertificate as TlsPeerCertificate } from 'node:tls';

export class ServerIdentityError extends Error {
  readonly code = 'server_identity_mismatch';
  constructor(message: string) {
    super(message);
    this.name = 'ServerIdentityError';
  }
}

/** The SPIFFE ID a terroir (or SPIRE) server presents. */
export function serverSpiffeId(trustDomain: string): string {
  return `spiffe://${trustDomain}/spire/server`;
}

/**
 * checkServerIdentity for node:tls: the server's leaf must carry exactly one URI SAN, equal to
 * the expected server ID. Returns an Error (which aborts the handshake) otherwise.
 */
export function spiffeServerIdentityCheck(trustDomain: string): (host: string, cert: TlsPeerCertificate) => Error | undefined {
  const expected = serverSpiffeId(trustDomain);
  return (_host, cert) => {
    const uris = uriSans(cert);
    if (uris.length !== 1 || uris[0] !== expected) {
      return new ServerIdentityError(`server presented ${uris.length ? uris.join(', ') : 'no SPIFFE ID'}, expected ${expected}`);
    }
    return undefined;
  };
}

function uriSans(cert: TlsPeerCertificate): string[] {
  // node:crypto parses the SAN extension; re-parse from raw DER rather than trusting the string form.
  const raw = (cert as { raw?: Buffer }).raw;
  const san = raw ? new crypto.X509Certificate(raw).subjectAltName : (cert as { subjectaltname?: string }).subjectaltname;
  if (!san) return [];
  return san.split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
}

export interface AgentIdentity {
  /** Agent SVID chain, DER, leaf first. */
  chain: Buffer[];
  /** The agent's private key (PKCS#8 DER). */
  key: Buffer;
}

interface ConnCommon {
  trustDomain: string;
  /** CA certificates (DER) the server's SVID must chain to. */
  roots: Buffer[];
  /** Present the agent SVID (every RPC but AttestAgent needs it). */
  identity?: AgentIdentity;
}

/**
 * One server (`address`, `port`), or several sharing one datastore (`servers`): the channel uses the
 * first that answers and moves to another when its connection breaks (server-target.ts).
 */
export type ServerConnOptions = ConnCommon & ({ address: string; port: number } | { servers: readonly ServerAddress[] });

/**
 * How quickly a dead connection is noticed. A server process that dies is seen at once (its kernel
 * resets the connection); a host that vanishes (power, partition) answers no ping, and the watch
 * stream — always open, so pings always run — fails after keepalive time + timeout (10 + 5 s).
 */
const KEEPALIVE_TIME_MS = 10_000;
const KEEPALIVE_TIMEOUT_MS = 5_000;

/** An untyped grpc-js client for terroir.agent.v1.Agent. */
export type AgentClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export function connectToServer(opts: ServerConnOptions): AgentClient {
  if (opts.roots.length === 0) throw new Error('no CA certificates to verify the server with: the trust bundle has no X.509 authorities');
  const rootPem = Buffer.from(opts.roots.map((d) => derToPem(d)).join(''));
  const key = opts.identity ? crypto.createPrivateKey({ key: opts.identity.key, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }) : null;
  const certs = opts.identity ? Buffer.from(opts.identity.chain.map((d) => derToPem(d)).join('')) : null;
  const creds = grpc.credentials.createSsl(rootPem, key ? Buffer.from(key) : null, certs, {
    checkServerIdentity: spiffeServerIdentityCheck(opts.trustDomain),
  });
  const Ctor = agentServiceClient();
  const servers = 'servers' in opts ? opts.servers : [{ address: opts.address, port: opts.port }];
  return new Ctor(serverTarget(servers), creds, {
    ...AGENT_API_CHANNEL_OPTIONS,
    ...serverChannelOptions(servers),
    // TLS SNI must be a name, not an IP (RFC 6066); the server is authenticated by SPIFFE ID anyway.
    'grpc.ssl_target_name_override': 'terroir-server',
    'grpc.default_authority': 'terroir-server',
    'grpc.keepalive_time_ms': KEEPALIVE_TIME_MS,
    'grpc.keepalive_timeout_ms': KEEPALIVE_TIMEOUT_MS,
    'grpc.initial_reconnect_backoff_ms': 500,
    'grpc.max_reconnect_backoff_ms': 10_000,
  }) as unknown as AgentClient;
}

/** Calls a unary method with a deadline, as a promise. */
export function unaryCall<Req, Res>(client: AgentClient, method: string, req: Req, timeoutMs = 15_000): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = client[method];
    if (!fn) return reject(new Error(`agent API has no method ${method}`));
    fn.call(client, req, { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: Res) => (err ? reject(err) : resolve(res)));
  });
}
