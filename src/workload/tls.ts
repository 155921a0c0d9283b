// mTLS for node:tls with SPIFFE peer verification and hot rotation.
//
// Verification is layered so that it cannot be switched off or skipped:
//  1. OpenSSL verifies the peer chain against the X.509 authorities of every trusted trust domain
//     (`ca`), with rejectUnauthorized left at true; a peer without a certificate never gets through.
//  2. Our SPIFFE check then runs before any application data: verifyX509Svid (leaf rules and path
//     validation against the bundle of the peer's OWN trust domain only, which OpenSSL's union of CAs
//     cannot express) and the authorizer. Clients do it in checkServerIdentity, whose error makes
//     node:tls destroy the socket before 'secureConnect'; servers in a 'secureConnection' listener
//     put in front of all others, which destroys the socket before the application sees it.
// Session resumption would skip both checks on the client side, so clients never offer a session
// and servers issue no tickets.
//
// Rotation: the SecureContext is rebuilt when the source reports a change. Servers hand it out via
// SNICallback (clients sending SNI) and setSecureContext (clients that do not); clients build their
// options per connection, so every new connection uses the current SVID and bundles.
import crypto from 'node:crypto';
import tls from 'node:tls';
import pino, { type Logger } from 'pino';
import type { Bundle } from '../spiffe/bundle.js';
import type { X509Svid } from '../spiffe/svid-source.js';
import { verifyX509Svid } from '../spiffe/x509svid.js';
import { VerificationCache } from './verify-cache.js';
import { x509Peer, type Authorizer, type Peer } from './authorizer.js';
import { AuthorizationError, WorkloadError } from './errors.js';
import type { X509BundleSetSource, X509SourceLike } from './source.js';

export interface MtlsOptions {
  /** Our SVID (and, unless `bundles` is given, the bundles peers are verified against). */
  source: X509SourceLike;
  /** Where peers' trust bundles come from; default `source`. */
  bundles?: X509BundleSetSource;
  /** Who may connect / be connected to, after SPIFFE verification. Required: there is no default. */
  authorizer: Authorizer;
  /** Where refused peers are logged (warn, with the reason); silent by default. */
  logger?: Logger;
}

const SILENT = pino({ level: 'silent' });
const verifiedPeers = new WeakMap<tls.TLSSocket, Peer>();

/** The verified SPIFFE peer of a connection made or accepted by these helpers. */
export function peerOf(socket: unknown): Peer | undefined {
  return socket instanceof tls.TLSSocket ? verifiedPeers.get(socket) : undefined;
}

/** Builds (once per change of SVID or bundles) the TLS options and SecureContext from a source. */
export class SecureContextCache {
  private lastSvid: X509Svid | undefined;
  private lastBundles: readonly Bundle[] | undefined;
  private options: tls.SecureContextOptions | undefined;
  private context: tls.SecureContext | undefined;
  /** Successful peer verifications of the connections using this context (see verify-cache.ts). */
  readonly verifications = new VerificationCache();

  constructor(private readonly source: X509SourceLike, private readonly bundles: X509BundleSetSource, private readonly server: boolean) {}

  /** Current options; throws WorkloadError('no-svid') when the source has no SVID. */
  currentOptions(): tls.SecureContextOptions {
    const svid = this.source.getX509Svid();
    const bundles = this.bundles.getX509Bundles();
    if (this.options === undefined || svid !== this.lastSvid || bundles !== this.lastBundles) {
      const ca = bundles.map((b) => b.x509AuthoritiesPem()).join('');
      if (ca === '') throw new WorkloadError('no-bundle', 'no X.509 trust bundles to verify peers against');
      this.options = {
        key: svid.privateKey.export({ type: 'pkcs8', format: 'pem' }),
        cert: svid.certificatesDer.map((d) => new crypto.X509Certificate(d).toString()).join(''),
        ca,
        minVersion: 'TLSv1.2',
        ...(this.server ? { secureOptions: crypto.constants.SSL_OP_NO_TICKET } : {}),
      };
      this.context = undefined;
      this.lastSvid = svid;
      this.lastBundles = bundles;
    }
    return this.options;
  }

