import { decodeBase64Strict } from './base64.js';
import { TranslogError } from './errors.js';
import { HASH_SIZE } from './hash.js';
import { checkNoteText, openNote, type NoteSignature, type NoteVerifier } from './note.js';

/**
 * C2SP checkpoints (https://c2sp.org/tlog-checkpoint): a log's signed tree head as the text of a
 * signed note.
 *
 *     <origin>
 *     <tree size, decimal, no leading zeros>
 *     <base64 root hash>
 *     [<extension line>...]
 */
export interface Checkpoint {
  /** The log's identity, e.g. "example.com/log"; also the name of the log's signing key. */
  readonly origin: string;
  readonly size: number;
  /** RFC 9162 tree head of the first `size` leaves (32 bytes). */
  readonly root: Buffer;
  /** Opaque, non-empty extra lines (the spec discourages them: monitors cannot audit them). */
  readonly extensions?: readonly string[];
}

/** The checkpoint body (note text). The origin must follow the spec's recommendation: no spaces, no '+'. */
export function formatCheckpoint(cp: Checkpoint): string {
  const { origin, size, root, extensions = [] } = cp;
  if (typeof origin !== 'string' || origin === '' || /[\s\u0085+]/u.test(origin)) {
    throw new TranslogError('checkpoint', `checkpoint origin ${JSON.stringify(origin)} must be non-empty without spaces or '+' (e.g. example.com/log)`);
  }
  if (!Number.isSafeInteger(size) || size < 0) throw new TranslogError('checkpoint', `checkpoint size must be a non-negative integer up to 2^53-1, got ${String(size)}`);
  if (!(root instanceof Uint8Array) || root.length !== HASH_SIZE) throw new TranslogError('checkpoint', `checkpoint root must be a ${HASH_SIZE}-byte hash`);
  for (const e of extensions) {
    if (typeof e !== 'string' || e === '' || e.includes('\n')) throw new TranslogError('checkpoint', 'checkpoint extension lines must be non-empty single lines');
  }
  const body = [origin, String(size), Buffer.from(root).toString('base64'), ...extensions].join('\n') + '\n';
  checkNoteText(body, 'checkpoint', 'checkpoint');
  return body;
}

/**
 * Parses a checkpoint body strictly. Any non-empty origin is accepted (the spec tells clients not to
 * assume its form); compare it with the origin you expect, or use openCheckpoint which does.
 */
export function parseCheckpoint(body: string): Checkpoint {
  checkNoteText(body, 'checkpoint', 'checkpoint');
  const lines = body.slice(0, -1).split('\n');
  if (lines.length < 3) throw new TranslogError('checkpoint', `checkpoint has ${lines.length} lines; it needs origin, tree size and root hash`);
  const [origin, sizeLine, rootLine, ...extensions] = lines as [string, string, string, ...string[]];
  if (origin === '') throw new TranslogError('checkpoint', 'checkpoint origin (line 1) is empty');
  // At most 16 digits before Number(): anything longer is past 2^53 anyway.
  if (!/^(0|[1-9][0-9]{0,15})$/.test(sizeLine) || !Number.isSafeInteger(Number(sizeLine))) {
    throw new TranslogError('checkpoint', `checkpoint tree size (line 2) ${JSON.stringify(sizeLine.slice(0, 40))} is not a decimal integer without leading zeros up to 2^53-1`);
  }
  const root = decodeBase64Strict(rootLine);
  if (root === undefined || root.length !== HASH_SIZE) {
    throw new TranslogError('checkpoint', `checkpoint root hash (line 3) is not canonical base64 of a ${HASH_SIZE}-byte hash`);
  }
  extensions.forEach((e, i) => {
    if (e === '') throw new TranslogError('checkpoint', `checkpoint extension line ${i + 4} is empty`);
  });
  return extensions.length > 0 ? { origin, size: Number(sizeLine), root, extensions } : { origin, size: Number(sizeLine), root };
}

/**
 * Opens a signed checkpoint of the log `origin`: the note must verify (openNote) and its body parse
 * with that origin. Which signatures are enough (the log's own key, a witness quorum) stays the
 * caller's policy: `signatures` says which verified.
 */
export function openCheckpoint(
  signed: string, origin: string, verifiers: readonly NoteVerifier[],
): { checkpoint: Checkpoint; signatures: NoteSignature[] } {
  const note = openNote(signed, verifiers);
  const checkpoint = parseCheckpoint(note.text);
  if (checkpoint.origin !== origin) {
    throw new TranslogError('checkpoint', `checkpoint is for log ${JSON.stringify(checkpoint.origin)}, not ${JSON.stringify(origin)}`);
  }
  return { checkpoint, signatures: note.signatures };
}
