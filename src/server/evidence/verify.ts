// The auditor's check of an evidence-log export (terroir-server audit verify): needs only the export
// and the audit public key — no server, no database. It rebuilds the Merkle tree from the leaves,
// checks every checkpoint's signature and root (each checkpoint is then a prefix of the next:
// consistency), and re-verifies every attestation record from its own evidence: the AK's quote
// signature, the nonce and claims binding, the PCR digest, and the location decision recomputed
// under the recorded policy. It stops at, and names, the first thing that fails.
import { createHash } from 'node:crypto';
import { decodeRecord, type AttestationRecord, type EvidenceRecord, type PolicyRecord, type RecordedQuote } from '../../evidence/record.js';
import { pcrSelectorsQualifyingData, unifiedIdentityQualifyingData } from '../../api/agent-api.js';
import { evaluatePolicy, parsePolicies, type LandmarkDisk, type OperatorVerification, type PolicySet } from '../../geo/index.js';
import { checkAkAttributes, ekHash, parseTpm2bPublic, verifyQuote } from '../../tpm/index.js';
import { leafHash, noteVerifierFromKey, openNote, parseCheckpoint, TreeBuilder, type NoteVerifier } from '../../translog/index.js';
import { parseClaimsDocument, PLACE_FIELDS, placeClaims } from '../attestation/unified.js';
import { EXPORT_FORMAT, type ExportCheckpointLine, type ExportHeader, type ExportLeafLine } from './export.js';

export interface VerifyOptions {
  /** C2SP verifier keys (`<name>+<hash>+<key>`) trusted to sign this log's checkpoints. */
  verifierKeys: string[];
  /** Checkpoints the auditor kept from earlier (signed notes): the export must contain their trees. */
  pinnedCheckpoints?: string[];
}

export interface VerifyReport {
  ok: boolean;
  origin?: string;
  /** Leaves read. */
  size: number;
  checkpoints: number;
  records: Record<EvidenceRecord['kind'], number>;
  attestations: { accepted: number; refused: number; reverified: number };
  /** Leaves whose bodies retention pruned (their hashes still checked in the tree). */
  pruned: number;
  /** The first failure: the leaf index when one record is at fault, and what was wrong. */
  failure?: { index?: number; reason: string };
}

class Failure extends Error {
  constructor(readonly index: number | undefined, message: string) {
    super(message);
  }
}

interface CheckpointAt {
  size: number;
  root: Buffer;
  what: string;
}

/** Checks an export given as lines (JSON Lines, as `audit export` writes it). */
export async function verifyExport(lines: AsyncIterable<string> | Iterable<string>, opts: VerifyOptions): Promise<VerifyReport> {
  const report: VerifyReport = {
    ok: false, size: 0, checkpoints: 0, records: { attestation: 0, policy: 0, issuance: 0, event: 0 },
    attestations: { accepted: 0, refused: 0, reverified: 0 }, pruned: 0,
  };
  try {
    await run(lines, opts, report);
    report.ok = true;
  } catch (err) {
    if (!(err instanceof Failure)) throw err;
    report.failure = { ...(err.index !== undefined ? { index: err.index } : {}), reason: err.message };
  }
  return report;
}

