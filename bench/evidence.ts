// Evidence log benchmark (docs/evidence-log.md). Prints its figures, each with its goal beside it, and
// a summary block at the end.
//   npx tsx bench/evidence.ts
// 1. Unified Identity attestation with the evidence log on versus off: two real servers on one
//    deployment (swtpm, the Keylime test verifier, gpsd fed by gpsfake), attested in turn (ABBA…) so
//    machine load hits both alike. Goal: p50s at most 5 % apart.
// 2. EvidenceLog.append of real accepted attestation records (taken from 1) on SQLite and on
//    PostgreSQL (fsync on), 1, 16 and 256 concurrent appenders (group commit). Figures only.
// 3. `audit verify` (verifyExport, one thread): an export of N accepted Unified Identity attestation
//    records, each with its own nonce and two fresh swtpm quotes (the PCR-selector quote and the
//    Unified Identity quote over qualifyingData = H(nonce, claims document)) signed by the node's AK.
//    Goal: >= 5,000 records re-verified per second per core.
// 4. A 1,000,000-leaf log in SQLite: load time and size, then inclusion and consistency proofs and
//    tree heads (rootAt) for random indexes and sizes, each proof verified.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import pino from 'pino';
import { pcrSelectorsQualifyingData, unifiedIdentityQualifyingData } from '../src/api/agent-api.js';
import { decodeRecord, recordQuote, type AttestationRecord, type EvidenceRecord, type PolicyRecord, type RecordedQuote } from '../src/evidence/record.js';
import { evaluatePolicy, parsePolicies } from '../src/geo/index.js';
import { parseClaimsDocument, placeClaims } from '../src/server/attestation/unified.js';
import { openDataStore, type DataStore, type NewEvidenceLeaf } from '../src/server/datastore/index.js';
import { exportLog } from '../src/server/evidence/export.js';
import { EvidenceLog, type RecordInput } from '../src/server/evidence/log.js';
import { verifyExport } from '../src/server/evidence/verify.js';
import type { RunningServer } from '../src/server/index.js';
import { checkAkAttributes, ekHash, parseTpm2bPublic, publicKeyFromTpmPublic, verifyQuote } from '../src/tpm/index.js';
import {
  consistencyProof, generateNoteKey, inclusionProof, leafHash, noteSignerFromKey, rootAt, verifyConsistency, verifyInclusion, type NodeReader,
} from '../src/translog/index.js';
import { startPostgres } from '../test/support/postgres.js';
import { tempDir } from '../test/support/tmp.js';
import { startUnifiedDeployment, TD, type UnifiedDeployment } from '../test/unified-identity/fixture.js';

const env = (k: string, d: number): number => Number(process.env[k] ?? d);
/** Part 1: attestations per server after WARMUP each, and the idle gap between two (not measured). */
const ATTEST_N = env('BENCH_ATTEST_N', 150);
const ATTEST_WARMUP = env('BENCH_ATTEST_WARMUP', 5);
const GAP_MS = env('BENCH_GAP_MS', 25);
/** Part 2: seconds each (database, concurrency) runs. */
const APPEND_S = env('BENCH_APPEND_S', 3);
/** Part 3: attestation records in the export. */
const VERIFY_N = env('BENCH_VERIFY_N', 5000);
/** Part 4: leaves in the big log, leaves per append transaction, proofs timed. */
const BIG_N = env('BENCH_BIG_N', 1_000_000);
const BIG_BATCH = 10_000;
const PROOFS = env('BENCH_PROOFS', 1000);

// ---------------------------------------------------------------------------------------------------

interface SummaryRow { name: string; value: string; goal: string; met?: boolean }
const summary: SummaryRow[] = [];
function figure(name: string, value: string, goal = '(figure)', met?: boolean): void {
  summary.push({ name, value, goal, ...(met !== undefined ? { met } : {}) });
  console.log(`  ${name.padEnd(58)} ${value.padEnd(22)} goal: ${goal}${met === undefined ? '' : met ? '  MET' : '  NOT MET'}`);
}

