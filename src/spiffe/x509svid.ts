// X.509-SVIDs: minting leaf SVIDs and SPIFFE signing (CA) certificates from the spec templates, and
// verifying an SVID chain against the bundle of the SVID's own trust domain.
//
// Minting is synchronous and byte-template based (cert-builder.ts): per issuer and per key the
// expensive work (parsing the CA certificate, exporting SPKIs, resolving the signature algorithm) is
// done once and cached in WeakMaps, so a mint costs little more than the signature itself.
import crypto, { type KeyObject } from 'node:crypto';
import type { X509BundleSource } from './bundle.js';
import {
  authorityKeyIdentifier, buildCertificate, EMPTY_NAME, encodeName, EXT, extension, keyIdFromSpki, publicKeyInfo,
  randomSerial, subjectAltName, subjectKeyIdentifier, type NameFields,
} from './cert-builder.js';
import { parseCertificate, type CertificateView } from './certificate.js';
import { checkSvidKey, CsrPublicKey } from './csr.js';
import { bool, ctxPrimitive, isOidString, readTlv, seq, smallInt } from './der.js';
import { SpiffeIdError, X509SvidError } from './errors.js';
import { SpiffeId, TrustDomain } from './id.js';
import { KEY_USAGE, OID } from './oids.js';
import { validateCertificatePath, MAX_CHAIN_LENGTH } from './path-validation.js';
import { derToPem } from './pem.js';
import { certSignerFor, UnsupportedKeyError, type CertSigner } from './signer.js';
import { verifyX509Signature } from './signature.js';

export { X509SvidError } from './errors.js';
export { publicKeyFromCsr, verifyCsr, CsrPublicKey } from './csr.js';

/** A CA that signs certificates: its certificate, its private key and the intermediates above it. */
export interface X509Authority {
  certificateDer: Buffer;
  privateKey: KeyObject;
  /** Intermediates from the issuer's parent up to, not including, the root. */
  chainDer?: Buffer[];
}

export interface MintedCertificate {
  der: Buffer;
  pem: string;
  serialHex: string;
  notAfter: Date;
  /**
   * What to present to peers (and hand out through the Workload API): this certificate, then the
   * issuer's certificate unless it is a self-signed root, then the issuer's chainDer.
   */
  chainDer: Buffer[];
}

/** An extra X.509 extension; `value` is the DER that goes inside extnValue's OCTET STRING. */
export interface ExtraExtension {
  oid: string;
  critical: boolean;
  value: Buffer;
}

export interface MintX509SvidOptions {
  id: SpiffeId;
  /** The SVID's key; a CsrPublicKey (from verifyCsr) goes into the certificate without being decoded. */
  publicKey: KeyObject | CsrPublicKey;
  issuer: X509Authority;
  ttlSeconds: number;
  now?: Date;
  dnsNames?: string[];
  extraExtensions?: ExtraExtension[];
  /** Serial number magnitude (1..20 bytes, not all zero); random 128 bits when absent. */
  serial?: Buffer;
  /** Subject DN; empty by default, in which case the URI SAN is marked critical (RFC 5280 4.2.1.6). */
  subject?: NameFields;
}

export interface MintCaCertificateOptions {
  trustDomain: TrustDomain;
  publicKey: KeyObject;
  /** Signing CA; when absent the certificate is self-signed with `selfSignKey`. */
  issuer?: X509Authority;
  selfSignKey?: KeyObject;
  ttlSeconds: number;
  now?: Date;
  subject?: NameFields;
  /** basicConstraints pathLenConstraint; unlimited when absent. */
  pathLength?: number;
}

/** NotBefore is backdated (as SPIRE does) so a peer whose clock is slightly behind accepts a fresh SVID. */
export const NOT_BEFORE_BACKDATE_SECONDS = 10;

const BUILTIN_EXTENSIONS = new Set<string>([
  OID.keyUsage, OID.basicConstraints, OID.extKeyUsage, OID.subjectKeyIdentifier, OID.authorityKeyIdentifier, OID.subjectAltName,
]);
const DNS_NAME = /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

