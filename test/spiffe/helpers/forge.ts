// Builds arbitrary (including non-conforming) certificates and CSRs with @peculiar/x509, an
// implementation independent of src/spiffe's DER templates. Negative tests need certificates the
// product code refuses to mint: two URI SANs, keyCertSign on a leaf, a CA used as a leaf, ...
import 'reflect-metadata';
import { webcrypto, KeyObject } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto as never);

export const EC_P256 = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export interface ForgedKey {
  keys: webcrypto.CryptoKeyPair;
  publicKey: KeyObject;
  privateKey: KeyObject;
}

export async function forgeKey(): Promise<ForgedKey> {
  const keys = await webcrypto.subtle.generateKey(EC_P256, true, ['sign', 'verify']) as webcrypto.CryptoKeyPair;
  return { keys, publicKey: KeyObject.from(keys.publicKey), privateKey: KeyObject.from(keys.privateKey) };
}

/** An RSA key of `bits` (e.g. 1024, which SVIDs must not use). */
export async function forgeRsaKey(bits: number): Promise<ForgedKey> {
  const alg = { name: 'RSASSA-PKCS1-v1_5', modulusLength: bits, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' };
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']) as webcrypto.CryptoKeyPair;
  return { keys, publicKey: KeyObject.from(keys.publicKey), privateKey: KeyObject.from(keys.privateKey) };
}

export interface ForgeOptions {
  subject?: string;
  issuer?: { cert: x509.X509Certificate; key: ForgedKey };
  key: ForgedKey;
  uris?: string[];
  sanCritical?: boolean;
  ca?: boolean;
  pathLength?: number;
  keyUsage?: number;
  eku?: string[];
  notBefore?: Date;
  notAfter?: Date;
  extra?: x509.Extension[];
}

export const KU = x509.KeyUsageFlags;

/** Signs a certificate as described; defaults give a conforming SPIFFE leaf (or CA with ca: true). */
export async function forgeCert(o: ForgeOptions): Promise<{ cert: x509.X509Certificate; der: Buffer }> {
  const subject = o.subject ?? (o.ca ? 'CN=forged CA' : 'CN=forged leaf');
  const exts: x509.Extension[] = [
    new x509.BasicConstraintsExtension(o.ca === true, o.pathLength, true),
    new x509.KeyUsagesExtension(o.keyUsage ?? (o.ca ? KU.keyCertSign | KU.cRLSign : KU.digitalSignature), true),
  ];
  if (o.eku !== undefined) exts.push(new x509.ExtendedKeyUsageExtension(o.eku, false));
  if (o.uris !== undefined && o.uris.length > 0) {
    exts.push(new x509.SubjectAlternativeNameExtension(o.uris.map((value) => ({ type: 'url' as const, value })), o.sanCritical ?? false));
  }
  exts.push(...(o.extra ?? []));
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: Buffer.from(webcrypto.getRandomValues(new Uint8Array(8))).toString('hex').replace(/^[89a-f]/, '1'),
    subject,
    issuer: o.issuer ? o.issuer.cert.subject : subject,
    notBefore: o.notBefore ?? new Date(now - 60_000),
    notAfter: o.notAfter ?? new Date(now + 3_600_000),
    signingAlgorithm: EC_P256,
    publicKey: o.key.keys.publicKey,
    signingKey: (o.issuer?.key ?? o.key).keys.privateKey,
    extensions: exts,
  });
  return { cert, der: Buffer.from(cert.rawData) };
}

/** A PKCS#10 CSR signed by `key`. */
export async function forgeCsr(key: ForgedKey): Promise<Buffer> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: 'CN=workload',
    keys: key.keys,
    signingAlgorithm: EC_P256,
  });
  return Buffer.from(csr.rawData);
}

export { x509 };
