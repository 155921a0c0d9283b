// Unified Identity node attestation, whole exchange (loopback, swtpm). Prints its figures.
//   npx tsx bench/unified-identity.ts
// A real terroir server (flag on, Keylime one-shot via the test verifier over mTLS, eu-only location
// policy), swtpm, gpsd fed by gpsfake. Each iteration is one AttestAgent exchange as the agent does it:
// EK/AK, credential activation, sensor read, claims document, TPM2_Quote, then on the server the secret
// and nonce, claims parsing, local quote verification, Keylime one-shot, policy, SVID and node update.
// The agent reads its sensors in the background and uses a reading younger than readingMaxAgeMs
// (2 s), so an attestation does not wait for the receiver's next fix; the sensor stage is that lookup
// plus building the canonical claims document.
//
// Everything runs in this one process (agent, server, Keylime test verifier share one event loop;
// swtpm and gpsd are separate processes), so one performance.now() clock orders every event. The
// "rest" is split from timestamps taken by wrappers installed here only (the server's TPM attestor,
// pipeline, issuer, datastore and auditor), so product code carries no timing of its own.
import os from 'node:os';
import { performance } from 'node:perf_hooks';
import type { TpmCredentialSource, UnifiedIdentityProvider } from '../src/agent/node-attestor.js';
import { attestNode } from '../src/agent/node-attestor.js';
import { createCsr, generateKeyPair } from '../src/agent/csr.js';
import { connectToServer } from '../src/agent/server-conn.js';
import { openUnifiedIdentity } from '../src/agent/unified-identity.js';
import { TpmAttestor, type TpmAttestationInput } from '../src/server/attestation/tpm.js';
import { SvidIssuer } from '../src/server/ca/issuer.js';
import { ekPublicMatchesCertificate, makeCredential, objectName, parseTpm2bPublic, verifyEkCertificate } from '../src/tpm/index.js';
import { startUnifiedDeployment, TD } from '../test/unified-identity/fixture.js';

const WARMUP = 5;
const N = Number(process.env['BENCH_N'] ?? 60);
/** Idle time between attestations (not measured). */
const GAP_MS = Number(process.env['BENCH_GAP_MS'] ?? 25);

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}
const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

/** Wraps `obj[name]` (sync or async) so each call adds its duration to `acc[key]` and notes its start/end. */
type Marks = Record<string, number>;
function timeMethod(obj: object, name: string, key: string, acc: Marks, marks?: Marks): void {
  const target = obj as Record<string, (...a: unknown[]) => unknown>;
  const orig = target[name] as (...a: unknown[]) => unknown;
  target[name] = function (this: unknown, ...args: unknown[]): unknown {
    const t = performance.now();
    if (marks) marks[`${key}:start`] = t;
    const done = (): void => {
      const e = performance.now();
      acc[key] = (acc[key] ?? 0) + (e - t);
      if (marks) marks[`${key}:end`] = e;
    };
    let out: unknown;
    try {
      out = orig.apply(this, args);
    } catch (err) {
      done();
      throw err;
    }
    if (out instanceof Promise) return out.finally(done);
    done();
    return out;
  };
}

/** Median time of `fn` over `n` calls (ms). */
function micro(n: number, fn: () => void): number {
  const xs: number[] = [];
  for (let i = 0; i < n; i++) { const t = performance.now(); fn(); xs.push(performance.now() - t); }
  return pct(xs, 50);
}