interface IssuerInfo {
  name: Buffer;
  akiExtension: Buffer;
  notBefore: Date;
  notAfter: Date;
  signer: CertSigner;
  /** Trust domain of the issuer's SPIFFE URI SAN, when it has one (upstream roots may not). */
  trustDomain?: string;
  chainDer: Buffer[];
  /** Certificates that follow a certificate this issuer signs: itself unless self-signed, then its chain. */
  presentedChain: Buffer[];
}

const issuerCache = new WeakMap<Buffer, WeakMap<KeyObject, IssuerInfo>>();

function issuerInfo(auth: X509Authority): IssuerInfo {
  if (auth === null || typeof auth !== 'object' || !Buffer.isBuffer(auth.certificateDer) || !(auth.privateKey instanceof crypto.KeyObject)) {
    throw new X509SvidError('invalid-argument', 'issuer must be { certificateDer: Buffer, privateKey: KeyObject }');
  }
  let byKey = issuerCache.get(auth.certificateDer);
  const cached = byKey?.get(auth.privateKey);
  if (cached !== undefined && sameChain(cached.chainDer, auth.chainDer)) return cached;
  const view = parseCertificate(auth.certificateDer);
  if (view.basicConstraints?.ca !== true) {
    throw new X509SvidError('invalid-argument', 'issuer certificate is not a CA (basicConstraints cA is not true)');
  }
  if (view.keyUsage !== undefined && (view.keyUsage & KEY_USAGE.keyCertSign) === 0) {
    throw new X509SvidError('invalid-argument', 'issuer certificate KeyUsage lacks keyCertSign');
  }
  const signer = signerFor(auth.privateKey);
  if (!publicKeyInfo(auth.privateKey).spki.equals(view.spki)) {
    throw new X509SvidError('invalid-argument', 'issuer private key does not match the issuer certificate public key');
  }
  let trustDomain: string | undefined;
  const spiffeUris = (view.subjectAltName?.uris ?? []).filter((u) => u.toLowerCase().startsWith('spiffe:'));
  if (spiffeUris.length > 1) throw new X509SvidError('invalid-argument', 'issuer certificate has more than one SPIFFE ID');
  if (spiffeUris.length === 1) {
    try {
      trustDomain = SpiffeId.parse(spiffeUris[0] as string).trustDomain.name;
    } catch (e) {
      throw new X509SvidError('invalid-argument', `issuer certificate carries an invalid SPIFFE ID: ${(e as Error).message}`, { cause: e });
    }
  }
  const info: IssuerInfo = {
    name: view.subjectName,
    akiExtension: authorityKeyIdentifier(view.subjectKeyId ?? keyIdFromSpki(view.spki)),
    notBefore: view.notBefore,
    notAfter: view.notAfter,
    signer,
    ...(trustDomain !== undefined ? { trustDomain } : {}),
    chainDer: (auth.chainDer ?? []).map((d) => Buffer.from(d)),
    presentedChain: [],
  };
  // Self-signed: a root, which peers already hold in their bundle and which is not presented.
  const selfSigned = view.issuerName.equals(view.subjectName) &&
    verifyX509Signature(view.signatureAlgorithm, view.tbs, view.signature, view.spki);
  info.presentedChain = selfSigned ? [] : [Buffer.from(auth.certificateDer), ...info.chainDer];
  if (byKey === undefined) {
    byKey = new WeakMap();
    issuerCache.set(auth.certificateDer, byKey);
  }
  byKey.set(auth.privateKey, info);
  return info;
}

function sameChain(a: Buffer[], b: Buffer[] | undefined): boolean {
  const bb = b ?? [];
  return a.length === bb.length && a.every((d, i) => d.equals(bb[i] as Buffer));
}

