/* global process, console, Buffer, setTimeout, clearTimeout */
// A Workload API client with no dependencies at all — gRPC framing over node:http2 and a minimal
// protobuf reader written from the SPIFFE Workload API field numbers — so tests can copy it anywhere
// and run it as another user (who may not be able to read the repository or node_modules).
//
//   node wire-client.mjs <socket> fetch
//       prints {"ok":true,"uid":N,"svids":[ids]} or {"ok":false,"uid":N,"code":C,"details":"..."}
//   node wire-client.mjs <socket> mtls <expected peer SPIFFE ID>
//       serves mutual TLS with its first X.509-SVID, accepting only that peer; prints {"port":N,"id":"..."}
import crypto from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';

const [socketPath, mode, expectedPeer] = process.argv.slice(2);

function varint(buf, pos) {
  let v = 0;
  let mul = 1;
  for (;;) {
    const b = buf[pos++];
    if (b === undefined) throw new Error('truncated varint');
    v += (b & 0x7f) * mul;
    if ((b & 0x80) === 0) return [v, pos];
    mul *= 128;
  }
}

/** Fields of one protobuf message: number -> list of values (Buffer for length-delimited). */
function fields(buf) {
  const out = new Map();
  let pos = 0;
  while (pos < buf.length) {
    let tag;
    [tag, pos] = varint(buf, pos);
    const no = Math.floor(tag / 8);
    const wt = tag & 7;
    let value;
    if (wt === 0) [value, pos] = varint(buf, pos);
    else if (wt === 2) {
      let len;
      [len, pos] = varint(buf, pos);
      value = buf.subarray(pos, pos + len);
      pos += len;
    } else if (wt === 5) { value = buf.subarray(pos, pos + 4); pos += 4; }
    else if (wt === 1) { value = buf.subarray(pos, pos + 8); pos += 8; }
    else throw new Error(`unsupported wire type ${wt}`);
    if (!out.has(no)) out.set(no, []);
    out.get(no).push(value);
  }
  return out;
}

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

/** The first FetchX509SVID message: [{ id, chain, key, bundle }], or throws { code, details }. */
function fetchFirst() {
  return new Promise((resolve, reject) => {
    const session = http2.connect('http://localhost', { createConnection: () => net.connect(socketPath) });
    session.on('error', (e) => reject({ code: -1, details: e.message }));
    const req = session.request({
      ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchX509SVID',
      'content-type': 'application/grpc', te: 'trailers', 'workload.spiffe.io': 'true',
    });
    let data = Buffer.alloc(0);
    const timer = setTimeout(() => reject({ code: -2, details: 'timeout' }), 10_000);
    const status = (h) => {
      if (h['grpc-status'] !== undefined && h['grpc-status'] !== '0') {
        clearTimeout(timer);
        reject({ code: Number(h['grpc-status']), details: decodeURIComponent(h['grpc-message'] ?? '') });
        session.close();
      }
    };
    req.on('response', status);
    req.on('trailers', status);
    req.on('data', (d) => {
      data = Buffer.concat([data, d]);
      if (data.length < 5) return;
      const len = data.readUInt32BE(1);
      if (data.length < 5 + len) return;
      clearTimeout(timer);
      const msg = fields(data.subarray(5, 5 + len));
      resolve((msg.get(1) ?? []).map((b) => {
        const f = fields(b);
        return { id: (f.get(1)?.[0] ?? Buffer.alloc(0)).toString(), chain: f.get(2)?.[0], key: f.get(3)?.[0], bundle: f.get(4)?.[0] };
      }));
      req.close(http2.constants.NGHTTP2_CANCEL);
      session.close();
    });
    req.end(Buffer.from([0, 0, 0, 0, 0]));
  });
}

const uid = process.getuid();
try {
  const svids = await fetchFirst();
  if (mode === 'fetch') {
    console.log(JSON.stringify({ ok: true, uid, svids: svids.map((s) => s.id) }));
  } else {
    const svid = svids[0];
    const pem = (der) => new crypto.X509Certificate(der).toString();
    const key = crypto.createPrivateKey({ key: svid.key, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' });
    const server = tls.createServer({
      key, cert: splitDer(svid.chain).map(pem).join(''), ca: splitDer(svid.bundle).map(pem).join(''),
      requestCert: true, rejectUnauthorized: true,
    }, (sock) => {
      const peer = sock.getPeerX509Certificate()?.subjectAltName?.replace(/^URI:/, '');
      sock.end(peer === expectedPeer ? `hello ${peer}, this is ${svid.id}\n` : `refused ${peer}\n`);
    });
    server.listen(0, '127.0.0.1', () => console.log(JSON.stringify({ port: server.address().port, id: svid.id })));
  }
} catch (e) {
  console.log(JSON.stringify({ ok: false, uid, code: e.code, details: e.details }));
  process.exitCode = 1;
}
