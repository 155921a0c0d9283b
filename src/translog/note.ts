import crypto, { type KeyObject } from 'node:crypto';
import { decodeBase64Strict } from './base64.js';
import { TranslogError } from './errors.js';

/**
 * C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 keys, the envelope of checkpoints:
 *
 *     <text, ending in a newline>
 *     <blank line>
 *     — <key name> <base64(4-byte key hash ‖ signature)>     (one line per signature)
 *
 * Key strings are those of golang.org/x/mod/sumdb/note, so keys and notes interoperate with Go tools,
 * witnesses and other logs: verifier `<name>+<8 hex key hash>+<base64(0x01 ‖ public key)>`, signer
 * `PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ private seed)>`.
 */

/** Signs note text; `name` and `keyHash` identify the key in signature lines. */
export interface NoteSigner {
  readonly name: string;
  /** First 4 bytes (big-endian) of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key). */
  readonly keyHash: number;
  sign(message: Uint8Array): Buffer;
}

/** Checks signatures of one known key. */
export interface NoteVerifier {
  readonly name: string;
  readonly keyHash: number;
  verify(message: Uint8Array, signature: Uint8Array): boolean;
}

/** One signature line of an opened note: `verified` is false for a key the caller does not know. */
export interface NoteSignature {
  readonly name: string;
  readonly keyHash: number;
  readonly verified: boolean;
}

export interface OpenedNote {
  /** The signed text, final newline included. */
  readonly text: string;
  readonly signatures: NoteSignature[];
}

/** Bounds on what openNote reads, so a hostile note costs little: size in UTF-8 bytes, signature lines. */
export const MAX_NOTE_BYTES = 1 << 20;
export const MAX_NOTE_SIGNATURES = 100;

const ALG_ED25519 = 0x01;
const ED25519_SIG_SIZE = 64;
const MAX_KEY_STRING = 1024;
const EM_DASH_SPACE = '\u2014 ';
// PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410). A JWK import needs the public key too and takes
// the caller's word for it; from the seed alone Node derives the public key itself.
const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

/** A new Ed25519 note key named `name`: the signer key string (secret) and the verifier key string (public). */
export function generateNoteKey(name: string): { signerKey: string; verifierKey: string } {
  checkKeyName(name, 'key');
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ed25519');
  const seed = Buffer.from(privateKey.export({ format: 'jwk' }).d as string, 'base64url');
  const pub = rawPublicKey(publicKey);
  const hash = hex8(keyHashOf(name, pub));
  return {
    signerKey: `PRIVATE+KEY+${name}+${hash}+${withAlg(seed)}`,
    verifierKey: `${name}+${hash}+${withAlg(pub)}`,
  };
}

/**
 * The whole key pair behind a `PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ seed)>` string: its signer,
 * the Ed25519 key objects (for other signatures by the same key, e.g. a JWS) and the verifier key
 * string to publish. The hash must match the key.
 */
export function noteKeyPairFromKey(signerKey: string): { signer: NoteSigner; privateKey: KeyObject; publicKey: KeyObject; verifierKey: string } {
  if (typeof signerKey !== 'string' || signerKey.length > MAX_KEY_STRING || !signerKey.startsWith('PRIVATE+KEY+')) {
    throw new TranslogError('key', 'a note signer key has the form PRIVATE+KEY+<name>+<8 hex key hash>+<base64 key>');
  }
  const { name, keyHash, raw } = splitKey(signerKey.slice('PRIVATE+KEY+'.length), 'signer');
  let privateKey: KeyObject;
  try {
    privateKey = crypto.createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, raw]), format: 'der', type: 'pkcs8' });
  } catch (err) {
    throw new TranslogError('key', `note signer key ${name}: not an Ed25519 private key`, { cause: err });
  }
  const publicKey = crypto.createPublicKey(privateKey);
  const pub = rawPublicKey(publicKey);
  if (keyHashOf(name, pub) !== keyHash) {
    throw new TranslogError('key', `note signer key ${name}: key hash ${hex8(keyHash)} does not match the key (altered or truncated key string?)`);
  }
  return {
    signer: { name, keyHash, sign: (message) => crypto.sign(null, message, privateKey) },
    privateKey, publicKey, verifierKey: `${name}+${hex8(keyHash)}+${withAlg(pub)}`,
  };
}

/** The signer for a `PRIVATE+KEY+<name>+<hash>+<base64(0x01 ‖ seed)>` string; the hash must match the key. */
export function noteSignerFromKey(signerKey: string): NoteSigner {
  return noteKeyPairFromKey(signerKey).signer;
}

