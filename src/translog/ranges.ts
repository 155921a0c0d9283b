import { TranslogError } from './errors.js';

/**
 * The shape of RFC 9162's recursive tree, computed without hashing anything: which subtrees [start, end)
 * of leaves a proof is made of, and which stored complete nodes make up each subtree. Positions are plain
 * numbers (safe integers, so up to 2^53 - 1 leaves); bit operators are 32-bit in JavaScript, so the
 * arithmetic here divides instead of shifting.
 */

/** A complete subtree: level 0 = leaf hashes; node (level, index) covers leaves [index·2^level, (index+1)·2^level). */
export interface NodeId {
  readonly level: number;
  readonly index: number;
}

/** The leaves [start, end) of one subtree of the RFC's recursion. */
export interface LeafRange {
  readonly start: number;
  readonly end: number;
}

/** Throws 'range' unless `n` is a non-negative safe integer. */
export function checkPosition(n: unknown, what: string): asserts n is number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw new TranslogError('range', `${what} must be a non-negative integer up to 2^53-1, got ${String(n)}`);
  }
}

const TWO_32 = 2 ** 32;

/** floor(log2(n)) for n ≥ 1, exactly, for any safe integer (Math.log2 is a float approximation). */
export function floorLog2(n: number): number {
  if (n < TWO_32) return 31 - Math.clz32(n);
  return 63 - Math.clz32(Math.floor(n / TWO_32));
}

/** The largest power of two ≤ n (n ≥ 1). */
export function floorPow2(n: number): number {
  return 2 ** floorLog2(n);
}

/** RFC 9162's split point: the largest power of two strictly less than n (n ≥ 2). */
export function splitPoint(n: number): number {
  return floorPow2(n - 1);
}

/**
 * The complete nodes whose hashes make up subtree [start, end), largest (leftmost) first. Holds for every
 * subtree of the RFC recursion, whose start is a multiple of the size of its first complete node.
 */
export function decompose(r: LeafRange): NodeId[] {
  const nodes: NodeId[] = [];
  let at = r.start;
  let left = r.end - r.start;
  while (left > 0) {
    const level = floorLog2(left);
    const size = 2 ** level;
    nodes.push({ level, index: at / size });
    at += size;
    left -= size;
  }
  return nodes;
}

/** RFC 9162 §2.1.3.1 PATH(m, D[0:n]): the sibling subtrees from the leaf up to the root. */
export function inclusionRanges(m: number, n: number): LeafRange[] {
  const topDown: LeafRange[] = [];
  let lo = 0;
  let hi = n;
  while (hi - lo > 1) {
    const mid = lo + splitPoint(hi - lo);
    if (m < mid) {
      topDown.push({ start: mid, end: hi });
      hi = mid;
    } else {
      topDown.push({ start: lo, end: mid });
      lo = mid;
    }
  }
  return topDown.reverse();
}

/** RFC 9162 §2.1.4.1 PROOF(m, D[0:n]) for 0 < m < n, in proof order. */
export function consistencyRanges(m: number, n: number): LeafRange[] {
  const topDown: LeafRange[] = [];
  let lo = 0;
  let hi = n;
  // SUBPROOF's flag b: true while the old tree is still a prefix of the left spine, whose hash the verifier has.
  let known = true;
  while (hi !== m) {
    const mid = lo + splitPoint(hi - lo);
    if (m <= mid) {
      topDown.push({ start: mid, end: hi });
      hi = mid;
    } else {
      topDown.push({ start: lo, end: mid });
      lo = mid;
      known = false;
    }
  }
  const proof = topDown.reverse();
  if (!known) proof.unshift({ start: lo, end: hi });
  return proof;
}
