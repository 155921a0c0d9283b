// RFC 9162 Merkle trees: the Certificate Transparency reference vectors, the DB-shaped node store against
// the RFC's recursive definitions, and proofs that must refuse every mangling.
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  EMPTY_ROOT, TranslogError, TreeBuilder, completedNodes, consistencyProof, inclusionProof, leafHash, nodeHash,
  nodesForConsistency, nodesForInclusion, nodesForRoot, rootAt, rootOf, verifyConsistency, verifyInclusion,
  type NodeId, type NodeReader,
} from '../../src/translog/index.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Buffer => Buffer.from(s, 'hex');

// The reference leaves and tree heads used by Certificate Transparency implementations (RFC 6962 test
// data): ROOTS[n] is the head of the first n leaves.
const CT_LEAVES = ['', '00', '10', '2021', '3031', '40414243', '5051525354555657', '606162636465666768696a6b6c6d6e6f'].map(unhex);
const ROOTS = [
  'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
  'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
  'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
  'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
  '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
  '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
  'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
  '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
];
const INCLUSION = [
  { index: 0, size: 8, proof: ['96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7', '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e', '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4'] },
  { index: 5, size: 8, proof: ['bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b', 'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0', 'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7'] },
  { index: 2, size: 3, proof: ['fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125'] },
  { index: 0, size: 1, proof: [] },
];
const CONSISTENCY = [
  { from: 2, to: 8, proof: ['5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e', '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4'] },
  { from: 6, to: 8, proof: ['0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a', 'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0', 'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7'] },
  { from: 2, to: 5, proof: ['5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e', 'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b'] },
  { from: 1, to: 1, proof: [] },
];

// --- Test-only transcriptions of the RFC 9162 §2.1 recursive definitions, to compare against. ---
const splitOf = (n: number): number => {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
};
function mth(d: readonly Buffer[]): Buffer {
  if (d.length === 0) return EMPTY_ROOT;
  if (d.length === 1) return d[0] as Buffer;
  const k = splitOf(d.length);
  return nodeHash(mth(d.slice(0, k)), mth(d.slice(k)));
}
function path(m: number, d: readonly Buffer[]): Buffer[] {
  if (d.length <= 1) return [];
  const k = splitOf(d.length);
  return m < k ? [...path(m, d.slice(0, k)), mth(d.slice(k))] : [...path(m - k, d.slice(k)), mth(d.slice(0, k))];
}
function subproof(m: number, d: readonly Buffer[], b: boolean): Buffer[] {
  if (m === d.length) return b ? [] : [mth(d)];
  const k = splitOf(d.length);
  return m <= k ? [...subproof(m, d.slice(0, k), b), mth(d.slice(k))] : [...subproof(m - k, d.slice(k), false), mth(d.slice(0, k))];
}

// --- An in-memory node store filled the way a server fills its database: completedNodes per append. ---
function storeOf(leaves: readonly Buffer[]): { read: NodeReader; calls: () => number; map: Map<string, Buffer> } {
  const map = new Map<string, Buffer>();
  const key = (level: number, index: number): string => `${level}:${index}`;
  leaves.forEach((leaf, i) => {
    for (const n of completedNodes(i, leaf, (level, index) => map.get(key(level, index)) as Buffer)) map.set(key(n.level, n.index), n.hash);
  });
  let calls = 0;
  const read: NodeReader = async (nodes) => {
    calls++;
    return nodes.map((n) => {
      const h = map.get(key(n.level, n.index));
      if (h === undefined) throw new Error(`no node ${key(n.level, n.index)}`);
      return h;
    });
  };
  return { read, calls: () => calls, map };
}

// Deterministic pseudo-random numbers (mulberry32), so a failure replays.
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n | 0;
  };
}

const bitLength = (n: number): number => (n === 0 ? 0 : Math.floor(Math.log2(n)) + 1);

function refused(f: () => void): TranslogError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(TranslogError);
    return err as TranslogError;
  }
  throw new Error('expected a TranslogError, nothing was thrown');
}

