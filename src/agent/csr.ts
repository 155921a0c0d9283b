// Key pairs and PKCS#10 certificate requests for the agent's and workloads' SVIDs. The server uses
// only the CSR's public key (and checks its signature), so the request carries an empty subject,
// optionally the URI SAN, and is signed with ECDSA P-256 / SHA-256.
import crypto, { type KeyObject } from 'node:crypto';

const OID_EC_WITH_SHA256 = Buffer.from('06082a8648ce3d040302', 'hex');
const OID_EXTENSION_REQUEST = Buffer.from('06092a864886f70d01090e', 'hex');
const OID_SUBJECT_ALT_NAME = Buffer.from('0603551d11', 'hex');

function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  let len: Buffer;
  if (n < 0x80) len = Buffer.from([n]);
  else if (n < 0x100) len = Buffer.from([0x81, n]);
  else if (n < 0x10000) len = Buffer.from([0x82, n >> 8, n & 0xff]);
  else len = Buffer.from([0x83, n >> 16, (n >> 8) & 0xff, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, content]);
}
const seq = (...parts: Buffer[]) => tlv(0x30, Buffer.concat(parts));

export interface KeyPair {
  privateKey: KeyObject;
  publicKey: KeyObject;
}

/** A fresh ECDSA P-256 key pair. */
export function generateKeyPair(): KeyPair {
  return crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
}

/** The private key as unencrypted DER PKCS#8 (what the Workload API hands out). */
export function pkcs8Der(key: KeyObject): Buffer {
  return key.export({ format: 'der', type: 'pkcs8' });
}

/** A DER PKCS#10 request for `key`, with an optional URI SAN (the SPIFFE ID). */
export function createCsr(key: KeyPair, spiffeId?: string): Buffer {
  const spki = key.publicKey.export({ format: 'der', type: 'spki' });
  let attributes: Buffer = Buffer.alloc(0);
  if (spiffeId !== undefined) {
    const san = seq(tlv(0x86, Buffer.from(spiffeId, 'utf8')));
    const ext = seq(OID_SUBJECT_ALT_NAME, tlv(0x04, san));
    attributes = seq(OID_EXTENSION_REQUEST, tlv(0x31, seq(ext)));
  }
  const info = seq(
    Buffer.from([0x02, 0x01, 0x00]), // version 0
    seq(), // empty subject
    spki,
    tlv(0xa0, attributes),
  );
  const signature = crypto.sign('sha256', info, { key: key.privateKey, dsaEncoding: 'der' });
  return seq(info, seq(OID_EC_WITH_SHA256), tlv(0x03, Buffer.concat([Buffer.from([0]), signature])));
}
