// The evidence log under Unified Identity, with swtpm, the Keylime double and gpsd: the auditor
// re-verifies each accepted attestation from its own evidence (the AK's quote, the nonce and claims
// binding, the PCR digest, the location decision under the recorded policy). A history rewritten by
// someone who holds the audit key — a database administrator, a compromised server — is still
// caught wherever a record says more than its evidence proves, and the failing record is named.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canonicalClaims } from '../../src/geo/index.js';
import { decodeRecord, encodeRecord, type AttestationRecord, type EvidenceRecord } from '../../src/evidence/record.js';
import type { RunningServer } from '../../src/server/index.js';
import { exportLog } from '../../src/server/evidence/export.js';
import { verifyExport } from '../../src/server/evidence/verify.js';
import { evidenceRefFromCertificate } from '../../src/spiffe/evidence-ref.js';
import { formatCheckpoint, leafHash, noteSignerFromKey, rootOf, signNote } from '../../src/translog/index.js';
import fs from 'node:fs';
import path from 'node:path';
import { startUnifiedDeployment, type UnifiedDeployment } from '../unified-identity/fixture.js';

let d: UnifiedDeployment;
let on: RunningServer;
let lines: string[];
let signerKey: string;
let svidIndex: number;

type Leaf = { i: number; hash: string; body: string | null };
const isLeaf = (l: string): boolean => l.startsWith('{"i":');
const leafOf = (l: string): Leaf => JSON.parse(l) as Leaf;
const recordOf = (l: string): EvidenceRecord => decodeRecord(Buffer.from(leafOf(l).body!, 'base64'));

/** As an attacker with the audit key: replace leaves, rebuild the tree, sign a checkpoint over it. */
function rewrite(edit: (leaves: string[]) => string[]): string[] {
  const header = JSON.parse(lines[0]!) as { origin: string };
  const leaves = edit(lines.filter(isLeaf)).map((l, i) => {
    const body = Buffer.from(leafOf(l).body!, 'base64');
    return JSON.stringify({ i, hash: leafHash(body).toString('hex'), body: body.toString('base64') });
  });
  const root = rootOf(leaves.map((l) => Buffer.from(leafOf(l).hash, 'hex')));
  const note = signNote(formatCheckpoint({ origin: header.origin, size: leaves.length, root }), noteSignerFromKey(signerKey));
  return [JSON.stringify({ ...header, size: leaves.length }), JSON.stringify({ checkpoint: note }), ...leaves];
}

function withRecord(ls: string[], i: number, r: EvidenceRecord): string[] {
  const out = [...ls];
  out[i] = JSON.stringify({ i, hash: '', body: encodeRecord(r).toString('base64') });
  return out;
}

const verify = (ls: string[]) => verifyExport(ls, { verifierKeys: [on.auditVerifierKey!] });

const acceptedAt = (ls: string[]): number => ls.findIndex((l) => { const r = recordOf(l); return r.kind === 'attestation' && r.result === 'accepted'; });

beforeAll(async () => {
  d = await startUnifiedDeployment();
  on = await d.startServer({ flag: true, keylime: true });
  const berlin = d.provider(d.berlin);
  const first = await d.attest(on, berlin);
  svidIndex = evidenceRefFromCertificate(first.svidChain[0]!)!.index;
  await d.attest(on, berlin);
  // Refused: New York is outside the EU.
  await d.attest(on, d.provider(d.newYork)).catch(() => undefined);
  await on.evidenceLog!.flush();
  lines = [];
  await exportLog(on.evidenceLog!, (c) => { lines.push(...c.split('\n').filter((l) => l !== '')); });
  signerKey = fs.readFileSync(path.join(d.dir, 'server-0', 'audit-key'), 'utf8').trim();
}, 90_000);

afterAll(async () => { await d?.stop(); });

describe('Unified Identity evidence in the log', () => {
  it('keeps what the auditor needs: AK, EK, nonce, quote, claims document, Keylime verdict, the policy and its decision', () => {
    const rec = recordOf(lines.filter(isLeaf)[svidIndex]!) as AttestationRecord;
    expect(rec).toMatchObject({ kind: 'attestation', result: 'accepted', method: 'tpm' });
    expect(rec.tpm).toMatchObject({ ekTrust: 'certificate', ekCertificateChainSha256: expect.stringMatching(/^[0-9a-f]{64}$/) });
    expect(rec.unified).toMatchObject({
      keylime: { valid: true }, decision: { decision: 'allow' }, policy: { name: 'eu-only' },
      claims: { country: 'DE', satisfiedPolicies: ['eu-only'] },
    });
    const policy = recordOf(lines.filter(isLeaf)[rec.unified!.policy!.record]!);
    expect(policy).toMatchObject({ kind: 'policy', defaultPolicy: 'eu-only', document: expect.stringContaining('eu-only') });
    const refused = lines.filter(isLeaf).map(recordOf).find((r) => r.kind === 'attestation' && r.result === 'refused') as AttestationRecord;
    expect(refused.reason).toMatch(/location policy eu-only denied/);
  });

  it('the auditor re-verifies every accepted attestation of the untouched export', async () => {
    const r = await verify(lines);
    expect(r.failure).toBeUndefined();
    expect(r.attestations).toEqual({ accepted: 2, refused: 1, reverified: 2 });
  });
});