/** The verifier for a `<name>+<hash>+<base64(0x01 ‖ public key)>` string; the hash must match the key. */
export function noteVerifierFromKey(verifierKey: string): NoteVerifier {
  if (typeof verifierKey !== 'string' || verifierKey.length > MAX_KEY_STRING) {
    throw new TranslogError('key', 'a note verifier key has the form <name>+<8 hex key hash>+<base64 key>');
  }
  const { name, keyHash, raw } = splitKey(verifierKey, 'verifier');
  let publicKey: KeyObject;
  try {
    publicKey = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'Ed25519', x: raw.toString('base64url') }, format: 'jwk' });
  } catch (err) {
    throw new TranslogError('key', `note verifier key ${name}: not an Ed25519 public key`, { cause: err });
  }
  if (keyHashOf(name, raw) !== keyHash) {
    throw new TranslogError('key', `note verifier key ${name}: key hash ${hex8(keyHash)} does not match the key (altered or truncated key string?)`);
  }
  return {
    name,
    keyHash,
    verify: (message, signature) => {
      if (signature.length !== ED25519_SIG_SIZE) return false;
      try {
        return crypto.verify(null, message, publicKey, signature);
      } catch {
        return false;
      }
    },
  };
}

/** The signed note: `text` (ending in a newline), a blank line, one signature line per signer. */
export function signNote(text: string, signers: NoteSigner | readonly NoteSigner[]): string {
  const list = Array.isArray(signers) ? signers : [signers as NoteSigner];
  checkNoteText(text, 'note', 'note text');
  if (list.length === 0 || list.length > MAX_NOTE_SIGNATURES) {
    throw new TranslogError('note', `a note needs 1 to ${MAX_NOTE_SIGNATURES} signers, got ${list.length}`);
  }
  const message = Buffer.from(text, 'utf8');
  const lines = list.map((s) => {
    checkKeyName(s.name, 'note');
    const sig = s.sign(message);
    const blob = Buffer.alloc(4 + sig.length);
    blob.writeUInt32BE(s.keyHash >>> 0, 0);
    blob.set(sig, 4);
    return `${EM_DASH_SPACE}${s.name} ${blob.toString('base64')}\n`;
  });
  const note = `${text}\n${lines.join('')}`;
  if (Buffer.byteLength(note, 'utf8') > MAX_NOTE_BYTES) throw new TranslogError('note', `signed note would exceed ${MAX_NOTE_BYTES} bytes`);
  return note;
}

/**
 * Opens a signed note: checks its shape, verifies every signature by a known key (name and key hash
 * both match a verifier) and returns the text with all signature lines. Throws unless at least one
 * known key's signature verifies; a known key's signature that fails to verify is an error (the note
 * was altered), while signatures by unknown keys are listed unverified and otherwise ignored (spec:
 * they may be witnesses' cosignatures or a rotated key).
 */
export function openNote(signed: string, verifiers: readonly NoteVerifier[]): OpenedNote {
  checkNoteText(signed, 'note', 'signed note');
  const split = signed.lastIndexOf('\n\n');
  if (split < 0) throw new TranslogError('note', 'signed note has no blank line between text and signatures');
  const text = signed.slice(0, split + 1);
  const block = signed.slice(split + 2);
  if (block === '') throw new TranslogError('note', 'signed note has no signature lines after its blank line');
  const lines = block.slice(0, -1).split('\n');
  if (lines.length > MAX_NOTE_SIGNATURES) {
    throw new TranslogError('note', `signed note has ${lines.length} signature lines; at most ${MAX_NOTE_SIGNATURES} are read`);
  }
  const known = indexVerifiers(verifiers);
  const message = Buffer.from(text, 'utf8');
  const signatures = lines.map((line, i): NoteSignature => {
    const { name, keyHash, sig } = parseSignatureLine(line, i + 1);
    const v = known.get(idOf(name, keyHash));
    if (v === undefined) return { name, keyHash, verified: false };
    if (!v.verify(message, sig)) {
      throw new TranslogError('note', `signature by ${name}+${hex8(keyHash)} does not verify: the note was altered after signing (or signed by another key with the same name and hash)`);
    }
    return { name, keyHash, verified: true };
  });
  if (!signatures.some((s) => s.verified)) {
    const found = signatures.map((s) => `${s.name}+${hex8(s.keyHash)}`).join(', ');
    throw new TranslogError('note', `signed note has no signature by a known key (signed by ${found}; known keys: ${verifiers.map((v) => `${v.name}+${hex8(v.keyHash)}`).join(', ') || 'none'})`);
  }
  return { text, signatures };
}

/** Key hash of an Ed25519 key: SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key), first 4 bytes big-endian. */
export function keyHashOf(name: string, publicKey: Uint8Array): number {
  return crypto.createHash('sha256').update(name, 'utf8').update(Uint8Array.of(0x0a, ALG_ED25519)).update(publicKey).digest().readUInt32BE(0);
}

/**
 * Text rules shared by notes and checkpoint bodies: a string of at most MAX_NOTE_BYTES UTF-8 bytes,
 * ending in a newline, valid Unicode (no lone surrogates, so it has a UTF-8 encoding), no ASCII control
 * characters other than newline.
 */