  currentContext(): tls.SecureContext {
    const opts = this.currentOptions();
    if (this.context === undefined) this.context = tls.createSecureContext(opts);
    return this.context;
  }
}

/** The peer chain as presented (leaf first), without the trust anchor OpenSSL may have appended. */
function presentedChain(cert: tls.DetailedPeerCertificate | tls.PeerCertificate | undefined): Buffer[] {
  const out: Buffer[] = [];
  let c = cert as tls.DetailedPeerCertificate | undefined;
  while (c !== undefined && c.raw !== undefined && out.length < 16) {
    const issuer = c.issuerCertificate as tls.DetailedPeerCertificate | undefined;
    const selfIssued = issuer === undefined || issuer === c || issuer.raw?.equals(c.raw) === true;
    if (selfIssued && out.length > 0) break; // the root anchor: it comes from our bundle, not the peer
    out.push(c.raw);
    if (selfIssued) break;
    c = issuer;
  }
  return out;
}

/** SPIFFE verification of a peer chain, then the authorizer. Throws on any failure. */
export function verifyPeerCertificate(
  cert: tls.PeerCertificate | undefined, bundles: X509BundleSetSource, authorizer: Authorizer, cache?: VerificationCache,
): Peer {
  const chain = presentedChain(cert);
  if (chain.length === 0) throw new AuthorizationError('peer presented no certificate');
  const peer = x509Peer(cache !== undefined ? cache.verify(chain, bundles) : verifyX509Svid(chain, bundles));
  authorizer(peer);
  return peer;
}

function checkOptions(opts: MtlsOptions): { source: X509SourceLike; bundles: X509BundleSetSource; authorizer: Authorizer } {
  if (opts === null || typeof opts !== 'object' || typeof opts.source?.getX509Svid !== 'function') {
    throw new WorkloadError('invalid-argument', 'mTLS helpers need { source, authorizer }');
  }
  if (typeof opts.authorizer !== 'function') {
    throw new WorkloadError('invalid-argument', 'mTLS helpers need an authorizer (use authorizeAny() to accept every verified SPIFFE ID)');
  }
  return { source: opts.source, bundles: opts.bundles ?? opts.source, authorizer: opts.authorizer };
}

/**
 * Makes `server` (a tls.Server or https.Server created with spiffeServerOptions) follow rotation and
 * verify every client before anyone else sees the socket. Used by createTlsServer and createHttpsServer.
 */
export function attachServer(server: tls.Server, cache: SecureContextCache, opts: MtlsOptions): void {
  const { source: src, bundles, authorizer } = checkOptions(opts);
  const log = opts.logger ?? SILENT;
  const refresh = (): void => {
    let contextOptions: tls.SecureContextOptions;
    try {
      contextOptions = cache.currentOptions();
    } catch {
      // No SVID any more: a context without a certificate, so every new handshake fails.
      contextOptions = { minVersion: 'TLSv1.2' };
    }
    server.setSecureContext(contextOptions);
  };
  const off = src.onUpdate(refresh);
  const offBundles = bundles !== src ? (bundles as Partial<X509SourceLike>).onUpdate?.(refresh) : undefined;
  server.once('close', () => {
    off();
    offBundles?.();
  });
  server.prependListener('secureConnection', (socket: tls.TLSSocket) => {
    try {
      verifiedPeers.set(socket, verifyPeerCertificate(socket.getPeerCertificate(true), bundles, authorizer, cache.verifications));
    } catch (e) {
      log.warn({ err: (e as Error).message, code: (e as { code?: string }).code, remote: socket.remoteAddress }, 'TLS client refused');
      socket.destroy(e as Error);
    }
  });
  server.on('tlsClientError', () => undefined); // failed handshakes are the peer's problem, not a crash
}