function signerFor(key: KeyObject): CertSigner {
  try {
    return certSignerFor(key);
  } catch (e) {
    if (e instanceof UnsupportedKeyError) throw new X509SvidError('unsupported-key', e.message, { cause: e });
    throw e;
  }
}

function subjectKeyInfo(key: KeyObject | CsrPublicKey): { spki: Buffer; keyId: Buffer } {
  // Already checked by verifyCsr (key type included); its SPKI is the CSR's own bytes.
  if (key instanceof CsrPublicKey) return { spki: key.spki, keyId: keyIdFromSpki(key.spki) };
  if (!(key instanceof crypto.KeyObject) || key.type === 'secret') {
    throw new X509SvidError('invalid-argument', 'publicKey must be an asymmetric KeyObject');
  }
  const info = publicKeyInfo(key);
  if (!checkedKeys.has(info)) {
    checkSvidKey(key);
    checkedKeys.add(info);
  }
  return info;
}
const checkedKeys = new WeakSet<object>();

/** Validity window: now (whole seconds) minus the backdate, to now + ttl, never outside the issuer's. */
function validity(ttlSeconds: number, now: Date | undefined, issuer: { notBefore: Date; notAfter: Date } | undefined): [Date, Date] {
  if (typeof ttlSeconds !== 'number' || !Number.isFinite(ttlSeconds) || ttlSeconds <= 0) {
    throw new X509SvidError('invalid-argument', `ttlSeconds must be a positive number, got ${String(ttlSeconds)}`);
  }
  const t = now ?? new Date();
  if (!(t instanceof Date) || Number.isNaN(t.getTime())) throw new X509SvidError('invalid-argument', 'now must be a valid Date');
  const nowMs = Math.floor(t.getTime() / 1000) * 1000;
  let notBefore = nowMs - NOT_BEFORE_BACKDATE_SECONDS * 1000;
  let notAfter = nowMs + Math.floor(ttlSeconds) * 1000;
  if (issuer !== undefined) {
    if (issuer.notAfter.getTime() <= nowMs) {
      throw new X509SvidError('invalid-argument', `issuer certificate expired at ${issuer.notAfter.toISOString()}`);
    }
    notBefore = Math.max(notBefore, issuer.notBefore.getTime());
    notAfter = Math.min(notAfter, issuer.notAfter.getTime());
  }
  if (notAfter <= nowMs) throw new X509SvidError('invalid-argument', 'ttlSeconds is shorter than one second');
  return [new Date(notBefore), new Date(notAfter)];
}

function serialBytes(serial: Buffer | undefined): Buffer {
  if (serial === undefined) return randomSerial();
  if (!Buffer.isBuffer(serial) || serial.length === 0 || serial.length > 20 || serial.every((b) => b === 0)) {
    throw new X509SvidError('invalid-argument', 'serial must be 1..20 bytes and not zero');
  }
  return serial;
}

function encodeSubject(subject: NameFields | undefined): Buffer {
  if (subject === undefined) return EMPTY_NAME;
  if (subject.country !== undefined && !/^[A-Z]{2}$/.test(subject.country)) {
    throw new X509SvidError('invalid-argument', 'subject.country must be a two-letter upper-case ISO 3166 code');
  }
  return encodeName(subject);
}

function extraExtensionsDer(extra: ExtraExtension[] | undefined): Buffer[] {
  if (extra === undefined || extra.length === 0) return [];
  const seen = new Set<string>();
  return extra.map((e) => {
    if (e === null || typeof e !== 'object' || typeof e.oid !== 'string' || !isOidString(e.oid)) {
      throw new X509SvidError('invalid-argument', `extra extension has an invalid OID ${JSON.stringify(e?.oid)}`);
    }
    if (BUILTIN_EXTENSIONS.has(e.oid) || seen.has(e.oid)) {
      throw new X509SvidError('invalid-argument', `extension ${e.oid} is already present (built-in or listed twice)`);
    }
    seen.add(e.oid);
    if (!Buffer.isBuffer(e.value) || e.value.length === 0) throw new X509SvidError('invalid-argument', `extension ${e.oid}: value must be DER bytes`);
    let whole: boolean;
    try {
      whole = readTlv(e.value, 0).end === e.value.length;
    } catch {
      whole = false;
    }
    if (!whole) throw new X509SvidError('invalid-argument', `extension ${e.oid}: value is not exactly one DER element`);
    return extension(e.oid, e.critical === true, e.value);
  });
}

