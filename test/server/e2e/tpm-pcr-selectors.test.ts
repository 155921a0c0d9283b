// PCR-digest selectors (nodeAttestation.tpm.pcrSelectors) end to end: a real swtpm (tpm2-tss through
// src/tpm), tpm2-tools as the independent oracle (tpm2_pcrread for the expected values,
// tpm2_pcrextend to change one), the agent's own attestNode over the real TLS gRPC agent API, and
// refused answers sent through the same API.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  pcrSelectorsQualifyingData, type AttestAgentRequest, type AttestAgentResponse, type AttestationResult,
  type BatchNewX509SvidResponse, type SyncEntriesResponse, type TpmQuote,
} from '../../../src/api/agent-api.js';
import { attestNode } from '../../../src/agent/node-attestor.js';
import { openTpmCredentialSource, type TpmSession } from '../../../src/agent/tpm-session.js';
import { serverSpiffeId } from '../../../src/server/datastore/types.js';
import type { RunningServer } from '../../../src/server/run.js';
import { TpmDevice, type AkHandle } from '../../../src/tpm/device.js';
import { ekHash, parseTpm2bPublic } from '../../../src/tpm/index.js';
import { startSwtpm, type Swtpm } from '../../support/swtpm.js';
import { agentClient, attest, newKey, startTestServer, TD, unary, type AgentClient, type TestServer } from './helpers.js';

const SELECTOR_PCRS = [7, 23];

let swtpm: Swtpm;
let tpm: TpmDevice;
let session: TpmSession;
let ts: TestServer;
let pcrServer: RunningServer;
let ekCert: Buffer;
let ekPub: Buffer;
let agentId: string;
const clients: AgentClient[] = [];
const client = (s: RunningServer, id?: Parameters<typeof agentClient>[1]): AgentClient => { const c = agentClient(s, id); clients.push(c); return c; };

