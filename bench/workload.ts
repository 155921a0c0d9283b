// Benchmark of the workload library's mTLS: full TLS 1.3 handshakes per second over loopback (no
// session resumption, client certificate both ways) with plain node:tls mutual TLS (OpenSSL chain
// check and hostname check) versus the SPIFFE helpers (OpenSSL chain check, then verifyX509Svid
// against the peer's own trust domain and an authorizer including Unified Identity claims, on both
// sides). Baseline and candidate alternate in rounds so background load hits both alike. Prints its figures.
// Run: npx tsx bench/workload.ts [handshakes-per-round]
import crypto from 'node:crypto';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import tls from 'node:tls';
import { BundleSet, TrustDomain, mintCaCertificate, mintX509Svid, SpiffeId, Bundle, unifiedIdentityExtension } from '../src/spiffe/index.js';
import type { X509Svid } from '../src/spiffe/index.js';
import {
  authorizeAll, authorizeMemberOf, authorizeUnifiedIdentity, createTlsServer, tlsConnect, verifyPeerCertificate, type X509SourceLike,
} from '../src/workload/index.js';
import { VerificationCache } from '../src/workload/verify-cache.js';

const PER_ROUND = Number(process.argv[2] ?? '100');
const ROUNDS = 6;

const td = TrustDomain.parse('example.org');
const caKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const ca = mintCaCertificate({ trustDomain: td, publicKey: caKeys.publicKey, selfSignKey: caKeys.privateKey, ttlSeconds: 3600 });
const claims = { country: 'DE', region: 'EU', policy: 'eu-only', sensorKinds: ['gnss'] };

function svid(path: string): X509Svid & { pem: string; keyPem: string } {
  const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const m = mintX509Svid({
    id: SpiffeId.parse(`spiffe://example.org${path}`), publicKey: k.publicKey, issuer: { certificateDer: ca.der, privateKey: caKeys.privateKey },
    ttlSeconds: 3600, dnsNames: ['localhost'], extraExtensions: [unifiedIdentityExtension(claims)],
  });
  return {
    id: SpiffeId.parse(`spiffe://example.org${path}`), certificatesDer: m.chainDer, privateKey: k.privateKey, expiresAt: m.notAfter,
    pem: m.pem, keyPem: k.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
  };
}

function source(s: X509Svid): X509SourceLike {
  const b = new Bundle(td);
  b.addX509Authority(ca.der);
  const set = new BundleSet(b);
  const list = Object.freeze(set.all());
  return {
    getX509Svid: () => s,
    getX509BundleForTrustDomain: (t) => set.get(t),
    getX509Bundles: () => list,
    onUpdate: () => () => undefined,
  };
}

const serverSvid = svid('/server');
const clientSvid = svid('/client');
const authorizer = authorizeAll(authorizeMemberOf(td), authorizeUnifiedIdentity({ trustDomain: td, regions: ['EU'], countries: ['DE', 'FR'] }));

async function listen(server: tls.Server): Promise<number> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as AddressInfo).port;
}

const plainServer = tls.createServer({ key: serverSvid.keyPem, cert: serverSvid.pem, ca: ca.pem, requestCert: true, rejectUnauthorized: true }, (s) => s.end());
const spiffeServer = createTlsServer({ source: source(serverSvid), authorizer }, (s) => s.end());
const plainPort = await listen(plainServer);
const spiffePort = await listen(spiffeServer);

// One client SecureContext reused by every plain connection, as the SPIFFE helpers reuse theirs.
const plainContext = tls.createSecureContext({ key: clientSvid.keyPem, cert: clientSvid.pem, ca: ca.pem });
function plainHandshake(): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port: plainPort, servername: 'localhost', secureContext: plainContext });
    s.once('secureConnect', () => { s.destroy(); resolve(); });
    s.once('error', reject);
  });
}
const clientSource = source(clientSvid);
function spiffeHandshake(): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ source: clientSource, authorizer, host: '127.0.0.1', port: spiffePort });
    s.once('secureConnect', () => { s.destroy(); resolve(); });
    s.once('error', reject);
  });
}

async function round(fn: () => Promise<void>, lat: number[]): Promise<number> {
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < PER_ROUND; i++) {
    const a = process.hrtime.bigint();
    await fn();
    lat.push(Number(process.hrtime.bigint() - a) / 1e6);
  }
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const q = (xs: number[], p: number): number => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))] as number;

for (let i = 0; i < 30; i++) {
  await plainHandshake();
  await spiffeHandshake();
}
const plain = { s: 0, lat: [] as number[] };
const spiffe = { s: 0, lat: [] as number[] };
for (let r = 0; r < ROUNDS; r++) {
  plain.s += await round(plainHandshake, plain.lat);
  spiffe.s += await round(spiffeHandshake, spiffe.lat);
}

// The verifier alone, as both ends run it once per handshake: full, and with the verification cache
// that the helpers keep (a peer reconnecting with the same chain).
const fakePeer = { raw: clientSvid.certificatesDer[0] } as unknown as tls.PeerCertificate;
const bundles = source(serverSvid);
const cache = new VerificationCache();
function perCall(fn: () => void): number {
  let n = 0;
  const v0 = process.hrtime.bigint();
  while (Number(process.hrtime.bigint() - v0) < 1e9) {
    fn();
    n++;
  }
  return 1e9 / n / 1000;
}
const verifyUs = perCall(() => verifyPeerCertificate(fakePeer, bundles, authorizer));
const cachedUs = perCall(() => verifyPeerCertificate(fakePeer, bundles, authorizer, cache));

const total = PER_ROUND * ROUNDS;
console.log(`workload mTLS handshakes — node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, loopback, TLS 1.3, ECDSA P-256, client certs, no resumption`);
console.log(`${total} sequential handshakes each, in ${ROUNDS} alternating rounds`);
console.log(`plain node:tls mTLS      ${(total / plain.s).toFixed(0).padStart(6)} handshakes/s   p50 ${q(plain.lat, 0.5).toFixed(2)} ms   p99 ${q(plain.lat, 0.99).toFixed(2)} ms`);
console.log(`SPIFFE mTLS (this lib)   ${(total / spiffe.s).toFixed(0).padStart(6)} handshakes/s   p50 ${q(spiffe.lat, 0.5).toFixed(2)} ms   p99 ${q(spiffe.lat, 0.99).toFixed(2)} ms`);
console.log(`ratio                    ${((total / spiffe.s) / (total / plain.s)).toFixed(2)}x of plain`);
console.log(`SPIFFE peer verification alone (verifyX509Svid + authorizer with claims): ${verifyUs.toFixed(1)} µs full, ${cachedUs.toFixed(1)} µs cached`);

plainServer.close();
spiffeServer.close();