function finish(der: Buffer, serial: Buffer, notAfter: Date, following: Buffer[]): MintedCertificate {
  const hex = serial.toString('hex').replace(/^(00)+(?=..)/, '');
  // PEM on demand: the agent API sends DER, and base64 of every SVID is measurable at batch rates.
  let pem: string | undefined;
  return {
    der, serialHex: hex, notAfter, chainDer: [der, ...following],
    get pem(): string {
      pem ??= derToPem(der);
      return pem;
    },
  };
}

/**
 * Mints a leaf X.509-SVID for `id` and `publicKey`, signed by `issuer`: one URI SAN, KeyUsage
 * critical digitalSignature, EKU serverAuth+clientAuth, basicConstraints cA=false (critical),
 * SKI/AKI, NotBefore backdated, NotAfter clamped to the issuer's. Synchronous.
 */
export function mintX509Svid(opts: MintX509SvidOptions): MintedCertificate {
  if (!(opts?.id instanceof SpiffeId)) throw new X509SvidError('invalid-argument', 'id must be a SpiffeId');
  if (opts.id.path === '') {
    throw new X509SvidError('root-path-id', `leaf X.509-SVIDs need a SPIFFE ID with a path; ${opts.id.toString()} names the trust domain itself`);
  }
  const issuer = issuerInfo(opts.issuer);
  if (issuer.trustDomain !== undefined && issuer.trustDomain !== opts.id.trustDomain.name) {
    throw new X509SvidError('invalid-argument', `issuer belongs to trust domain "${issuer.trustDomain}", cannot sign ${opts.id.toString()}`);
  }
  const key = subjectKeyInfo(opts.publicKey);
  const [notBefore, notAfter] = validity(opts.ttlSeconds, opts.now, issuer);
  const dnsNames = opts.dnsNames ?? [];
  for (const d of dnsNames) {
    if (typeof d !== 'string' || d.length > 253 || !DNS_NAME.test(d)) throw new X509SvidError('invalid-argument', `invalid DNS name ${JSON.stringify(d)}`);
  }
  const subjectName = encodeSubject(opts.subject);
  const serial = serialBytes(opts.serial);
  const der = buildCertificate({
    serial,
    issuerName: issuer.name,
    notBefore,
    notAfter,
    subjectName,
    spki: key.spki,
    extensions: [
      EXT.leafKeyUsage,
      EXT.leafBasicConstraints,
      EXT.serverClientAuth,
      subjectKeyIdentifier(key.keyId),
      issuer.akiExtension,
      subjectAltName([opts.id.toString()], dnsNames, subjectName.length === EMPTY_NAME.length),
      ...extraExtensionsDer(opts.extraExtensions),
    ],
  }, issuer.signer);
  return finish(der, serial, notAfter, issuer.presentedChain);
}

/**
 * Mints a SPIFFE signing certificate for `trustDomain`: cA=true (critical), KeyUsage critical
 * keyCertSign+cRLSign, URI SAN spiffe://<td>. Self-signed with `selfSignKey` when no issuer is given.
 */
