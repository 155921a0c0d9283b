// The SPIFFE bundle endpoint: HTTPS GET returns this trust domain's bundle as application/json, with
// no client authentication. Profiles: https_web (a web PKI certificate from configured files) and
// https_spiffe (the server's own SVID, which federated peers verify against our previous bundle).
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';

export interface BundleEndpointTls {
  certPem: Buffer;
  keyPem: Buffer;
}

export interface BundleEndpointOptions {
  host: string;
  port: number;
  profile: 'https_web' | 'https_spiffe';
  /** https_web: the certificate and key files. */
  certFile?: string;
  keyFile?: string;
  /** https_spiffe: the current server SVID (chain PEM + key PEM). */
  spiffeIdentity?: () => BundleEndpointTls;
  bundleJson: () => string;
  logger?: Logger;
}

export interface BundleEndpoint {
  readonly port: number;
  /** Reloads the TLS identity (new server SVID, or renewed web certificate files). */
  reloadTls(): void;
  close(): Promise<void>;
}

function loadTls(o: BundleEndpointOptions): BundleEndpointTls {
  if (o.profile === 'https_web') {
    if (!o.certFile || !o.keyFile) throw new Error('federation.bundleEndpoint: https_web needs certFile and keyFile');
    return { certPem: fs.readFileSync(o.certFile), keyPem: fs.readFileSync(o.keyFile) };
  }
  if (!o.spiffeIdentity) throw new Error('federation.bundleEndpoint: https_spiffe needs the server SVID');
  return o.spiffeIdentity();
}

export async function startBundleEndpoint(o: BundleEndpointOptions): Promise<BundleEndpoint> {
  const tls = loadTls(o);
  const server = https.createServer({ cert: tls.certPem, key: tls.keyPem, minVersion: 'TLSv1.2' }, (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' });
      res.end('only GET\n');
      return;
    }
    const body = o.bundleJson();
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  server.headersTimeout = 5_000;
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => { server.off('error', reject); resolve(); });
  });
  const port = (server.address() as AddressInfo).port;
  o.logger?.info({ port, profile: o.profile }, 'bundle endpoint listening');
  return {
    port,
    reloadTls() {
      const t = loadTls(o);
      server.setSecureContext({ cert: t.certPem, key: t.keyPem });
    },
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
