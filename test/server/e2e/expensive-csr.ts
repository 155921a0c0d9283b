// CSRs an attacker would send to make the server spend CPU: RSA keys of a chosen size with a chosen
// public exponent (node:crypto only makes small exponents, so the key is assembled from its primes).
// Shared by the security tests and bench/security.ts.
import crypto, { type KeyObject } from 'node:crypto';

const OID_SHA256_WITH_RSA = Buffer.from('06092a864886f70d01010b0500', 'hex');

function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : n < 0x10000 ? Buffer.from([0x82, n >> 8, n & 0xff]) : Buffer.from([0x83, n >> 16, (n >> 8) & 0xff, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, content]);
}
const seq = (...p: Buffer[]): Buffer => tlv(0x30, Buffer.concat(p));

function toBuf(x: bigint): Buffer {
  let h = x.toString(16);
  if (h.length % 2) h = `0${h}`;
  return Buffer.from(h, 'hex');
}
const b64u = (x: bigint): string => toBuf(x).toString('base64url');

function modPow(b: bigint, e: bigint, m: bigint): bigint {
  let r = 1n;
  b %= m;
  while (e > 0n) {
    if (e & 1n) r = (r * b) % m;
    b = (b * b) % m;
    e >>= 1n;
  }
  return r;
}
function gcd(a: bigint, b: bigint): bigint {
  while (b) [a, b] = [b, a % b];
  return a;
}
function modInv(a: bigint, m: bigint): bigint {
  let [r0, r1, s0, s1] = [a % m, m, 1n, 0n];
  while (r1) {
    const q = r0 / r1;
    [r0, r1] = [r1, r0 - q * r1];
    [s0, s1] = [s1, s0 - q * s1];
  }
  return ((s0 % m) + m) % m;
}

/** An RSA key pair of `bits` whose public exponent is a random odd number of `exponentBits` bits (or 65537). */
export function rsaKeyWithExponent(bits: number, exponentBits: number | 65537): { privateKey: KeyObject; publicKey: KeyObject } {
  if (exponentBits === 65537) return crypto.generateKeyPairSync('rsa', { modulusLength: bits, publicExponent: 65537 });
  for (;;) {
    const p = crypto.generatePrimeSync(bits / 2, { bigint: true });
    const q = crypto.generatePrimeSync(bits / 2, { bigint: true });
    const n = p * q;
    if (p === q || n.toString(2).length !== bits) continue;
    const phi = (p - 1n) * (q - 1n);
    // Below n (OpenSSL refuses e >= n at once, which would make the key cheap to verify).
    let e = (BigInt(`0x${crypto.randomBytes(exponentBits / 8).toString('hex')}`) | (1n << BigInt(exponentBits - 1)) | 1n) % n;
    if (e.toString(2).length < exponentBits - 8) continue;
    e |= 1n;
    while (gcd(e, phi) !== 1n) e += 2n;
    if (e >= n) continue;
    const d = modInv(e, phi);
    if (modPow(modPow(2n, e, n), d, n) !== 2n) continue;
    const jwk = { kty: 'RSA', n: b64u(n), e: b64u(e), d: b64u(d), p: b64u(p), q: b64u(q), dp: b64u(d % (p - 1n)), dq: b64u(d % (q - 1n)), qi: b64u(modInv(q, p)) };
    const privateKey = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
    return { privateKey, publicKey: crypto.createPublicKey(privateKey) };
  }
}

/** A DER PKCS#10 request signed with sha256WithRSAEncryption, optionally with the URI SAN. */
export function rsaCsr(key: { privateKey: KeyObject; publicKey: KeyObject }, spiffeId?: string): Buffer {
  const spki = key.publicKey.export({ format: 'der', type: 'spki' });
  let attributes: Buffer = Buffer.alloc(0);
  if (spiffeId !== undefined) {
    const ext = seq(Buffer.from('0603551d11', 'hex'), tlv(0x04, seq(tlv(0x86, Buffer.from(spiffeId)))));
    attributes = seq(Buffer.from('06092a864886f70d01090e', 'hex'), tlv(0x31, seq(ext)));
  }
  const info = seq(Buffer.from([2, 1, 0]), seq(), spki, tlv(0xa0, attributes));
  const sig = crypto.sign('sha256', info, key.privateKey);
  return seq(info, seq(OID_SHA256_WITH_RSA), tlv(0x03, Buffer.concat([Buffer.from([0]), sig])));
}

/**
 * A CSR whose key is an RSA SPKI with a random `modulusBits` modulus and exponent `exponent`, with a
 * signature that does not verify: for checks that must refuse the key before any verification.
 */
export function fakeRsaCsr(modulusBits: number, exponent: Buffer = Buffer.from([1, 0, 1])): Buffer {
  const n = crypto.randomBytes(modulusBits / 8);
  n[0] = (n[0] as number) | 0x80;
  const rsaKey = seq(tlv(0x02, Buffer.concat([Buffer.from([0]), n])), tlv(0x02, exponent));
  const spki = seq(seq(Buffer.from('06092a864886f70d0101010500', 'hex')), tlv(0x03, Buffer.concat([Buffer.from([0]), rsaKey])));
  const info = seq(Buffer.from([2, 1, 0]), seq(), spki, tlv(0xa0, Buffer.alloc(0)));
  return seq(info, seq(OID_SHA256_WITH_RSA), tlv(0x03, Buffer.concat([Buffer.from([0]), crypto.randomBytes(modulusBits / 8)])));
}