function pct(xs: readonly number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}
const ms = (x: number, d = 2): string => `${x.toFixed(d)} ms`;
const us = (x: number): string => `${(x * 1000).toFixed(1)} µs`;
const int = (x: number): string => Math.round(x).toLocaleString('en-US');
const sleep = (t: number): Promise<void> => new Promise((r) => setTimeout(r, t));
const load = (): string => os.loadavg().map((l) => l.toFixed(2)).join(' ');

/** The record as EvidenceLog.append takes it (without the fields the log fills in). */
function asInput(r: EvidenceRecord): RecordInput {
  const { v: _v, time: _t, server: _s, ...rest } = r;
  return rest as RecordInput;
}

// ---------------------------------------------------------------------------------------------------
// 1. Attestation with the evidence log on and off.

/** A Unified Identity server as the fixture builds it (flag on, Keylime one-shot), with `evidenceLog` set. */
function startBenchServer(d: UnifiedDeployment, evidenceLog: { enabled: boolean }): Promise<RunningServer> {
  return d.startServer({ flag: true, keylime: true, config: { evidenceLog } });
}

async function attestationOnOff(d: UnifiedDeployment): Promise<{ on: RunningServer; off: RunningServer }> {
  console.log(`\n== 1. Unified Identity attestation, evidence log on vs off (${ATTEST_N} each after ${ATTEST_WARMUP} warm-up, interleaved ABBA) ==`);
  const off = await startBenchServer(d, { enabled: false });
  const on = await startBenchServer(d, { enabled: true });
  if (off.evidenceLog !== undefined || on.evidenceLog === undefined) throw new Error('the servers do not have the evidence log set as asked');
  const provider = d.provider(d.berlin);
  const times = { on: [] as number[], off: [] as number[] };
  // The one step the log adds inside the exchange: the attestation record's append, awaited before
  // the SVID is minted (the issuance record and events are appended in the background). Timed by a
  // wrapper installed here on this server's log only.
  const inPath: number[] = [];
  const log = on.evidenceLog;
  const appendRecord = log.appendRecord.bind(log);
  log.appendRecord = ((input, tag) => {
    const t = performance.now();
    return appendRecord(input, tag).finally(() => { if (input.kind === 'attestation') inPath.push(performance.now() - t); });
  }) as typeof log.appendRecord;
  // Every transaction the log makes (the attestation record, and in the background the issuance
  // record and audit events): their time on the one event loop the agent and server share here.
  const ev = on.store.evidence;
  const storeAppend = ev.append.bind(ev);
  let txMs = 0;
  let txLeaves = 0;
  ev.append = (leaves) => {
    const t = performance.now();
    txLeaves += leaves.length;
    return storeAppend(leaves).finally(() => { txMs += performance.now() - t; });
  };
  const paired: number[] = [];
  for (let i = 0; i < ATTEST_WARMUP + ATTEST_N; i++) {
    // AB, BA, AB, …: neither server always goes first after the idle gap.
    const order = i % 2 === 0 ? (['off', 'on'] as const) : (['on', 'off'] as const);
    const pair: Record<string, number> = {};
    for (const which of order) {
      await sleep(GAP_MS);
      const server = which === 'on' ? on : off;
      const t = performance.now();
      await d.attest(server, provider);
      pair[which] = performance.now() - t;
    }
    if (i < ATTEST_WARMUP) { inPath.length = 0; txMs = 0; txLeaves = 0; continue; }
    times.on.push(pair['on']!);
    times.off.push(pair['off']!);
    paired.push(pair['on']! - pair['off']!);
  }
  await on.evidenceLog.flush();
  const p50on = pct(times.on, 50);
  const p50off = pct(times.off, 50);
  const diff = 100 * (p50on - p50off) / p50off;
  console.log(`  log off: p50 ${ms(p50off)}  p99 ${ms(pct(times.off, 99))}`);
  console.log(`  log on:  p50 ${ms(p50on)}  p99 ${ms(pct(times.on, 99))}   (log size after: ${await on.evidenceLog.size()} records)`);
  console.log(`  paired (same iteration) on − off: median ${ms(pct(paired, 50))}; the attestation record's append inside the exchange: p50 ${ms(pct(inPath, 50), 3)}, p99 ${ms(pct(inPath, 99), 3)}`);
  figure('attestation p50, evidence log off', ms(p50off));
  figure('attestation p99, evidence log off', ms(pct(times.off, 99)));
  figure('attestation p50, evidence log on', ms(p50on));
  figure('attestation p99, evidence log on', ms(pct(times.on, 99)));
  figure('attestation p50 on vs off', `${diff >= 0 ? '+' : ''}${diff.toFixed(1)} %`, '|Δ| <= 5 %', Math.abs(diff) <= 5);
  figure('  paired on − off, median of per-iteration Δ', `${ms(pct(paired, 50))} = ${(100 * pct(paired, 50) / p50off).toFixed(1)} %`);
  figure('  in-path append of the attestation record p50', `${ms(pct(inPath, 50), 3)} = ${(100 * pct(inPath, 50) / p50off).toFixed(1)} %`);
  figure('  all log transactions per attestation (mean)', `${ms(txMs / ATTEST_N, 3)}, ${(txLeaves / ATTEST_N).toFixed(1)} leaves`);
  return { on, off };
}

