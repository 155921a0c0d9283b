// undici with SPIFFE mTLS: a connector that opens each connection with the source's current SVID and
// verifies the server by SPIFFE rules and the authorizer before undici writes a request.
import net from 'node:net';
import tls from 'node:tls';
import { Agent, type buildConnector } from 'undici';
import { SecureContextCache, spiffeClientOptions, type MtlsOptions } from './tls.js';
import { WorkloadError } from './errors.js';

export function spiffeConnector(opts: MtlsOptions & { connectTimeoutMs?: number }): buildConnector.connector {
  if (typeof opts?.authorizer !== 'function' || typeof opts?.source?.getX509Svid !== 'function') {
    throw new WorkloadError('invalid-argument', 'spiffeConnector needs { source, authorizer }');
  }
  const cache = new SecureContextCache(opts.source, opts.bundles ?? opts.source, false);
  return (o, callback) => {
    if (o.protocol !== 'https:') {
      callback(new WorkloadError('invalid-argument', `SPIFFE mTLS needs https: URLs, got ${o.protocol}`), null);
      return;
    }
    let spiffe: ReturnType<typeof spiffeClientOptions>;
    try {
      spiffe = spiffeClientOptions(opts, cache);
    } catch (e) {
      callback(e as Error, null);
      return;
    }
    const { onVerified, ...conn } = spiffe;
    const host = o.hostname.replace(/^\[|\]$/g, '');
    const socket = tls.connect({
      ...conn,
      host,
      port: Number(o.port) || 443,
      ...(net.isIP(host) === 0 ? { servername: o.servername ?? host } : {}),
      ALPNProtocols: ['http/1.1'],
    });
    let done = false;
    // A custom connector replaces undici's own, and with it undici's connect timeout.
    socket.setTimeout(opts.connectTimeoutMs ?? 10_000, () => socket.destroy(new WorkloadError('fetch-failed', 'TLS connection timed out')));
    socket.prependOnceListener('secureConnect', () => {
      onVerified(socket);
      if (done || socket.destroyed) return;
      done = true;
      socket.setTimeout(0);
      callback(null, socket);
    });
    socket.once('error', (err) => {
      if (done) return;
      done = true;
      callback(err, null);
    });
  };
}

/** An undici Agent (pass as `dispatcher`) whose connections are SPIFFE mTLS. */
export function spiffeUndiciAgent(opts: MtlsOptions & { connectTimeoutMs?: number }, agentOptions: Omit<Agent.Options, 'connect'> = {}): Agent {
  return new Agent({ ...agentOptions, connect: spiffeConnector(opts) });
}
