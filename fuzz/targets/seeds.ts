// Real inputs the targets start from: swtpm output and NMEA logs kept under test/data, and objects
// minted by terroir's own code (a CA, X.509-SVIDs with Unified Identity claims, CSRs). Built once per
// process and shared by the targets that need them.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCsr } from '../../src/agent/csr.js';
import {
  Bundle, BundleSet, mintCaCertificate, mintX509Svid, SpiffeId, TrustDomain, unifiedIdentityExtension, type UnifiedIdentityClaims,
} from '../../src/spiffe/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function dataFile(rel: string): Buffer {
  return fs.readFileSync(path.join(root, 'test/data', rel));
}

export const tpmFile = (name: string): Buffer => dataFile(`tpm/${name}`);

/** A PEM bundle as DER certificates. */
export function pemCerts(text: string): Buffer[] {
  return [...text.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)].map((m) => Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64'));
}

export const SAMPLE_CLAIMS: UnifiedIdentityClaims = {
  country: 'DE', region: 'EU', policy: 'eu-gnss', sensorKinds: ['gnss'], witnesses: ['node', 'operator'], assurance: 'operator-witnessed',
  latency: [{ landmark: 'spiffe://example.org/landmark/fra', radiusKm: 412.5, strength: 'tpm' }],
} as UnifiedIdentityClaims;

export interface Pki {
  td: TrustDomain;
  caDer: Buffer;
  caKey: crypto.KeyObject;
  bundles: BundleSet;
  /** A landmark SVID (P-256): chain and key. */
  landmark: { id: string; chain: Buffer[]; key: crypto.KeyObject };
  /** Leaf certificates: plain, with Unified Identity claims, RSA, with DNS names. */
  leaves: Buffer[];
  /** CSRs from the agent's own CSR code (P-256), plus an RSA and an Ed25519 one built alike. */
  csrs: Buffer[];
}

let pki: Pki | undefined;

/** One trust domain with a CA and a handful of SVIDs and CSRs, minted by src/spiffe. */
export function testPki(): Pki {
  if (pki !== undefined) return pki;
  const td = TrustDomain.parse('example.org');
  const ca = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const caCert = mintCaCertificate({ trustDomain: td, publicKey: ca.publicKey, selfSignKey: ca.privateKey, ttlSeconds: 10 * 365 * 86400 });
  const bundle = new Bundle(td);
  bundle.addX509Authority(caCert.der);
  const issuer = { certificateDer: caCert.der, privateKey: ca.privateKey };
  const mint = (p: string, key: crypto.KeyObject, extra: Partial<Parameters<typeof mintX509Svid>[0]> = {}): Buffer =>
    mintX509Svid({ id: SpiffeId.parse(`spiffe://example.org${p}`), publicKey: key, issuer, ttlSeconds: 10 * 365 * 86400, ...extra }).der;
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const ec384 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ed = crypto.generateKeyPairSync('ed25519');
  const landmarkKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const landmarkId = 'spiffe://example.org/landmark/fra';
  const landmarkLeaf = mint('/landmark/fra', landmarkKey.publicKey);
  pki = {
    td,
    caDer: caCert.der,
    caKey: ca.privateKey,
    bundles: new BundleSet(bundle),
    landmark: { id: landmarkId, chain: [landmarkLeaf], key: landmarkKey.privateKey },
    leaves: [
      mint('/workload/a', ec.publicKey),
      mint('/node/tpm/1', ec384.publicKey, { extraExtensions: [unifiedIdentityExtension(SAMPLE_CLAIMS)] }),
      mint('/workload/rsa', rsa.publicKey, { dnsNames: ['a.example.org', 'b.example.org'] }),
      landmarkLeaf,
    ],
    csrs: [
      createCsr(ec),
      createCsr(ec, 'spiffe://example.org/workload/a'),
      csrSignedBy(ec384, 'sha384', [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]),
      csrSignedBy(rsa, 'sha256', [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00]),
      csrSignedBy(ed, null, [0x06, 0x03, 0x2b, 0x65, 0x70]),
    ],
  };
  return pki;
}

/** A minimal PKCS#10 request signed with `keys` (for key types the agent's CSR code does not make). */
function csrSignedBy(keys: crypto.KeyPairKeyObjectResult, hash: string | null, algBody: number[]): Buffer {
  const tlv = (tag: number, body: Buffer): Buffer => {
    const n = body.length;
    const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
    return Buffer.concat([Buffer.from([tag]), len, body]);
  };
  const spki = keys.publicKey.export({ format: 'der', type: 'spki' });
  const info = tlv(0x30, Buffer.concat([Buffer.from([0x02, 0x01, 0x00]), Buffer.from([0x30, 0x00]), spki, Buffer.from([0xa0, 0x00])]));
  const sig = crypto.sign(hash, info, keys.privateKey);
  return tlv(0x30, Buffer.concat([info, tlv(0x30, Buffer.from(algBody)), tlv(0x03, Buffer.concat([Buffer.from([0]), sig]))]));
}
