// Benchmark of the SPIFFE primitives on one core: raw ECDSA P-256 sign/verify from node:crypto as the
// baseline, then X.509-SVID minting, JWT-SVID minting and JWT-SVID validation. Prints its figures.
// Run: npx tsx bench/spiffe.ts [seconds-per-measurement]
import crypto from 'node:crypto';
import os from 'node:os';
import {
  Bundle, BundleSet, mintCaCertificate, mintJwtSvid, mintX509Svid, SpiffeId, TrustDomain, validateJwtSvid,
} from '../src/spiffe/index.js';

const SECONDS = Number(process.argv[2] ?? '2');
const ROUNDS = 10;

/**
 * Measures a baseline and a candidate in alternating short slices (ROUNDS each, SECONDS total per
 * operation), so that load from other processes hits both alike and the ratio stays meaningful.
 * Returns operations per second for each.
 */
async function interleaved(base: () => unknown, cand: () => unknown): Promise<[number, number]> {
  const slice = (SECONDS * 1e9) / ROUNDS;
  const total = [{ n: 0, ns: 0 }, { n: 0, ns: 0 }];
  for (let i = 0; i < 200; i++) {
    await base();
    await cand();
  }
  for (let r = 0; r < ROUNDS; r++) {
    for (const [idx, fn] of [[0, base], [1, cand]] as const) {
      const start = process.hrtime.bigint();
      let n = 0;
      let elapsed: number;
      do {
        for (let i = 0; i < 50; i++) await fn();
        n += 50;
        elapsed = Number(process.hrtime.bigint() - start);
      } while (elapsed < slice);
      const t = total[idx] as { n: number; ns: number };
      t.n += n;
      t.ns += elapsed;
    }
  }
  const [a, b] = total as [{ n: number; ns: number }, { n: number; ns: number }];
  return [a.n / (a.ns / 1e9), b.n / (b.ns / 1e9)];
}

const fmt = (r: number): string => Math.round(r).toLocaleString('en-US').padStart(9);
const pct = (a: number, b: number): string => `${((a / b) * 100).toFixed(0)}%`;

const td = TrustDomain.parse('bench.example');
const ca = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const caCert = mintCaCertificate({ trustDomain: td, publicKey: ca.publicKey, selfSignKey: ca.privateKey, ttlSeconds: 86_400 });
const issuer = { certificateDer: caCert.der, privateKey: ca.privateKey };
// Each mint gets a fresh workload key from a pool, as a server signing many CSRs would.
const keys = Array.from({ length: 64 }, () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey);
const id = SpiffeId.fromSegments(td, 'ns', 'prod', 'sa', 'frontend');
const tbsLike = crypto.randomBytes(400);
const jwtKey = { kid: 'bench-kid', privateKey: ca.privateKey, alg: 'ES256' as const };
const bundle = new Bundle(td);
bundle.addX509Authority(caCert.der);
bundle.addJwtAuthority('bench-kid', ca.publicKey);
const bundles = new BundleSet(bundle);

console.log(`terroir SPIFFE benchmark — node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'}, one core, ${SECONDS}s per figure (${ROUNDS} interleaved slices), load average ${os.loadavg()[0]?.toFixed(1)}`);

let k = 0;
const [rawSign, x509Mint] = await interleaved(
  () => crypto.sign('sha256', tbsLike, ca.privateKey),
  () => mintX509Svid({ id, publicKey: keys[k++ & 63] as crypto.KeyObject, issuer, ttlSeconds: 3600 }),
);
const token = await mintJwtSvid({ id, audience: ['bench'], ttlSeconds: 3600, key: jwtKey });
const sig = crypto.sign('sha256', tbsLike, ca.privateKey);
const [rawVerify, jwtValidate] = await interleaved(
  () => crypto.verify('sha256', tbsLike, ca.publicKey, sig),
  () => validateJwtSvid(token, bundles, 'bench'),
);
const [, jwtMint] = await interleaved(
  () => crypto.sign('sha256', tbsLike, ca.privateKey),
  () => mintJwtSvid({ id, audience: ['bench'], ttlSeconds: 300, key: jwtKey }),
);

console.log(`raw ECDSA P-256 sign (node:crypto)   ${fmt(rawSign)} /s`);
console.log(`X.509-SVID mint                      ${fmt(x509Mint)} /s   (${pct(x509Mint, rawSign)} of raw sign; goal >= 50%)`);
console.log(`JWT-SVID mint (jose, ES256)          ${fmt(jwtMint)} /s`);
console.log(`raw ECDSA P-256 verify (node:crypto) ${fmt(rawVerify)} /s`);
console.log(`JWT-SVID validate (ES256)            ${fmt(jwtValidate)} /s   (${pct(jwtValidate, rawVerify)} of raw verify; goal >= 50%)`);