/** A real accepted Unified Identity attestation record, and the policy record it cites, from the server's log. */
async function realRecords(log: EvidenceLog): Promise<{ attestation: AttestationRecord; policy: PolicyRecord; bytes: number }> {
  const size = await log.size();
  let attestation: AttestationRecord | undefined;
  let bytes = 0;
  for (let i = size - 1; i >= 0 && attestation === undefined; i--) {
    const leaf = await log.entry(i);
    if (leaf?.kind !== 'attestation' || !leaf.body) continue;
    const r = decodeRecord(leaf.body) as AttestationRecord;
    if (r.result === 'accepted' && r.unified?.claims !== undefined) { attestation = r; bytes = leaf.body.length; }
  }
  if (attestation?.unified?.policy === undefined) throw new Error('the server logged no accepted Unified Identity attestation with its policy');
  const p = await log.entry(attestation.unified.policy.record);
  if (!p?.body) throw new Error('the cited policy record is missing');
  return { attestation, policy: decodeRecord(p.body) as PolicyRecord, bytes };
}

// ---------------------------------------------------------------------------------------------------
// 2. Appends per second.

function benchLog(store: DataStore, origin: string): { log: EvidenceLog; verifierKey: string } {
  const k = generateNoteKey(origin);
  return {
    log: new EvidenceLog({ store: store.evidence, origin, serverName: 'bench', signer: noteSignerFromKey(k.signerKey), logger: pino({ level: 'silent' }) }),
    verifierKey: k.verifierKey,
  };
}

async function appendRate(log: EvidenceLog, input: RecordInput, tag: string, concurrency: number, seconds: number): Promise<{ perS: number; lat: number[] }> {
  const lat: number[] = [];
  // A short warm-up at this concurrency (statements prepared, pages cached).
  await Promise.all(Array.from({ length: concurrency }, () => log.append(input, tag)));
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  let done = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      const t = performance.now();
      await log.append(input, tag);
      lat.push(performance.now() - t);
      done++;
    }
  }));
  return { perS: done / ((performance.now() - t0) / 1000), lat };
}

async function appends(input: RecordInput, tag: string, bytes: number): Promise<void> {
  console.log(`\n== 2. EvidenceLog.append, real accepted attestation records (${int(bytes)} bytes canonical JSON), ${APPEND_S} s per run ==`);
  const { dir, cleanup } = tempDir('terroir-bench-evidence-');
  const pg = await startPostgres({ durable: true });
  try {
    const stores: [string, DataStore][] = [
      ['SQLite', await openDataStore({ type: 'sqlite', path: path.join(dir, 'append.sqlite3') })],
      ['PostgreSQL', await openDataStore({ type: 'postgres', connectionString: await pg.createDatabase('evidence_bench'), poolSize: 4 })],
    ];
    for (const [name, store] of stores) {
      const { log } = benchLog(store, `${TD}/bench/append`);
      for (const c of [1, 16, 256]) {
        const r = await appendRate(log, input, tag, c, APPEND_S);
        figure(`${name} appends/s, ${c} concurrent appender${c > 1 ? 's' : ''}`, `${int(r.perS)} records/s`);
        if (c === 1) figure(`${name} single-appender append latency p50`, ms(pct(r.lat, 50), 3));
        if (c === 256) figure(`${name} append latency p50 with 256 appenders`, ms(pct(r.lat, 50), 1));
      }
      await log.close();
      await store.close();
    }
  } finally {
    await pg.stop();
    cleanup();
  }
}

