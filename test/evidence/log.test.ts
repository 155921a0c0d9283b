// The evidence log end to end on a real server (SQLite): attestations, refusals, SVIDs that name
// their attestation record, proofs, the export, and the auditor's offline check — which must catch
// every kind of tampering (edit, delete, reorder, truncate, forged checkpoints, a rewritten history
// re-signed with the real key) and name where it is.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeRecord, encodeRecord, type AttestationRecord, type EvidenceRecord } from '../../src/evidence/record.js';
import { exportLog } from '../../src/server/evidence/export.js';
import { verifyExport, type VerifyReport } from '../../src/server/evidence/verify.js';
import { loadOrCreateAuditKey } from '../../src/server/evidence/key.js';
import { EVIDENCE_REF_JWT_CLAIM, evidenceRefFromCertificate } from '../../src/spiffe/evidence-ref.js';
import { formatCheckpoint, generateNoteKey, leafHash, noteSignerFromKey, openNote, parseCheckpoint, rootOf, signNote, verifyInclusion } from '../../src/translog/index.js';
import { main } from '../../src/cli/terroir-server.js';
import { agentClient, attest, attestWithToken, newKey, startTestServer, TD, unary, type TestServer } from '../server/e2e/helpers.js';

let t: TestServer;
let verifierKey: string;
let signerKey: string;
let lines: string[];
const agents: Awaited<ReturnType<typeof attestWithToken>>[] = [];

async function exported(): Promise<string[]> {
  const out: string[] = [];
  await exportLog(t.server.evidenceLog!, (chunk) => { out.push(...chunk.split('\n').filter((l) => l !== '')); });
  return out;
}

function verify(ls: string[], pinned: string[] = [], keys = [verifierKey]): Promise<VerifyReport> {
  return verifyExport(ls, { verifierKeys: keys, pinnedCheckpoints: pinned });
}

type Leaf = { i: number; hash: string; body: string | null };
const isLeaf = (l: string): boolean => l.startsWith('{"i":');
const leafOf = (l: string): Leaf => JSON.parse(l) as Leaf;
const recordOf = (l: string): EvidenceRecord => decodeRecord(Buffer.from(leafOf(l).body!, 'base64'));
const leafLine = (i: number, body: Buffer): string => JSON.stringify({ i, hash: leafHash(body).toString('hex'), body: body.toString('base64') });

/** Rewrites the leaves with `edit` and, like an attacker holding the audit key, re-signs one checkpoint over the result. */
function rewriteAndResign(ls: string[], edit: (leaves: string[]) => string[], key = signerKey): string[] {
  const header = JSON.parse(ls[0]!) as { origin: string; size: number };
  const leaves = edit(ls.filter(isLeaf));
  const root = rootOf(leaves.map((l) => Buffer.from(leafOf(l).hash, 'hex')));
  const note = signNote(formatCheckpoint({ origin: header.origin, size: leaves.length, root }), noteSignerFromKey(key));
  return [JSON.stringify({ ...header, size: leaves.length }), JSON.stringify({ checkpoint: note }), ...leaves];
}

beforeAll(async () => {
  t = await startTestServer({ evidenceLog: { checkpointInterval: 1 } });
  for (let i = 0; i < 3; i++) {
    agents.push(await attestWithToken(t.server));
    // A checkpoint per attestation (the server signs one every checkpointInterval when the log grew).
    await t.server.evidenceLog!.flush();
    await t.server.evidenceLog!.checkpoint();
  }
  // A refused attempt: an unknown token.
  const c = agentClient(t.server);
  await attest(c, { params: { joinToken: { token: 'not-a-token' }, csr: newKey().csr } }).catch(() => undefined);
  c.close();
  await t.server.evidenceLog!.flush();
  const key = loadOrCreateAuditKey(path.join(t.dir, 'audit-key'), `${TD}/terroir/evidence`);
  verifierKey = key.verifierKey;
  signerKey = fs.readFileSync(path.join(t.dir, 'audit-key'), 'utf8').trim();
  lines = await exported();
}, 60_000);

afterAll(async () => { await t?.stop(); });

