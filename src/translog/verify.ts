import { TranslogError } from './errors.js';
import { assertHash, nodeHash } from './hash.js';
import { checkPosition, consistencyRanges, floorPow2, inclusionRanges } from './ranges.js';

/**
 * Proof verification, RFC 9162 §2.1.3.2 and §2.1.4.2, as written there (bit walks over fn/sn), so it can
 * be checked line by line against the RFC. Pure and synchronous; every failure throws a TranslogError.
 * Input shape is checked first, before any hashing (array of at most MAX_PROOF_HASHES 32-byte hashes,
 * exactly as many as the sizes call for), so a hostile proof costs at most ~54 hashes: that is the
 * longest proof in a tree of up to 2^53 leaves.
 */

/** Upper bound on proof length accepted from anyone, checked before anything else. */
export const MAX_PROOF_HASHES = 128;

/** Throws unless `proof` proves that `leafHash` is leaf `leafIndex` of the tree of size `treeSize` with head `root`. */
export function verifyInclusion(
  leafHash: Uint8Array, leafIndex: number, treeSize: number, proof: readonly Uint8Array[], root: Uint8Array,
): void {
  checkProofShape(proof);
  checkPosition(leafIndex, 'leaf index');
  checkPosition(treeSize, 'tree size');
  assertHash(leafHash, 'leaf hash');
  assertHash(root, 'root');
  if (leafIndex >= treeSize) throw new TranslogError('inclusion', `leaf index ${leafIndex} is not in a tree of size ${treeSize}`);
  const want = inclusionRanges(leafIndex, treeSize).length;
  if (proof.length !== want) {
    throw new TranslogError('malformed', `inclusion proof for leaf ${leafIndex} of ${treeSize} must have ${want} hashes, got ${proof.length}`);
  }
  let fn = leafIndex;
  let sn = treeSize - 1;
  let r: Uint8Array = leafHash;
  for (const p of proof) {
    if (sn === 0) throw new TranslogError('inclusion', 'inclusion proof is longer than the path to the root');
    if (fn % 2 === 1 || fn === sn) {
      r = nodeHash(p, r);
      // A right-edge node with no right sibling at this level: climb until fn is a right child again.
      while (fn % 2 === 0 && fn !== 0) [fn, sn] = [fn / 2, Math.floor(sn / 2)];
    } else {
      r = nodeHash(r, p);
    }
    [fn, sn] = [Math.floor(fn / 2), Math.floor(sn / 2)];
  }
  if (sn !== 0) throw new TranslogError('inclusion', 'inclusion proof is shorter than the path to the root');
  if (!equal(r, root)) {
    throw new TranslogError('inclusion', `leaf ${leafIndex} is not in the tree of size ${treeSize} with this root: the proof computes a different root`);
  }
}

/**
 * Throws unless `proof` proves that the tree of size `newSize` with head `newRoot` extends the tree of
 * size `oldSize` with head `oldRoot`. Equal sizes need an empty proof and equal roots. oldSize 0 is
 * refused: the empty tree is a prefix of every tree, so such a "proof" would prove nothing and
 * accepting it would let a caller skip the check it meant to make; compare against EMPTY_ROOT instead.
 */
export function verifyConsistency(
  oldSize: number, newSize: number, proof: readonly Uint8Array[], oldRoot: Uint8Array, newRoot: Uint8Array,
): void {
  checkProofShape(proof);
  checkPosition(oldSize, 'old tree size');
  checkPosition(newSize, 'new tree size');
  assertHash(oldRoot, 'old root');
  assertHash(newRoot, 'new root');
  if (oldSize > newSize) throw new TranslogError('consistency', `old tree size ${oldSize} is larger than new tree size ${newSize}: a log never shrinks`);
  if (oldSize === 0) throw new TranslogError('consistency', 'nothing to prove from the empty tree: every tree extends it (check the old root is EMPTY_ROOT instead)');
  if (oldSize === newSize) {
    if (proof.length !== 0) throw new TranslogError('malformed', `consistency proof between equal sizes must be empty, got ${proof.length} hashes`);
    if (!equal(oldRoot, newRoot)) throw new TranslogError('consistency', `two different roots for the same tree size ${oldSize}: the log forked`);
    return;
  }
  const want = consistencyRanges(oldSize, newSize).length;
  if (proof.length !== want) {
    throw new TranslogError('malformed', `consistency proof from ${oldSize} to ${newSize} must have ${want} hashes, got ${proof.length}`);
  }
  // RFC 9162 §2.1.4.2, steps 2-7.
  const path: Uint8Array[] = isPowerOf2(oldSize) ? [oldRoot, ...proof] : [...proof];
  let fn = oldSize - 1;
  let sn = newSize - 1;
  while (fn % 2 === 1) [fn, sn] = [(fn - 1) / 2, Math.floor(sn / 2)];
  let fr = path[0] as Uint8Array;
  let sr = fr;
  for (let i = 1; i < path.length; i++) {
    const c = path[i] as Uint8Array;
    if (sn === 0) throw new TranslogError('consistency', 'consistency proof is longer than the path to the new root');
    if (fn % 2 === 1 || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while (fn % 2 === 0 && fn !== 0) [fn, sn] = [fn / 2, Math.floor(sn / 2)];
    } else {
      sr = nodeHash(sr, c);
    }
    [fn, sn] = [Math.floor(fn / 2), Math.floor(sn / 2)];
  }
  if (sn !== 0) throw new TranslogError('consistency', 'consistency proof is shorter than the path to the new root');
  if (!equal(fr, oldRoot)) throw new TranslogError('consistency', `consistency proof does not reproduce the old root of size ${oldSize}`);
  if (!equal(sr, newRoot)) throw new TranslogError('consistency', `consistency proof does not reproduce the new root of size ${newSize}`);
}

function checkProofShape(proof: readonly Uint8Array[]): void {
  if (!Array.isArray(proof)) throw new TranslogError('malformed', 'proof is not an array of hashes');
  if (proof.length > MAX_PROOF_HASHES) {
    throw new TranslogError('malformed', `proof has ${proof.length} hashes; no proof in a tree of up to 2^53 leaves has more than ${MAX_PROOF_HASHES}`);
  }
  proof.forEach((h, i) => assertHash(h, `proof hash ${i}`));
}

function isPowerOf2(n: number): boolean {
  return n > 0 && floorPow2(n) === n;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(a, b) === 0;
}