// ---------------------------------------------------------------------------------------------------
// 3. audit verify.

interface BuiltExport { lines: string[]; verifierKey: string; policy: PolicyRecord; quotesPerRecord: number }

/** The export: the policy record, then VERIFY_N accepted attestations, each with its own nonce and fresh swtpm quotes. */
async function buildExport(d: UnifiedDeployment, template: AttestationRecord, policy: PolicyRecord): Promise<BuiltExport> {
  const tpm = d.tpm;
  const u = template.unified!;
  const t = template.tpm!;
  const quote = tpm.quote!.bind(tpm);
  const pcrsOf = (q: RecordedQuote): number[] => Object.keys(q.pcrs).map(Number).sort((a, b) => a - b);
  const selectorPcrs = t.pcrSelectorQuote ? pcrsOf(t.pcrSelectorQuote) : undefined;
  const quotesPerRecord = selectorPcrs ? 2 : 1;
  const unifiedPcrs = pcrsOf(u.quote);
  const doc = Buffer.from(u.claimsDocument, 'base64');

  const { dir, cleanup } = tempDir('terroir-bench-evidence-');
  try {
    const store = await openDataStore({ type: 'sqlite', path: path.join(dir, 'verify.sqlite3') });
    const { log, verifierKey } = benchLog(store, `${TD}/bench/verify`);
    const policyAt = await log.append(asInput(policy), policy.sha256);
    // Fresh quotes for every record (the auditor refuses a nonce used twice), appended as they come.
    const g0 = performance.now();
    const pending: Promise<number>[] = [];
    for (let i = 0; i < VERIFY_N; i++) {
      const nonce = crypto.randomBytes(32);
      const sel = selectorPcrs ? recordQuote(await quote(selectorPcrs, pcrSelectorsQualifyingData(nonce))) : undefined;
      const uq = recordQuote(await quote(unifiedPcrs, unifiedIdentityQualifyingData(nonce, doc)));
      const rec: AttestationRecord = {
        ...template,
        tpm: { ...t, nonce: nonce.toString('base64'), ...(sel ? { pcrSelectorQuote: sel } : {}) },
        unified: { ...u, quote: uq, policy: { ...u.policy!, record: policyAt } },
      };
      pending.push(log.append(asInput(rec), template.agentId));
      if (pending.length >= 256) await Promise.all(pending.splice(0));
    }
    await Promise.all(pending);
    const genS = (performance.now() - g0) / 1000;
    const lines: string[] = [];
    await exportLog(log, (chunk) => { for (const l of chunk.split('\n')) if (l !== '') lines.push(l); });
    const exportBytes = lines.reduce((s, l) => s + l.length + 1, 0);
    await log.close();
    await store.close();
    console.log(`\n(for 3: export built in ${genS.toFixed(1)} s (${int(VERIFY_N * quotesPerRecord)} TPM2_Quote on swtpm, ${quotesPerRecord} per record as the server recorded it; `
      + `AK ${parseTpm2bPublic(Buffer.from(t.akPublic, 'base64')).type}): ${int(lines.length)} lines, ${(exportBytes / 1024 / 1024).toFixed(1)} MiB`);
    return { lines, verifierKey, policy, quotesPerRecord };
  } finally {
    cleanup();
  }
}

