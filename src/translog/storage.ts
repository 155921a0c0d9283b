import { TranslogError } from './errors.js';
import { HASH_SIZE, assertHash, nodeHash } from './hash.js';
import {
  checkPosition, consistencyRanges, decompose, inclusionRanges, type LeafRange, type NodeId,
} from './ranges.js';
import { foldRange } from './tree.js';

/**
 * A log server keeps its tree in a database as complete subtree nodes addressed by (level, index)
 * (see NodeId). Nodes are written once, when they become complete, and never change; any tree head or
 * proof of any past size is then computed from at most O(log n) of them, fetched in one round trip.
 */

/** Batch lookup of stored complete nodes: returns their hashes in the order asked, in one round trip. */
export type NodeReader = (nodes: readonly NodeId[]) => Promise<readonly Buffer[]>;

/** A stored complete node and its hash. */
export interface StoredNode extends NodeId {
  readonly hash: Buffer;
}

/**
 * The nodes that become complete when leaf `leafIndex` is appended, level 0 (the leaf itself) first.
 * `sibling(level, index)` must return already stored left siblings (the caller's batch or cache); it is
 * asked once per trailing 1 bit of leafIndex, so O(log n) times at worst and once on average.
 */
export function completedNodes(
  leafIndex: number,
  leafHash: Uint8Array,
  sibling: (level: number, index: number) => Uint8Array,
): StoredNode[] {
  checkPosition(leafIndex, 'leaf index');
  assertHash(leafHash, 'leaf hash');
  let hash: Buffer = Buffer.from(leafHash);
  const out: StoredNode[] = [{ level: 0, index: leafIndex, hash }];
  let level = 0;
  // A right child (odd index) completes its parent, whose left child is already stored.
  for (let index = leafIndex; index % 2 === 1; index = (index - 1) / 2) {
    const left = sibling(level, index - 1);
    if (!(left instanceof Uint8Array) || left.length !== HASH_SIZE) {
      throw new TranslogError('storage', `sibling lookup for node (${level}, ${index - 1}) did not return a ${HASH_SIZE}-byte hash`);
    }
    hash = nodeHash(left, hash);
    level++;
    out.push({ level, index: (index - 1) / 2, hash });
  }
  return out;
}

/** The stored nodes an inclusion proof for leaf `leafIndex` in a tree of `treeSize` is computed from. */
export function nodesForInclusion(leafIndex: number, treeSize: number): NodeId[] {
  return plan(inclusionPlan(leafIndex, treeSize)).nodes;
}

/** The stored nodes a consistency proof from `oldSize` to `newSize` is computed from. */
export function nodesForConsistency(oldSize: number, newSize: number): NodeId[] {
  return plan(consistencyPlan(oldSize, newSize)).nodes;
}

/** The stored nodes the tree head of `treeSize` is computed from (one per set bit of the size). */
export function nodesForRoot(treeSize: number): NodeId[] {
  checkPosition(treeSize, 'tree size');
  return decompose({ start: 0, end: treeSize });
}

/** The RFC 9162 inclusion proof (audit path) of leaf `leafIndex` in the tree of size `treeSize`. */
export async function inclusionProof(leafIndex: number, treeSize: number, read: NodeReader): Promise<Buffer[]> {
  return assemble(plan(inclusionPlan(leafIndex, treeSize)), read);
}

/** The RFC 9162 consistency proof from tree size `oldSize` to `newSize` (0 < oldSize ≤ newSize). */
export async function consistencyProof(oldSize: number, newSize: number, read: NodeReader): Promise<Buffer[]> {
  return assemble(plan(consistencyPlan(oldSize, newSize)), read);
}

/** The tree head (RFC 9162 MTH) of the first `treeSize` leaves; EMPTY_ROOT for 0 (without reading). */
export async function rootAt(treeSize: number, read: NodeReader): Promise<Buffer> {
  const nodes = nodesForRoot(treeSize);
  return foldRange(await readAll(nodes, read));
}

function inclusionPlan(leafIndex: number, treeSize: number): LeafRange[] {
  checkPosition(leafIndex, 'leaf index');
  checkPosition(treeSize, 'tree size');
  if (leafIndex >= treeSize) throw new TranslogError('range', `leaf index ${leafIndex} is not in a tree of size ${treeSize}`);
  return inclusionRanges(leafIndex, treeSize);
}

function consistencyPlan(oldSize: number, newSize: number): LeafRange[] {
  checkPosition(oldSize, 'old tree size');
  checkPosition(newSize, 'new tree size');
  if (oldSize > newSize) throw new TranslogError('range', `old tree size ${oldSize} is larger than new tree size ${newSize}`);
  // RFC 9162 §2.1.4: the empty tree is consistent with everything, so there is nothing to prove.
  if (oldSize === 0) throw new TranslogError('range', 'no consistency proof from the empty tree: every tree extends it');
  if (oldSize === newSize) return [];
  return consistencyRanges(oldSize, newSize);
}

interface Plan {
  readonly nodes: NodeId[];
  /** For each proof hash, how many of `nodes` (consecutively) it folds. */
  readonly counts: number[];
}

function plan(ranges: readonly LeafRange[]): Plan {
  const nodes: NodeId[] = [];
  const counts: number[] = [];
  for (const r of ranges) {
    const parts = decompose(r);
    nodes.push(...parts);
    counts.push(parts.length);
  }
  return { nodes, counts };
}

async function assemble(p: Plan, read: NodeReader): Promise<Buffer[]> {
  const hashes = await readAll(p.nodes, read);
  const proof: Buffer[] = [];
  let at = 0;
  for (const n of p.counts) {
    proof.push(foldRange(hashes.slice(at, at + n)));
    at += n;
  }
  return proof;
}

async function readAll(nodes: NodeId[], read: NodeReader): Promise<Buffer[]> {
  if (nodes.length === 0) return [];
  const got = await read(nodes);
  if (!Array.isArray(got) || got.length !== nodes.length) {
    throw new TranslogError('storage', `node reader returned ${Array.isArray(got) ? got.length : 'no array of'} hashes for ${nodes.length} nodes`);
  }
  return nodes.map((n, i) => {
    const h = got[i];
    if (!(h instanceof Uint8Array) || h.length !== HASH_SIZE) {
      throw new TranslogError('storage', `node reader returned no ${HASH_SIZE}-byte hash for node (${n.level}, ${n.index}): is the tree that large yet?`);
    }
    return Buffer.from(h.buffer, h.byteOffset, h.length);
  });
}
