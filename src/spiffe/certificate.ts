// A read-only view of one DER X.509 certificate: the raw byte ranges that signatures and name
// chaining need (sliced with the strict DER reader) plus the decoded extensions that path validation
// and the SPIFFE leaf rules look at (decoded with @peculiar/x509). Anything malformed is an
// X509SvidError('malformed-certificate'), never a raw exception.
// @peculiar/x509 loads tsyringe, which throws at import unless a Reflect metadata polyfill is present.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { children, content, DerError, oidToString, readWhole, slice, TAG, type Tlv } from './der.js';
import { X509SvidError } from './errors.js';
import { OID } from './oids.js';

/** Upper bound on a single certificate; SVIDs and CA certificates are a few hundred bytes. */
export const MAX_CERTIFICATE_BYTES = 64 * 1024;

export interface CertificateExtension {
  oid: string;
  critical: boolean;
  /** The extnValue OCTET STRING contents. */
  value: Buffer;
}

export interface CertificateView {
  der: Buffer;
  tbs: Buffer;
  signatureAlgorithm: string;
  signature: Buffer;
  serialHex: string;
  issuerName: Buffer;
  subjectName: Buffer;
  subjectEmpty: boolean;
  spki: Buffer;
  notBefore: Date;
  notAfter: Date;
  extensions: CertificateExtension[];
  basicConstraints?: { ca: boolean; pathLength?: number };
  /** KeyUsage bits, masks as in KEY_USAGE. */
  keyUsage?: number;
  extKeyUsage?: string[];
  subjectAltName?: { critical: boolean; uris: string[]; dnsNames: string[] };
  subjectKeyId?: Buffer;
}

export function parseCertificate(der: Buffer): CertificateView {
  if (!((der as unknown) instanceof Uint8Array)) {
    throw new X509SvidError('malformed-certificate', 'certificate must be DER bytes (Buffer)');
  }
  const buf = Buffer.isBuffer(der) ? der : Buffer.from(der);
  if (buf.length > MAX_CERTIFICATE_BYTES) {
    throw new X509SvidError('malformed-certificate', `certificate is ${buf.length} bytes, more than the ${MAX_CERTIFICATE_BYTES} allowed`);
  }
  try {
    return parseStrict(buf);
  } catch (e) {
    if (e instanceof X509SvidError) throw e;
    throw new X509SvidError('malformed-certificate', `malformed X.509 certificate: ${(e as Error).message}`, { cause: e });
  }
}

function parseStrict(der: Buffer): CertificateView {
  const top = readWhole(der, TAG.SEQUENCE, 'Certificate');
  const [tbsT, sigAlgT, sigT, ...extra] = children(der, top);
  if (tbsT === undefined || sigAlgT === undefined || sigT === undefined || extra.length > 0) {
    throw new DerError('Certificate must have exactly tbsCertificate, signatureAlgorithm, signature');
  }
  expectTag(tbsT, TAG.SEQUENCE, 'tbsCertificate');
  expectTag(sigAlgT, TAG.SEQUENCE, 'signatureAlgorithm');
  expectTag(sigT, TAG.BIT_STRING, 'signature');
  const sigBits = content(der, sigT);
  if (sigBits.length < 2 || sigBits[0] !== 0) throw new DerError('signature BIT STRING must have no unused bits');

  const f = children(der, tbsT);
  let i = 0;
  let version = 0;
  if (f[0]?.tag === 0xa0) {
    const v = children(der, f[0]);
    if (v.length !== 1 || v[0]?.tag !== TAG.INTEGER) throw new DerError('bad version');
    const ver = content(der, v[0]);
    if (ver.length !== 1 || (ver[0] as number) > 2) throw new DerError('unsupported certificate version');
    version = ver[0] as number;
    i = 1;
  }
  const [serialT, innerAlgT, issuerT, validityT, subjectT, spkiT, ...rest] = f.slice(i);
  if (!serialT || !innerAlgT || !issuerT || !validityT || !subjectT || !spkiT) throw new DerError('tbsCertificate is missing fields');
  expectTag(serialT, TAG.INTEGER, 'serialNumber');
  expectTag(innerAlgT, TAG.SEQUENCE, 'signature');
  expectTag(issuerT, TAG.SEQUENCE, 'issuer');
  expectTag(validityT, TAG.SEQUENCE, 'validity');
  expectTag(subjectT, TAG.SEQUENCE, 'subject');
  expectTag(spkiT, TAG.SEQUENCE, 'subjectPublicKeyInfo');
  if (!slice(der, innerAlgT).equals(slice(der, sigAlgT))) {
    throw new DerError('tbsCertificate.signature differs from signatureAlgorithm');
  }
  const algParts = children(der, sigAlgT);
  if (algParts[0]?.tag !== TAG.OID) throw new DerError('bad signature AlgorithmIdentifier');

  const [nbT, naT, ...vExtra] = children(der, validityT);
  if (!nbT || !naT || vExtra.length > 0) throw new DerError('validity must have notBefore and notAfter');

  let extensions: CertificateExtension[] = [];
  const extRaw: Buffer[] = [];
  for (const t of rest) {
    if (t.tag === 0x81 || t.tag === 0x82) continue; // issuerUniqueID / subjectUniqueID: unused
    if (t.tag !== 0xa3) throw new DerError(`unexpected element 0x${t.tag.toString(16)} in tbsCertificate`);
    if (version !== 2) throw new DerError('extensions require a v3 certificate');
    const [list, ...more] = children(der, t);
    if (!list || more.length > 0 || list.tag !== TAG.SEQUENCE) throw new DerError('bad extensions');
    extensions = children(der, list).map((e) => {
      extRaw.push(slice(der, e));
      return parseExtension(der, e);
    });
    if (extensions.length === 0) throw new DerError('extensions must not be empty when present');
  }

  const serial = content(der, serialT);
  if (serial.length === 0 || serial.length > 21) throw new DerError('serialNumber must be 1..20 octets');
  const view: CertificateView = {
    der,
    tbs: slice(der, tbsT),
    signatureAlgorithm: oidToString(content(der, algParts[0])),
    signature: sigBits.subarray(1),
    serialHex: (serial[0] === 0 && serial.length > 1 ? serial.subarray(1) : serial).toString('hex'),
    issuerName: slice(der, issuerT),
    subjectName: slice(der, subjectT),
    subjectEmpty: subjectT.end === subjectT.contentStart,
    spki: slice(der, spkiT),
    notBefore: parseTime(der, nbT),
    notAfter: parseTime(der, naT),
    extensions,
  };
  decodeKnownExtensions(view, extRaw);
  return view;
}