/** Times verifyExport over the export (swtpm, gpsd and the servers stopped by now), then where the time goes. */
async function timeVerify({ lines, verifierKey, policy, quotesPerRecord }: BuiltExport): Promise<void> {
  console.log(`\n== 3. audit verify (verifyExport, one thread): ${int(VERIFY_N)} accepted Unified Identity attestations with their own swtpm quotes ==`);
  // Three passes, the median counted (the export in memory, as a file stream would feed it lines).
  const runs: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    const report = await verifyExport(lines, { verifierKeys: [verifierKey] });
    runs.push((performance.now() - t0) / 1000);
    if (!report.ok || report.attestations.reverified !== VERIFY_N) throw new Error(`verifyExport did not re-verify every record: ${JSON.stringify(report)}`);
  }
  const sec = pct(runs, 50);
  const rate = VERIFY_N / sec;
  console.log(`  passes: ${runs.map((s) => `${s.toFixed(2)} s`).join(', ')} (median counted; best ${int(VERIFY_N / Math.min(...runs))} /s)`);
  figure('audit verify: attestation records re-verified/s/core', `${int(rate)} /s`, '>= 5,000 /s per core', rate >= 5000);
  const totalUs = sec * 1e6 / VERIFY_N;
  figure('audit verify: time per attestation record', `${totalUs.toFixed(0)} µs`, `<= 200 µs (5,000 /s)`, totalUs <= 200);

  // Where the time goes: the same steps outside verifyExport, over the same records (median of 3 loops each).
  const parsed = lines.map((l) => JSON.parse(l) as { body?: unknown }).filter((o): o is { body: string } => typeof o.body === 'string');
  const bodies = parsed.map((o) => Buffer.from(o.body, 'base64'));
  const records = bodies.map((b) => decodeRecord(b)).filter((r): r is AttestationRecord => r.kind === 'attestation');
  const n = records.length;
  const each = (fn: () => void): number => {
    const xs: number[] = [];
    for (let k = 0; k < 3; k++) { const t0 = performance.now(); fn(); xs.push((performance.now() - t0) * 1000 / n); }
    return pct(xs, 50);
  };
  const lineUs = each(() => { for (const l of lines) JSON.parse(l); for (const o of parsed) Buffer.from(o.body, 'base64'); });
  const decodeUs = each(() => { for (const b of bodies) decodeRecord(b); });
  const hashUs = each(() => { for (const b of bodies) leafHash(b); });
  const aks = records.map((r) => parseTpm2bPublic(Buffer.from(r.tpm!.akPublic, 'base64')));
  // verifyExport parses each EK and AK once (cached by their bytes, with the AK's KeyObject): what a
  // record costs after the first of its node is the cache lookup. Shown: the one-off cost per key.
  const ekUs = each(() => {
    records.forEach((r, i) => {
      ekHash(parseTpm2bPublic(Buffer.from(r.tpm!.ekPublic, 'base64')));
      checkAkAttributes(aks[i]!);
    });
  });
  const akKeyUs = each(() => { for (const r of records) publicKeyFromTpmPublic(parseTpm2bPublic(Buffer.from(r.tpm!.akPublic, 'base64'))); });
  for (const ak of aks.slice(0, 1)) publicKeyFromTpmPublic(ak);
  const cachedAk = aks[0]!;
  const quoteUs = each(() => {
    records.forEach((r) => {
      const ak = cachedAk;
      const nonce = Buffer.from(r.tpm!.nonce, 'base64');
      const check = (q: RecordedQuote, expected: Buffer): void => {
        verifyQuote({
          akPublic: ak, attest: Buffer.from(q.attest, 'base64'), signature: Buffer.from(q.signature, 'base64'),
          pcrs: [{ alg: 'sha256', values: new Map(Object.entries(q.pcrs).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')])) }], expectedExtraData: expected,
        });
      };
      if (r.tpm!.pcrSelectorQuote) check(r.tpm!.pcrSelectorQuote, pcrSelectorsQualifyingData(nonce));
      check(r.unified!.quote, unifiedIdentityQualifyingData(nonce, Buffer.from(r.unified!.claimsDocument, 'base64')));
    });
  });
  const set = parsePolicies(policy.document);
  const policyUs = each(() => {
    for (const r of records) {
      const claims = r.unified!.claims!;
      const readings = parseClaimsDocument(Buffer.from(r.unified!.claimsDocument, 'base64'));
      const ctx = { now: new Date(String(claims['attestedAt'])) };
      const name = r.unified!.policy!.name;
      const decision = evaluatePolicy(set.get(name), readings, ctx);
      if (!decision.allowed) throw new Error('the recomputed decision does not allow the record');
      placeClaims(decision);
      set.names().filter((x) => x === name || evaluatePolicy(set.get(x), readings, ctx).allowed);
    }
  });
  const share = (x: number): string => `${x.toFixed(0)} µs = ${(100 * x / totalUs).toFixed(0)} %`;
  figure(`  quote verification (${quotesPerRecord} quote${quotesPerRecord > 1 ? 's' : ''}: signature, nonce, PCRs; AK cached)`, share(quoteUs));
  figure('  policy recomputation (claims parse, every policy)', share(policyUs));
  figure('  decodeRecord (JSON.parse + RFC 8785 re-encode check)', share(decodeUs));
  figure('  export line JSON.parse + base64 body decode', share(lineUs));
  figure('  leaf hash (SHA-256)', share(hashUs));
  figure('  rest (tree, nonce set, key cache lookups, claims checks, GC)', share(totalUs - quoteUs - policyUs - decodeUs - lineUs - hashUs));
  figure('  once per node key (not per record): AK parse + KeyObject import', `${akKeyUs.toFixed(0)} µs`);
  figure('  once per node key (not per record): EK parse + hash, AK attributes', `${ekUs.toFixed(0)} µs`);

  // The floor: one ECDSA P-256 / SHA-256 verification (the AK's signature), one per quote.
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const data = crypto.randomBytes(120);
  const sig = crypto.sign('sha256', data, privateKey);
  for (let i = 0; i < 200; i++) crypto.verify('sha256', data, publicKey, sig);
  const V = 3000;
  const v0 = performance.now();
  for (let i = 0; i < V; i++) crypto.verify('sha256', data, publicKey, sig);
  const ecdsaUs = (performance.now() - v0) * 1000 / V;
  figure('floor: one ECDSA P-256 verify (node:crypto, KeyObject)', `${ecdsaUs.toFixed(1)} µs`);
  figure(`floor: records/s/core if only the ${quotesPerRecord} ECDSA verify${quotesPerRecord > 1 ? 's' : ''} cost`, `${int(1e6 / (quotesPerRecord * ecdsaUs))} /s`);
}

// ---------------------------------------------------------------------------------------------------
// 4. Proofs in a 1,000,000-leaf log.

async function bigLog(): Promise<void> {
  console.log(`\n== 4. Proofs in a ${int(BIG_N)}-leaf log (SQLite), ${int(PROOFS)} random indexes/sizes each ==`);
  const { dir, cleanup } = tempDir('terroir-bench-evidence-');
  try {
    const file = path.join(dir, 'big.sqlite3');
    const store = await openDataStore({ type: 'sqlite', path: file });
    const body = (i: number): Buffer => Buffer.from(`{"i":${i},"kind":"event","v":1}`);
    const time = new Date();
    const t0 = performance.now();
    for (let from = 0; from < BIG_N; from += BIG_BATCH) {
      const leaves: NewEvidenceLeaf[] = [];
      for (let i = from; i < Math.min(BIG_N, from + BIG_BATCH); i++) { const b = body(i); leaves.push({ kind: 'event', time, leafHash: leafHash(b), body: b }); }
      const first = await store.evidence.append(leaves);
      if (first !== from) throw new Error(`append landed at ${first}, not ${from}`);
    }
    const loadS = (performance.now() - t0) / 1000;
    const size = await store.evidence.size();
    if (size !== BIG_N) throw new Error(`the log holds ${size} leaves, not ${BIG_N}`);
    const bytes = ['', '-wal', '-shm'].reduce((s, x) => s + (fs.existsSync(file + x) ? fs.statSync(file + x).size : 0), 0);
    figure(`load ${int(BIG_N)} leaves (${int(BIG_BATCH)} per transaction)`, `${loadS.toFixed(1)} s`);
    figure('  = leaves appended per second (bulk)', `${int(BIG_N / loadS)} /s`);
    figure('database size (with WAL)', `${(bytes / 1024 / 1024).toFixed(0)} MiB`);

    const read: NodeReader = (nodes) => store.evidence.nodes(nodes);
    const root = await rootAt(size, read);
    let seed = 42;
    const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return Math.floor((seed / 2 ** 31) * n); };
    const incl: number[] = []; const inclV: number[] = []; const inclLen: number[] = [];
    for (let k = 0; k < PROOFS; k++) {
      const i = rnd(size);
      const t = performance.now();
      const proof = await inclusionProof(i, size, read);
      incl.push(performance.now() - t);
      const v = performance.now();
      verifyInclusion(leafHash(body(i)), i, size, proof, root);
      inclV.push(performance.now() - v);
      inclLen.push(proof.length);
    }
    const cons: number[] = []; const consV: number[] = []; const consLen: number[] = []; const roots: number[] = [];
    for (let k = 0; k < PROOFS; k++) {
      const m = 1 + rnd(size - 1);
      const r = performance.now();
      const oldRoot = await rootAt(m, read);
      roots.push(performance.now() - r);
      const t = performance.now();
      const proof = await consistencyProof(m, size, read);
      cons.push(performance.now() - t);
      const v = performance.now();
      verifyConsistency(m, size, proof, oldRoot, root);
      consV.push(performance.now() - v);
      consLen.push(proof.length);
    }
    await store.close();
    const sz = (xs: number[]): string => `${pct(xs, 50)} hashes = ${pct(xs, 50) * 32} B (max ${Math.max(...xs)})`;
    const log2 = Math.ceil(Math.log2(size));
    figure('inclusion proof p50 / p99', `${ms(pct(incl, 50), 3)} / ${ms(pct(incl, 99), 3)}`);
    figure('inclusion proof size p50', sz(inclLen), `~${log2} hashes = ${log2 * 32} B`, pct(inclLen, 50) <= log2);
    figure('inclusion proof verify p50 / p99', `${us(pct(inclV, 50))} / ${us(pct(inclV, 99))}`);
    figure('consistency proof p50 / p99', `${ms(pct(cons, 50), 3)} / ${ms(pct(cons, 99), 3)}`);
    figure('consistency proof size p50', sz(consLen), `~${log2} hashes = ${log2 * 32} B`, pct(consLen, 50) <= log2 + 1);
    figure('consistency proof verify p50 / p99', `${us(pct(consV, 50))} / ${us(pct(consV, 99))}`);
    figure('rootAt (tree head at a random size) p50 / p99', `${ms(pct(roots, 50), 3)} / ${ms(pct(roots, 99), 3)}`);
    console.log(`  all ${int(2 * PROOFS)} proofs verified against the tree heads`);
  } finally {
    cleanup();
  }
}

// ---------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const load0 = load();
  const started = performance.now();
  console.log(`terroir evidence log benchmark — ${new Date().toISOString()}, Node ${process.version}, ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? 'unknown CPU'}`);
  console.log(`load average at start: ${load0}`);

  const d = await startUnifiedDeployment();
  let servers: { on: RunningServer; off: RunningServer } | undefined;
  let built: BuiltExport;
  let real: Awaited<ReturnType<typeof realRecords>>;
  try {
    servers = await attestationOnOff(d);
    real = await realRecords(servers.on.evidenceLog!);
    await servers.off.stop();
    await servers.on.stop();
    servers = undefined;
    built = await buildExport(d, real.attestation, real.policy);
  } finally {
    if (servers) { await servers.off.stop().catch(() => undefined); await servers.on.stop().catch(() => undefined); }
    await d.stop();
  }
  // swtpm, gpsd and the Keylime double are stopped from here on (an auditor's machine runs none of them).
  await appends(asInput(real.attestation), real.attestation.agentId!, real.bytes);
  await timeVerify(built);
  await bigLog();

  const load1 = load();
  console.log(`\n== summary (${((performance.now() - started) / 1000).toFixed(0)} s) ==`);
  console.log(`load average at start: ${load0}   at end: ${load1}   (${os.cpus().length} cores)`);
  for (const r of summary) {
    console.log(`${r.name.padEnd(58)}  ${r.value.padEnd(34)}  ${r.goal.padEnd(22)}  ${r.met === undefined ? '-' : r.met ? 'MET' : 'NOT MET'}`);
  }
}

main().then(() => process.exit(0), (err: unknown) => { console.error(err); process.exit(1); });
