/* global process, console, setTimeout, setInterval, URL */
// The two demo workloads, doing mutual TLS with the X.509-SVIDs the terroir agent hands them.
//
//   node mtls-demo.mjs serve PORT ALLOWED_SPIFFE_ID   the consumer: answers clients whose SVID is ALLOWED_SPIFFE_ID
//   node mtls-demo.mjs call HOST:PORT SERVER_SPIFFE_ID [--once]   the client: calls the consumer every 5 s
//
// Each gets its SVID through the SPIFFE Workload API with the agent's CLI (`terroir-agent api fetch x509
// -write DIR`) and fetches again every SVID_REFRESH_S seconds (default 30), so rotated SVIDs are used.
// Environment: TERROIR_AGENT_ARGV (node's arguments that run terroir-agent, one per line; deploy/workload.sh
// sets it), SPIFFE_ENDPOINT_SOCKET, SVID_DIR, SVID_FETCH_TIMEOUT_S (how long to wait for a first SVID, default 120).
//
// Authentication is TLS against the trust bundle; authorization is the peer's SPIFFE ID, checked on
// both sides. Unified Identity claims (country, PCR digest, ...) are not checked: the server does not
// issue them before issue 8; the consumer says so in every answer rather than pretend.
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import tls from 'node:tls';

const [mode, target, expectedId, flag] = process.argv.slice(2);
const agentArgv = (process.env.TERROIR_AGENT_ARGV ?? new URL('../../dist/src/cli/terroir-agent.js', import.meta.url).pathname)
  .split('\n').filter((a) => a !== '');
const dir = process.env.SVID_DIR ?? `/tmp/svid-${process.getuid?.() ?? 'x'}`;
const refreshMs = 1000 * Number(process.env.SVID_REFRESH_S ?? 30);

function fail(msg) {
  console.error(`mtls-demo: ${msg}`);
  process.exit(1);
}
if (!['serve', 'call'].includes(mode) || !target || !expectedId?.startsWith('spiffe://')) {
  fail('usage: mtls-demo.mjs serve PORT ALLOWED_SPIFFE_ID | call HOST:PORT SERVER_SPIFFE_ID [--once]');
}

/** Fetches this process's SVID from the agent (retrying while the agent or the entry is not there yet). */
async function fetchSvid(deadlineMs = 1000 * Number(process.env.SVID_FETCH_TIMEOUT_S ?? 120)) {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const until = Date.now() + deadlineMs;
  let last = '';
  while (Date.now() < until) {
    const err = await new Promise((resolve) => {
      execFile(process.execPath, [...agentArgv, 'api', 'fetch', 'x509', '-write', dir], (e, _out, stderr) => resolve(e ? stderr || e.message : null));
    });
    if (err === null) return loadSvid();
    last = err.trim();
    await new Promise((r) => setTimeout(r, 500));
  }
  fail(`no X.509-SVID from the agent: ${last}`);
}

function loadSvid() {
  const cert = readFileSync(`${dir}/svid.0.pem`);
  return { cert, key: readFileSync(`${dir}/svid.0.key`), ca: readFileSync(`${dir}/bundle.0.pem`), id: spiffeIdOf(new X509Certificate(cert)) };
}

/** The one URI SAN of an X.509-SVID, or null when there is not exactly one. */
function spiffeIdOf(cert) {
  const uris = (cert.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
  return uris.length === 1 && uris[0].startsWith('spiffe://') ? uris[0] : null;
}

function peerIdOf(socket) {
  const raw = socket.getPeerX509Certificate?.();
  return raw ? spiffeIdOf(raw) : null;
}

async function serve() {
  const port = Number(target);
  let svid = await fetchSvid();
  const options = () => ({ cert: svid.cert, key: svid.key, ca: svid.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' });
  const server = tls.createServer(options(), (socket) => {
    const peer = peerIdOf(socket);
    if (peer !== expectedId) {
      console.log(`refused ${peer ?? '(no SPIFFE ID)'}: only ${expectedId} may call`);
      socket.end(`${JSON.stringify({ error: 'permission denied', peer })}\n`);
      return;
    }
    console.log(`served ${peer}`);
    socket.end(`${JSON.stringify({ from: svid.id, to: peer, unifiedIdentity: 'not checked: pending issue 8' })}\n`);
  });
  server.on('tlsClientError', (err) => console.log(`TLS handshake refused: ${err.message}`));
  server.listen(port, () => console.log(`consumer ${svid.id} listening on ${port}, allowing ${expectedId}`));
  setInterval(async () => {
    svid = await fetchSvid();
    server.setSecureContext(options());
  }, refreshMs).unref();
}

async function call() {
  const [host, portText] = target.split(':');
  const callOnce = async () => {
    const svid = await fetchSvid();
    return new Promise((resolve, reject) => {
      const socket = tls.connect({
        host, port: Number(portText), cert: svid.cert, key: svid.key, ca: svid.ca, servername: 'consumer', minVersion: 'TLSv1.2',
        // SPIFFE authorizes by ID, not host name: the server's SVID must name the expected consumer.
        checkServerIdentity: (_name, cert) => {
          const uris = (cert.subjectaltname ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
          return uris.length === 1 && uris[0] === expectedId ? undefined : new Error(`server is ${uris.join(',') || '(no URI SAN)'}, expected ${expectedId}`);
        },
      });
      let body = '';
      socket.on('data', (d) => { body += d; });
      socket.on('end', () => resolve(body.trim()));
      socket.on('error', reject);
    });
  };
  for (;;) {
    try {
      const answer = await callOnce();
      console.log(answer);
      if (JSON.parse(answer).error !== undefined) throw new Error(`the consumer refused us: ${answer}`);
      if (flag === '--once') process.exit(0);
    } catch (err) {
      console.error(`call failed: ${err.message}`);
      if (flag === '--once') process.exit(1);
    }
    await new Promise((r) => setTimeout(r, 5000));
  }
}

await (mode === 'serve' ? serve() : call());