/** TLS server options (for tls.createServer / https.createServer) that serve the source's current SVID. */
export function spiffeServerOptions(cache: SecureContextCache): tls.TlsOptions {
  return {
    ...cache.currentOptions(),
    requestCert: true,
    rejectUnauthorized: true,
    SNICallback: (_servername, cb) => {
      try {
        cb(null, cache.currentContext());
      } catch (e) {
        cb(e as Error, undefined);
      }
    },
  };
}

/** A tls.Server requiring SPIFFE mTLS: every accepted socket has passed verification and `authorizer`. */
export function createTlsServer(opts: MtlsOptions, onSecureConnection?: (socket: tls.TLSSocket, peer: Peer) => void): tls.Server {
  const { source, bundles } = checkOptions(opts);
  const cache = new SecureContextCache(source, bundles, true);
  const server = tls.createServer(spiffeServerOptions(cache));
  attachServer(server, cache, opts);
  if (onSecureConnection !== undefined) {
    server.on('secureConnection', (s: tls.TLSSocket) => {
      const peer = verifiedPeers.get(s);
      if (peer !== undefined && !s.destroyed) onSecureConnection(s, peer);
    });
  }
  return server;
}

/**
 * Options for one client connection (tls.connect / https.request): the current SVID and bundles, and
 * SPIFFE verification of the server in checkServerIdentity. Build them per connection.
 */
export function spiffeClientOptions(opts: MtlsOptions, cache?: SecureContextCache): tls.ConnectionOptions & { onVerified: (s: tls.TLSSocket) => void } {
  const { source, bundles, authorizer } = checkOptions(opts);
  const log = opts.logger ?? SILENT;
  const contexts = cache ?? clientContexts(source, bundles);
  const ctx = contexts.currentContext();
  let peer: Peer | undefined;
  return {
    secureContext: ctx,
    rejectUnauthorized: true,
    checkServerIdentity: (_host, cert) => {
      try {
        peer = verifyPeerCertificate(cert, bundles, authorizer, contexts.verifications);
        return undefined;
      } catch (e) {
        log.warn({ err: (e as Error).message, code: (e as { code?: string }).code }, 'TLS server refused');
        return e as Error;
      }
    },
    // Resumed sessions skip checkServerIdentity; this must be called on 'secureConnect' to refuse them.
    onVerified: (s) => {
      if (peer === undefined) s.destroy(new AuthorizationError('server was not SPIFFE-verified (resumed TLS session?); refusing'));
      else verifiedPeers.set(s, peer);
    },
  };
}

const clientCaches = new WeakMap<X509SourceLike, WeakMap<X509BundleSetSource, SecureContextCache>>();

/** One client SecureContextCache per (source, bundles) pair, so separate tlsConnect calls share it. */
function clientContexts(source: X509SourceLike, bundles: X509BundleSetSource): SecureContextCache {
  let byBundles = clientCaches.get(source);
  if (byBundles === undefined) {
    byBundles = new WeakMap();
    clientCaches.set(source, byBundles);
  }
  let c = byBundles.get(bundles);
  if (c === undefined) {
    c = new SecureContextCache(source, bundles, false);
    byBundles.set(bundles, c);
  }
  return c;
}

/** A SPIFFE mTLS client connection; 'secureConnect' fires only for a verified, authorized server. */
export function tlsConnect(opts: MtlsOptions & { host: string; port: number; servername?: string }): tls.TLSSocket {
  const { onVerified, ...conn } = spiffeClientOptions(opts);
  const socket = tls.connect({ ...conn, host: opts.host, port: opts.port, ...(opts.servername !== undefined ? { servername: opts.servername } : {}) });
  socket.prependOnceListener('secureConnect', () => onVerified(socket));
  return socket;
}
