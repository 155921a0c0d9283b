// CA private keys: generated here, kept in memory or on disk (PKCS#8 PEM, file 0600, directory 0700).
import crypto, { type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export type CaKeyType = 'ec-p256' | 'rsa-2048';

export class CaKeyError extends Error {
  override readonly name = 'CaKeyError';
  constructor(readonly code: 'key_missing' | 'key_unreadable' | 'key_dir_insecure', message: string) {
    super(message);
  }
}

export interface CaKeyPair {
  /** Opaque reference to find the key again (file name when on disk). */
  ref: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

export interface CaKeyStore {
  readonly kind: 'memory' | 'disk';
  generate(type: CaKeyType): CaKeyPair;
  /** The key stored under ref, or undefined if it is gone (e.g. memory store after a restart). */
  load(ref: string): CaKeyPair | undefined;
  remove(ref: string): void;
}

export function generateKeyPair(type: CaKeyType): { privateKey: KeyObject; publicKey: KeyObject } {
  return type === 'rsa-2048'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
}

export function memoryKeyStore(): CaKeyStore {
  const keys = new Map<string, CaKeyPair>();
  return {
    kind: 'memory',
    generate(type) {
      const pair = { ref: crypto.randomUUID(), ...generateKeyPair(type) };
      keys.set(pair.ref, pair);
      return pair;
    },
    load: (ref) => keys.get(ref),
    remove: (ref) => { keys.delete(ref); },
  };
}

const REF = /^[0-9a-f-]{36}$/;

export function diskKeyStore(dir: string): CaKeyStore {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  fs.chmodSync(dir, 0o700);
  const file = (ref: string): string => {
    // Refs come from our own journal; refusing anything else keeps a tampered journal from
    // pointing us outside the key directory.
    if (!REF.test(ref)) throw new CaKeyError('key_unreadable', `invalid CA key reference "${ref}"`);
    return path.join(dir, `ca-${ref}.key.pem`);
  };
  return {
    kind: 'disk',
    generate(type) {
      const ref = crypto.randomUUID();
      const pair = generateKeyPair(type);
      const pem = pair.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
      fs.writeFileSync(file(ref), pem, { mode: 0o600, flag: 'wx' });
      return { ref, ...pair };
    },
    load(ref) {
      const f = file(ref);
      let pem: string;
      try {
        const st = fs.statSync(f);
        if ((st.mode & 0o077) !== 0) {
          throw new CaKeyError('key_dir_insecure', `CA key file ${f} is readable by group/others (mode ${(st.mode & 0o777).toString(8)}); chmod 600 it`);
        }
        pem = fs.readFileSync(f, 'utf8');
      } catch (err) {
        if (err instanceof CaKeyError) throw err;
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw new CaKeyError('key_unreadable', `cannot read CA key ${f}: ${(err as Error).message}`);
      }
      const privateKey = crypto.createPrivateKey(pem);
      return { ref, privateKey, publicKey: crypto.createPublicKey(privateKey) };
    },
    remove(ref) {
      fs.rmSync(file(ref), { force: true });
    },
  };
}