async function run(ekKind: 'rsa2048' | 'ecc-p256', persistEk: boolean): Promise<void> {
  const d = await startUnifiedDeployment({ ekKind, persistEk });
  try {
    const server = await d.startServer({ flag: true, keylime: true });
    const pipeline = server.unifiedIdentity!;
    // Per-iteration accumulators (durations) and marks (absolute times), reset each run.
    const acc: Marks = {};
    const marks: Marks = {};
    let lastBegin: { attestor: TpmAttestor; input: TpmAttestationInput } | undefined;
    const origBegin = TpmAttestor.prototype.begin;
    TpmAttestor.prototype.begin = function (this: TpmAttestor, input: TpmAttestationInput) {
      lastBegin = { attestor: this, input };
      return origBegin.call(this, input);
    };
    timeMethod(TpmAttestor.prototype, 'begin', 'begin', acc, marks);
    timeMethod(TpmAttestor.prototype, 'finish', 'finish', acc, marks);
    timeMethod(SvidIssuer.prototype, 'mintX509', 'mint', acc, marks);
    timeMethod(pipeline, 'verify', 'verify', acc, marks);
    for (const m of ['getNode', 'updateNode', 'createNode', 'consumeNonce']) timeMethod(server.store, m, `store.${m}`, acc);
    timeMethod(server.auditor, 'record', 'audit', acc, marks);
    // The wrappers close over the objects, so reset them in place.
    const reset = (): void => { for (const k of Object.keys(acc)) delete acc[k]; for (const k of Object.keys(marks)) delete marks[k]; };

    // The agent's TPM, with each step's start and end noted.
    const tpm: TpmCredentialSource = {
      attestationData: async () => { marks['ekak:start'] = performance.now(); try { return await d.tpm.attestationData(); } finally { marks['ekak:end'] = performance.now(); } },
      activateCredential: async (b, s) => { marks['activation:start'] = performance.now(); try { return await d.tpm.activateCredential(b, s); } finally { marks['activation:end'] = performance.now(); } },
      quote: async (p, q) => { const t = performance.now(); try { return await d.tpm.quote!(p, q); } finally { acc['quote'] = performance.now() - t; } },
    };
    const inner = openUnifiedIdentity({ sensors: [{ type: 'gpsd', host: '127.0.0.1', port: d.berlin.port }], sensorTimeoutMs: 8000, readingMaxAgeMs: 2000 }, tpm);
    const provider: UnifiedIdentityProvider = {
      async evidence(nonce, pcrs) {
        marks['evidence:start'] = performance.now();
        try { return await inner.evidence(nonce, pcrs); } finally { marks['evidence:end'] = performance.now(); }
      },
    };
    // One attestation as test/unified-identity/fixture.ts attest() does it, with the agent's steps marked.
    const attestOnce = async (): Promise<void> => {
      const roots = server.ca.x509Roots();
      const client = connectToServer({ address: '127.0.0.1', port: server.agentApiPort, trustDomain: TD, roots });
      const fn = client['AttestAgent'] as (...a: unknown[]) => unknown;
      client['AttestAgent'] = function (this: unknown, ...a: unknown[]) { marks['call'] = performance.now(); return fn.apply(this, a); };
      try {
        const csr = createCsr(generateKeyPair());
        marks['csr'] = performance.now();
        await attestNode(client, { csr, tpm, unifiedIdentity: provider, timeoutMs: 20_000 });
        marks['result'] = performance.now();
      } finally {
        client.close();
      }
    };

    type Row = Record<string, number>;
    const rows: Row[] = [];
    for (let i = 0; i < WARMUP + N; i++) {
      // Attestations are minutes apart in a deployment: let the last one's tail (stream and socket
      // teardown on both sides, GC) finish first, or it lands in this one's connection setup.
      await new Promise((r) => setTimeout(r, GAP_MS));
      reset();
      const t = performance.now();
      await attestOnce();
      const end = performance.now();
      const st = pipeline.lastStages!;
      const g = (k: string): number => marks[k] ?? NaN;
      const a = (k: string): number => acc[k] ?? 0;
      if (i < WARMUP) continue;
      const verify = a('verify');
      const inStages = st.claims + st.quote + st.keylime + st.operator + st.policy;
      rows.push({
        total: end - t,
        ekak: g('ekak:end') - g('ekak:start'),
        activation: g('activation:end') - g('activation:start'),
        quote: a('quote'),
        sensor: g('evidence:end') - g('evidence:start') - a('quote'),
        claims: st.claims, localQuote: st.quote, keylime: st.keylime, policy: st.policy + st.operator,
        // The "rest", in the order it happens.
        csr: g('csr') - t,
        // The TCP+TLS+HTTP/2 setup as far as the TPM reads do not hide it, then the params message and
        // the server's handling of it before begin() (proto decode, CSR check).
        connect: g('begin:start') - g('ekak:end'),
        begin: a('begin'),
        toAgent: g('activation:start') - g('begin:end'),
        agentGap: g('evidence:start') - g('activation:end'),
        toServer: g('finish:start') - g('evidence:end'),
        finishNoStore: a('finish') - a('store.consumeNonce'),
        nonce: a('store.consumeNonce'),
        verifyOverhead: verify - inStages,
        mint: a('mint'),
        nodeWrites: a('store.getNode') + a('store.updateNode') + a('store.createNode'),
        audit: a('audit'),
        finalizeOther: g('audit:end') - g('verify:end') - a('mint') - a('store.getNode') - a('store.updateNode') - a('store.createNode') - a('audit'),
        toResult: g('result') - g('audit:end'),
        close: end - g('result'),
        gapFinishVerify: g('verify:start') - g('finish:end'),
      });
    }
    await inner.close();
    TpmAttestor.prototype.begin = origBegin;

    const tot = rows.map((r) => r.total as number);
    console.log(`\n== EK ${ekKind} (persistent), ${ekKind === 'rsa2048' ? 'EK certificate chain checked' : 'EK hash enrolled'} ==`);
    console.log(`full attestation (agent view, new gRPC/TLS connection each): p50 ${pct(tot, 50).toFixed(2)} ms, p99 ${pct(tot, 99).toFixed(2)} ms (goal p50 <= 10 ms)`);
    const whole = sum(tot);
    const stage = (name: string, key: string): void => {
      const xs = rows.map((r) => r[key] as number);
      console.log(`  ${name.padEnd(58)} p50 ${pct(xs, 50).toFixed(2).padStart(6)} ms  share ${(100 * sum(xs) / whole).toFixed(1).padStart(5)} %`);
    };
    console.log('stages:');
    stage('agent: EK certificate/public + AK (TPM reads)', 'ekak');
    stage('agent: TPM2_ActivateCredential', 'activation');
    stage('agent: sensor reading + canonical claims', 'sensor');
    stage('agent: TPM2_Quote (incl. PCR read)', 'quote');
    stage('server: claims document (parse, canonical check)', 'claims');
    stage('server: local quote verification', 'localQuote');
    stage('server: Keylime one-shot (HTTPS round trip)', 'keylime');
    stage('server: location policy (every policy)', 'policy');
    for (const r of rows) r.rest = (r.total as number) - ['ekak', 'activation', 'sensor', 'quote', 'claims', 'localQuote', 'keylime', 'policy'].reduce((s, k) => s + (r[k] as number), 0);
    stage('rest: TLS+gRPC, EK/AK checks, MakeCredential, SVID, store', 'rest');
    console.log('the rest, in order:');
    stage('  agent: gRPC client (TLS context), key pair, CSR', 'csr');
    stage('  connection setup left after TPM reads, params, CSR check', 'connect');
    stage('  server: EK cert chain, AK checks, MakeCredential', 'begin');
    stage('  challenge to agent', 'toAgent');
    stage('  agent: between activation and evidence', 'agentGap');
    stage('  response to server', 'toServer');
    stage('  server: secret check (constant time)', 'finishNoStore');
    stage('  server: nonce consumed (datastore write)', 'nonce');
    stage('  server: between nonce and pipeline', 'gapFinishVerify');
    stage('  server: pipeline outside its stages', 'verifyOverhead');
    stage('  server: agent SVID minted', 'mint');
    stage('  server: node read + upsert (datastore)', 'nodeWrites');
    stage('  server: audit records', 'audit');
    stage('  server: rest of finalize (bundle, claims, timers)', 'finalizeOther');
    stage('  result to agent', 'toResult');
    stage('  agent: channel close', 'close');

    // The parts of begin(), measured apart on the same inputs.
    if (lastBegin) {
      const { attestor, input } = lastBegin;
      const cas = (attestor as unknown as { opts: { manufacturerCasDer: Buffer[] } }).opts.manufacturerCasDer;
      const ek = parseTpm2bPublic(input.ekPublic);
      const ak = parseTpm2bPublic(input.akPublic);
      const secret = Buffer.alloc(32, 1);
      console.log('begin(), its parts alone (median of 200 calls):');
      console.log(`  parse EK + AK TPM2B_PUBLIC                                   ${micro(200, () => { parseTpm2bPublic(input.ekPublic); parseTpm2bPublic(input.akPublic); }).toFixed(3)} ms`);
      if (input.ekCertificate.length > 0) {
        console.log(`  verifyEkCertificate (chain to the manufacturer CA)           ${micro(200, () => verifyEkCertificate(input.ekCertificate, cas, { intermediatesDer: input.ekIntermediates })).toFixed(3)} ms`);
        const info = verifyEkCertificate(input.ekCertificate, cas, { intermediatesDer: input.ekIntermediates });
        console.log(`  ekPublicMatchesCertificate (verified info, as begin() does)   ${micro(200, () => ekPublicMatchesCertificate(ek, info)).toFixed(3)} ms`);
        console.log(`  ekPublicMatchesCertificate (certificate DER, parsed again)   ${micro(200, () => ekPublicMatchesCertificate(ek, input.ekCertificate)).toFixed(3)} ms`);
      }
      console.log(`  makeCredential                                               ${micro(200, () => makeCredential(ek, objectName(ak), secret)).toFixed(3)} ms`);
    }
  } finally {
    await d.stop();
  }
}

async function main(): Promise<void> {
  console.log(`Unified Identity node attestation, loopback, swtpm, Keylime one-shot (test verifier, mTLS), ${N} runs after ${WARMUP} warm-up`);
  console.log(`host: ${os.cpus().length} cores, ${os.cpus()[0]?.model ?? 'unknown CPU'}, Node ${process.version}, load average ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
  // swtpm_setup provisions the RSA EK persistent at 0x81010001 (with its certificate).
  await run('rsa2048', false);
  // swtpm has no ECC EK certificate: this EK is made persistent here and trusted by its enrolled hash.
  await run('ecc-p256', true);
}

main().then(() => process.exit(0), (err: unknown) => { console.error(err); process.exit(1); });
