/* global process, console, Buffer */
// A workload (run as another user) that gets its X.509-SVID from the Workload API (normative spec
// proto) and serves mutual TLS with it, accepting only a client whose SPIFFE ID is <expected peer>.
// Prints {"port":N,"id":"<own SPIFFE ID>"} once listening; answers each client with its own ID.
// Usage: node mtls-server.mjs <socket path> <workloadapi.proto> <expected peer SPIFFE ID>
import crypto from 'node:crypto';
import tls from 'node:tls';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const [socketPath, protoPath, expectedPeer] = process.argv.slice(2);
const def = protoLoader.loadSync(protoPath, { keepCase: true, defaults: true });
const Client = grpc.loadPackageDefinition(def).SpiffeWorkloadAPI;
const client = new Client(`unix://${socketPath}`, grpc.credentials.createInsecure());
const md = new grpc.Metadata();
md.set('workload.spiffe.io', 'true');

function splitDer(buf) {
  const out = [];
  let off = 0;
  while (off < buf.length) {
    let len = buf[off + 1];
    let hdr = 2;
    if (len & 0x80) {
      const n = len & 0x7f;
      len = 0;
      for (let i = 0; i < n; i++) len = len * 256 + buf[off + 2 + i];
      hdr += n;
    }
    out.push(buf.subarray(off, off + hdr + len));
    off += hdr + len;
  }
  return out;
}
const pem = (der) => new crypto.X509Certificate(der).toString();

const call = client.FetchX509SVID({}, md);
call.once('data', (res) => {
  const svid = res.svids[0];
  const key = crypto.createPrivateKey({ key: svid.x509_svid_key, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' });
  const server = tls.createServer({
    key,
    cert: splitDer(svid.x509_svid).map(pem).join(''),
    ca: splitDer(svid.bundle).map(pem).join(''),
    requestCert: true,
    rejectUnauthorized: true,
  }, (sock) => {
    const peer = sock.getPeerX509Certificate();
    const uri = peer?.subjectAltName?.replace(/^URI:/, '');
    if (uri !== expectedPeer) {
      sock.end(`refused ${uri}\n`);
      return;
    }
    sock.end(`hello ${uri}, this is ${svid.spiffe_id}\n`);
  });
  server.listen(0, '127.0.0.1', () => {
    console.log(JSON.stringify({ port: server.address().port, id: svid.spiffe_id }));
  });
  call.cancel();
  client.close();
});
call.on('error', (err) => {
  if (err.code === grpc.status.CANCELLED) return;
  console.log(JSON.stringify({ error: err.details, code: err.code }));
  process.exit(1);
});
void Buffer;
