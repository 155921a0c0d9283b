// An HTTPS listener that speaks mTLS with the server's own SVID and admits only SPIFFE peers the
// caller authorizes: OpenSSL checks the chain against the trust domain's roots, then the SPIFFE rules
// and the authorization run before any request handler sees the socket. The SVID is re-minted at
// half-life and after CA rotations; new handshakes get the new one. Used by the dashboard's remote
// listener and the evidence API.
import crypto from 'node:crypto';
import type http from 'node:http';
import https from 'node:https';
import type tls from 'node:tls';
import type { Logger } from 'pino';
import type { Bundle } from '../spiffe/bundle.js';
import type { SpiffeId, TrustDomain } from '../spiffe/id.js';
import type { X509Svid } from '../spiffe/svid-source.js';
import { verifyX509Svid } from '../spiffe/x509svid.js';

/** The server's own SVID and bundles (ServerSvidSource). */
export interface ServerTlsIdentity {
  getX509Svid(): X509Svid;
  getX509Bundles(): readonly Bundle[];
  getX509BundleForTrustDomain(td: TrustDomain): Bundle | undefined;
  onUpdate(fn: () => void): () => void;
}

/** The chain a TLS client presented, leaf first, without a trust anchor OpenSSL may have appended. */
function presentedChain(cert: tls.DetailedPeerCertificate | undefined): Buffer[] {
  const out: Buffer[] = [];
  let c = cert;
  while (c !== undefined && c.raw !== undefined && out.length < 16) {
    const issuer = c.issuerCertificate as tls.DetailedPeerCertificate | undefined;
    const selfIssued = issuer === undefined || issuer === c || issuer.raw?.equals(c.raw) === true;
    if (selfIssued && out.length > 0) break;
    out.push(c.raw);
    if (selfIssued) break;
    c = issuer;
  }
  return out;
}

function tlsOptions(identity: ServerTlsIdentity): tls.SecureContextOptions {
  const svid = identity.getX509Svid();
  return {
    key: svid.privateKey.export({ type: 'pkcs8', format: 'pem' }),
    cert: svid.certificatesDer.map((d) => new crypto.X509Certificate(d).toString()).join(''),
    ca: identity.getX509Bundles().map((b) => b.x509AuthoritiesPem()).join(''),
    minVersion: 'TLSv1.2',
    // No session tickets: a resumed session would skip the SPIFFE check below.
    secureOptions: crypto.constants.SSL_OP_NO_TICKET,
  };
}

const callers = new WeakMap<tls.TLSSocket, SpiffeId>();

/** The authenticated SPIFFE ID behind a request on a listener from createSpiffeHttpsServer. */
export function callerOf(req: http.IncomingMessage): SpiffeId | undefined {
  return callers.get(req.socket as tls.TLSSocket);
}

export interface SpiffeHttpsServer {
  server: https.Server;
  /** Stops following identity updates (close the server yourself). */
  stopRefresh(): void;
}

/**
 * `authorize` returns why a verified peer is refused (undefined: admitted). A refused or unverifiable
 * peer's connection is destroyed before any request is read.
 */
export function createSpiffeHttpsServer(
  identity: ServerTlsIdentity,
  authorize: (id: SpiffeId) => string | undefined,
  handler: http.RequestListener,
  log: Logger | undefined,
  what: string,
): SpiffeHttpsServer {
  let current = tlsOptions(identity);
  const s = https.createServer({ ...current, requestCert: true, rejectUnauthorized: true }, handler);
  const refresh = (): void => {
    try {
      const next = tlsOptions(identity);
      if (next.cert !== current.cert || next.ca !== current.ca) {
        current = next;
        s.setSecureContext(next);
      }
    } catch (err) {
      log?.error({ err }, `${what}: cannot refresh the TLS identity`);
    }
  };
  const off = identity.onUpdate(refresh);
  const timer = setInterval(refresh, 60_000);
  timer.unref();
  s.prependListener('secureConnection', (socket: tls.TLSSocket) => {
    try {
      const svid = verifyX509Svid(presentedChain(socket.getPeerCertificate(true)), identity);
      const why = authorize(svid.id);
      if (why !== undefined) throw new Error(why);
      callers.set(socket, svid.id);
    } catch (err) {
      log?.warn({ err: (err as Error).message, remote: socket.remoteAddress }, `${what} client refused`);
      socket.destroy();
    }
  });
  s.on('tlsClientError', () => undefined);
  return { server: s, stopRefresh: () => { off(); clearInterval(timer); } };
}
