// Checks on SVIDs the server issued, and when to replace them.
import crypto from 'node:crypto';
import { verifyX509Svid, type BundleSet } from '../spiffe/index.js';

/**
 * When an SVID is replaced: at half its lifetime, minus up to 10 % jitter so a fleet does not renew
 * in lockstep. The lifetime counts from when we got it, not from NotBefore: servers backdate
 * NotBefore, which would otherwise put the half-life of a short-lived SVID in the past.
 */
export function rotationTime(notBefore: number, notAfter: number): number {
  const start = Math.max(notBefore, Date.now());
  const life = Math.max(0, notAfter - start);
  return start + life * (0.5 - Math.random() * 0.1);
}

/**
 * Checks an SVID the server issued before it is used or handed out: the chain verifies against the
 * trust bundle (X.509-SVID rules included), it names the expected SPIFFE ID, and it certifies our key.
 */
export function checkIssuedSvid(chain: Buffer[], bundles: BundleSet, expectedId: string, key: crypto.KeyObject): { notBefore: number; notAfter: number } {
  let verified: ReturnType<typeof verifyX509Svid>;
  try {
    verified = verifyX509Svid(chain, bundles);
  } catch (e) {
    throw new Error(`the server issued an SVID that does not verify: ${(e as Error).message}`, { cause: e });
  }
  if (verified.id.toString() !== expectedId) throw new Error(`the server issued an SVID for ${verified.id.toString()}, expected ${expectedId}`);
  if (!verified.leaf.checkPrivateKey(key)) throw new Error(`the server issued an SVID for ${expectedId} that does not certify our key`);
  return { notBefore: Date.parse(verified.leaf.validFrom), notAfter: Date.parse(verified.leaf.validTo) };
}

export function certTimes(der: Buffer): { notBefore: number; notAfter: number } {
  const c = new crypto.X509Certificate(der);
  return { notBefore: Date.parse(c.validFrom), notAfter: Date.parse(c.validTo) };
}