async function run(lines: AsyncIterable<string> | Iterable<string>, opts: VerifyOptions, report: VerifyReport): Promise<void> {
  let verifiers: NoteVerifier[];
  try {
    verifiers = opts.verifierKeys.map((k) => noteVerifierFromKey(k));
  } catch (err) {
    throw new Failure(undefined, `a verifier key is not a C2SP Ed25519 key (<name>+<hash>+<key>): ${(err as Error).message}`);
  }
  if (verifiers.length === 0) throw new Failure(undefined, 'no verifier key given: pass the audit public key (terroir-server audit key)');

  let header: ExportHeader | undefined;
  const due: CheckpointAt[] = [];
  const tree = new TreeBuilder();
  const state = new AuditState();
  let lineNo = 0;
  for await (const raw of lines) {
    lineNo++;
    if (raw.trim() === '') continue;
    let line: unknown;
    try {
      line = JSON.parse(raw);
    } catch {
      throw new Failure(undefined, `line ${lineNo} of the export is not JSON`);
    }
    if (header === undefined) {
      header = readHeader(line);
      report.origin = header.origin;
      for (const note of opts.pinnedCheckpoints ?? []) due.push(openCheckpoint(note, verifiers, header.origin, 'the pinned checkpoint'));
      continue;
    }
    const o = line as Record<string, unknown>;
    if (typeof o['checkpoint'] === 'string') {
      if (report.size > 0) throw new Failure(undefined, `line ${lineNo}: a checkpoint after the first leaf (the export lists checkpoints first)`);
      const cp = openCheckpoint((o as unknown as ExportCheckpointLine).checkpoint, verifiers, header.origin, `checkpoint ${report.checkpoints + 1}`);
      const last = due.filter((d) => d.what.startsWith('checkpoint')).at(-1);
      if (last !== undefined && cp.size <= last.size) throw new Failure(undefined, `checkpoints are not in increasing size order (${cp.size} after ${last.size})`);
      due.push(cp);
      report.checkpoints++;
      continue;
    }
    const leaf = readLeaf(o, lineNo);
    if (leaf.i !== report.size) {
      throw new Failure(report.size, leaf.i > report.size
        ? `leaf ${report.size} is missing (the next one is ${leaf.i}): a record was deleted, or records were reordered`
        : `leaf ${leaf.i} appears where leaf ${report.size} belongs: records were reordered or duplicated`);
    }
    let hash: Buffer = Buffer.from(leaf.hash, 'hex');
    if (leaf.body !== null) {
      const body = Buffer.from(leaf.body, 'base64');
      const computed = leafHash(body);
      if (!computed.equals(hash)) throw new Failure(leaf.i, `record ${leaf.i} does not hash to its leaf hash: the record was edited`);
      hash = computed;
      let record: EvidenceRecord;
      try {
        record = decodeRecord(body);
      } catch (err) {
        throw new Failure(leaf.i, `record ${leaf.i} cannot be read: ${(err as Error).message}`);
      }
      report.records[record.kind]++;
      try {
        state.check(leaf.i, record, report);
      } catch (err) {
        if (err instanceof Failure) throw err;
        throw new Failure(leaf.i, `record ${leaf.i} (${record.kind}) fails re-verification: ${(err as Error).message}`);
      }
    } else {
      report.pruned++;
      state.prunedLeaf(leaf.i);
    }
    tree.append(hash);
    report.size++;
    for (const cp of due) {
      if (cp.size !== report.size) continue;
      if (!tree.root().equals(cp.root)) {
        throw new Failure(undefined, `${cp.what} (size ${cp.size}) does not match the records: the tree of the first ${cp.size} records has another root; `
          + 'a record before it was edited, deleted, inserted or reordered');
      }
    }
  }
  if (header === undefined) throw new Failure(undefined, 'the export is empty');
  const beyond = due.filter((d) => d.size > report.size);
  if (beyond.length > 0) {
    throw new Failure(undefined, `the export ends at ${report.size} records but ${beyond[0]!.what} covers ${beyond[0]!.size}: records at the end were removed (truncated)`);
  }
  if (report.size !== header.size) throw new Failure(undefined, `the export holds ${report.size} records but its header says ${header.size}: it was truncated or extended`);
  const newest = due.filter((d) => d.what.startsWith('checkpoint')).at(-1);
  if (report.size > 0 && (newest === undefined || newest.size !== report.size)) {
    throw new Failure(undefined, `records ${newest?.size ?? 0}..${report.size - 1} are covered by no signed checkpoint: nothing vouches for them (export again from the server, which signs one at export)`);
  }
}

function readHeader(line: unknown): ExportHeader {
  const h = line as Partial<ExportHeader> | null;
  if (h === null || typeof h !== 'object' || h.format !== EXPORT_FORMAT || h.v !== 1 || typeof h.origin !== 'string' || !Number.isSafeInteger(h.size) || (h.size as number) < 0) {
    throw new Failure(undefined, `the first line is not a ${EXPORT_FORMAT} v1 header`);
  }
  return h as ExportHeader;
}

function readLeaf(o: Record<string, unknown>, lineNo: number): ExportLeafLine {
  const i = o['i'];
  const hash = o['hash'];
  const body = o['body'];
  if (!Number.isSafeInteger(i) || (i as number) < 0 || typeof hash !== 'string' || !/^[0-9a-f]{64}$/.test(hash) || (body !== null && typeof body !== 'string')) {
    throw new Failure(undefined, `line ${lineNo} is not a leaf line {"i", "hash", "body"}`);
  }
  return { i: i as number, hash, body: body as string | null };
}

function openCheckpoint(note: string, verifiers: NoteVerifier[], origin: string, what: string): CheckpointAt {
  let text: string;
  try {
    text = openNote(note, verifiers).text;
  } catch (err) {
    throw new Failure(undefined, `${what} is not signed by the audit key: ${(err as Error).message}`);
  }
  let cp: { origin: string; size: number; root: Buffer };
  try {
    cp = parseCheckpoint(text);
  } catch (err) {
    throw new Failure(undefined, `${what} is not a checkpoint: ${(err as Error).message}`);
  }
  if (cp.origin !== origin) throw new Failure(undefined, `${what} is of log "${cp.origin}", not "${origin}"`);
  return { size: cp.size, root: cp.root, what };
}