describe('RFC 9162 hashing and the reference tree heads', () => {
  const leaves = CT_LEAVES.map(leafHash);

  it('hashes leaves and nodes with the 0x00 / 0x01 prefixes; the empty tree is SHA-256("")', () => {
    expect(hex(EMPTY_ROOT)).toBe(ROOTS[0]);
    expect(hex(leafHash(new Uint8Array(0)))).toBe(ROOTS[1]);
    expect(hex(nodeHash(leaves[0] as Buffer, leaves[1] as Buffer))).toBe(ROOTS[2]);
    expect(() => nodeHash(Buffer.alloc(31), Buffer.alloc(32))).toThrow(TranslogError);
  });

  it('rootOf, TreeBuilder and rootAt over the node store give the published head of every size 0..8', async () => {
    const b = new TreeBuilder();
    const store = storeOf(leaves);
    expect(hex(b.root())).toBe(ROOTS[0]);
    for (let n = 0; n <= 8; n++) {
      if (n > 0) b.append(leaves[n - 1] as Buffer);
      expect(b.size).toBe(n);
      expect(hex(b.root()), `size ${n}`).toBe(ROOTS[n]);
      expect(hex(rootOf(leaves.slice(0, n)))).toBe(ROOTS[n]);
      expect(hex(await rootAt(n, store.read))).toBe(ROOTS[n]);
    }
  });

  it('produces and verifies the published inclusion proofs', async () => {
    const store = storeOf(leaves);
    for (const v of INCLUSION) {
      const proof = await inclusionProof(v.index, v.size, store.read);
      expect(proof.map(hex), `leaf ${v.index} of ${v.size}`).toEqual(v.proof);
      verifyInclusion(leaves[v.index] as Buffer, v.index, v.size, v.proof.map(unhex), unhex(ROOTS[v.size] as string));
    }
  });

  it('produces and verifies the published consistency proofs', async () => {
    const store = storeOf(leaves);
    for (const v of CONSISTENCY) {
      const proof = await consistencyProof(v.from, v.to, store.read);
      expect(proof.map(hex), `${v.from} -> ${v.to}`).toEqual(v.proof);
      verifyConsistency(v.from, v.to, v.proof.map(unhex), unhex(ROOTS[v.from] as string), unhex(ROOTS[v.to] as string));
    }
  });
});

