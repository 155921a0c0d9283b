/**
 * Splitting the contents of a TCG EK certificate chain NV index (TCG TPM v2.0 Provisioning
 * Guidance, §2.2.1.5.2: indices 0x01C00100..0x01C001FF) into DER certificates.
 *
 * An index holds one or more DER X.509 certificates back to back (Intel PTT stores several in
 * 0x01C00100, starting from the on-die CA), possibly followed by padding when the NV area is
 * larger than its contents. The bytes come from a TPM, so they are untrusted: every certificate
 * must be a whole DER SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE,
 * signatureValue BIT STRING } with exact lengths, and parse as X.509.
 */
import { X509Certificate } from 'node:crypto';
import { children, readTlv, whole } from './der.js';

/** First and last TCG EK certificate chain NV indices. */
export const EK_CHAIN_NV_FIRST = 0x01c00100;
export const EK_CHAIN_NV_LAST = 0x01c001ff;

export interface SplitCertificates {
  /** The whole DER certificates found, in the order they are stored. */
  certificates: Buffer[];
  /**
   * Why the bytes after the last certificate were not used (malformed or truncated certificate,
   * trailing bytes that are not padding), or undefined when every byte was accounted for.
   */
  problem?: string;
}

/**
 * Splits concatenated DER certificates. Stops at the first element that is not a whole
 * certificate and reports it in `problem`; the certificates before it are kept. A tail made only
 * of 0x00 or only of 0xFF bytes is padding (an NV area larger than its contents), not a problem.
 */
export function splitDerCertificates(buf: Buffer): SplitCertificates {
  const certificates: Buffer[] = [];
  let off = 0;
  while (off < buf.length) {
    const rest = buf.subarray(off);
    if (isPadding(rest)) break;
    const cert = certificateAt(buf, off);
    if (typeof cert === 'string') return { certificates, problem: `at byte ${off}: ${cert}` };
    certificates.push(cert);
    off += cert.length;
  }
  return { certificates };
}

/** The whole certificate starting at `off`, or why there is none. */
function certificateAt(buf: Buffer, off: number): Buffer | string {
  if (buf[off] !== 0x30) return `expected a DER SEQUENCE (0x30), found 0x${(buf[off] as number).toString(16).padStart(2, '0')}`;
  try {
    const outer = readTlv(buf, off);
    const parts = children(buf, outer);
    if (parts.length !== 3 || parts[0]?.tag !== 0x30 || parts[1]?.tag !== 0x30 || parts[2]?.tag !== 0x03) {
      return 'not an X.509 certificate (expected SEQUENCE { SEQUENCE, SEQUENCE, BIT STRING })';
    }
    // tbsCertificate must itself be well formed to its end.
    children(buf, parts[0]);
    const der = Buffer.from(whole(buf, outer));
    new X509Certificate(der);
    return der;
  } catch (err) {
    return (err as Error).message;
  }
}

function isPadding(b: Buffer): boolean {
  const first = b[0];
  if (first !== 0x00 && first !== 0xff) return false;
  for (const byte of b) if (byte !== first) return false;
  return true;
}