/** tpm2-tools against the test's swtpm; returns stdout. */
function tool(args: string[]): Buffer {
  return execFileSync(args[0] as string, args.slice(1), { cwd: ts.dir, env: { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti, TSS2_LOG: 'all+NONE' }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The oracle: tpm2_pcrread's values of the sha256 PCRs (its -o file is the values back to back, in index order). */
function pcrread(pcrs: number[]): Map<number, string> {
  const out = path.join(ts.dir, 'pcrs.bin');
  tool(['tpm2_pcrread', `sha256:${pcrs.join(',')}`, '-o', out]);
  const raw = fs.readFileSync(out);
  expect(raw).toHaveLength(32 * pcrs.length);
  return new Map([...pcrs].sort((a, b) => a - b).map((p, i) => [p, raw.subarray(i * 32, i * 32 + 32).toString('hex')]));
}

beforeAll(async () => {
  swtpm = await startSwtpm();
  tpm = await TpmDevice.open(swtpm.tcti);
  session = await openTpmCredentialSource({ tcti: swtpm.tcti, ekKind: 'rsa2048' });
  ekCert = (await tpm.readEkCertificate('rsa2048')) as Buffer;
  ekPub = await tpm.ekPublic('rsa2048');
  agentId = `spiffe://${TD}/agent/tpm/${ekHash(parseTpm2bPublic(ekPub))}`;
  // The real server: config loader, run.ts wiring, TLS gRPC agent API.
  ts = await startTestServer({
    nodeAttestation: { joinToken: { enabled: false }, tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile], pcrSelectors: SELECTOR_PCRS } },
    agentApi: { attestationRateLimit: { perSecond: 50, burst: 100 } },
  });
  pcrServer = ts.server;
});

afterAll(async () => {
  for (const c of clients) c.close();
  await ts?.stop();
  await session?.close();
  await tpm?.close();
  await swtpm?.stop().catch((err: unknown) => {
    let alive = true;
    try { process.kill(swtpm.pid, 0); } catch { alive = false; }
    if (alive) throw err;
  });
});

/** The agent's own code path: attestNode with the agent's TPM session. */
async function agentAttest(server: RunningServer): Promise<{ result: AttestationResult; key: crypto.KeyObject }> {
  const k = newKey();
  const result = await attestNode(client(server), { csr: k.csr, tpm: session, timeoutMs: 20_000 });
  return { result, key: k.privateKey };
}

interface Forgery {
  /** PCRs to quote (default: the challenge's). */
  quotePcrs?: number[];
  /** qualifyingData for the quote (default: the PCR-selector binding of the nonce). */
  qualifyingData?: (nonce: Buffer) => Buffer;
  /** Quote with a second AK that credential activation did not prove. */
  otherAk?: boolean;
  /** Rewrites the quote before it is sent (null: send none). */
  mutate?: (q: TpmQuote) => TpmQuote | null;
}

/** A hand-driven agent over TpmDevice, for answers the real agent would never send. */
async function forgedAttest(f: Forgery): Promise<AttestAgentResponse[]> {
  const ak = await tpm.createAk('ecc-p256');
  let other: AkHandle | undefined;
  try {
    const first: AttestAgentRequest = { params: { tpm: { ekCertificate: ekCert, ekIntermediates: [], ekPublic: ekPub, akPublic: ak.public }, csr: newKey().csr } };
    return await attest(client(pcrServer), first, async (r) => {
      const ch = r.challenge!;
      expect(ch.selectorPcrs).toEqual(SELECTOR_PCRS);
      expect(ch.quotePcrs).toEqual([]);
      const secret = await tpm.activateCredential(ak, 'rsa2048', ch.credentialBlob, ch.encryptedSecret);
      // Made after activation: swtpm has three transient object slots (the agent session's AK, this AK, the EK).
      if (f.otherAk) other = await tpm.createAk('ecc-p256');
      const q = await tpm.quote(other ?? ak, [{ alg: 'sha256', pcrs: f.quotePcrs ?? ch.selectorPcrs! }], (f.qualifyingData ?? pcrSelectorsQualifyingData)(ch.nonce));
      const pcrs: Record<string, Buffer> = {};
      for (const [i, v] of q.pcrs[0]!.values) pcrs[String(i)] = v;
      const quote: TpmQuote = { attest: q.attest, signature: q.signature, pcrs };
      return { challengeResponse: { activatedSecret: secret, pcrQuote: f.mutate ? f.mutate(quote) : quote } };
    });
  } finally {
    await tpm.releaseAk(ak);
    if (other) await tpm.releaseAk(other);
  }
}

const sel = (r: AttestationResult): string[] => r.selectors.map((s) => `${s.type}:${s.value}`);

describe('PCR-digest selectors (swtpm, tpm2-tools oracle)', () => {
  it('the node gets tpm:pcr selectors equal to tpm2_pcrread; an entry requiring one matches until the PCR is extended', async () => {
    const expected = pcrread(SELECTOR_PCRS);
    const first = await agentAttest(pcrServer);
    expect(first.result.spiffeId).toBe(agentId);
    const pcrSel = sel(first.result).filter((s) => s.startsWith('tpm:pcr:'));
    expect(pcrSel).toEqual(SELECTOR_PCRS.map((i) => `tpm:pcr:sha256:${i}:${expected.get(i)}`));
    expect(sel(first.result)).toContain(`tpm:ek_hash:${agentId.split('/').pop()}`);
    const node = await ts.server.store.getNode(agentId);
    expect(node?.selectors.map((s) => `${s.type}:${s.value}`)).toEqual(expect.arrayContaining(pcrSel));
    expect(node?.attestationData).toMatchObject({ pcrs: { sha256: { 7: expected.get(7), 23: expected.get(23) } } });

    // A node alias requiring PCR 23's current value, and a workload entry under it.
    const alias = `spiffe://${TD}/node/booted-as-expected`;
    const [, w] = await ts.server.store.createEntries([
      { spiffeId: alias, parentId: serverSpiffeId(TD), selectors: [{ type: 'tpm', value: `pcr:sha256:23:${expected.get(23)}` }], federatesWith: [] },
      { spiffeId: `spiffe://${TD}/w/db`, parentId: alias, selectors: [{ type: 'unix', value: 'uid:1000' }], federatesWith: [] },
    ]);
    if (!w?.ok) throw new Error(`entry not created: ${w?.message ?? 'no result'}`);
    const entryId = w.value.id;
    const c1 = client(pcrServer, { chain: first.result.svidChain, key: first.key });
    expect((await unary<SyncEntriesResponse>(c1, 'SyncEntries', { knownRevision: '' })).entries.map((e) => e.id)).toEqual([entryId]);
    const issued = await unary<BatchNewX509SvidResponse>(c1, 'BatchNewX509Svid', { params: [{ entryId, csr: newKey().csr }] });
    expect(issued.results[0]).toMatchObject({ errorCode: 0, svid: { spiffeId: `spiffe://${TD}/w/db` } });

    // The boot state changes (tpm2-tools, outside the agent); the node attests again.
    tool(['tpm2_pcrextend', `23:sha256=${crypto.randomBytes(32).toString('hex')}`]);
    const after = pcrread(SELECTOR_PCRS);
    expect(after.get(23)).not.toBe(expected.get(23));
    expect(after.get(7)).toBe(expected.get(7));
    const second = await agentAttest(pcrServer);
    expect(sel(second.result)).toContain(`tpm:pcr:sha256:23:${after.get(23)}`);
    expect(sel(second.result)).not.toContain(`tpm:pcr:sha256:23:${expected.get(23)}`);
    const c2 = client(pcrServer, { chain: second.result.svidChain, key: second.key });
    expect((await unary<SyncEntriesResponse>(c2, 'SyncEntries', { knownRevision: '' })).entries).toEqual([]);
    const refused = await unary<BatchNewX509SvidResponse>(c2, 'BatchNewX509Svid', { params: [{ entryId, csr: newKey().csr }] });
    expect(refused.results[0]).toMatchObject({ errorCode: grpc.status.PERMISSION_DENIED, errorMessage: expect.stringMatching(/not authorized/) });
  });

  it('a server without pcrSelectors asks for no PCR quote and derives no PCR selectors', async () => {
    const plain = await startTestServer({
      nodeAttestation: { joinToken: { enabled: false }, tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile] } },
    });
    try {
      const { result } = await agentAttest(plain.server);
      expect(result.spiffeId).toBe(agentId);
      expect(sel(result).some((s) => s.startsWith('tpm:pcr:'))).toBe(false);
      const node = await plain.server.store.getNode(agentId);
      expect(node?.selectors.some((s) => s.value.startsWith('pcr:'))).toBe(false);
      expect(node?.attestationData).not.toHaveProperty('pcrs');
    } finally {
      await plain.stop();
    }
  });

  const refusals: [string, Forgery, grpc.status, RegExp][] = [
    ['a quote over other PCRs', { quotePcrs: [0, 23] }, grpc.status.INVALID_ARGUMENT, /pcr_quote\.pcrs has PCR 0, which the challenge did not ask for \(selector_pcrs: 7, 23\)/],
    ['a quote over other PCRs with the values relabelled',
      { quotePcrs: [0, 23], mutate: (q) => ({ ...q, pcrs: { 7: q.pcrs['0']!, 23: q.pcrs['23']! } }) },
      grpc.status.PERMISSION_DENIED, /pcr_quote verification failed \(pcr-selection-mismatch\): .*covers PCR sha256:0/],
    ['a tampered PCR value', { mutate: (q) => ({ ...q, pcrs: { ...q.pcrs, 7: Buffer.from(q.pcrs['7']!.map((b, i) => (i === 0 ? b ^ 1 : b))) } }) },
      grpc.status.PERMISSION_DENIED, /pcr_quote verification failed \(pcr-digest-mismatch\)/],
    ['a quote bound to the raw nonce (no PCR-selector binding)', { qualifyingData: (n) => n }, grpc.status.PERMISSION_DENIED, /\(extra-data-mismatch\): the quote is not bound to this challenge/],
    ['a quote bound to another nonce', { qualifyingData: () => pcrSelectorsQualifyingData(crypto.randomBytes(32)) }, grpc.status.PERMISSION_DENIED, /extra-data-mismatch/],
    ['a quote signed by another key', { otherAk: true }, grpc.status.PERMISSION_DENIED, /pcr_quote verification failed \(bad-signature\)/],
    ['no quote', { mutate: () => null }, grpc.status.FAILED_PRECONDITION, /nodeAttestation\.tpm\.pcrSelectors: 7, 23\): the challenge response must carry pcr_quote/],
    ['a quote with a missing PCR', { mutate: (q) => ({ ...q, pcrs: { 7: q.pcrs['7']! } }) }, grpc.status.INVALID_ARGUMENT, /lacks PCR\(s\) 23/],
    ['garbage attest bytes', { mutate: (q) => ({ ...q, attest: crypto.randomBytes(120) }) }, grpc.status.INVALID_ARGUMENT, /pcr_quote verification failed \(malformed-attest\)/],
    ['garbage signature bytes', { mutate: (q) => ({ ...q, signature: Buffer.from([0xff, 0xff, 1, 2, 3]) }) }, grpc.status.INVALID_ARGUMENT, /\(malformed-signature\)/],
    ['an oversized attest', { mutate: (q) => ({ ...q, attest: Buffer.alloc(5000, 1) }) }, grpc.status.INVALID_ARGUMENT, /pcr_quote\.attest must be 1\.\.1024 bytes, got 5000/],
    ['a PCR value of the wrong length', { mutate: (q) => ({ ...q, pcrs: { ...q.pcrs, 23: Buffer.alloc(20) } }) }, grpc.status.INVALID_ARGUMENT, /pcrs\[23\] must be a 32-byte sha256 value/],
  ];

  it.each(refusals)('refuses %s with a clear error and leaves the node record as it was', async (_what, forgery, code, message) => {
    const before = await ts.server.store.getNode(agentId);
    const denied = ts.audit.filter((a) => a.action === 'attest_agent' && a.result === 'denied').length;
    await expect(forgedAttest(forgery)).rejects.toMatchObject({ code, details: expect.stringMatching(message) });
    expect(await ts.server.store.getNode(agentId)).toEqual(before);
    expect(ts.audit.filter((a) => a.action === 'attest_agent' && a.result === 'denied').length).toBe(denied + 1);
  });
});
