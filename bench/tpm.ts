/**
 * TPM layer benchmark against a fresh swtpm: PCR_Read, Quote (ECC, RSA), ActivateCredential and
 * verifier-side quote verification through the project, and the same TPM operations through
 * tpm2-tools processes as the reference. Prints p50/p99 latencies and the verification rate.
 *
 *   npx tsx bench/tpm.ts
 */
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TpmDevice } from '../src/tpm/device.js';
import { makeCredential, parseTpm2bPublic, verifyQuote, type PcrSelection } from '../src/tpm/index.js';
import { startSwtpm } from '../test/support/swtpm.js';

const SEL8: PcrSelection[] = [{ alg: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7] }];

function pct(samples: number[], p: number): number {
  const s = [...samples].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(p * (s.length - 1)))] as number;
}

const rows: [string, string, string, string][] = [];
function report(name: string, samples: number[]): void {
  rows.push([name, String(samples.length), pct(samples, 0.5).toFixed(3), pct(samples, 0.99).toFixed(3)]);
}

async function timeAsync(n: number, warmup: number, fn: () => Promise<unknown>): Promise<number[]> {
  for (let i = 0; i < warmup; i++) await fn();
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    await fn();
    out.push(performance.now() - t);
  }
  return out;
}

const sw = await startSwtpm();
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-bench-tpm-'));
const env = { ...process.env, TPM2TOOLS_TCTI: sw.tcti, TSS2_LOG: 'all+NONE' };
const tool = (cmd: string, args: string[]): void => { execFileSync(cmd, args, { cwd: work, env, stdio: 'ignore' }); };
const f = (n: string): string => path.join(work, n);
/** Times a tpm2-tools process; `after` (untimed) cleans up, e.g. flushes objects tools leave loaded. */
function timeTool(n: number, cmd: string, args: string[], after?: () => void): number[] {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    tool(cmd, args);
    out.push(performance.now() - t);
    after?.();
  }
  return out;
}

try {
  const dev = await TpmDevice.open(sw.tcti);
  const eccAk = await dev.createAk('ecc-p256', { persistentHandle: 0x81000200 });
  const rsaAk = await dev.createAk('rsa2048', { persistentHandle: 0x81000201 });
  const nonce = crypto.randomBytes(32);

  report('project  PCR_Read (8 x sha256)', await timeAsync(500, 20, () => dev.pcrRead(SEL8)));
  report('project  Quote ECC P-256 (8 PCRs, incl. PCR_Read)', await timeAsync(500, 20, () => dev.quote(eccAk, SEL8, nonce)));
  report('project  Quote RSA-2048 (8 PCRs, incl. PCR_Read)', await timeAsync(200, 10, () => dev.quote(rsaAk, SEL8, nonce)));
  for (const kind of ['rsa2048', 'ecc-p384'] as const) {
    const ek = parseTpm2bPublic(await dev.ekPublic(kind));
    const creds = Array.from({ length: 110 }, () => makeCredential(ek, eccAk.name, crypto.randomBytes(32)));
    let i = 0;
    report(`project  ActivateCredential (${kind} EK)`, await timeAsync(100, 10, () => {
      const c = creds[i++] as { credentialBlob: Buffer; encryptedSecret: Buffer };
      return dev.activateCredential(eccAk, kind, c.credentialBlob, c.encryptedSecret);
    }));
  }
  {
    const ek = parseTpm2bPublic(await dev.ekPublic('rsa2048'));
    const samples: number[] = [];
    for (let i = 0; i < 1000; i++) {
      const t = performance.now();
      makeCredential(ek, eccAk.name, crypto.randomBytes(32));
      samples.push(performance.now() - t);
    }
    report('project  MakeCredential (RSA EK, verifier side)', samples);
  }

  const rates: string[] = [];
  for (const [label, ak] of [['ECC P-256', eccAk], ['RSA-2048', rsaAk]] as const) {
    const q = await dev.quote(ak, SEL8, nonce);
    const opts = { akPublic: ak.tpmPublic, attest: q.attest, signature: q.signature, pcrs: q.pcrs, expectedExtraData: nonce };
    for (let i = 0; i < 500; i++) verifyQuote(opts);
    const samples: number[] = [];
    const n = 20_000;
    const t0 = performance.now();
    const cpu0 = process.cpuUsage();
    for (let i = 0; i < n; i++) {
      const t = performance.now();
      verifyQuote(opts);
      samples.push(performance.now() - t);
    }
    const secs = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(cpu0);
    const cpuSecs = (cpu.user + cpu.system) / 1e6;
    report(`project  verifyQuote ${label}`, samples);
    // Wall-clock rate depends on what else runs on the machine; the CPU-time rate is what one core does.
    rates.push(`verifyQuote ${label}: ${Math.round(n / secs).toLocaleString('en')} quotes/s wall clock, ${Math.round(n / cpuSecs).toLocaleString('en')} quotes/s per CPU-second (${n} quotes, one thread)`);
  }
  await dev.close();

  // tpm2-tools as processes: the reference. Objects they leave loaded are flushed between runs (untimed).
  const flush = (): void => tool('tpm2_flushcontext', ['-t']);
  report('tpm2-tools  tpm2_pcrread (8 x sha256)', timeTool(30, 'tpm2_pcrread', ['sha256:0,1,2,3,4,5,6,7']));
  for (const [label, alg] of [['ECC P-256', ['-G', 'ecc', '-s', 'ecdsa']], ['RSA-2048', ['-G', 'rsa', '-s', 'rsassa']]] as const) {
    tool('tpm2_createak', ['-C', '0x81010001', '-c', f('ak.ctx'), ...alg, '-g', 'sha256', '-n', f('ak.name')]);
    flush();
    report(`tpm2-tools  tpm2_quote ${label} (8 PCRs)`, timeTool(30, 'tpm2_quote', ['-c', f('ak.ctx'), '-l', 'sha256:0,1,2,3,4,5,6,7', '-q', nonce.toString('hex'), '-m', f('q.msg'), '-s', f('q.sig')], flush));
  }
  {
    tool('tpm2_readpublic', ['-c', '0x81010016', '-o', f('ek.pub')]);
    const secret = crypto.randomBytes(32);
    fs.writeFileSync(f('secret.bin'), secret);
    const name = fs.readFileSync(f('ak.name')).toString('hex');
    tool('tpm2_makecredential', ['-T', 'none', '-u', f('ek.pub'), '-s', f('secret.bin'), '-n', name, '-o', f('cred.bin')]);
    report('tpm2-tools  tpm2_activatecredential (ecc-p384 EK)', timeTool(30, 'tpm2_activatecredential', ['-c', f('ak.ctx'), '-C', '0x81010016', '-i', f('cred.bin'), '-o', f('out.bin')], flush));
  }

  const w = [Math.max(...rows.map((r) => r[0].length)), 6, 10, 10];
  const line = (r: string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(w[0] as number) : c.padStart(w[i] as number))).join('  ');
  console.log(`TPM benchmark against swtpm (${sw.tcti}), node ${process.version}, ${os.cpus().length} cores, load average ${os.loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  console.log(line(['operation', 'n', 'p50 ms', 'p99 ms']));
  for (const r of rows) console.log(line(r));
  for (const r of rates) console.log(r);
} finally {
  await sw.stop();
  fs.rmSync(work, { recursive: true, force: true });
}
