// A kubelet double: its secure port (HTTPS) serving GET /pods, with the kubelet's rules for who gets
// an answer. The kubelet (pkg/kubelet/server/auth.go, with webhook authentication and authorization,
// as kubeadm and managed clusters configure it) answers:
// - no bearer token, or a token the API server's TokenReview does not accept → 401 Unauthorized;
// - a valid token whose service account may not `get` `nodes/proxy` (SubjectAccessReview) → 403 Forbidden;
// - otherwise 200 with a core/v1 PodList (`{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[...]}`).
// Here TokenReview and SubjectAccessReview are a table: token → authorized or not.
// Its serving certificate comes from its own CA, minted with the openssl command line.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';

export interface KubeletPki {
  caFile: string;
  certFile: string;
  keyFile: string;
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A CA and a kubelet serving certificate for 127.0.0.1 / localhost, in dir/<name>-*. */
export function mintKubeletPki(dir: string, name = 'kubelet'): KubeletPki {
  const ca = `${name}-ca`;
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', `/CN=${name}-ca@test`, '-keyout', `${ca}.key`, '-out', `${ca}.pem`], dir);
  fs.writeFileSync(path.join(dir, `${name}.ext`),
    'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n');
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=edge-node-1@test',
    '-keyout', `${name}.key`, '-out', `${name}.csr`], dir);
  openssl(['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial',
    '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}.pem`], dir);
  return { caFile: path.join(dir, `${ca}.pem`), certFile: path.join(dir, `${name}.pem`), keyFile: path.join(dir, `${name}.key`) };
}

export interface KubeletDoubleOptions {
  pki: KubeletPki;
  /** token → may get nodes/proxy (true: 200, false: 403). Unknown tokens: 401. */
  tokens: Map<string, boolean>;
  /** The /pods answer: a PodList object, or raw bytes (for malformed answers). */
  pods: unknown;
  /** Send the answer chunked, without Content-Length (as the kubelet does for large lists). */
  chunked?: boolean;
}

export class KubeletDouble {
  /** GET /pods requests answered 200. */
  served = 0;
  /** Requests refused 401 / 403. */
  unauthorized = 0;
  forbidden = 0;
  private body: Buffer;

  private constructor(private readonly server: https.Server, readonly url: string, private readonly opts: KubeletDoubleOptions) {
    this.body = KubeletDouble.encode(opts.pods);
  }

  private static encode(pods: unknown): Buffer {
    return Buffer.isBuffer(pods) ? pods : Buffer.from(JSON.stringify(pods));
  }

  static async start(opts: KubeletDoubleOptions): Promise<KubeletDouble> {
    const server = https.createServer({ cert: fs.readFileSync(opts.pki.certFile), key: fs.readFileSync(opts.pki.keyFile) });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const double = new KubeletDouble(server, `https://127.0.0.1:${port}`, opts);
    server.on('request', (req, res) => {
      const auth = req.headers.authorization ?? '';
      const m = /^Bearer (\S+)$/.exec(auth);
      const allowed = m ? opts.tokens.get(m[1] as string) : undefined;
      if (allowed === undefined) {
        double.unauthorized++;
        res.writeHead(401, { 'content-type': 'text/plain; charset=utf-8' }).end('Unauthorized');
        return;
      }
      const url = new URL(req.url ?? '/', 'https://kubelet');
      if (!allowed) {
        double.forbidden++;
        res.writeHead(403, { 'content-type': 'text/plain; charset=utf-8' })
          .end(`Forbidden (user=system:serviceaccount:x:y, verb=get, resource=nodes, subresource(s)=[proxy])`);
        return;
      }
      if (req.method !== 'GET' || url.pathname !== '/pods') {
        res.writeHead(req.method !== 'GET' ? 405 : 404).end();
        return;
      }
      double.served++;
      res.writeHead(200, { 'content-type': 'application/json' });
      if (!opts.chunked) {
        res.end(double.body);
        return;
      }
      for (let i = 0; i < double.body.length; i += 64 * 1024) res.write(double.body.subarray(i, i + 64 * 1024));
      res.end();
    });
    return double;
  }

  /** Serve another answer from now on. */
  setPods(pods: unknown): void {
    this.opts.pods = pods;
    this.body = KubeletDouble.encode(pods);
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