/** What the re-verification remembers across records: policies by index, nonces, accepted attestations. */
class AuditState {
  private readonly policies = new Map<number, { record: PolicyRecord; set: PolicySet }>();
  private readonly nonces = new Set<string>();
  private readonly tokens = new Set<string>();
  private readonly accepted = new Map<number, string>();
  /** Leaves whose bodies retention removed: what cites them cannot be checked against them. */
  private readonly pruned = new Set<number>();

  // A node attests with the same EK and (usually) AK for months: parse each key once, and keep its
  // key object, rather than once per record (half the per-record cost otherwise).
  private readonly eks = new Map<string, string>();
  private readonly aks = new Map<string, ReturnType<typeof parseTpm2bPublic>>();

  private ekHashOf(b64: string): string {
    let h = this.eks.get(b64);
    if (h === undefined) {
      h = ekHash(parseTpm2bPublic(Buffer.from(b64, 'base64')));
      remember(this.eks, b64, h);
    }
    return h;
  }

  private akOf(b64: string): ReturnType<typeof parseTpm2bPublic> {
    let ak = this.aks.get(b64);
    if (ak === undefined) {
      ak = parseTpm2bPublic(Buffer.from(b64, 'base64'));
      checkAkAttributes(ak);
      remember(this.aks, b64, ak);
    }
    return ak;
  }

  prunedLeaf(index: number): void {
    this.pruned.add(index);
  }

  check(index: number, r: EvidenceRecord, report: VerifyReport): void {
    switch (r.kind) {
      case 'policy': {
        const sha = sha256Hex(r.document);
        if (sha !== r.sha256) throw new Error(`its document hashes to ${sha}, not the recorded ${r.sha256}`);
        this.policies.set(index, { record: r, set: parsePolicies(r.document) });
        return;
      }
      case 'attestation':
        if (r.result === 'refused') {
          report.attestations.refused++;
          if (typeof r.reason !== 'string' || r.reason === '') throw new Error('a refused attestation without its reason');
          return;
        }
        report.attestations.accepted++;
        this.attestation(index, r);
        this.accepted.set(index, r.agentId as string);
        report.attestations.reverified++;
        return;
      case 'issuance': {
        // Retention prunes by age: an issuance can outlive its attestation's body by a moment.
        if (this.pruned.has(r.attestation) && r.attestation < index) return;
        const agent = this.accepted.get(r.attestation);
        if (agent === undefined) throw new Error(`it cites record ${r.attestation}, which is no accepted attestation before it`);
        if (agent !== r.agentId) throw new Error(`it issues to ${r.agentId} on the attestation of ${agent}`);
        return;
      }
      case 'event':
        if (typeof r.action !== 'string' || typeof r.caller !== 'string') throw new Error('an event without action or caller');
    }
  }

  private attestation(index: number, r: AttestationRecord): void {
    if (typeof r.agentId !== 'string') throw new Error('an accepted attestation without the node\'s SPIFFE ID');
    if (r.method === 'join_token') {
      if (typeof r.joinTokenSha256 !== 'string') throw new Error('a join-token attestation without the token\'s digest');
      if (this.tokens.has(r.joinTokenSha256)) throw new Error('its join token was already used by an earlier accepted attestation');
      this.tokens.add(r.joinTokenSha256);
      return;
    }
    if (r.method !== 'tpm' || r.tpm === undefined) throw new Error(`an accepted attestation by ${r.method} without TPM evidence`);
    const t = r.tpm;
    const hash = this.ekHashOf(t.ekPublic);
    if (hash !== t.ekHash) throw new Error(`the recorded EK hashes to ${hash}, not the recorded ${t.ekHash}`);
    if (!r.agentId.endsWith(`/agent/tpm/${hash}`)) throw new Error(`node ${r.agentId} is not the SPIFFE ID of EK ${hash}`);
    const ak = this.akOf(t.akPublic);
    const nonce = Buffer.from(t.nonce, 'base64');
    if (this.nonces.has(t.nonce)) throw new Error('its nonce was already used by an earlier accepted attestation (replay)');
    this.nonces.add(t.nonce);
    if (t.pcrSelectorQuote) checkQuote(ak, t.pcrSelectorQuote, pcrSelectorsQualifyingData(nonce), 'the PCR-selector quote');
    const u = r.unified;
    if (u === undefined) return;
    const doc = Buffer.from(u.claimsDocument, 'base64');
    const info = checkQuote(ak, u.quote, unifiedIdentityQualifyingData(nonce, doc), 'the Unified Identity quote');
    const claims = u.claims;
    if (claims === undefined) throw new Error('an accepted Unified Identity attestation without its claims');
    if (claims['pcrDigest'] !== info.pcrDigest.toString('hex')) throw new Error('the claims\' pcrDigest is not the quote\'s PCR digest');
    if (u.keylime?.valid !== true) throw new Error('accepted without a valid Keylime verdict');
    if (claims['verifier'] !== u.keylime.verifier) throw new Error(`the claims name verifier ${String(claims['verifier'])} but ${u.keylime.verifier} gave the verdict`);
    if (u.policy === undefined) throw new Error('accepted without the policy it was decided under');
    const policy = this.policies.get(u.policy.record);
    if (policy === undefined || u.policy.record >= index) throw new Error(`it cites policy record ${u.policy.record}, which is no policy record before it`);
    if (policy.record.sha256 !== u.policy.sha256 || policy.record.defaultPolicy !== u.policy.name) throw new Error(`its policy reference does not match record ${u.policy.record}`);
    this.decision(u, policy.set, policy.record.defaultPolicy, doc, claims);
  }

