/**
 * RFC 9162 (Certificate Transparency v2, §2.1) Merkle trees over SHA-256: hashing, tree heads of a list
 * or a stream, node storage and proofs for a server that keeps its tree in a database, and proof
 * verification for clients. Each part lives in its own module; this is their public face.
 */
export { EMPTY_ROOT, HASH_SIZE, leafHash, nodeHash } from './hash.js';
export { TreeBuilder, rootOf } from './tree.js';
export type { NodeId } from './ranges.js';
export {
  completedNodes, consistencyProof, inclusionProof, nodesForConsistency, nodesForInclusion, nodesForRoot, rootAt,
  type NodeReader, type StoredNode,
} from './storage.js';
export { MAX_PROOF_HASHES, verifyConsistency, verifyInclusion } from './verify.js';
