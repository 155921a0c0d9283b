// Volume fuzzing: `npx tsx fuzz/run.ts [target|all|t1,t2] [--n 1000000] [--seed S] [--seconds S]`, or
// `npm run fuzz -- …`. --seconds boxes each target's run in time (the report says how many inputs ran).
//
// Each target runs in a child process of its own (one at a time): a crash that kills the process, an
// asynchronous throw, or an input that never returns (the parent's watchdog) is caught and reported
// with the input that caused it. The child records every input before running it, so even an infinite
// loop leaves a reproducer. Reproducers go to fuzz/crashes/<target>-<hash>.bin with a .txt beside it.
//
// `--replay <file>` runs one saved input through a target and prints what happened.
import { fork } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describeError, inputHash, runTarget, type Finding, type FuzzTarget, type RunResult } from './engine.js';
import { TARGETS } from './targets/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const crashDir = path.join(here, 'crashes');
/** No progress from a child for this long: it is stuck in one input. */
const WATCHDOG_MS = 120_000;

interface Args {
  target: string;
  n: number;
  seed: number;
  child: boolean;
  replay?: string;
  maxHeapMiB: number;
  seconds?: number;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { target: 'all', n: 1_000_000, seed: Number(process.env.FUZZ_SEED ?? 0) || (Date.now() % 0x7fffffff), child: false, maxHeapMiB: 1024 };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i] as string;
    const next = (): string => {
      const x = argv[++i];
      if (x === undefined) throw new Error(`${v} needs a value`);
      return x;
    };
    if (v === '--n') a.n = Number(next().replace(/_/g, ''));
    else if (v === '--seed') a.seed = Number(next());
    else if (v === '--child') a.child = true;
    else if (v === '--replay') a.replay = next();
    else if (v === '--max-heap-mib') a.maxHeapMiB = Number(next());
    else if (v === '--seconds') a.seconds = Number(next());
    else if (v.startsWith('--')) throw new Error(`unknown option ${v}`);
    else a.target = v;
  }
  if (!Number.isInteger(a.n) || a.n < 1) throw new Error('--n must be a positive integer');
  if (!Number.isInteger(a.seed) || a.seed < 0) throw new Error('--seed must be a non-negative integer');
  return a;
}

function targetNamed(name: string): FuzzTarget {
  const t = TARGETS.find((x) => x.name === name);
  if (t === undefined) throw new Error(`unknown target ${name}; targets: ${TARGETS.map((x) => x.name).join(', ')}`);
  return t;
}

const inflightFile = (target: string): string => path.join(crashDir, `.inflight-${target}.bin`);

// ------------------------------------------------------------------------------------ child

type ChildMessage =
  | { type: 'progress'; done: number; crashes: number; hangs: number }
  | { type: 'result'; result: Omit<RunResult, 'findings'> & { findings: (Omit<Finding, 'input'> & { input: string })[] } };

async function child(args: Args): Promise<void> {
  const target = targetNamed(args.target);
  fs.mkdirSync(crashDir, { recursive: true });
  const fd = fs.openSync(inflightFile(target.name), 'w');
  const inst = await target.setup();
  const send = (m: ChildMessage): void => { process.send?.(m); };
  const result = await runTarget(target, inst, {
    n: args.n,
    seed: args.seed,
    ...(args.seconds !== undefined ? { maxSeconds: args.seconds } : {}),
    // Written before each input runs (length-prefixed, one write): if the process dies or hangs in
    // it, the parent still has it.
    beforeInput: (_i, input) => {
      const rec = Buffer.allocUnsafe(4 + input.length);
      rec.writeUInt32BE(input.length, 0);
      input.copy(rec, 4);
      fs.writeSync(fd, rec, 0, rec.length, 0);
    },
    onProgress: (done, r) => send({ type: 'progress', done, crashes: r.crashes, hangs: r.hangs }),
  });
  await inst.close?.();
  fs.closeSync(fd);
  fs.rmSync(inflightFile(target.name), { force: true });
  send({ type: 'result', result: { ...result, findings: result.findings.map((f) => ({ ...f, input: f.input.toString('base64') })) } });
}

// ------------------------------------------------------------------------------------ parent

interface Row {
  target: string;
  inputs: number;
  crashes: number;
  hangs: number;
  maxHeapMiB: number;
  maxRssMiB: number;
  perSecond: number;
  slowestMs: number;
  note: string;
}