function parseExtension(der: Buffer, e: Tlv): CertificateExtension {
  const parts = children(der, e);
  const idT = parts[0];
  if (idT?.tag !== TAG.OID) throw new DerError('extension without extnID');
  let critical = false;
  let valT = parts[1];
  if (valT?.tag === TAG.BOOLEAN) {
    const b = content(der, valT);
    if (b.length !== 1 || (b[0] !== 0xff && b[0] !== 0x00)) throw new DerError('bad BOOLEAN in extension');
    // DER: DEFAULT FALSE must be omitted, so an explicit FALSE is not DER; tolerated as it is harmless.
    critical = b[0] === 0xff;
    valT = parts[2];
    if (parts.length !== 3) throw new DerError('bad extension');
  } else if (parts.length !== 2) {
    throw new DerError('bad extension');
  }
  if (valT?.tag !== TAG.OCTET_STRING) throw new DerError('extension without extnValue');
  return { oid: oidToString(content(der, idT)), critical, value: content(der, valT) };
}

function decodeKnownExtensions(view: CertificateView, raw: Buffer[]): void {
  const seen = new Set<string>();
  view.extensions.forEach((ext, idx) => {
    if (seen.has(ext.oid)) {
      throw new X509SvidError('duplicate-extension', `certificate has more than one ${ext.oid} extension (RFC 5280 4.2 forbids it)`);
    }
    seen.add(ext.oid);
    const r = raw[idx] as Buffer;
    switch (ext.oid) {
      case OID.basicConstraints: {
        const bc = new x509.BasicConstraintsExtension(r);
        view.basicConstraints = bc.pathLength === undefined ? { ca: bc.ca } : { ca: bc.ca, pathLength: bc.pathLength };
        break;
      }
      case OID.keyUsage:
        view.keyUsage = new x509.KeyUsagesExtension(r).usages as number;
        break;
      case OID.extKeyUsage:
        view.extKeyUsage = new x509.ExtendedKeyUsageExtension(r).usages.map(String);
        break;
      case OID.subjectAltName: {
        const san = new x509.SubjectAlternativeNameExtension(r);
        const items = san.names.items;
        view.subjectAltName = {
          critical: ext.critical,
          uris: items.filter((n) => n.type === 'url').map((n) => n.value),
          dnsNames: items.filter((n) => n.type === 'dns').map((n) => n.value),
        };
        break;
      }
      case OID.subjectKeyIdentifier:
        view.subjectKeyId = Buffer.from(new x509.SubjectKeyIdentifierExtension(r).keyId, 'hex');
        break;
      default:
        break;
    }
  });
}

function expectTag(t: Tlv, tag: number, what: string): void {
  if (t.tag !== tag) throw new DerError(`${what}: unexpected ASN.1 tag 0x${t.tag.toString(16)}`);
}

const UTC_TIME = /^(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/;
const GEN_TIME = /^(\d{4})(\d\d)(\d\d)(\d\d)(\d\d)(\d\d)Z$/;

/** RFC 5280 4.1.2.5 time: DER UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ). */
function parseTime(der: Buffer, t: Tlv): Date {
  const s = content(der, t).toString('latin1');
  let m: RegExpExecArray | null;
  let year: number;
  if (t.tag === TAG.UTC_TIME && (m = UTC_TIME.exec(s)) !== null) {
    const yy = Number(m[1]);
    year = yy >= 50 ? 1900 + yy : 2000 + yy;
  } else if (t.tag === TAG.GENERALIZED_TIME && (m = GEN_TIME.exec(s)) !== null) {
    year = Number(m[1]);
  } else {
    throw new DerError(`bad certificate time ${JSON.stringify(s.slice(0, 32))}`);
  }
  const [mo, d, h, mi, se] = [m[2], m[3], m[4], m[5], m[6]].map(Number) as [number, number, number, number, number];
  const date = new Date(Date.UTC(year, mo - 1, d, h, mi, se));
  if (date.getUTCMonth() !== mo - 1 || date.getUTCDate() !== d || h > 23 || mi > 59 || se > 59) {
    throw new DerError(`invalid calendar time ${JSON.stringify(s)}`);
  }
  return date;
}