describe('the log on a running server', () => {
  it('records accepted and refused attestations and what was issued on them', () => {
    const records = lines.filter(isLeaf).map(recordOf);
    const atts = records.filter((r): r is AttestationRecord => r.kind === 'attestation');
    expect(atts.filter((r) => r.result === 'accepted').map((r) => r.agentId).sort()).toEqual(agents.map((a) => a.id).sort());
    const refused = atts.find((r) => r.result === 'refused')!;
    expect(refused).toMatchObject({ method: 'join_token', reason: expect.stringMatching(/token/i) });
    // The token itself is a secret: only its digest is kept.
    expect(JSON.stringify(records)).not.toContain('not-a-token');
    expect(refused.joinTokenSha256).toBe(crypto.createHash('sha256').update('not-a-token').digest('hex'));
    const issued = records.filter((r) => r.kind === 'issuance');
    expect(issued).toHaveLength(3);
  });

  it('the audit key file is 0600 and is not the CA key', () => {
    expect(fs.statSync(path.join(t.dir, 'audit-key')).mode & 0o777).toBe(0o600);
    expect(verifierKey.startsWith(`${TD}/terroir/evidence+`)).toBe(true);
  });

  it('refuses an audit key readable by others, or made for another log', () => {
    const dir = fs.mkdtempSync(path.join(t.dir, 'k-'));
    const file = path.join(dir, 'audit-key');
    fs.writeFileSync(file, `${generateNoteKey('other.org/terroir/evidence').signerKey}\n`, { mode: 0o644 });
    fs.chmodSync(file, 0o644);
    expect(() => loadOrCreateAuditKey(file, 'other.org/terroir/evidence')).toThrow(/readable by others.*chmod 600/);
    fs.chmodSync(file, 0o600);
    expect(() => loadOrCreateAuditKey(file, `${TD}/terroir/evidence`)).toThrow(/key of "other.org\/terroir\/evidence"/);
  });
});

describe('admin changes and revocations', () => {
  it('an operator eviction becomes an event record in the log', async () => {
    const { AdminClient } = await import('../../src/api/admin-api.js');
    const c = new AdminClient(t.server.adminSocketPath!);
    const victim = await attestWithToken(t.server);
    try {
      await c.call('EvictAgent', { spiffeId: victim.id });
    } finally {
      c.close();
    }
    const log = t.server.evidenceLog!;
    await log.flush();
    const leaves = await log.leaves(0, await log.size());
    const events = leaves.map((l) => decodeRecord(l.body!)).filter((r) => r.kind === 'event');
    expect(events).toContainEqual(expect.objectContaining({ action: 'admin', subject: victim.id, result: 'ok' }));
  });
});