  /** Recomputes the location decision from the recorded readings, witnesses and policy. */
  private decision(u: NonNullable<AttestationRecord['unified']>, set: PolicySet, name: string, doc: Buffer, claims: Record<string, unknown>): void {
    const readings = parseClaimsDocument(doc);
    const at = typeof claims['attestedAt'] === 'string' ? new Date(claims['attestedAt']) : new Date(NaN);
    if (Number.isNaN(at.getTime())) throw new Error('the claims have no attestedAt');
    const ctx = {
      now: at,
      ...(u.operator ? { operatorResult: operatorOf(u.operator) } : {}),
      ...(u.latencyDisks ? { latency: { disks: u.latencyDisks.map(diskOf) } } : {}),
    };
    const decision = evaluatePolicy(set.get(name), readings, ctx);
    if (!decision.allowed || !decision.claims) throw new Error(`policy ${name}, recomputed, does not allow it: ${decision.reasons.join('; ')}`);
    const place = placeClaims(decision);
    for (const f of PLACE_FIELDS) {
      if (JSON.stringify(place[f]) !== JSON.stringify(claims[f])) throw new Error(`the claims' ${f} ${JSON.stringify(claims[f])} is not what policy ${name} decides (${JSON.stringify(place[f])})`);
    }
    const satisfied = set.names().filter((n) => n === name || evaluatePolicy(set.get(n), readings, ctx).allowed);
    if (JSON.stringify(satisfied) !== JSON.stringify(claims['satisfiedPolicies'])) {
      throw new Error(`the claims' satisfiedPolicies ${JSON.stringify(claims['satisfiedPolicies'])} are not the recomputed ${JSON.stringify(satisfied)}`);
    }
  }
}

/** Bounded caches: a fleet's keys, not every key ever seen. */
const MAX_CACHED_KEYS = 100_000;
function remember<V>(m: Map<string, V>, k: string, v: V): void {
  if (m.size >= MAX_CACHED_KEYS) m.delete(m.keys().next().value as string);
  m.set(k, v);
}

function checkQuote(ak: ReturnType<typeof parseTpm2bPublic>, q: RecordedQuote, expected: Buffer, what: string): { pcrDigest: Buffer } {
  const values = new Map<number, Buffer>(Object.entries(q.pcrs).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')]));
  try {
    return verifyQuote({
      akPublic: ak, attest: Buffer.from(q.attest, 'base64'), signature: Buffer.from(q.signature, 'base64'),
      pcrs: [{ alg: 'sha256', values }], expectedExtraData: expected,
    });
  } catch (err) {
    throw new Error(`${what} does not verify: ${(err as Error).message}`, { cause: err });
  }
}

function operatorOf(o: Record<string, unknown>): OperatorVerification {
  const lt = o['lastLocationTime'];
  return { ...(o as unknown as OperatorVerification), ...(typeof lt === 'string' ? { lastLocationTime: new Date(lt) } : {}) };
}

function diskOf(d: Record<string, unknown>): LandmarkDisk {
  return { ...(d as unknown as LandmarkDisk), measuredAt: new Date(String(d['measuredAt'])) };
}

function sha256Hex(s: string): string {
  return createHash('sha256').update(s, 'utf8').digest('hex');
}