export function mintCaCertificate(opts: MintCaCertificateOptions): MintedCertificate {
  if (!(opts?.trustDomain instanceof TrustDomain)) throw new X509SvidError('invalid-argument', 'trustDomain must be a TrustDomain');
  const key = subjectKeyInfo(opts.publicKey);
  const serial = randomSerial();
  // The default subject carries part of the serial so that successive CAs (rotation, intermediates)
  // never share a name, which would make name chaining ambiguous.
  const subjectName = encodeSubject(opts.subject ??
    { organization: 'terroir', commonName: `terroir CA ${opts.trustDomain.name} ${serial.subarray(0, 8).toString('hex')}` });
  if (subjectName.length === EMPTY_NAME.length) throw new X509SvidError('invalid-argument', 'a CA certificate needs a non-empty subject');
  let signer: CertSigner;
  let issuerName: Buffer;
  let aki: Buffer[] = [];
  let following: Buffer[] = [];
  let window: [Date, Date];
  if (opts.issuer !== undefined) {
    const issuer = issuerInfo(opts.issuer);
    if (issuer.trustDomain !== undefined && issuer.trustDomain !== opts.trustDomain.name) {
      throw new X509SvidError('invalid-argument', `issuer belongs to trust domain "${issuer.trustDomain}", not "${opts.trustDomain.name}"`);
    }
    signer = issuer.signer;
    issuerName = issuer.name;
    aki = [issuer.akiExtension];
    following = issuer.presentedChain;
    window = validity(opts.ttlSeconds, opts.now, issuer);
  } else {
    if (!(opts.selfSignKey instanceof crypto.KeyObject)) {
      throw new X509SvidError('invalid-argument', 'a self-signed CA certificate needs selfSignKey (or pass issuer)');
    }
    signer = signerFor(opts.selfSignKey);
    if (!publicKeyInfo(opts.selfSignKey).spki.equals(key.spki)) {
      throw new X509SvidError('invalid-argument', 'selfSignKey does not match publicKey');
    }
    issuerName = subjectName;
    window = validity(opts.ttlSeconds, opts.now, undefined);
  }
  let basicConstraints: Buffer = EXT.caBasicConstraints;
  if (opts.pathLength !== undefined) {
    if (!Number.isInteger(opts.pathLength) || opts.pathLength < 0 || opts.pathLength > 255) {
      throw new X509SvidError('invalid-argument', 'pathLength must be an integer 0..255');
    }
    basicConstraints = extension(OID.basicConstraints, true, seq(bool(true), smallInt(opts.pathLength)));
  }
  const der = buildCertificate({
    serial,
    issuerName,
    notBefore: window[0],
    notAfter: window[1],
    subjectName,
    spki: key.spki,
    extensions: [
      EXT.caKeyUsage,
      basicConstraints,
      subjectKeyIdentifier(key.keyId),
      ...aki,
      extension(OID.subjectAltName, false, seq(ctxPrimitive(6, Buffer.from(opts.trustDomain.idString(), 'latin1')))),
    ],
  }, signer);
  return finish(der, serial, window[1], following);
}

/** The SPIFFE ID of an X.509-SVID: its one and only URI SAN. */
export function parseX509SvidId(certDer: Buffer): SpiffeId {
  return svidId(parseCertificate(certDer));
}

