/**
 * Transparency-log toolkit shared by the server (which keeps a log) and auditors (who check it):
 * RFC 9162 Merkle trees and proofs, C2SP signed notes and checkpoints.
 */
export { TranslogError, type TranslogErrorCode } from './errors.js';
export * from './merkle.js';
export {
  MAX_NOTE_BYTES, MAX_NOTE_SIGNATURES, generateNoteKey, noteKeyPairFromKey, noteSignerFromKey, noteVerifierFromKey, openNote, signNote,
  type NoteSignature, type NoteSigner, type NoteVerifier, type OpenedNote,
} from './note.js';
export { formatCheckpoint, openCheckpoint, parseCheckpoint, type Checkpoint } from './checkpoint.js';