describe('from an SVID to its evidence', () => {
  it('the agent SVID names its attestation record, which the log proves it holds', async () => {
    const a = agents[0]!;
    const ref = evidenceRefFromCertificate(a.chain[0]!)!;
    expect(ref.log).toBe(`${TD}/terroir/evidence`);
    const log = t.server.evidenceLog!;
    const leaf = (await log.entry(ref.index))!;
    const rec = decodeRecord(leaf.body!) as AttestationRecord;
    expect(rec).toMatchObject({ kind: 'attestation', result: 'accepted', agentId: a.id });
    const cp = (await log.checkpoint())!;
    const proof = await log.inclusionProof(ref.index, cp.size);
    expect(() => verifyInclusion(leafHash(leaf.body!), ref.index, cp.size, proof, cp.root)).not.toThrow();
    // …and the checkpoint is signed by the audit key.
    expect(parseCheckpoint(openNote(cp.note, [(await import('../../src/translog/index.js')).noteVerifierFromKey(verifierKey)]).text).root.equals(cp.root)).toBe(true);
  });

  it('workload X.509- and JWT-SVIDs signed through the node carry the same reference', async () => {
    const a = agents[1]!;
    const [entry] = (await t.server.store.createEntries([{ spiffeId: `spiffe://${TD}/w/evidence`, parentId: a.id, selectors: [{ type: 'unix', value: 'uid:7' }], federatesWith: [] }]))
      .map((r) => (r.ok ? r.value : undefined));
    const c = agentClient(t.server, { chain: a.chain, key: a.key });
    try {
      const x = await unary<{ results: { svid: { certChain: Buffer[] } | null; errorMessage: string }[] }>(c, 'BatchNewX509Svid', { params: [{ entryId: entry!.id, csr: newKey().csr }] });
      const cert = x.results[0]!.svid!.certChain[0]!;
      const agentRef = evidenceRefFromCertificate(a.chain[0]!);
      expect(evidenceRefFromCertificate(cert)).toEqual(agentRef);
      const jwt = await unary<{ token: string }>(c, 'NewJwtSvid', { entryId: entry!.id, audience: ['x'] });
      const claims = JSON.parse(Buffer.from(jwt.token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
      expect(claims[EVIDENCE_REF_JWT_CLAIM]).toEqual(agentRef);
    } finally {
      c.close();
    }
  });

  it('consistency proofs between checkpoints verify', async () => {
    const log = t.server.evidenceLog!;
    const old = await log.head();
    await attestWithToken(t.server);
    await log.flush();
    const now = await log.head();
    expect(now.size).toBeGreaterThan(old.size);
    const { verifyConsistency } = await import('../../src/translog/index.js');
    const proof = await log.consistencyProof(old.size, now.size);
    expect(() => verifyConsistency(old.size, now.size, proof, old.root, now.root)).not.toThrow();
    expect(() => verifyConsistency(old.size, now.size, proof, now.root, now.root)).toThrow();
  });
});

describe('the auditor (audit verify) on the export', () => {
  it('accepts the untouched export', async () => {
    const r = await verify(lines);
    expect(r.failure).toBeUndefined();
    expect(r).toMatchObject({ ok: true, attestations: { accepted: 3, refused: 1 }, records: { issuance: 3 } });
    expect(r.size).toBe(lines.filter(isLeaf).length);
  });

  it('catches an edited record and names it', async () => {
    const target = lines.findIndex((l) => isLeaf(l) && recordOf(l).kind === 'attestation');
    const leaf = leafOf(lines[target]!);
    const body = Buffer.from(leaf.body!, 'base64');
    body[body.indexOf('accepted')] = 'A'.charCodeAt(0);
    const edited = [...lines];
    edited[target] = JSON.stringify({ ...leaf, body: body.toString('base64') });
    expect((await verify(edited)).failure).toEqual({ index: leaf.i, reason: expect.stringContaining('edited') });
  });

  it('catches an edited record whose leaf hash was recomputed (the checkpoint no longer matches)', async () => {
    const target = lines.findIndex((l) => isLeaf(l) && recordOf(l).kind === 'attestation');
    const rec = recordOf(lines[target]!) as AttestationRecord;
    const edited = [...lines];
    edited[target] = leafLine(leafOf(lines[target]!).i, encodeRecord({ ...rec, source: '192.0.2.66' }));
    const r = await verify(edited);
    expect(r.ok).toBe(false);
    expect(r.failure!.reason).toMatch(/does not match the records.*edited, deleted, inserted or reordered/);
  });

  it('catches a deleted record', async () => {
    const target = lines.findIndex(isLeaf) + 2;
    const r = await verify(lines.filter((_, i) => i !== target));
    expect(r.failure).toEqual({ index: 2, reason: expect.stringContaining('leaf 2 is missing') });
  });

  it('catches reordered records, with or without renumbering', async () => {
    const first = lines.findIndex(isLeaf);
    const swapped = [...lines];
    [swapped[first + 1], swapped[first + 2]] = [swapped[first + 2]!, swapped[first + 1]!];
    expect((await verify(swapped)).failure!.reason).toMatch(/reordered/);
    const renumbered = swapped.map((l, i) => (i === first + 1 || i === first + 2 ? JSON.stringify({ ...leafOf(l), i: i - first }) : l));
    // Whichever comes first: the tree at the next checkpoint, or a record that no longer re-verifies in
    // its new place (an issuance before its attestation) — which one depends on the order records landed.
    expect((await verify(renumbered)).failure!.reason).toMatch(/does not match the records|no accepted attestation before it|on the attestation of/);
  });

  it('catches truncation: at the end, with the header fixed, and back to an older checkpoint (with a pinned checkpoint)', async () => {
    const cut = lines.slice(0, -2);
    expect((await verify(cut)).failure!.reason).toMatch(/truncated|covers/);
    const header = JSON.parse(cut[0]!) as Record<string, unknown>;
    const fixed = [JSON.stringify({ ...header, size: cut.filter(isLeaf).length }), ...cut.slice(1)];
    expect((await verify(fixed)).failure!.reason).toMatch(/covers \d+: records at the end were removed/);
    // Back to an older checkpoint: drop the newer checkpoints and every leaf after it. Only a
    // checkpoint the auditor kept from before can tell (documented).
    const cps = lines.filter((l) => l.startsWith('{"checkpoint"'));
    expect(cps.length).toBeGreaterThan(1);
    const older = cps[0]!;
    const olderSize = parseCheckpoint(openNote((JSON.parse(older) as { checkpoint: string }).checkpoint, [(await import('../../src/translog/index.js')).noteVerifierFromKey(verifierKey)]).text).size;
    const rolledBack = [JSON.stringify({ ...header, size: olderSize }), older, ...lines.filter(isLeaf).slice(0, olderSize)];
    expect((await verify(rolledBack)).ok).toBe(true);
    const pinned = (JSON.parse(cps.at(-1)!) as { checkpoint: string }).checkpoint;
    expect((await verify(rolledBack, [pinned])).failure!.reason).toMatch(/pinned checkpoint covers/);
  });

  it('refuses checkpoints signed by another key, and exports checked with the wrong key', async () => {
    const other = generateNoteKey(`${TD}/terroir/evidence`);
    const forged = rewriteAndResign(lines, (ls) => ls, other.signerKey);
    expect((await verify(forged)).failure!.reason).toMatch(/not signed by the audit key/);
    expect((await verify(lines, [], [other.verifierKey])).failure!.reason).toMatch(/not signed by the audit key/);
  });

  it('catches a history rewritten and re-signed with the real audit key when it does not re-verify (a join token used twice)', async () => {
    const accepted = lines.filter(isLeaf).map(recordOf).filter((r): r is AttestationRecord => r.kind === 'attestation' && r.result === 'accepted');
    const rewritten = rewriteAndResign(lines, (ls) => {
      const second = ls.findIndex((l) => { const r = recordOf(l); return r.kind === 'attestation' && r.result === 'accepted' && r.agentId === accepted[1]!.agentId; });
      const rec = recordOf(ls[second]!) as AttestationRecord;
      const out = [...ls];
      out[second] = leafLine(second, encodeRecord({ ...rec, joinTokenSha256: accepted[0]!.joinTokenSha256! }));
      return out;
    });
    const r = await verify(rewritten);
    expect(r.failure).toMatchObject({ reason: expect.stringContaining('join token was already used') });
    expect(r.failure!.index).toBeGreaterThan(0);
  });

  it('catches an issuance that cites no accepted attestation', async () => {
    const rewritten = rewriteAndResign(lines, (ls) => {
      const k = ls.findIndex((l) => recordOf(l).kind === 'issuance');
      const rec = recordOf(ls[k]!);
      const out = [...ls];
      out[k] = leafLine(k, encodeRecord({ ...rec, attestation: k } as EvidenceRecord));
      return out;
    });
    expect((await verify(rewritten)).failure!.reason).toMatch(/no accepted attestation before it/);
  });

  it('refuses garbage: not JSON, no header, a body that is not canonical JSON', async () => {
    expect((await verify(['{'])).failure!.reason).toMatch(/not JSON/);
    expect((await verify(lines.slice(1))).failure!.reason).toMatch(/header/);
    const rewritten = rewriteAndResign(lines, (ls) => [...ls.slice(0, 1), leafLine(1, Buffer.from('{"v":1, "kind":"event"}')), ...ls.slice(2)]);
    expect((await verify(rewritten)).failure).toMatchObject({ index: 1, reason: expect.stringContaining('canonical') });
  });
});

describe('retention', () => {
  it('an issuance whose attestation body was pruned still verifies (pruning goes by age)', async () => {
    const k = lines.findIndex((l) => isLeaf(l) && recordOf(l).kind === 'attestation' && (recordOf(l) as AttestationRecord).result === 'accepted');
    const pruned = [...lines];
    pruned[k] = JSON.stringify({ ...leafOf(lines[k]!), body: null });
    const r = await verify(pruned);
    expect(r.failure).toBeUndefined();
    expect(r).toMatchObject({ ok: true, pruned: 1, attestations: { accepted: 2 } });
  });

  it('pruned bodies leave a log that still verifies (hashes and checkpoints kept)', async () => {
    const log = t.server.evidenceLog!;
    const pruned = await log.prune(new Date(Date.now() + 1000));
    expect(pruned).toBeGreaterThan(0);
    const after = await exported();
    const r = await verify(after);
    expect(r.failure).toBeUndefined();
    expect(r.pruned).toBe(pruned);
    // Policies are never pruned: attestations cite them.
    expect(after.filter(isLeaf).filter((l) => leafOf(l).body !== null).map((l) => recordOf(l).kind).filter((k) => k !== 'policy')).toEqual([]);
  });
});

describe('what an outsider can add to the log', () => {
  it('a refused attempt is one record; a rate-limited one is none (the per-source budget bounds the log too)', async () => {
    // A server of its own with a small budget (3 at once, then 1/s), so some of 20 attempts are limited
    // however slowly they arrive.
    const s = await startTestServer({ agentApi: { attestationRateLimit: { perSecond: 1, burst: 3 } } });
    try {
      const log = s.server.evidenceLog!;
      const c = agentClient(s.server);
      const outcomes = await Promise.all(Array.from({ length: 20 }, () =>
        attest(c, { params: { joinToken: { token: crypto.randomBytes(8).toString('hex') }, csr: newKey().csr } }).then(() => 'ok', (e: { code?: number }) => e.code)));
      c.close();
      await log.flush();
      const limited = outcomes.filter((o) => o === 8 /* RESOURCE_EXHAUSTED */).length;
      expect(limited).toBeGreaterThan(0);
      const records = (await log.leaves(0, await log.size())).filter((l) => l.kind === 'attestation');
      expect(records.length).toBe(20 - limited);
    } finally {
      await s.stop();
    }
  });
});

describe('the CLI', () => {
  it('audit key / export / verify work from the config file, offline for verify', async () => {
    const cfg = path.join(t.dir, 'server.yaml');
    fs.writeFileSync(cfg, `trustDomain: ${TD}\ndataDir: ${t.dir}\n`);
    const out: string[] = [];
    const err: string[] = [];
    const io = { out: (s: string) => { out.push(s); }, err: (s: string) => { err.push(s); } };
    expect(await main(['audit', 'key', '-c', cfg], io)).toBe(0);
    expect(out.join('').trim()).toBe(verifierKey);
    const file = path.join(t.dir, 'export.jsonl');
    expect(await main(['audit', 'export', '-c', cfg, '--out', file], io)).toBe(0);
    // An export never overwrites another.
    expect(await main(['audit', 'export', '-c', cfg, '--out', file], io)).toBe(1);
    const keyFile = path.join(t.dir, 'audit.pub');
    fs.writeFileSync(keyFile, `${verifierKey}\n`);
    out.length = 0;
    expect(await main(['audit', 'verify', '--export', file, '--key', `@${keyFile}`], io), err.join('')).toBe(0);
    expect(out.join('')).toMatch(/^OK: example.org\/terroir\/evidence — \d+ records/);
    const text = fs.readFileSync(file, 'utf8').split('\n');
    const k = text.findIndex((l) => l.startsWith('{"i":3,'));
    text.splice(k, 1);
    fs.writeFileSync(`${file}.cut`, text.join('\n'));
    err.length = 0;
    expect(await main(['audit', 'verify', '--export', `${file}.cut`, '--key', verifierKey], io)).toBe(1);
    expect(err.join('')).toMatch(/FAILED at record 3: leaf 3 is missing/);
  });
});