function svidId(view: CertificateView): SpiffeId {
  const uris = view.subjectAltName?.uris ?? [];
  if (uris.length === 0) throw new X509SvidError('no-uri-san', 'certificate has no URI SAN, so it carries no SPIFFE ID');
  if (uris.length > 1) {
    throw new X509SvidError('multiple-uri-sans', `certificate has ${uris.length} URI SANs; an X.509-SVID must have exactly one`);
  }
  try {
    return SpiffeId.parse(uris[0] as string);
  } catch (e) {
    if (e instanceof SpiffeIdError) {
      throw new X509SvidError('invalid-spiffe-id', `the URI SAN is not a valid SPIFFE ID: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

/** The SPIFFE leaf rules beyond path validation. */
function checkLeaf(leaf: CertificateView, id: SpiffeId): void {
  if (id.path === '') throw new X509SvidError('root-path-id', `leaf SPIFFE ID ${id.toString()} has no path (it names the trust domain)`);
  if (leaf.basicConstraints?.ca === true) throw new X509SvidError('leaf-is-ca', 'leaf certificate must not be a CA (basicConstraints cA=true)');
  const ku = leaf.keyUsage;
  if (ku === undefined || (ku & KEY_USAGE.digitalSignature) === 0) {
    throw new X509SvidError('leaf-key-usage', 'leaf certificate must have KeyUsage digitalSignature');
  }
  if (ku & KEY_USAGE.keyCertSign) throw new X509SvidError('leaf-key-usage', 'leaf certificate must not have KeyUsage keyCertSign');
  if (ku & KEY_USAGE.cRLSign) throw new X509SvidError('leaf-key-usage', 'leaf certificate must not have KeyUsage cRLSign');
  const eku = leaf.extKeyUsage;
  if (eku !== undefined && !eku.includes(OID.anyExtendedKeyUsage) && !(eku.includes(OID.serverAuth) && eku.includes(OID.clientAuth))) {
    throw new X509SvidError('leaf-ext-key-usage', 'leaf certificate ExtendedKeyUsage must include serverAuth and clientAuth');
  }
  if (leaf.subjectEmpty && leaf.subjectAltName?.critical !== true) {
    throw new X509SvidError('san-not-critical', 'leaf certificate has an empty subject, so its SubjectAltName must be critical');
  }
}

/** The leaf's key must be one we would mint for: no RSA-1024, no exotic curves. */
function checkLeafKey(leaf: CertificateView): void {
  let key: KeyObject;
  try {
    key = crypto.createPublicKey({ key: leaf.spki, format: 'der', type: 'spki' });
  } catch (e) {
    throw new X509SvidError('unsupported-key', `leaf public key is not usable: ${(e as Error).message}`, { cause: e });
  }
  checkSvidKey(key);
}

const viewCache = new WeakMap<Buffer, CertificateView>();

function authorityView(der: Buffer): CertificateView {
  let v = viewCache.get(der);
  if (v === undefined) {
    v = parseCertificate(der);
    viewCache.set(der, v);
  }
  return v;
}

export interface VerifiedX509Svid {
  id: SpiffeId;
  /** The leaf, parsed by node:crypto. */
  leaf: crypto.X509Certificate;
  chain: Buffer[];
}

/**
 * Verifies an X.509-SVID chain (leaf first): the leaf rules of the X.509-SVID standard, then RFC 5280
 * path validation against only the X.509 authorities of the leaf's own trust domain.
 * Throws X509SvidError with a `code` for every failure.
 */
export function verifyX509Svid(chainDer: Buffer[], bundles: X509BundleSource, opts: { now?: Date } = {}): VerifiedX509Svid {
  if (!Array.isArray(chainDer) || chainDer.length === 0) throw new X509SvidError('invalid-argument', 'certificate chain is empty');
  if (chainDer.length > MAX_CHAIN_LENGTH) {
    throw new X509SvidError('chain-too-long', `certificate chain has ${chainDer.length} certificates, more than ${MAX_CHAIN_LENGTH}`);
  }
  const now = opts.now ?? new Date();
  const chain = chainDer.map((d) => parseCertificate(d));
  const leaf = chain[0] as CertificateView;
  const id = svidId(leaf);
  checkLeaf(leaf, id);
  checkLeafKey(leaf);
  const bundle = bundles.getX509BundleForTrustDomain(id.trustDomain);
  if (bundle === undefined) throw new X509SvidError('no-bundle', `no trust bundle for trust domain "${id.trustDomain.name}"`);
  const anchors = bundle.x509Authorities().map(authorityView);
  if (anchors.length === 0) throw new X509SvidError('untrusted', `the bundle of "${id.trustDomain.name}" has no X.509 authorities`);
  validateCertificatePath(chain, anchors, now);
  let node: crypto.X509Certificate;
  try {
    node = new crypto.X509Certificate(leaf.der);
  } catch (e) {
    throw new X509SvidError('malformed-certificate', `leaf certificate rejected by OpenSSL: ${(e as Error).message}`, { cause: e });
  }
  return { id, leaf: node, chain: chain.map((c) => c.der) };
}
