/**
 * Errors of the transparency-log toolkit. Every error carries a stable `code` so callers (log server,
 * auditor, witness) can branch on it without parsing messages; messages say what was wrong.
 *
 * - `range`: a tree size or leaf index that is not a valid position (negative, too large, not an integer)
 * - `malformed`: a hash or proof of the wrong shape (length, count), refused before any hashing
 * - `inclusion` / `consistency`: a well-formed proof that does not prove what it claims
 * - `storage`: a NodeReader or sibling lookup returned something other than what was asked for
 * - `key`: a note signer or verifier key string that does not parse
 * - `note` / `checkpoint`: a signed note or checkpoint body that is malformed or does not verify
 */
export type TranslogErrorCode =
  | 'range'
  | 'malformed'
  | 'inclusion'
  | 'consistency'
  | 'storage'
  | 'key'
  | 'note'
  | 'checkpoint';

export class TranslogError extends Error {
  readonly code: TranslogErrorCode;

  constructor(code: TranslogErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}
