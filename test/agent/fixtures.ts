// Real certificates for agent unit tests, minted by the openssl command line (an implementation
// independent of ours): a CA per trust domain and X.509-SVIDs signed by it.
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { CachedSvid, TrustBundle } from '../../src/agent/cache.js';
import { createCsr, generateKeyPair, pkcs8Der } from '../../src/agent/csr.js';
import { tempDir } from '../support/tmp.js';

export interface TestCa {
  trustDomain: string;
  /** DER of the CA certificate. */
  der: Buffer;
  dir: string;
  bundle(sequence?: number): TrustBundle;
  cleanup(): void;
}

function openssl(args: string[], cwd: string): Buffer {
  return execFileSync('openssl', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
}

export function makeCa(trustDomain: string): TestCa {
  const { dir, cleanup } = tempDir('terroir-ca-');
  openssl([
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', `/O=${trustDomain} test CA`,
    '-addext', 'basicConstraints=critical,CA:true', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-addext', `subjectAltName=URI:spiffe://${trustDomain}`,
  ], dir);
  const der = new crypto.X509Certificate(fs.readFileSync(path.join(dir, 'ca.pem'))).raw;
  return {
    trustDomain,
    der,
    dir,
    cleanup,
    bundle: (sequence = 1) => ({
      trustDomain,
      x509Authorities: [der],
      jwks: Buffer.from(JSON.stringify({ keys: [], spiffe_sequence: sequence })),
      sequence,
    }),
  };
}

let serial = 100;

/** An X.509-SVID for `spiffeId` signed by `ca`; `ttlMs` only sets the cache's notAfter view. */
export function makeSvid(ca: TestCa, spiffeId: string, ttlMs = 3600_000): CachedSvid {
  const keys = generateKeyPair();
  const n = serial++;
  const csr = path.join(ca.dir, `${n}.csr`);
  const ext = path.join(ca.dir, `${n}.ext`);
  fs.writeFileSync(csr, createCsr(keys, spiffeId));
  fs.writeFileSync(ext, [
    'basicConstraints=critical,CA:false',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth,clientAuth',
    `subjectAltName=critical,URI:${spiffeId}`,
  ].join('\n'));
  const der = openssl([
    'x509', '-req', '-inform', 'DER', '-in', csr, '-CA', 'ca.pem', '-CAkey', 'ca.key',
    '-set_serial', String(n), '-days', '1', '-extfile', ext, '-outform', 'DER',
  ], ca.dir);
  const now = Date.now();
  return { spiffeId, chain: [der], key: pkcs8Der(keys.privateKey), notBefore: now - 10_000, notAfter: now + ttlMs };
}
