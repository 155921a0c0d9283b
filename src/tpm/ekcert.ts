import crypto, { X509Certificate, type KeyObject } from 'node:crypto';
import { TpmEkCertificateError } from './errors.js';
import { children, content, decodeOid, encodeOid, encodeTlv, readTlv, whole, type Tlv } from './der.js';
import { spkiDer, type TpmPublic } from './public.js';

export interface EkCertificateInfo {
  /** TPM manufacturer from the SAN directoryName (2.23.133.2.1), e.g. "id:00001014". */
  manufacturer: string;
  /** TPM model (2.23.133.2.2). */
  model: string;
  /** TPM firmware version (2.23.133.2.3), e.g. "id:20191023". */
  version: string;
  /** The EK public key. */
  publicKey: KeyObject;
  /** SubjectPublicKeyInfo DER of the EK (RSAES-OAEP keys normalised to rsaEncryption). */
  spki: Buffer;
  /** Hex SHA-256 of `spki`: the same value as ekHash() of the EK's TPM2B_PUBLIC. */
  ekHash: string;
  serialNumber: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  /** DER of each certificate from the EK certificate up to the trusted manufacturer CA. */
  chain: Buffer[];
}

export interface VerifyEkCertificateOptions {
  intermediatesDer?: Buffer[];
  now?: Date;
}

const OID = {
  subjectDirectoryAttributes: '2.5.29.9',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  certificatePolicies: '2.5.29.32',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  tpmManufacturer: '2.23.133.2.1',
  tpmModel: '2.23.133.2.2',
  tpmVersion: '2.23.133.2.3',
  rsaEncryption: '1.2.840.113549.1.1.1',
  rsaesOaep: '1.2.840.113549.1.1.7',
} as const;

/**
 * Critical extensions this module processes, so may accept. EK certificates mark the SAN critical
 * (their subject is empty and the TPM identity lives in a directoryName), which generic X.509
 * validators reject as "unhandled"; here it is handled, by reading it. certificatePolicies is
 * accepted because no policy OID is required of EK certificates. Any other critical extension
 * (name constraints, policy constraints, ...) is refused: we would have to enforce it and do not.
 */
const HANDLED_CRITICAL = new Set<string>([
  OID.keyUsage, OID.basicConstraints, OID.subjectAltName, OID.extKeyUsage, OID.certificatePolicies,
  OID.subjectDirectoryAttributes, OID.authorityKeyIdentifier, OID.subjectKeyIdentifier,
]);

interface Extension { oid: string; critical: boolean; value: Buffer }

interface ParsedCert {
  der: Buffer;
  x509: X509Certificate;
  extensions: Extension[];
  spki: Buffer;
  /** The SPKI was re-labelled from id-RSAES-OAEP (so `x509.publicKey` cannot be used). */
  relabelled: boolean;
}

function parseCert(der: Buffer, role: string): ParsedCert {
  // The strict DER walk first: it is cheap and rejects most malformed input before OpenSSL sees it.
  const { extensions, spki, relabelled } = parseStructure(der, role);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(der);
  } catch (err) {
    throw new TpmEkCertificateError('malformed-certificate', `${role}: not a DER X.509 certificate: ${(err as Error).message}`, { cause: err });
  }
  return { der, x509, extensions, spki, relabelled };
}