function saveFinding(target: string, input: Buffer, kind: string, error: string, seed: number, index: number | undefined): string {
  fs.mkdirSync(crashDir, { recursive: true });
  const base = path.join(crashDir, `${target}-${inputHash(input)}`);
  fs.writeFileSync(`${base}.bin`, input);
  fs.writeFileSync(`${base}.txt`, `${kind} in target ${target} (seed ${seed}${index !== undefined ? `, input #${index}` : ''})\n\n${error}\n\nreplay: npx tsx fuzz/run.ts ${target} --replay ${path.relative(process.cwd(), `${base}.bin`)}\n`);
  return `${base}.bin`;
}

function runChild(target: string, args: Args): Promise<Row> {
  return new Promise((resolve) => {
    const started = Date.now();
    const childArgs = [target, '--child', '--n', String(args.n), '--seed', String(args.seed), ...(args.seconds !== undefined ? ['--seconds', String(args.seconds)] : [])];
    // --no-warnings: the yaml library warns on stderr about odd documents, which fuzzed ones all are.
    const proc = fork(fileURLToPath(import.meta.url), childArgs, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [...process.execArgv, '--no-warnings'] });
    let last = Date.now();
    let done = 0;
    let result: Extract<ChildMessage, { type: 'result' }>['result'] | undefined;
    let stuck = false;
    const watchdog = setInterval(() => {
      if (Date.now() - last > WATCHDOG_MS) {
        stuck = true;
        proc.kill('SIGKILL');
      }
    }, 1000);
    proc.on('message', (m: ChildMessage) => {
      last = Date.now();
      if (m.type === 'progress') {
        done = m.done;
        if (process.stderr.isTTY) process.stderr.write(`\r  ${target}: ${done.toLocaleString('en')} inputs, ${m.crashes} crashes, ${m.hangs} hangs   `);
      } else {
        result = m.result;
      }
    });
    proc.on('exit', (code, signal) => {
      clearInterval(watchdog);
      if (process.stderr.isTTY) process.stderr.write('\r\x1b[K');
      if (result !== undefined) {
        for (const f of result.findings) {
          const file = saveFinding(target, Buffer.from(f.input, 'base64'), f.kind, f.error, args.seed, f.index);
          process.stdout.write(`  ${f.kind.toUpperCase()} ${target} input #${f.index} → ${path.relative(process.cwd(), file)}\n    ${f.error.split('\n').slice(0, 3).join('\n    ')}\n`);
        }
        const heap = result.maxHeapBytes / 2 ** 20;
        resolve({
          target, inputs: result.inputs, crashes: result.crashes, hangs: result.hangs, maxHeapMiB: heap, maxRssMiB: result.maxRssBytes / 2 ** 20,
          perSecond: result.inputs / Math.max(result.seconds, 1e-9), slowestMs: result.slowestMs, note: heap > args.maxHeapMiB ? `heap above ${args.maxHeapMiB} MiB` : '',
        });
        return;
      }
      // No result: the child died or hung. The input it was running is in the inflight file.
      const inflight = inflightFile(target);
      const rec = fs.existsSync(inflight) ? fs.readFileSync(inflight) : Buffer.alloc(0);
      const input = rec.length >= 4 ? rec.subarray(4, 4 + rec.readUInt32BE(0)) : Buffer.alloc(0);
      const what = stuck ? `no progress for ${WATCHDOG_MS / 1000} s (an input that never returns)` : `child exited with ${signal ?? `code ${code}`} (uncaught exception or process crash; its stderr is above)`;
      const file = saveFinding(target, input, stuck ? 'hang' : 'crash', what, args.seed, undefined);
      fs.rmSync(inflight, { force: true });
      process.stdout.write(`  ${stuck ? 'HANG' : 'CRASH'} ${target} after ~${done} inputs → ${path.relative(process.cwd(), file)}\n    ${what}\n`);
      const secs = (Date.now() - started) / 1000;
      resolve({ target, inputs: done, crashes: stuck ? 0 : 1, hangs: stuck ? 1 : 0, maxHeapMiB: NaN, maxRssMiB: NaN, perSecond: done / secs, slowestMs: NaN, note: 'run aborted' });
    });
  });
}

function table(rows: Row[]): string {
  const head = ['target', 'inputs', 'crashes', 'hangs', 'max heap MiB', 'max RSS MiB', 'inputs/s', 'slowest ms', ''];
  const cells = rows.map((r) => [r.target, r.inputs.toLocaleString('en'), String(r.crashes), String(r.hangs), r.maxHeapMiB.toFixed(0), r.maxRssMiB.toFixed(0),
    Math.round(r.perSecond).toLocaleString('en'), r.slowestMs.toFixed(1), r.note]);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (c: string[]): string => c.map((x, i) => (i === 0 || i === c.length - 1 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(head), ...cells.map(line)].join('\n');
}

async function replay(args: Args): Promise<number> {
  const target = targetNamed(args.target);
  const input = fs.readFileSync(args.replay as string);
  const inst = await target.setup();
  const t0 = performance.now();
  let code = 0;
  try {
    await inst.run(input);
    process.stdout.write(`${target.name}: accepted (${(performance.now() - t0).toFixed(1)} ms)\n`);
  } catch (err) {
    const ok = inst.expected(err);
    code = ok ? 0 : 1;
    process.stdout.write(`${target.name}: ${ok ? 'rejected with the module\'s error' : 'CRASH'} (${(performance.now() - t0).toFixed(1)} ms)\n${describeError(err)}\n`);
  }
  await inst.close?.();
  return code;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  if (args.child) return child(args);
  if (args.replay !== undefined) {
    process.exitCode = await replay(args);
    return;
  }
  const names = args.target === 'all' ? TARGETS.map((t) => t.name) : args.target.split(',');
  names.forEach(targetNamed);
  const box = args.seconds !== undefined ? ` (at most ${args.seconds} s each)` : '';
  process.stdout.write(`fuzz: ${names.length} target(s), ${args.n.toLocaleString('en')} inputs each${box}, seed ${args.seed} (node ${process.version}, pid ${process.pid})\n`);
  const rows: Row[] = [];
  for (const name of names) {
    const row = await runChild(name, args);
    rows.push(row);
    process.stdout.write(`${table([row]).split('\n')[1]}\n`);
  }
  process.stdout.write(`\n${table(rows)}\n`);
  const bad = rows.filter((r) => r.crashes > 0 || r.hangs > 0 || r.note !== '');
  process.stdout.write(bad.length === 0 ? '\nclean: 0 crashes, 0 hangs\n' : `\nFAILED: ${bad.map((r) => r.target).join(', ')}\n`);
  process.exitCode = bad.length === 0 ? 0 : 1;
}

main().catch((err: unknown) => {
  process.stderr.write(`${describeError(err)}\n`);
  process.exitCode = 2;
});