describe('proofs from the node store, against the RFC definitions (sizes up to 300)', () => {
  const rnd = prng(9162);
  const MAX = 300;
  // One leaf more than the largest size tested, so "size + 1" has a real root to be checked against.
  const leaves = Array.from({ length: MAX + 1 }, (_, i) => leafHash(Buffer.from(`leaf ${i} ${rnd(1e9)}`)));
  const store = storeOf(leaves);
  const roots = [EMPTY_ROOT];
  const b = new TreeBuilder();
  for (const l of leaves) {
    b.append(l);
    roots.push(b.root());
  }
  const edges = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, MAX];
  const sizes = [...new Set([...edges, ...Array.from({ length: 16 }, () => 1 + rnd(MAX))])].sort((x, y) => x - y);
  const root = (n: number): Buffer => roots[n] as Buffer;

  it('every tree head (builder, rootAt, rootOf) equals the RFC MTH of every size 0..300', async () => {
    for (let n = 0; n <= MAX; n++) {
      const want = hex(mth(leaves.slice(0, n)));
      expect(hex(root(n)), `builder ${n}`).toBe(want);
      expect(hex(await rootAt(n, store.read)), `rootAt ${n}`).toBe(want);
      expect(nodesForRoot(n).length).toBe([...n.toString(2)].filter((c) => c === '1').length);
    }
    expect(hex(rootOf(leaves.slice(0, MAX)))).toBe(hex(root(MAX)));
  });

  it('every inclusion proof equals RFC PATH, takes one read of O(log n) nodes, and verifies', async () => {
    for (const n of sizes) {
      for (let i = 0; i < n; i++) {
        const before = store.calls();
        const proof = await inclusionProof(i, n, store.read);
        expect(store.calls() - before).toBe(n > 1 ? 1 : 0);
        expect(nodesForInclusion(i, n).length).toBeLessThanOrEqual(2 * bitLength(n));
        if (n <= 64) expect(proof.map(hex)).toEqual(path(i, leaves.slice(0, n)).map(hex));
        verifyInclusion(leaves[i] as Buffer, i, n, proof, root(n));
      }
    }
  });

  it('every consistency proof equals RFC PROOF, takes one read of O(log n) nodes, and verifies', async () => {
    for (const n of sizes) {
      for (let m = 1; m <= n; m++) {
        const before = store.calls();
        const proof = await consistencyProof(m, n, store.read);
        expect(store.calls() - before).toBe(m < n ? 1 : 0);
        expect(nodesForConsistency(m, n).length).toBeLessThanOrEqual(2 * bitLength(n) + 1);
        if (n <= 64) expect(proof.map(hex)).toEqual((m === n ? [] : subproof(m, leaves.slice(0, n), true)).map(hex));
        verifyConsistency(m, n, proof, root(m), root(n));
      }
    }
  });

  const flipped = (h: Buffer): Buffer => {
    const out = Buffer.from(h);
    const at = rnd(32);
    out.writeUInt8((out.readUInt8(at) ^ (1 << rnd(8))) & 0xff, at);
    return out;
  };
  const flipBit = (proof: readonly Buffer[]): Buffer[] => {
    const out = [...proof];
    const k = rnd(out.length);
    out[k] = flipped(out[k] as Buffer);
    return out;
  };
  const drop = (proof: readonly Buffer[]): Buffer[] => {
    const k = rnd(proof.length);
    return proof.filter((_, j) => j !== k);
  };
  const extra = (proof: readonly Buffer[]): Buffer[] => {
    const out = [...proof];
    out.splice(rnd(out.length + 1), 0, crypto.randomBytes(32));
    return out;
  };
  const swap = (proof: readonly Buffer[]): Buffer[] => {
    const out = [...proof];
    const k = rnd(out.length - 1);
    [out[k], out[k + 1]] = [out[k + 1] as Buffer, out[k] as Buffer];
    return out;
  };

  it('refuses every mangled inclusion proof, wrong leaf, index, size or root', async () => {
    for (const n of sizes) {
      for (let i = 0; i < n; i++) {
        const leaf = leaves[i] as Buffer;
        const proof = await inclusionProof(i, n, store.read);
        const bad: Array<[string, () => void]> = [
          ['extra hash', () => verifyInclusion(leaf, i, n, extra(proof), root(n))],
          ['other leaf', () => verifyInclusion(leaves[(i + 1) % MAX] as Buffer, i, n, proof, root(n))],
          ['wrong root', () => verifyInclusion(leaf, i, n, proof, flipped(root(n)))],
          ['flipped leaf', () => verifyInclusion(flipped(leaf), i, n, proof, root(n))],
          ['index + 1', () => verifyInclusion(leaf, i + 1, n, proof, root(n))],
          ['size + 1', () => verifyInclusion(leaf, i, n + 1, proof, root(n + 1))],
        ];
        if (proof.length > 0) {
          bad.push(['bit flip', () => verifyInclusion(leaf, i, n, flipBit(proof), root(n))]);
          bad.push(['dropped hash', () => verifyInclusion(leaf, i, n, drop(proof), root(n))]);
        }
        if (proof.length > 1) bad.push(['swapped hashes', () => verifyInclusion(leaf, i, n, swap(proof), root(n))]);
        if (i > 0) bad.push(['index - 1', () => verifyInclusion(leaf, i - 1, n, proof, root(n))]);
        if (n - 1 > i) bad.push(['size - 1', () => verifyInclusion(leaf, i, n - 1, proof, root(n - 1))]);
        for (const [what, f] of bad) {
          try {
            refused(f);
          } catch (err) {
            throw new Error(`inclusion ${i}/${n}: ${what} was accepted`, { cause: err });
          }
        }
      }
    }
  });

  it('refuses every mangled consistency proof, wrong size or root', async () => {
    for (const n of sizes) {
      for (let m = 1; m < n; m++) {
        const proof = await consistencyProof(m, n, store.read);
        const bad: Array<[string, () => void]> = [
          ['bit flip', () => verifyConsistency(m, n, flipBit(proof), root(m), root(n))],
          ['dropped hash', () => verifyConsistency(m, n, drop(proof), root(m), root(n))],
          ['extra hash', () => verifyConsistency(m, n, extra(proof), root(m), root(n))],
          ['old size + 1', () => verifyConsistency(m + 1, n, proof, root(m + 1), root(n))],
          ['new size + 1', () => verifyConsistency(m, n + 1, proof, root(m), root(n + 1))],
          ['wrong old root', () => verifyConsistency(m, n, proof, flipped(root(m)), root(n))],
          ['wrong new root', () => verifyConsistency(m, n, proof, root(m), flipped(root(n)))],
          ['roots swapped', () => verifyConsistency(m, n, proof, root(n), root(m))],
        ];
        if (proof.length > 1) bad.push(['swapped hashes', () => verifyConsistency(m, n, swap(proof), root(m), root(n))]);
        if (m > 1) bad.push(['old size - 1', () => verifyConsistency(m - 1, n, proof, root(m - 1), root(n))]);
        if (n - 1 > m) bad.push(['new size - 1', () => verifyConsistency(m, n - 1, proof, root(m), root(n - 1))]);
        for (const [what, f] of bad) {
          try {
            refused(f);
          } catch (err) {
            throw new Error(`consistency ${m} -> ${n}: ${what} was accepted`, { cause: err });
          }
        }
      }
    }
  });
});