export function checkNoteText(s: unknown, code: 'note' | 'checkpoint', what: string): asserts s is string {
  if (typeof s !== 'string') throw new TranslogError(code, `${what} is not a string`);
  if (s.length > MAX_NOTE_BYTES || Buffer.byteLength(s, 'utf8') > MAX_NOTE_BYTES) {
    throw new TranslogError(code, `${what} is larger than ${MAX_NOTE_BYTES} bytes`);
  }
  if (!s.endsWith('\n')) throw new TranslogError(code, `${what} must end with a newline`);
  const at = controlAt(s);
  if (at >= 0) throw new TranslogError(code, `${what} contains control character U+${s.charCodeAt(at).toString(16).padStart(4, '0')} at offset ${at}; only newline is allowed`);
  if (LONE_SURROGATE.test(s)) throw new TranslogError(code, `${what} contains a lone UTF-16 surrogate: it has no UTF-8 encoding`);
}

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
// Unicode spaces (JavaScript's \s plus U+0085, which Go's unicode.IsSpace also counts) and '+'.
const BAD_NAME_CHAR = /[\s\u0085+]/u;

/** Offset of the first ASCII control character other than newline, or -1. */
function controlAt(s: string): number {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 && c !== 0x0a) return i;
  }
  return -1;
}

/** Throws unless `name` is a valid key name: non-empty, no Unicode spaces, no '+' (spec). */
export function checkKeyName(name: unknown, code: 'key' | 'note'): asserts name is string {
  if (typeof name !== 'string' || name === '') throw new TranslogError(code, 'key name must be a non-empty string');
  if (BAD_NAME_CHAR.test(name) || controlAt(name) >= 0 || LONE_SURROGATE.test(name)) {
    throw new TranslogError(code, `key name ${JSON.stringify(name)} must not contain spaces, '+' or control characters`);
  }
}

function splitKey(s: string, kind: 'signer' | 'verifier'): { name: string; keyHash: number; raw: Buffer } {
  // The name and hash hold no '+'; the base64 key may, so it is everything after the second one.
  const p1 = s.indexOf('+');
  const p2 = p1 < 0 ? -1 : s.indexOf('+', p1 + 1);
  if (p2 < 0) throw new TranslogError('key', `a note ${kind} key has the form ${kind === 'signer' ? 'PRIVATE+KEY+' : ''}<name>+<8 hex key hash>+<base64 key>`);
  const name = s.slice(0, p1);
  const hash = s.slice(p1 + 1, p2);
  checkKeyName(name, 'key');
  if (!/^[0-9a-f]{8}$/.test(hash)) throw new TranslogError('key', `note ${kind} key ${name}: key hash ${JSON.stringify(hash)} is not 8 lowercase hex digits`);
  const blob = decodeBase64Strict(s.slice(p2 + 1));
  if (blob === undefined) throw new TranslogError('key', `note ${kind} key ${name}: the key is not canonical standard base64`);
  if (blob[0] !== ALG_ED25519) throw new TranslogError('key', `note ${kind} key ${name}: unsupported key type ${blob[0] ?? 'none'}; only Ed25519 (1) is supported`);
  if (blob.length !== 33) throw new TranslogError('key', `note ${kind} key ${name}: an Ed25519 key is 32 bytes, got ${blob.length - 1}`);
  return { name, keyHash: parseInt(hash, 16), raw: blob.subarray(1) };
}

function parseSignatureLine(line: string, n: number): { name: string; keyHash: number; sig: Buffer } {
  if (!line.startsWith(EM_DASH_SPACE)) {
    throw new TranslogError('note', `signature line ${n} must start with an em dash (U+2014) and a space`);
  }
  const fields = line.slice(EM_DASH_SPACE.length).split(' ');
  if (fields.length !== 2) throw new TranslogError('note', `signature line ${n} must be "— <key name> <base64 signature>"`);
  const [name, b64] = fields as [string, string];
  try {
    checkKeyName(name, 'note');
  } catch (err) {
    throw new TranslogError('note', `signature line ${n}: ${(err as Error).message}`);
  }
  const blob = decodeBase64Strict(b64);
  if (blob === undefined || blob.length < 5) {
    throw new TranslogError('note', `signature line ${n} (${name}): the signature is not canonical base64 of a 4-byte key hash and a signature`);
  }
  return { name, keyHash: blob.readUInt32BE(0), sig: blob.subarray(4) };
}

function indexVerifiers(verifiers: readonly NoteVerifier[]): Map<string, NoteVerifier> {
  if (!Array.isArray(verifiers)) throw new TranslogError('key', 'verifiers must be an array of NoteVerifier');
  const m = new Map<string, NoteVerifier>();
  for (const v of verifiers) {
    const id = idOf(v.name, v.keyHash);
    if (m.has(id)) throw new TranslogError('key', `two verifiers for ${v.name}+${hex8(v.keyHash)}: a signature by that name and hash would be ambiguous`);
    m.set(id, v);
  }
  return m;
}

function idOf(name: string, keyHash: number): string {
  return `${name}+${hex8(keyHash)}`;
}

function hex8(h: number): string {
  return (h >>> 0).toString(16).padStart(8, '0');
}

function withAlg(raw: Buffer): string {
  return Buffer.concat([Uint8Array.of(ALG_ED25519), raw]).toString('base64');
}

function rawPublicKey(k: KeyObject): Buffer {
  return Buffer.from(k.export({ format: 'jwk' }).x as string, 'base64url');
}
