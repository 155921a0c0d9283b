import { TranslogError } from './errors.js';
import { EMPTY_ROOT, assertHash, nodeHash } from './hash.js';

/**
 * An append-only Merkle tree kept as its "compact range": the roots of the complete subtrees that
 * partition the leaves so far, largest first, one per set bit of the size, so O(log n) hashes. Appending
 * merges equal-sized neighbours (like carrying in binary addition); the root of any size is the
 * right-to-left fold of the range, which is exactly RFC 9162's split (left subtree = largest power of two).
 * An auditor streams a log through one builder and asks root() at every checkpoint size.
 */
export class TreeBuilder {
  #size = 0;
  readonly #range: Buffer[] = [];

  /** Number of leaves appended so far. */
  get size(): number {
    return this.#size;
  }

  /** Appends one leaf hash (leafHash(entry), 32 bytes). */
  append(leafHash: Uint8Array): void {
    assertHash(leafHash, 'leaf hash');
    if (this.#size >= Number.MAX_SAFE_INTEGER) throw new TranslogError('range', 'tree is full: 2^53-1 leaves');
    let h: Uint8Array = leafHash;
    // Each trailing 1 bit of the old size is a complete subtree of the same size as the one being carried.
    for (let s = this.#size; s % 2 === 1; s = (s - 1) / 2) h = nodeHash(this.#range.pop() as Buffer, h);
    // Copy a leaf kept as is: the caller may reuse its buffer.
    this.#range.push(h === leafHash ? Buffer.from(leafHash) : (h as Buffer));
    this.#size++;
  }

  /** The tree head (RFC 9162 MTH) of the leaves appended so far; EMPTY_ROOT for none. */
  root(): Buffer {
    return foldRange(this.#range);
  }
}

/** The tree head of a whole list of leaf hashes, in one pass and O(log n) memory. */
export function rootOf(leafHashes: readonly Uint8Array[]): Buffer {
  const b = new TreeBuilder();
  for (let i = 0; i < leafHashes.length; i++) b.append(leafHashes[i] as Uint8Array);
  return b.root();
}

/** MTH from a compact range (subtree roots, largest first): fold from the right. Always a fresh buffer. */
export function foldRange(range: readonly Buffer[]): Buffer {
  if (range.length === 0) return Buffer.from(EMPTY_ROOT);
  // A one-node range is returned as a copy, so a caller cannot write into a builder's state.
  if (range.length === 1) return Buffer.from(range[0] as Buffer);
  let acc = range[range.length - 1] as Buffer;
  for (let i = range.length - 2; i >= 0; i--) acc = nodeHash(range[i] as Buffer, acc);
  return acc;
}
