// node:https on top of the tls helpers: a server whose every request comes from a verified,
// authorized SPIFFE peer, and an Agent whose every connection verifies and authorizes the server.
import type http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type tls from 'node:tls';
import type { Peer } from './authorizer.js';
import { attachServer, peerOf, SecureContextCache, spiffeClientOptions, spiffeServerOptions, type MtlsOptions } from './tls.js';
import { WorkloadError } from './errors.js';

/** An https.Server requiring SPIFFE mTLS. In the handler, peerOf(req.socket) is the verified peer. */
export function createHttpsServer(opts: MtlsOptions, handler: (req: http.IncomingMessage, res: http.ServerResponse, peer: Peer) => void): https.Server {
  if (typeof opts?.authorizer !== 'function' || typeof opts?.source?.getX509Svid !== 'function') {
    throw new WorkloadError('invalid-argument', 'createHttpsServer needs { source, authorizer }');
  }
  const bundles = opts.bundles ?? opts.source;
  const cache = new SecureContextCache(opts.source, bundles, true);
  const server = https.createServer(spiffeServerOptions(cache), (req, res) => {
    const peer = peerOf(req.socket);
    // Unreachable for sockets that failed verification (they are destroyed first); kept fail-closed.
    if (peer === undefined) {
      req.socket.destroy();
      return;
    }
    handler(req, res, peer);
  });
  attachServer(server, cache, opts);
  return server;
}

/**
 * An https.Agent for SPIFFE mTLS: each new connection uses the source's current SVID and verifies the
 * server by SPIFFE rules and the authorizer. TLS sessions are never cached (see tls.ts).
 */
export class SpiffeHttpsAgent extends https.Agent {
  private readonly mtls: MtlsOptions;
  private readonly cache: SecureContextCache;

  constructor(opts: MtlsOptions, agentOptions: Omit<https.AgentOptions, 'maxCachedSessions'> = {}) {
    super({ ...agentOptions, maxCachedSessions: 0 });
    if (typeof opts?.authorizer !== 'function' || typeof opts?.source?.getX509Svid !== 'function') {
      throw new WorkloadError('invalid-argument', 'SpiffeHttpsAgent needs { source, authorizer }');
    }
    this.mtls = opts;
    this.cache = new SecureContextCache(opts.source, opts.bundles ?? opts.source, false);
  }

  override createConnection(options: tls.ConnectionOptions, cb?: (err: Error | null, s: net.Socket) => void): net.Socket {
    const { onVerified, ...spiffe } = spiffeClientOptions(this.mtls, this.cache);
    // The SPIFFE options win over anything request options carry (ca, rejectUnauthorized, session...).
    const { session: _session, ...rest } = options;
    const socket = (https.Agent.prototype as unknown as { createConnection(o: tls.ConnectionOptions, c?: unknown): tls.TLSSocket })
      .createConnection.call(this, { ...rest, ...spiffe }, cb);
    socket.prependOnceListener('secureConnect', () => onVerified(socket));
    return socket;
  }
}
