// CA certificates for the server's signing keys: self-signed roots, or intermediates signed by an
// upstream CA loaded from disk. Encoded with src/spiffe's certificate builder (the same DER code that
// mints SVIDs), signed with node:crypto.
import crypto, { type KeyObject } from 'node:crypto';
import {
  authorityKeyIdentifier, buildCertificate, encodeName, EXT, publicKeyInfo, randomSerial, subjectAltName,
  subjectKeyIdentifier,
} from '../../spiffe/cert-builder.js';
import { children, readTlv, slice } from '../../spiffe/der.js';
import { certSignerFor } from '../../spiffe/signer.js';

export interface CaSubject {
  commonName: string;
  organization?: string;
  country?: string;
}

export interface MintCaParams {
  trustDomain: string;
  subject: CaSubject;
  publicKey: KeyObject;
  notBefore: Date;
  notAfter: Date;
  /** Absent: self-signed with `selfKey`. */
  issuer?: { certificateDer: Buffer; privateKey: KeyObject };
  /** The private key matching publicKey, for self-signing. */
  selfKey: KeyObject;
}

/** A CA certificate (cA=true, keyCertSign+cRLSign, URI SAN spiffe://<td>), DER. */
export async function mintCaCertificateDer(p: MintCaParams): Promise<Buffer> {
  const serial = randomSerial();
  const info = publicKeyInfo(p.publicKey);
  // A short serial in the CN keeps successive CA certificates distinguishable in logs and chains.
  const subjectName = encodeName({ ...p.subject, commonName: `${p.subject.commonName} ${serial.subarray(0, 4).toString('hex')}` });
  const extensions = [
    EXT.caBasicConstraints,
    EXT.caKeyUsage,
    subjectKeyIdentifier(info.keyId),
    subjectAltName([`spiffe://${p.trustDomain}`], [], false),
  ];
  let issuerName = subjectName;
  if (p.issuer) {
    issuerName = subjectNameOf(p.issuer.certificateDer);
    extensions.push(authorityKeyIdentifier(publicKeyInfo(p.issuer.privateKey).keyId));
  } else {
    extensions.push(authorityKeyIdentifier(info.keyId));
  }
  return buildCertificate({
    serial, issuerName, subjectName, notBefore: p.notBefore, notAfter: p.notAfter, spki: info.spki, extensions,
  }, certSignerFor(p.issuer?.privateKey ?? p.selfKey));
}

/** The DER subject Name of a certificate (TBSCertificate field 6, after the optional version). */
export function subjectNameOf(certDer: Buffer): Buffer {
  const tbs = children(certDer, readTlv(certDer, 0))[0];
  const fields = tbs ? children(certDer, tbs) : [];
  const hasVersion = fields[0]?.tag === 0xa0;
  const subject = fields[hasVersion ? 5 : 4];
  if (!subject) throw new Error('upstream CA certificate: cannot read its subject name');
  return slice(certDer, subject);
}

export interface LoadedUpstream {
  certificateDer: Buffer;
  privateKey: KeyObject;
  notAfter: Date;
  /** Roots to publish: the bundle file's certificates, or the upstream certificate. */
  rootsDer: Buffer[];
  /** Certificates between our CA and a published root (the upstream cert unless it is itself a root we publish). */
  chainDer: Buffer[];
}

function readPemOrDer(text: Buffer): Buffer[] {
  const s = text.toString('latin1');
  if (!s.includes('-----BEGIN')) return [text];
  const out: Buffer[] = [];
  for (const m of s.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)) {
    out.push(Buffer.from((m[1] as string).replace(/\s+/g, ''), 'base64'));
  }
  return out;
}

/** Parses certificate files (PEM with one or more certificates, or a single DER). */
export function parseCertificates(data: Buffer, what: string): Buffer[] {
  const ders = readPemOrDer(data);
  if (ders.length === 0) throw new Error(`${what}: no certificate found`);
  for (const der of ders) {
    try {
      new crypto.X509Certificate(der);
    } catch (err) {
      throw new Error(`${what}: not a valid X.509 certificate (${(err as Error).message})`, { cause: err });
    }
  }
  return ders;
}

/**
 * Checks an upstream CA loaded from disk: a CA certificate whose key matches the private key,
 * and which is still valid. `certFile` may hold the upstream certificate followed by its own chain.
 */
export function loadUpstream(certPem: Buffer, keyPem: Buffer, bundlePem: Buffer | undefined, now: Date): LoadedUpstream {
  const certs = parseCertificates(certPem, 'ca.upstream.certFile');
  const certificateDer = certs[0] as Buffer;
  const cert = new crypto.X509Certificate(certificateDer);
  if (!cert.ca) throw new Error('ca.upstream.certFile: the certificate is not a CA (basicConstraints cA=false)');
  let privateKey: KeyObject;
  try {
    privateKey = crypto.createPrivateKey(keyPem);
  } catch (err) {
    throw new Error(`ca.upstream.keyFile: not a readable private key (${(err as Error).message})`, { cause: err });
  }
  if (!cert.checkPrivateKey(privateKey)) throw new Error('ca.upstream.keyFile does not match the public key of ca.upstream.certFile');
  const notAfter = new Date(cert.validTo);
  if (notAfter <= now) throw new Error(`ca.upstream.certFile expired at ${notAfter.toISOString()}`);
  const rootsDer = bundlePem ? parseCertificates(bundlePem, 'ca.upstream.bundleFile') : [certs[certs.length - 1] as Buffer];
  const isPublished = (der: Buffer): boolean => rootsDer.some((r) => r.equals(der));
  // Chain our CA up to (not including) a published root.
  const chainDer: Buffer[] = [];
  for (const c of certs) {
    if (isPublished(c)) break;
    chainDer.push(c);
  }
  return { certificateDer, privateKey, notAfter, rootsDer, chainDer };
}
