// The audit key: the Ed25519 key that signs the evidence log's checkpoints and the EARs. Kept apart
// from the CA (its own file, its own name), so a CA compromise cannot rewrite history and the key
// can be handed to an HSM-less auditor's trust store as one line (the C2SP verifier key).
import type { KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { generateNoteKey, noteKeyPairFromKey, type NoteSigner } from '../../translog/index.js';
import { ConfigError } from '../config.js';

export interface AuditKey {
  /** Signs notes (checkpoints). */
  signer: NoteSigner;
  /** `<name>+<hash>+<key>`: what an auditor needs (terroir-server audit key prints it). */
  verifierKey: string;
  /** The same key for JWS (EAR): EdDSA. */
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** JWS key id: the verifier key's hash part. */
  kid: string;
}

/** The key from a C2SP signer key string (`PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ seed)>`). */
export function auditKeyFromSignerKey(signerKey: string): AuditKey {
  const { signer, privateKey, publicKey, verifierKey } = noteKeyPairFromKey(signerKey.trim());
  // The JWS key id is the key hash, as in the verifier key string.
  return { signer, verifierKey, privateKey, publicKey, kid: verifierKey.split('+')[1] as string };
}

/**
 * Loads the audit key from `file`, creating it (0600, in a 0700 directory) when absent. A key
 * readable by others is refused: whoever reads it can sign history. A key made for another origin
 * is refused too: checkpoints would name the wrong log.
 */
export function loadOrCreateAuditKey(file: string, origin: string): AuditKey {
  let text: string;
  try {
    const st = fs.statSync(file);
    if ((st.mode & 0o077) !== 0) {
      throw new ConfigError(`evidenceLog.keyFile ${file} is readable by others (mode ${(st.mode & 0o777).toString(8)}): whoever reads it can sign the evidence log; chmod 600 it`);
    }
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      if (err instanceof ConfigError) throw err;
      throw new ConfigError(`evidenceLog.keyFile: cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    text = `${generateNoteKey(origin).signerKey}\n`;
    // wx: two servers starting on one shared directory must not overwrite each other's key.
    try {
      fs.writeFileSync(file, text, { mode: 0o600, flag: 'wx' });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new ConfigError(`evidenceLog.keyFile: cannot create ${file}: ${(e as Error).message}`, { cause: e });
      text = fs.readFileSync(file, 'utf8');
    }
  }
  let key: AuditKey;
  try {
    key = auditKeyFromSignerKey(text.trim());
  } catch (err) {
    throw new ConfigError(`evidenceLog.keyFile ${file} does not hold an Ed25519 note signer key (PRIVATE+KEY+<name>+<hash>+<key>): ${(err as Error).message}`, { cause: err });
  }
  if (key.signer.name !== origin) {
    throw new ConfigError(`evidenceLog.keyFile ${file} is the key of "${key.signer.name}", not of this log's origin "${origin}": use the key made for this log (or set evidenceLog.origin to its name)`);
  }
  return key;
}