describe('edge cases and hostile input', () => {
  const leaves = CT_LEAVES.map(leafHash);
  const r = (n: number): Buffer => unhex(ROOTS[n] as string);
  const code = (f: () => void): string => refused(f).code;

  it('inclusion: index out of the tree, bad sizes, wrong hash lengths, overlong proofs', () => {
    const leaf = leaves[0] as Buffer;
    expect(code(() => verifyInclusion(leaf, 8, 8, [], r(8)))).toBe('inclusion');
    expect(code(() => verifyInclusion(leaf, 0, 0, [], EMPTY_ROOT))).toBe('inclusion');
    expect(code(() => verifyInclusion(leaf, -1, 8, [], r(8)))).toBe('range');
    expect(code(() => verifyInclusion(leaf, 0.5, 8, [], r(8)))).toBe('range');
    expect(code(() => verifyInclusion(leaf, 0, 2 ** 53, [], r(8)))).toBe('range');
    expect(code(() => verifyInclusion(leaf.subarray(1), 0, 1, [], leaf))).toBe('malformed');
    expect(code(() => verifyInclusion(leaf, 0, 1, [], Buffer.alloc(33)))).toBe('malformed');
    expect(code(() => verifyInclusion(leaf, 0, 8, [Buffer.alloc(32), Buffer.alloc(31), Buffer.alloc(32)], r(8)))).toBe('malformed');
    expect(code(() => verifyInclusion(leaf, 0, 8, Array.from({ length: 129 }, () => Buffer.alloc(32)), r(8)))).toBe('malformed');
    expect(code(() => verifyInclusion(leaf, 0, 8, 'nope' as unknown as Buffer[], r(8)))).toBe('malformed');
    // A one-leaf tree: its root is the leaf hash, with an empty proof.
    verifyInclusion(leaf, 0, 1, [], leaf);
  });

  it('consistency: shrinking, equal sizes, the empty tree, wrong lengths', () => {
    expect(code(() => verifyConsistency(8, 6, [], r(8), r(6)))).toBe('consistency');
    expect(code(() => verifyConsistency(0, 8, [], EMPTY_ROOT, r(8)))).toBe('consistency');
    verifyConsistency(8, 8, [], r(8), r(8));
    expect(code(() => verifyConsistency(8, 8, [], r(8), r(7)))).toBe('consistency');
    expect(code(() => verifyConsistency(8, 8, [r(1)], r(8), r(8)))).toBe('malformed');
    expect(code(() => verifyConsistency(6, 8, [], r(6), r(8)))).toBe('malformed');
    expect(code(() => verifyConsistency(6, 8, [r(1)], r(6).subarray(2), r(8)))).toBe('malformed');
    expect(code(() => verifyConsistency(1, 2, Array.from({ length: 200 }, () => r(1)), r(1), r(2)))).toBe('malformed');
  });

  it('proof generation refuses impossible positions before reading', async () => {
    const store = storeOf(leaves);
    await expect(inclusionProof(8, 8, store.read)).rejects.toMatchObject({ code: 'range' });
    await expect(consistencyProof(5, 3, store.read)).rejects.toMatchObject({ code: 'range' });
    await expect(consistencyProof(0, 3, store.read)).rejects.toMatchObject({ code: 'range' });
    await expect(rootAt(-1, store.read)).rejects.toMatchObject({ code: 'range' });
    expect(store.calls()).toBe(0);
    expect(hex(await rootAt(0, store.read))).toBe(ROOTS[0]);
    expect(store.calls()).toBe(0);
  });

  it('a node reader that returns the wrong count or hash sizes is reported, not trusted', async () => {
    const short: NodeReader = async (nodes) => nodes.slice(1).map(() => Buffer.alloc(32));
    const wrong: NodeReader = async (nodes) => nodes.map(() => Buffer.alloc(20));
    await expect(rootAt(7, short)).rejects.toMatchObject({ code: 'storage' });
    await expect(inclusionProof(1, 7, wrong)).rejects.toMatchObject({ code: 'storage' });
  });

  it('completedNodes: a right child completes its ancestors; a bad sibling lookup is reported', () => {
    const store = storeOf(leaves.slice(0, 7));
    const got = completedNodes(7, leaves[7] as Buffer, (level, index) => store.map.get(`${level}:${index}`) as Buffer);
    expect(got.map((n) => [n.level, n.index])).toEqual([[0, 7], [1, 3], [2, 1], [3, 0]]);
    expect(hex((got[3] as { hash: Buffer }).hash)).toBe(ROOTS[8]);
    expect(completedNodes(6, leaves[6] as Buffer, () => { throw new Error('not asked'); })).toHaveLength(1);
    expect(code(() => completedNodes(7, leaves[7] as Buffer, () => undefined as unknown as Buffer))).toBe('storage');
  });

  it('TreeBuilder refuses non-hashes and keeps its state to itself', () => {
    const b = new TreeBuilder();
    expect(code(() => b.append(Buffer.alloc(31)))).toBe('malformed');
    const leaf = Buffer.from(leaves[0] as Buffer);
    b.append(leaf);
    leaf.fill(0);
    b.root().fill(0);
    expect(hex(b.root())).toBe(ROOTS[1]);
    expect(b.size).toBe(1);
  });

  it('node addressing stays exact up to 2^53 - 1 leaves', () => {
    const big = 2 ** 53 - 1;
    const root: NodeId[] = nodesForRoot(big);
    expect(root).toHaveLength(53);
    expect(root[0]).toEqual({ level: 52, index: 0 });
    expect(root[52]).toEqual({ level: 0, index: big - 1 });
    expect(nodesForRoot(2 ** 52 + 3)).toEqual([{ level: 52, index: 0 }, { level: 1, index: 2 ** 51 }, { level: 0, index: 2 ** 52 + 2 }]);
    expect(nodesForInclusion(big - 1, big).length).toBeLessThanOrEqual(106);
    expect(nodesForInclusion(0, big).length).toBeLessThanOrEqual(106);
    expect(nodesForConsistency(2 ** 40 + 5, big).length).toBeLessThanOrEqual(107);
    expect(code(() => nodesForRoot(2 ** 53))).toBe('range');
  });

  // 2^17 + 3 leaves: past every power of two a small test reaches, with a ragged right edge; the
  // million-leaf figures are bench/evidence.ts's (a test with a time bound would measure the machine's load).
  it('rootOf handles a large, ragged tree in one pass', () => {
    const n = 131_075;
    const pool = crypto.randomBytes(32 * n);
    const list = Array.from({ length: n }, (_, i) => pool.subarray(32 * i, 32 * i + 32));
    const got = rootOf(list);
    // Reference: level by level, carrying an odd last node up (equivalent to the RFC split).
    let level: Buffer[] = list;
    while (level.length > 1) {
      const next: Buffer[] = [];
      for (let i = 0; i + 1 < level.length; i += 2) next.push(nodeHash(level[i] as Buffer, level[i + 1] as Buffer));
      if (level.length % 2 === 1) next.push(level[level.length - 1] as Buffer);
      level = next;
    }
    expect(hex(got)).toBe(hex(level[0] as Buffer));
  });
});