function parseStructure(der: Buffer, role: string): { extensions: Extension[]; spki: Buffer; relabelled: boolean } {
  try {
    const cert = readTlv(der, 0);
    if (cert.end !== der.length) throw new TpmEkCertificateError('malformed-certificate', 'trailing bytes after the certificate');
    const [tbs] = children(der, cert);
    if (tbs === undefined) throw new TpmEkCertificateError('malformed-certificate', 'no tbsCertificate');
    const fields = children(der, tbs);
    let i = fields[0]?.tag === 0xa0 ? 1 : 0;
    i += 5; // serialNumber, signature, issuer, validity, subject
    const spkiTlv = fields[i];
    if (spkiTlv === undefined || spkiTlv.tag !== 0x30) throw new TpmEkCertificateError('malformed-certificate', 'no subjectPublicKeyInfo');
    const extensions: Extension[] = [];
    const extWrap = fields.find((f) => f.tag === 0xa3);
    if (extWrap !== undefined) {
      const [seq] = children(der, extWrap);
      if (seq === undefined) throw new TpmEkCertificateError('malformed-certificate', 'empty extensions');
      for (const ext of children(der, seq)) {
        const parts = children(der, ext);
        const oid = parts[0];
        const last = parts[parts.length - 1];
        if (oid?.tag !== 0x06 || last?.tag !== 0x04 || parts.length > 3) throw new TpmEkCertificateError('malformed-certificate', 'malformed extension');
        const critical = parts.length === 3 && parts[1]?.tag === 0x01 && der[parts[1].contentStart] !== 0;
        extensions.push({ oid: decodeOid(content(der, oid)), critical, value: content(der, last) });
      }
    }
    const raw = whole(der, spkiTlv);
    const spki = normaliseSpki(raw);
    return { extensions, spki, relabelled: spki !== raw };
  } catch (err) {
    if (err instanceof TpmEkCertificateError) {
      throw new TpmEkCertificateError(err.code, `${role}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

/** CA bundles are passed again and again (one per attestation): parse each buffer once. */
const parsedCas = new WeakMap<Buffer, ParsedCert>();

function parseCached(der: Buffer, role: string): ParsedCert {
  let c = parsedCas.get(der);
  if (c === undefined || !c.der.equals(der)) {
    c = parseCert(der, role);
    parsedCas.set(der, c);
  }
  return c;
}

/**
 * Some RSA EK certificates carry the key under id-RSAES-OAEP instead of rsaEncryption, which Node
 * cannot import; the key material is the same RSAPublicKey, so re-label it.
 */
function normaliseSpki(spki: Buffer): Buffer {
  const top = readTlv(spki, 0);
  const [algId, bits] = children(spki, top);
  if (algId === undefined || bits === undefined) throw new TpmEkCertificateError('malformed-certificate', 'malformed subjectPublicKeyInfo');
  const [oid] = children(spki, algId);
  if (oid?.tag !== 0x06 || decodeOid(content(spki, oid)) !== OID.rsaesOaep) return spki;
  const rsaAlg = encodeTlv(0x30, Buffer.concat([encodeTlv(0x06, encodeOid(OID.rsaEncryption)), Buffer.from([0x05, 0x00])]));
  return encodeTlv(0x30, Buffer.concat([rsaAlg, whole(spki, bits)]));
}

function isCa(c: ParsedCert): boolean {
  const bc = c.extensions.find((e) => e.oid === OID.basicConstraints);
  if (bc === undefined) return false;
  const seq = readTlv(bc.value, 0);
  const [first] = children(bc.value, seq);
  return first?.tag === 0x01 && bc.value[first.contentStart] !== 0;
}

function allowsCertSign(c: ParsedCert): boolean {
  const ku = c.extensions.find((e) => e.oid === OID.keyUsage);
  if (ku === undefined) return true;
  const bits = readTlv(ku.value, 0);
  // BIT STRING: first content byte is the unused-bit count; keyCertSign is bit 5 of the first byte.
  const first = ku.value[bits.contentStart + 1] ?? 0;
  return (first & 0x04) !== 0;
}

function checkCriticalExtensions(c: ParsedCert, role: string): void {
  for (const e of c.extensions) {
    if (e.critical && !HANDLED_CRITICAL.has(e.oid)) {
      throw new TpmEkCertificateError('unhandled-critical-extension', `${role}: critical extension ${e.oid} is not understood, so the certificate cannot be accepted`);
    }
  }
}

function validity(c: ParsedCert, role: string): { from: Date; to: Date } {
  const from = new Date(c.x509.validFrom);
  const to = new Date(c.x509.validTo);
  if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime())) {
    throw new TpmEkCertificateError('malformed-certificate', `${role}: unreadable validity period ("${c.x509.validFrom}" .. "${c.x509.validTo}")`);
  }
  return { from, to };
}

function checkValidity(c: ParsedCert, now: Date, role: string): void {
  const { from, to } = validity(c, role);
  if (!(now >= from && now <= to)) {
    throw new TpmEkCertificateError('expired', `${role} (${c.x509.subject || c.x509.serialNumber}) is not valid at ${now.toISOString()} (valid ${from.toISOString()} .. ${to.toISOString()})`);
  }
}

/**
 * The TPM manufacturer, model and version from an EK certificate's SAN, WITHOUT validating it
 * (pure TypeScript; for logs and diagnostics about certificates that verifyEkCertificate rejected).
 */
export function ekCertificateIdentity(certDer: Buffer): { manufacturer: string; model: string; version: string } {
  return tpmIdentity(parseStructure(certDer, 'EK certificate'));
}

/** The TPM manufacturer, model and version attributes from the SAN directoryName. */
function tpmIdentity(c: { extensions: Extension[] }): { manufacturer: string; model: string; version: string } {
  const san = c.extensions.find((e) => e.oid === OID.subjectAltName);
  const found: Record<string, string> = {};
  if (san !== undefined) {
    const names = readTlv(san.value, 0);
    for (const gn of children(san.value, names)) {
      if (gn.tag !== 0xa4) continue; // directoryName [4]
      for (const rdnSeq of children(san.value, gn)) {
        for (const rdn of children(san.value, rdnSeq)) {
          for (const atv of children(san.value, rdn)) collectAttribute(san.value, atv, found);
        }
      }
    }
  }
  const manufacturer = found[OID.tpmManufacturer];
  const model = found[OID.tpmModel];
  const version = found[OID.tpmVersion];
  if (manufacturer === undefined || model === undefined || version === undefined) {
    throw new TpmEkCertificateError('missing-tpm-identity', 'EK certificate: the subjectAltName has no directoryName with TPM manufacturer, model and version (2.23.133.2.1/2/3)');
  }
  return { manufacturer, model, version };
}

function collectAttribute(buf: Buffer, atv: Tlv, found: Record<string, string>): void {
  const [oid, value] = children(buf, atv);
  if (oid?.tag !== 0x06 || value === undefined) return;
  // UTF8String, PrintableString, IA5String are what EK certificates use.
  if (value.tag !== 0x0c && value.tag !== 0x13 && value.tag !== 0x16) return;
  found[decodeOid(content(buf, oid))] = content(buf, value).toString('utf8');
}

/**
 * Validates an EK certificate against a manufacturer CA bundle: a signature chain from the EK
 * certificate through optional intermediates to one of `manufacturerCasDer`, each certificate
 * within its validity period, every issuer a CA allowed to sign certificates, and no critical
 * extension left unprocessed. Returns the TPM identity from the SAN and the EK public key.
 * Throws TpmEkCertificateError (codes: malformed-certificate, untrusted, expired, not-a-ca,
 * unhandled-critical-extension, missing-tpm-identity).
 */
export function verifyEkCertificate(certDer: Buffer, manufacturerCasDer: Buffer[], opts: VerifyEkCertificateOptions = {}): EkCertificateInfo {
  const now = opts.now ?? new Date();
  const leaf = parseCert(certDer, 'EK certificate');
  const anchors = manufacturerCasDer.map((d, i) => parseCached(d, `manufacturer CA #${i}`));
  // Agent-supplied: their keys are bounded before any of them is used to check a signature.
  const intermediates = (opts.intermediatesDer ?? []).map((d, i) => {
    const c = parseCached(d, `intermediate #${i}`);
    checkIssuerKey(c, `intermediate #${i}`);
    return c;
  });
  if (anchors.length === 0) throw new TpmEkCertificateError('untrusted', 'no manufacturer CA certificates configured: cannot validate any EK certificate');

  checkCriticalExtensions(leaf, 'EK certificate');
  if (isCa(leaf)) throw new TpmEkCertificateError('not-an-ek', 'EK certificate: it is a CA certificate, not an end-entity EK certificate');
  checkValidity(leaf, now, 'EK certificate');
  const identity = tpmIdentity(leaf);

  const chain: ParsedCert[] = [leaf];
  let current = leaf;
  for (let depth = 0; depth < 8; depth++) {
    const issuedBy = (c: ParsedCert): boolean => {
      if (!current.x509.checkIssued(c.x509)) return false;
      try { return current.x509.verify(c.x509.publicKey); } catch { return false; }
    };
    const anchor = anchors.find(issuedBy);
    if (anchor !== undefined) {
      checkIssuer(anchor, now, 'manufacturer CA');
      chain.push(anchor);
      return finish(leaf, identity, chain);
    }
    const next = intermediates.find((c) => !chain.includes(c) && issuedBy(c));
    if (next === undefined) break;
    checkIssuer(next, now, 'intermediate CA');
    chain.push(next);
    current = next;
  }
  throw new TpmEkCertificateError('untrusted', `EK certificate: no chain to a configured manufacturer CA (issuer "${current.x509.issuer.replace(/\n/g, ', ')}" not found or its signature does not verify)`);
}

/** EC curves an intermediate CA key may use (those TPM manufacturers use). */
const ISSUER_CURVES = new Set(['prime256v1', 'secp384r1', 'secp521r1']);
const MAX_ISSUER_RSA_BITS = 4096;

/**
 * Refuses an issuer key whose signature check an attacker could make expensive: RSA above 4096 bits
 * (a 16384-bit key costs ~5 ms per check) or with an exponent other than 65537, unknown curves.
 */
function checkIssuerKey(c: ParsedCert, role: string): void {
  let d: crypto.AsymmetricKeyDetails;
  let type: string | undefined;
  try {
    const k = c.x509.publicKey;
    type = k.asymmetricKeyType;
    d = k.asymmetricKeyDetails ?? {};
  } catch (err) {
    throw new TpmEkCertificateError('malformed-certificate', `${role}: unusable public key: ${(err as Error).message}`, { cause: err });
  }
  if (type === 'rsa') {
    if ((d.modulusLength ?? 0) > MAX_ISSUER_RSA_BITS) {
      throw new TpmEkCertificateError('untrusted', `${role}: RSA key of ${d.modulusLength} bits; issuer keys above ${MAX_ISSUER_RSA_BITS} bits are refused`);
    }
    if (d.publicExponent !== 65537n) throw new TpmEkCertificateError('untrusted', `${role}: RSA public exponent ${String(d.publicExponent)}; only 65537 is accepted`);
    return;
  }
  if (type === 'ec' && d.namedCurve !== undefined && ISSUER_CURVES.has(d.namedCurve)) return;
  throw new TpmEkCertificateError('untrusted', `${role}: ${type ?? 'unknown'} key${d.namedCurve ? ` on ${d.namedCurve}` : ''} is not an accepted issuer key (RSA ≤ ${MAX_ISSUER_RSA_BITS} bits, P-256, P-384, P-521)`);
}

function checkIssuer(c: ParsedCert, now: Date, role: string): void {
  checkCriticalExtensions(c, role);
  if (!isCa(c) || !allowsCertSign(c)) throw new TpmEkCertificateError('not-a-ca', `${role} "${c.x509.subject.replace(/\n/g, ', ')}" is not a CA allowed to sign certificates`);
  checkValidity(c, now, role);
}

function finish(leaf: ParsedCert, identity: { manufacturer: string; model: string; version: string }, chain: ParsedCert[]): EkCertificateInfo {
  let publicKey: KeyObject;
  try {
    // The key OpenSSL already decoded with the certificate; decoding the SPKI DER again costs about
    // 0.1 ms for RSA. A re-labelled OAEP key exists only as the normalised DER.
    publicKey = leaf.relabelled ? crypto.createPublicKey({ key: leaf.spki, format: 'der', type: 'spki' }) : leaf.x509.publicKey;
  } catch (err) {
    throw new TpmEkCertificateError('malformed-certificate', `EK certificate: unusable public key: ${(err as Error).message}`, { cause: err });
  }
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  return {
    ...identity,
    publicKey,
    spki,
    ekHash: crypto.createHash('sha256').update(spki).digest('hex'),
    serialNumber: leaf.x509.serialNumber,
    issuer: leaf.x509.issuer,
    notBefore: validity(leaf, 'EK certificate').from,
    notAfter: validity(leaf, 'EK certificate').to,
    chain: chain.map((c) => c.der),
  };
}

/**
 * True when the certificate certifies exactly the key in `ekPublic`. Pass the EkCertificateInfo
 * verifyEkCertificate returned when there is one: it holds the certificate's key already decoded
 * and normalised, so the certificate is not parsed a second time.
 */
export function ekPublicMatchesCertificate(ekPublic: TpmPublic, cert: Buffer | EkCertificateInfo): boolean {
  if (!Buffer.isBuffer(cert)) {
    const mine = spkiDer(ekPublic);
    return mine.length === cert.spki.length && crypto.timingSafeEqual(mine, cert.spki);
  }
  return matchesCertificateDer(ekPublic, cert);
}

function matchesCertificateDer(ekPublic: TpmPublic, certDer: Buffer): boolean {
  const cert = parseCert(certDer, 'EK certificate');
  let certSpki: Buffer;
  try {
    certSpki = crypto.createPublicKey({ key: cert.spki, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'der' });
  } catch {
    return false;
  }
  const mine = spkiDer(ekPublic);
  return mine.length === certSpki.length && crypto.timingSafeEqual(mine, certSpki);
}
