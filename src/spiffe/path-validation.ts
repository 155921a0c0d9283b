// RFC 5280 section 6 path validation, reduced to what a SPIFFE verifier needs: the caller hands the
// chain as sent (leaf first) and the trust anchors of exactly one trust domain. Checked at every
// step: validity period, name chaining (byte-exact issuer == subject), the signature, and for every
// issuing certificate basicConstraints cA, keyCertSign (when KeyUsage is present) and pathLenConstraint;
// unknown critical extensions are refused on the leaf and on intermediates. Once the path is known,
// name constraints (name-constraints.ts) of every CA in it, the trust anchor included, are applied to
// the certificates below. Certificate policies (6.1.3 (d)-(f)) are not evaluated, so a certificate that
// marks certificatePolicies, policyConstraints or inhibitAnyPolicy critical is refused (fail closed).
import type { CertificateView } from './certificate.js';
import { X509SvidError } from './errors.js';
import { enforceNameConstraints } from './name-constraints.js';
import { KEY_USAGE, OID } from './oids.js';
import { verifyX509Signature } from './signature.js';

/** Longest chain accepted (leaf plus intermediates), against resource exhaustion. */
export const MAX_CHAIN_LENGTH = 10;

const HANDLED_CRITICAL = new Set<string>([
  OID.basicConstraints, OID.keyUsage, OID.extKeyUsage, OID.subjectAltName, OID.subjectKeyIdentifier,
  OID.authorityKeyIdentifier, OID.nameConstraints,
]);

/**
 * Validates `chain` (leaf first, then intermediates in order) up to one of `anchors`, at time `now`.
 * Returns the trust anchor the path ends at; throws X509SvidError naming the first broken rule.
 */
export function validateCertificatePath(chain: CertificateView[], anchors: CertificateView[], now: Date): CertificateView {
  if (chain.length === 0) throw new X509SvidError('invalid-argument', 'empty certificate chain');
  if (chain.length > MAX_CHAIN_LENGTH) {
    throw new X509SvidError('chain-too-long', `certificate chain has ${chain.length} certificates, more than ${MAX_CHAIN_LENGTH}`);
  }
  for (let i = 0; i < chain.length; i++) {
    const cert = chain[i] as CertificateView;
    const label = chainLabel(i);
    checkValidity(cert, now, label);
    checkCriticalExtensions(cert, label);
    if (i > 0) {
      checkIssuingCertificate(cert, i - 1, label);
      // A chain may carry a certificate that is itself a bundle authority: the path ends there.
      const anchor = anchors.find((a) => a.der.equals(cert.der));
      if (anchor !== undefined) return withNameConstraints(chain.slice(0, i), anchor);
    }
    const next = chain[i + 1];
    if (next !== undefined) {
      if (!next.subjectName.equals(cert.issuerName)) {
        throw new X509SvidError('name-mismatch', `${label}: its issuer name does not match the subject of the next certificate in the chain`);
      }
      if (!verifyX509Signature(cert.signatureAlgorithm, cert.tbs, cert.signature, next.spki)) {
        throw new X509SvidError('bad-signature', `${label}: signature does not verify with the next certificate's key`);
      }
      continue;
    }
    const candidates = anchors.filter((a) => a.subjectName.equals(cert.issuerName));
    if (candidates.length === 0) {
      throw new X509SvidError('untrusted', `${label}: no authority in the trust bundle has its issuer name`);
    }
    const anchor = candidates.find((a) => verifyX509Signature(cert.signatureAlgorithm, cert.tbs, cert.signature, a.spki));
    if (anchor === undefined) {
      throw new X509SvidError('untrusted', `${label}: signature does not verify with any bundle authority of that name`);
    }
    checkValidity(anchor, now, 'trust bundle authority');
    checkIssuingCertificate(anchor, i, 'trust bundle authority');
    return withNameConstraints(chain, anchor);
  }
  // Unreachable: the loop returns or throws on its last iteration.
  throw new X509SvidError('untrusted', 'no path to a trust bundle authority');
}

/** RFC 5280 6.1.3 (b), (c) and 6.1.4 (g) over the path that ends at `anchor` (`below` leaf first). */
function withNameConstraints(below: CertificateView[], anchor: CertificateView): CertificateView {
  enforceNameConstraints(below, anchor, chainLabel);
  return anchor;
}

function chainLabel(i: number): string {
  return i === 0 ? 'leaf certificate' : `intermediate certificate #${i}`;
}

function checkValidity(cert: CertificateView, now: Date, label: string): void {
  const t = now.getTime();
  if (t < cert.notBefore.getTime()) {
    throw new X509SvidError('not-yet-valid', `${label} is not valid before ${cert.notBefore.toISOString()}`);
  }
  if (t > cert.notAfter.getTime()) {
    throw new X509SvidError('expired', `${label} expired at ${cert.notAfter.toISOString()}`);
  }
}

function checkCriticalExtensions(cert: CertificateView, label: string): void {
  for (const ext of cert.extensions) {
    if (ext.critical && !HANDLED_CRITICAL.has(ext.oid)) {
      throw new X509SvidError('unhandled-critical-extension', `${label} has critical extension ${ext.oid}, which this verifier does not process`);
    }
  }
}

/** RFC 5280 6.1.4 (k), (l), (n): issuing certificates are CAs, may sign certificates, and respect pathLen. */
function checkIssuingCertificate(cert: CertificateView, intermediatesBelow: number, label: string): void {
  if (cert.basicConstraints?.ca !== true) {
    throw new X509SvidError('issuer-not-ca', `${label} issues certificates but is not a CA (basicConstraints cA is not true)`);
  }
  if (cert.keyUsage !== undefined && (cert.keyUsage & KEY_USAGE.keyCertSign) === 0) {
    throw new X509SvidError('issuer-key-usage', `${label} issues certificates but its KeyUsage lacks keyCertSign`);
  }
  const max = cert.basicConstraints.pathLength;
  if (max !== undefined && intermediatesBelow > max) {
    throw new X509SvidError('path-length-exceeded', `${label} allows ${max} intermediate CA(s) below it, the chain has ${intermediatesBelow}`);
  }
}