describe('a history rewritten with the real audit key is caught where its evidence does not hold', () => {
  it('claims moved to another country', async () => {
    const k = acceptedAt(lines.filter(isLeaf));
    const ls = rewrite((leaves) => {
      const r = recordOf(leaves[k]!) as AttestationRecord;
      return withRecord(leaves, k, { ...r, unified: { ...r.unified!, claims: { ...r.unified!.claims, country: 'FR' } } });
    });
    expect((await verify(ls)).failure).toEqual({ index: k, reason: expect.stringMatching(/country "FR" is not what policy eu-only decides \("DE"\)/) });
  });

  it('a claims document edited after quoting (the node "was" in Paris)', async () => {
    const k = acceptedAt(lines.filter(isLeaf));
    const ls = rewrite((leaves) => {
      const r = recordOf(leaves[k]!) as AttestationRecord;
      const doc = JSON.parse(Buffer.from(r.unified!.claimsDocument, 'base64').toString()) as { readings: { lat: number; lon: number }[] };
      for (const reading of doc.readings) { reading.lat = 48.8566; reading.lon = 2.3522; }
      return withRecord(leaves, k, { ...r, unified: { ...r.unified!, claimsDocument: canonicalClaims(doc).toString('base64') } });
    });
    expect((await verify(ls)).failure).toEqual({ index: k, reason: expect.stringMatching(/Unified Identity quote does not verify.*extraData/) });
  });

  it('a forged quote signature', async () => {
    const k = acceptedAt(lines.filter(isLeaf));
    const ls = rewrite((leaves) => {
      const r = recordOf(leaves[k]!) as AttestationRecord;
      const sig = Buffer.from(r.unified!.quote.signature, 'base64');
      sig[sig.length - 1]! ^= 1;
      return withRecord(leaves, k, { ...r, unified: { ...r.unified!, quote: { ...r.unified!.quote, signature: sig.toString('base64') } } });
    });
    expect((await verify(ls)).failure).toEqual({ index: k, reason: expect.stringMatching(/quote does not verify/) });
  });

  it('PCR values swapped for the golden ones without a new quote', async () => {
    const k = acceptedAt(lines.filter(isLeaf));
    const ls = rewrite((leaves) => {
      const r = recordOf(leaves[k]!) as AttestationRecord;
      const pcrs = Object.fromEntries(Object.keys(r.unified!.quote.pcrs).map((i) => [i, 'ab'.repeat(32)]));
      return withRecord(leaves, k, { ...r, unified: { ...r.unified!, quote: { ...r.unified!.quote, pcrs } } });
    });
    expect((await verify(ls)).failure).toEqual({ index: k, reason: expect.stringMatching(/quote does not verify.*PCR/i) });
  });

  it('a refused attestation turned into an accepted one', async () => {
    const leaves0 = lines.filter(isLeaf);
    const k = leaves0.findIndex((l) => { const r = recordOf(l); return r.kind === 'attestation' && r.result === 'refused'; });
    const good = recordOf(leaves0[acceptedAt(leaves0)]!) as AttestationRecord;
    const ls = rewrite((leaves) => {
      const r = recordOf(leaves[k]!) as AttestationRecord;
      const { reason: _reason, ...rest } = r;
      return withRecord(leaves, k, { ...rest, result: 'accepted', agentId: good.agentId!, unified: { ...r.unified!, keylime: good.unified!.keylime!, policy: good.unified!.policy!, decision: good.unified!.decision!, claims: { ...good.unified!.claims, pcrDigest: good.unified!.claims!['pcrDigest'] } } });
    });
    const f = (await verify(ls)).failure!;
    expect(f.index).toBe(k);
    expect(f.reason).toMatch(/policy eu-only, recomputed, does not allow it|pcrDigest/);
  });

  it('an attestation replayed (the same nonce accepted twice)', async () => {
    const k = acceptedAt(lines.filter(isLeaf));
    const ls = rewrite((leaves) => [...leaves, leaves[k]!]);
    const r = await verify(ls);
    expect(r.failure).toEqual({ index: lines.filter(isLeaf).length, reason: expect.stringMatching(/nonce was already used/) });
  });

  it('a policy document edited under its recorded digest', async () => {
    const leaves0 = lines.filter(isLeaf);
    const k = leaves0.findIndex((l) => recordOf(l).kind === 'policy');
    const ls = rewrite((leaves) => {
      const p = recordOf(leaves[k]!);
      return withRecord(leaves, k, { ...p, document: (p as { document: string }).document.replace('EU', 'NA') } as EvidenceRecord);
    });
    expect((await verify(ls)).failure).toEqual({ index: k, reason: expect.stringMatching(/document hashes to/) });
  });
});
