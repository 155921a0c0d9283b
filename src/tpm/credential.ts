import crypto from 'node:crypto';
import { curveInfo, digestSize, hashAlgFromId, type HashAlg } from './constants.js';
import { TpmCredentialError } from './errors.js';
import { TpmWriter } from './reader.js';
import type { TpmPublic } from './public.js';

function u32(v: number): Buffer { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); return b; }

/** A label with its terminating NUL, as the TPM KDFs use it. */
function label(l: string): Buffer {
  const b = Buffer.from(l, 'latin1');
  return b.length > 0 && b[b.length - 1] === 0 ? b : Buffer.concat([b, Buffer.alloc(1)]);
}

/** KDFa (SP 800-108 counter mode with HMAC), TPM 2.0 Part 1 §11.4.10.2. */
export function kdfa(hashAlg: HashAlg, key: Buffer, lbl: string, contextU: Buffer, contextV: Buffer, bits: number): Buffer {
  const out: Buffer[] = [];
  const bytes = Math.ceil(bits / 8);
  for (let i = 1, n = 0; n < bytes; i++) {
    const block = crypto.createHmac(hashAlg, key).update(u32(i)).update(label(lbl)).update(contextU).update(contextV).update(u32(bits)).digest();
    out.push(block);
    n += block.length;
  }
  const res = Buffer.concat(out).subarray(0, bytes);
  if (bits % 8 !== 0) res[0] = (res[0] ?? 0) & ((1 << (bits % 8)) - 1);
  return res;
}

/** KDFe (SP 800-56A concatenation KDF), TPM 2.0 Part 1 §11.4.10.3. */
export function kdfe(hashAlg: HashAlg, z: Buffer, lbl: string, partyU: Buffer, partyV: Buffer, bits: number): Buffer {
  const out: Buffer[] = [];
  const bytes = Math.ceil(bits / 8);
  for (let i = 1, n = 0; n < bytes; i++) {
    const block = crypto.createHash(hashAlg).update(u32(i)).update(z).update(label(lbl)).update(partyU).update(partyV).digest();
    out.push(block);
    n += block.length;
  }
  return Buffer.concat(out).subarray(0, bytes);
}

export interface Credential {
  /** TPM2B_ID_OBJECT: the integrity HMAC and the encrypted secret. */
  credentialBlob: Buffer;
  /** TPM2B_ENCRYPTED_SECRET: the seed, encrypted to the EK (RSA-OAEP) or an ephemeral ECDH point. */
  encryptedSecret: Buffer;
}

/**
 * TPM2_MakeCredential done outside a TPM: wraps `secret` so that only the TPM holding `ekPublic`
 * can recover it, and only by ActivateCredential on the object named `akName` (TPM 2.0 Part 1 §24).
 * RSA EKs: the seed is RSA-OAEP encrypted with label "IDENTITY". ECC EKs: the seed comes from ECDH
 * with an ephemeral key and KDFe. Then KDFa("STORAGE") keys AES-CFB over the secret and
 * KDFa("INTEGRITY") keys the outer HMAC.
 */
export function makeCredential(ekPublic: TpmPublic, akName: Buffer, secret: Buffer): Credential {
  const sym = ekPublic.parameters.symmetric;
  const a = ekPublic.objectAttributes;
  if (!a.restricted || !a.decrypt || sym === null) {
    throw new TpmCredentialError('ek-not-storage-key', 'MakeCredential: the EK must be a restricted decryption key with a symmetric algorithm (a TCG EK template)');
  }
  if (sym.alg !== 'aes' || sym.mode !== 'cfb' || (sym.keyBits !== 128 && sym.keyBits !== 192 && sym.keyBits !== 256)) {
    throw new TpmCredentialError('unsupported-ek', `MakeCredential: EK symmetric ${sym.alg}-${sym.keyBits}-${sym.mode ?? 'null'} is not supported (AES-CFB)`);
  }
  const nameHash = akName.length >= 2 ? hashAlgFromId(akName.readUInt16BE(0)) : undefined;
  if (nameHash === undefined || akName.length !== 2 + digestSize(nameHash)) {
    throw new TpmCredentialError('bad-name', `MakeCredential: akName (${akName.length} bytes) is not a TPM object name (hash id || digest)`);
  }
  const nameAlg = ekPublic.nameAlg;
  const hashSize = digestSize(nameAlg);
  if (secret.length === 0 || secret.length > hashSize) {
    throw new TpmCredentialError('bad-secret', `MakeCredential: the secret must be 1..${hashSize} bytes for an EK with nameAlg ${nameAlg}, got ${secret.length}`);
  }

  let seed: Buffer;
  let encrypted: Buffer;
  if (ekPublic.type === 'rsa') {
    if (ekPublic.unique.n.length === 0) throw new TpmCredentialError('bad-ek', 'MakeCredential: the RSA EK has no modulus');
    seed = crypto.randomBytes(hashSize);
    const e = ekPublic.parameters.exponent === 0 ? 65537 : ekPublic.parameters.exponent;
    const eb = u32(e);
    let i = 0;
    while (i < 3 && eb[i] === 0) i++;
    try {
      const key = crypto.createPublicKey({ key: { kty: 'RSA', n: ekPublic.unique.n.toString('base64url'), e: eb.subarray(i).toString('base64url') }, format: 'jwk' });
      encrypted = crypto.publicEncrypt({ key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: nameAlg, oaepLabel: label('IDENTITY') }, seed);
    } catch (err) {
      throw new TpmCredentialError('bad-ek', `MakeCredential: the RSA EK is not a usable public key: ${(err as Error).message}`, { cause: err });
    }
  } else {
    const info = curveInfo(ekPublic.parameters.curve);
    const ekX = leftPad(ekPublic.unique.x, info.bytes);
    const ekY = leftPad(ekPublic.unique.y, info.bytes);
    const ecdh = crypto.createECDH(info.openssl);
    ecdh.generateKeys();
    let z: Buffer;
    try {
      z = ecdh.computeSecret(Buffer.concat([Buffer.from([4]), ekX, ekY]));
    } catch (err) {
      throw new TpmCredentialError('bad-ek', `MakeCredential: the EK point is not on ${ekPublic.parameters.curve}: ${(err as Error).message}`, { cause: err });
    }
    const eph = ecdh.getPublicKey();
    const ephX = eph.subarray(1, 1 + info.bytes);
    const ephY = eph.subarray(1 + info.bytes);
    seed = kdfe(nameAlg, z, 'IDENTITY', ephX, ekX, hashSize * 8);
    encrypted = new TpmWriter().tpm2b(ephX).tpm2b(ephY).finish();
  }

  const symKey = kdfa(nameAlg, seed, 'STORAGE', akName, Buffer.alloc(0), sym.keyBits);
  const cipher = crypto.createCipheriv(`aes-${sym.keyBits}-cfb`, symKey, Buffer.alloc(16));
  const encIdentity = Buffer.concat([cipher.update(new TpmWriter().tpm2b(secret).finish()), cipher.final()]);
  const hmacKey = kdfa(nameAlg, seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), hashSize * 8);
  const outerHmac = crypto.createHmac(nameAlg, hmacKey).update(encIdentity).update(akName).digest();
  const idObject = new TpmWriter().tpm2b(outerHmac).bytes(encIdentity).finish();
  return {
    credentialBlob: new TpmWriter().tpm2b(idObject).finish(),
    encryptedSecret: new TpmWriter().tpm2b(encrypted).finish(),
  };
}

function leftPad(b: Buffer, size: number): Buffer {
  return b.length >= size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}
