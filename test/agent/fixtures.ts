// Real certificates for agent unit tests, minted by the openssl command line (an implementation
// independent of ours): a CA per trust domain and X.509-SVIDs signed by it.
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { CachedSvid, TrustBundle } from '../../src/agent/cache.js';
import { createCsr, generateKeyPair, pkcs8Der } from '../../src/agent/csr.js';
import pino from 'pino';
import { parseServerConfig, startServer, type RunningServer } from '../../src/server/index.js';
import { Bundle, TrustDomain } from '../../src/spiffe/index.js';
import { freePort } from '../support/ports.js';
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

/**
 * A real terroir server for agent tests: SQLite under `dir`/server, CA keys in memory, agent API on
 * a free loopback port, no health endpoint. `extra` adds config sections (e.g. nodeAttestation).
 * Returns the server and its bundle's X.509 roots.
 */
export async function startTestServer(dir: string, trustDomain: string, extra: Record<string, unknown> = {}): Promise<{ server: RunningServer; roots: Buffer[] }> {
  const server = await startServer(parseServerConfig({
    trustDomain,
    dataDir: path.join(dir, 'server'),
    logLevel: 'silent',
    dataStore: { type: 'sqlite', path: path.join(dir, 'server', 'ds.sqlite3') },
    ca: { keyStore: 'memory' },
    agentApi: { bindAddress: '127.0.0.1', port: await freePort() },
    health: { enabled: false },
    ...extra,
  }, dir, {}), { logger: pino({ level: 'silent' }) });
  const roots = Bundle.parse(TrustDomain.parse(trustDomain), server.ca.bundle().bundleJson).x509Authorities();
  return { server, roots };
}
