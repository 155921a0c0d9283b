// The fuzzing engine: a deterministic PRNG, generic mutators (bytes, text, JSON) and the loop that
// runs one target, classifies every outcome and watches time and memory. Used by fuzz/run.ts (volume
// runs) and test/fuzz/smoke.test.ts (a few hundred inputs per target in the test suite).
import crypto from 'node:crypto';

/** A PRNG: returns uniformly distributed unsigned 32-bit integers. */
export type Rng = () => number;

/** sfc32, seeded through splitmix32: fast, good enough statistically, and reproducible from one number. */
export function rng(seed: number): Rng {
  let s = seed >>> 0;
  const split = (): number => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split();
  let b = split();
  let c = split();
  let d = split();
  return () => {
    const t = (((a + b) >>> 0) + d) >>> 0;
    d = (d + 1) >>> 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) >>> 0;
    c = ((c << 21) | (c >>> 11)) >>> 0;
    c = (c + t) >>> 0;
    return t;
  };
}

/** A PRNG for input `i` of a run seeded `seed`: input i can be regenerated without replaying 0..i-1. */
export function inputRng(seed: number, i: number): Rng {
  return rng((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca77)) >>> 0);
}

export const below = (r: Rng, n: number): number => (n <= 0 ? 0 : r() % n);
export const chance = (r: Rng, p: number): boolean => r() / 0x1_0000_0000 < p;
export function pick<T>(r: Rng, xs: readonly T[]): T {
  return xs[below(r, xs.length)] as T;
}

// ------------------------------------------------------------------------------------ byte mutators

const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0x81, 0x82, 0x84, 0xfe, 0xff];
const INTERESTING_16 = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xfffe, 0xffff];
const INTERESTING_32 = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0x1000, 0x10000, 4097];

function randomBytes(r: Rng, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = r() & 0xff;
  return b;
}

/** One structural edit of a byte string. `others` feeds splicing. */
function mutateOnce(r: Rng, s: Buffer, others: readonly Buffer[]): Buffer {
  if (s.length === 0) return randomBytes(r, 1 + below(r, 16));
  switch (below(r, 13)) {
    case 0: return s.subarray(0, below(r, s.length + 1)); // truncation
    case 1: return Buffer.concat([s, randomBytes(r, 1 + below(r, 64))]); // trailing garbage
    case 2: { // big-endian 16-bit field (TPM sizes, probe frames)
      if (s.length < 2) return s;
      const at = below(r, s.length - 1);
      const old = s.readUInt16BE(at);
      s.writeUInt16BE(chance(r, 0.5) ? pick(r, INTERESTING_16) : (old + (below(r, 33) - 16)) & 0xffff, at);
      return s;
    }
    case 3: { // 32-bit field
      if (s.length < 4) return s;
      s.writeUInt32BE(pick(r, INTERESTING_32) >>> 0, below(r, s.length - 3));
      return s;
    }
    case 4: { // delete a run
      const at = below(r, s.length);
      return Buffer.concat([s.subarray(0, at), s.subarray(Math.min(s.length, at + 1 + below(r, 16)))]);
    }
    case 5: { // duplicate a run
      const at = below(r, s.length);
      const run = s.subarray(at, Math.min(s.length, at + 1 + below(r, 32)));
      return Buffer.concat([s.subarray(0, at), run, s.subarray(at)]);
    }
    case 6: { // splice with another seed
      const o = pick(r, others);
      if (o === undefined || o.length === 0) return s;
      const a = below(r, s.length + 1);
      const b = below(r, o.length);
      return Buffer.concat([s.subarray(0, a), o.subarray(b, Math.min(o.length, b + 1 + below(r, 256)))]);
    }
    case 7: { // DER: rewrite a length octet after a plausible tag
      const at = findTag(r, s);
      if (at < 0 || at + 1 >= s.length) return s;
      const forms = [[0x80], [0x81, 0x7f], [0x84, 0xff, 0xff, 0xff, 0xff], [0x82, 0x00, 0x80], [0x00], [0x7f], [(s[at + 1]! + 1) & 0x7f], [(s[at + 1]! - 1) & 0x7f]];
      const f = Buffer.from(pick(r, forms));
      return Buffer.concat([s.subarray(0, at + 1), f, s.subarray(at + 2)]);
    }
    case 8: { // insert interesting bytes
      const at = below(r, s.length + 1);
      const ins = Buffer.from(Array.from({ length: 1 + below(r, 4) }, () => pick(r, INTERESTING_BYTES)));
      return Buffer.concat([s.subarray(0, at), ins, s.subarray(at)]);
    }
    case 9: { // set bytes to interesting values
      for (let k = 1 + below(r, 3); k > 0; k--) s[below(r, s.length)] = pick(r, INTERESTING_BYTES);
      return s;
    }
    default: { // bit flips
      for (let k = 1 + below(r, 4); k > 0; k--) {
        const at = below(r, s.length);
        s[at] = s[at]! ^ (1 << below(r, 8));
      }
      return s;
    }
  }
}

const DER_TAGS = new Set([0x02, 0x03, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x16, 0x17, 0x18, 0x30, 0x31, 0xa0, 0xa3, 0x80, 0x81, 0x82, 0x86]);

function findTag(r: Rng, s: Buffer): number {
  for (let tries = 0; tries < 16; tries++) {
    const at = below(r, s.length);
    if (DER_TAGS.has(s[at]!)) return at;
  }
  return -1;
}

/** Mutated bytes: sometimes pure noise, mostly 1..4 stacked edits of a (copied) seed. */
export function mutateBytes(r: Rng, seeds: readonly Buffer[], maxRandom = 512): Buffer {
  if (chance(r, 0.04)) return randomBytes(r, below(r, maxRandom));
  let s = Buffer.from(pick(r, seeds));
  for (let k = 1 + below(r, 4); k > 0; k--) s = Buffer.from(mutateOnce(r, s, seeds));
  return s;
}

// ------------------------------------------------------------------------------------ text mutators

const TOKENS = [
  '', ' ', '\n', '\r\n', '\t', '\0', ',', ':', '.', '-', '+', '*', '$', '"', '\\', '/', '%', '{', '}', '[', ']', '#', '&', '!',
  '0', '-0', '1', '-1', '1e308', '-1e308', '1e-320', '4294967296', '9007199254740993', '0x10', 'NaN', 'Infinity', 'null', 'true', 'false',
  '\u00e9', '\ud800', '\udfff', '\u2028', '\ufeff', 'A'.repeat(300), '9'.repeat(40), '~', '!!binary', '&a', '*a', '<<', '---', '...', '? ',
  'spiffe://', 'spiffe://example.org/x', 'fe80::1%eth0', '::ffff:127.0.0.1', '2001:db8::1', '+4915112345678', '2026-02-29T25:61:61Z',
  '2023-09-07T10:40:52.123456789+23:59', '9999-12-31T23:59:60Z',
];

/** Edits of text at character level: token insertion, replacement, deletion, duplication, case flips. */
export function mutateText(r: Rng, s: string, extraTokens: readonly string[] = []): string {
  const tokens = extraTokens.length > 0 && chance(r, 0.5) ? extraTokens : TOKENS;
  for (let k = 1 + below(r, 3); k > 0; k--) {
    const at = below(r, s.length + 1);
    switch (below(r, 7)) {
      case 0: s = s.slice(0, at) + pick(r, tokens) + s.slice(at); break;
      case 1: s = s.slice(0, at) + pick(r, tokens) + s.slice(at + 1 + below(r, 8)); break;
      case 2: s = s.slice(0, at) + s.slice(at + 1 + below(r, 16)); break;
      case 3: { const run = s.slice(at, at + 1 + below(r, 40)); s = s.slice(0, at) + run + run + s.slice(at); break; }
      case 4: s = s.slice(0, below(r, s.length + 1)); break;
      case 5: s = s.slice(0, at) + String.fromCharCode(below(r, 0x80)) + s.slice(at + 1); break;
      default: {
        const c = s.charAt(at);
        s = s.slice(0, at) + (c === c.toUpperCase() ? c.toLowerCase() : c.toUpperCase()) + s.slice(at + 1);
      }
    }
  }
  return s;
}

// ------------------------------------------------------------------------------------ JSON mutators

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const INTERESTING_JSON: Json[] = [
  null, true, false, 0, -0, 1, -1, 0.5, 1e308, -1e308, 5e-324, 2 ** 53 + 2, 4294967296, 65536, 99, 100, '', ' ', 'x', 'A'.repeat(5000),
  '\u0000', '\ud800', '1', 'true', 'null', 'NaN', [], {}, [null], { '': null }, ['x'], JSON.parse('{"__proto__":{"x":1}}') as Json, { constructor: 'x' },
];

/** All containers of a JSON value, with the key or index leading to each child. */
function slots(v: Json, out: { parent: Json[] | Record<string, Json>; key: string | number }[] = [], depth = 0): typeof out {
  if (depth > 64 || v === null || typeof v !== 'object') return out;
  if (Array.isArray(v)) {
    v.forEach((x, i) => { out.push({ parent: v, key: i }); slots(x, out, depth + 1); });
  } else {
    for (const k of Object.keys(v)) { out.push({ parent: v, key: k }); slots(v[k] as Json, out, depth + 1); }
  }
  return out;
}

/**
 * Deeply nested arrays/objects around a JSON text: recursion and stack limits of parsers and walkers.
 * Built as text, since JSON.stringify itself gives up on such depths.
 */
export function deepNestText(r: Rng, inner: string): string {
  const depth = pick(r, [100, 1000, 5000, 20_000, 100_000]);
  const [open, close] = chance(r, 0.5) ? ['[', ']'] : ['{"a":', '}'];
  return open.repeat(depth) + inner + close.repeat(depth);
}

/**
 * A structural edit of a JSON document: replace a value (by an interesting one, another value of the
 * document, a dictionary string, or a deeply nested one), delete or add a member, or change a type.
 * `dict` supplies strings that matter to the target (field names, enum values).
 */
export function mutateJsonValue(r: Rng, doc: unknown, dict: readonly string[] = []): unknown {
  const root = structuredClone(doc) as Json;
  const holder: Json[] = [root];
  const all = slots(root);
  all.push({ parent: holder, key: 0 });
  for (let k = 1 + below(r, 3); k > 0; k--) {
    const s = pick(r, all);
    const cur = (s.parent as Record<string | number, Json>)[s.key] as Json;
    let next: Json | undefined;
    switch (below(r, 9)) {
      case 0: next = pick(r, INTERESTING_JSON); break;
      case 1: next = dict.length > 0 ? pick(r, dict) : pick(r, INTERESTING_JSON); break;
      case 2: { const o = pick(r, all); next = JSON.parse(JSON.stringify((o.parent as Record<string | number, Json>)[o.key] ?? null) ?? 'null') as Json; break; }
      case 3: next = undefined; break; // delete
      case 4: next = typeof cur === 'number' ? pick(r, [cur + 1, cur - 1, -cur, cur * 1e6, cur / 3, Math.trunc(cur) + 0.5]) : typeof cur === 'string' ? mutateText(r, cur, dict) : pick(r, INTERESTING_JSON); break;
      case 5: next = Array.isArray(cur) ? [...cur, ...cur] : cur !== null && typeof cur === 'object' ? { ...cur, [dict.length > 0 ? pick(r, dict) : 'extra']: pick(r, INTERESTING_JSON) } : [cur]; break;
      case 6: next = chance(r, 0.15) ? (chance(r, 0.5) ? nest(cur, 50) : DEEP_MARKER) : typeof cur === 'string' ? Number(cur) || 0 : String(cur); break;
      case 7: next = Array.isArray(cur) ? [] : cur !== null && typeof cur === 'object' ? {} : null; break;
      default: next = Array.isArray(cur) ? Array.from({ length: pick(r, [2, 17, 101, 1001]) }, () => cur[0] ?? null) as Json : pick(r, INTERESTING_JSON);
    }
    if (next === undefined) {
      if (Array.isArray(s.parent)) s.parent.splice(s.key as number, 1);
      else delete s.parent[s.key as string];
    } else {
      (s.parent as Record<string | number, Json>)[s.key] = next;
    }
  }
  // Stacked repetitions can grow a document past what JSON.stringify can build (V8's string limit):
  // such an input would only test the harness, so the unmutated document is returned instead.
  try {
    if ((JSON.stringify(holder[0])?.length ?? 0) <= MAX_JSON_CHARS) return holder[0];
  } catch { /* too large to serialise */ }
  return structuredClone(doc);
}

/** Largest mutated JSON document (characters): inputs stay far below V8's string limit. */
const MAX_JSON_CHARS = 4_000_000;

/**
 * Stands for a value nested thousands deep: mutateJsonText swaps it for the nested text after
 * serialising (JSON.stringify cannot build such a value, but JSON.parse reads it back fine).
 */
export const DEEP_MARKER = '\u0000deep-nest\u0000';

function nest(v: Json, depth: number): Json {
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

/** Mutated JSON text: structural edits serialised, sometimes followed by a text edit, rarely nested very deep. */
export function mutateJsonText(r: Rng, seeds: readonly unknown[], dict: readonly string[] = []): string {
  if (chance(r, 0.05)) return mutateText(r, JSON.stringify(pick(r, seeds)), dict);
  const v = mutateJsonValue(r, pick(r, seeds), dict);
  let text = JSON.stringify(v) ?? 'null';
  const marker = JSON.stringify(DEEP_MARKER);
  if (text.includes(marker)) text = text.replace(marker, deepNestText(r, '0'));
  if (chance(r, 0.01)) return deepNestText(r, text);
  return chance(r, 0.15) ? mutateText(r, text, dict) : text;
}

// ------------------------------------------------------------------------------------ targets

/**
 * One fuzz target. `setup` builds the seeds (real inputs) and anything the target needs (keys,
 * bundles, a fake transport); `generate` makes input i; `run` feeds it to the code under test, and
 * `expected` says whether an exception it threw is the module's own rejection (anything else is a crash).
 */
export interface FuzzTarget {
  name: string;
  /** What is fuzzed, for the report and docs. */
  description: string;
  setup(): Promise<FuzzInstance>;
}

export interface FuzzInstance {
  generate(r: Rng): Buffer;
  run(input: Buffer): unknown;
  expected(err: unknown): boolean;
  /** The per-input bound above which an input counts as a hang (default HANG_MS). */
  hangMs?: number;
  /** Releases sockets, pools and timers. */
  close?(): Promise<void>;
}

/**
 * Default per-input time bound, plus HANG_MS_PER_KIB for every KiB of input (a parser may take time
 * linear in its input, up to its size limit: a hang is slower than ~4 MB/s, or stuck). A slow input is
 * timed twice more before it is reported, so a GC pause or a busy machine is not a hang.
 */
export const HANG_MS = 100;
export const HANG_MS_PER_KIB = 0.25;

/**
 * The bound for configuration files (policies, the landmark's config): read once at start, from the
 * operator, so the bound is a start-up's, not a request's. Deeply nested YAML (100,000 levels) costs
 * the yaml library about a second to refuse.
 */
export const CONFIG_FILE_MS = 5000;

export interface Finding {
  kind: 'crash' | 'hang';
  index: number;
  input: Buffer;
  error: string;
  /** Same error class and throw site: one reproducer per signature. */
  signature: string;
  ms?: number;
}

export interface RunResult {
  target: string;
  seed: number;
  inputs: number;
  accepted: number;
  rejected: number;
  crashes: number;
  hangs: number;
  findings: Finding[];
  maxHeapBytes: number;
  maxRssBytes: number;
  slowestMs: number;
  seconds: number;
}

export interface RunOptions {
  n: number;
  seed: number;
  /** Called now and then with progress (for the CLI's heartbeat). */
  onProgress?: (done: number, result: RunResult) => void;
  /** Called before each input is run (the CLI records it so a real infinite loop can be reproduced). */
  beforeInput?: (index: number, input: Buffer) => void;
  /** Stop early once this many distinct findings are known. */
  maxFindings?: number;
  /** Stop after this many seconds even if fewer than n inputs ran (a time-boxed run). */
  maxSeconds?: number;
  /** Overrides the target's per-input bound (the test suite's smoke run, on a busy machine, is lenient). */
  hangMs?: number;
}

function signatureOf(err: unknown): string {
  if (!(err instanceof Error)) return `non-error:${typeof err}`;
  const frame = (err.stack ?? '').split('\n').find((l) => l.trim().startsWith('at ')) ?? '';
  return `${err.name}@${frame.trim().replace(/:\d+\)?$/, '')}`;
}

export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return `thrown non-Error ${typeof err}: ${String(err).slice(0, 200)}`;
  let stack = (err.stack ?? `${err.name}: ${err.message}`).split('\n').slice(0, 8).join('\n');
  if (err.cause !== undefined) stack += `\ncaused by: ${describeError(err.cause)}`;
  return stack.length > 4000 ? `${stack.slice(0, 4000)}…` : stack;
}

export function inputHash(input: Buffer): string {
  return crypto.createHash('sha256').update(input).digest('hex').slice(0, 16);
}

const isPromise = (v: unknown): v is Promise<unknown> => v !== null && typeof v === 'object' && typeof (v as { then?: unknown }).then === 'function';

/** Never-settling promises (an async hang) surface as this after a bound, instead of stalling the run. */
class AsyncHang extends Error {}

async function settle(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([p, new Promise((_, reject) => { timer = setTimeout(() => reject(new AsyncHang(`promise did not settle within ${ms} ms`)), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}

/** Runs one input; returns the outcome and its duration. */
async function once(inst: FuzzInstance, input: Buffer, hangMs: number): Promise<{ ok: boolean; err?: unknown; ms: number }> {
  const t0 = performance.now();
  try {
    const v = inst.run(input);
    if (isPromise(v)) await settle(v, Math.max(1000, hangMs * 20));
    return { ok: true, ms: performance.now() - t0 };
  } catch (err) {
    return { ok: false, err, ms: performance.now() - t0 };
  }
}

/** Runs `opts.n` generated inputs through one target. */
export async function runTarget(target: FuzzTarget, inst: FuzzInstance, opts: RunOptions): Promise<RunResult> {
  const hangMs = opts.hangMs ?? inst.hangMs ?? HANG_MS;
  const res: RunResult = {
    target: target.name, seed: opts.seed, inputs: 0, accepted: 0, rejected: 0, crashes: 0, hangs: 0, findings: [],
    maxHeapBytes: 0, maxRssBytes: 0, slowestMs: 0, seconds: 0,
  };
  const seen = new Set<string>();
  const started = performance.now();
  const sample = (): void => {
    const m = process.memoryUsage();
    res.maxHeapBytes = Math.max(res.maxHeapBytes, m.heapUsed);
    res.maxRssBytes = Math.max(res.maxRssBytes, m.rss);
  };
  sample();
  let lastProgress = started;
  for (let i = 0; i < opts.n; i++) {
    let input: Buffer;
    try {
      input = inst.generate(inputRng(opts.seed, i));
    } catch (err) {
      throw new Error(`the generator of ${target.name} failed at input #${i} (a harness bug, not a finding)`, { cause: err });
    }
    opts.beforeInput?.(i, input);
    const bound = hangMs + (input.length / 1024) * HANG_MS_PER_KIB;
    let out = await once(inst, input, bound);
    for (let k = 0; k < 2 && out.ms > bound; k++) {
      // Again before calling it a hang: a GC pause or a busy machine is not the parser's fault.
      const again = await once(inst, input, bound);
      if (again.ms < out.ms) out = again;
    }
    res.inputs++;
    res.slowestMs = Math.max(res.slowestMs, out.ms);
    let finding: Finding | undefined;
    if (out.ok) res.accepted++;
    else if (out.err instanceof AsyncHang) finding = { kind: 'hang', index: i, input, error: out.err.message, signature: 'async-hang', ms: out.ms };
    else if (inst.expected(out.err)) res.rejected++;
    else finding = { kind: 'crash', index: i, input, error: describeError(out.err), signature: signatureOf(out.err) };
    if (finding === undefined && out.ms > bound) {
      finding = { kind: 'hang', index: i, input, error: `input of ${input.length} bytes took at least ${out.ms.toFixed(1)} ms in three runs (bound ${bound.toFixed(0)} ms)`, signature: 'slow', ms: out.ms };
    }
    if (finding !== undefined) {
      if (finding.kind === 'crash') res.crashes++;
      else res.hangs++;
      const key = `${finding.kind}:${finding.signature}`;
      if (!seen.has(key)) {
        seen.add(key);
        res.findings.push(finding);
        if (opts.maxFindings !== undefined && res.findings.length >= opts.maxFindings) break;
      }
    }
    if ((i & 63) === 63) {
      sample();
      const now = performance.now();
      if (opts.maxSeconds !== undefined && now - started > opts.maxSeconds * 1000) break;
      if (now - lastProgress > 1000) {
        lastProgress = now;
        res.seconds = (now - started) / 1000;
        opts.onProgress?.(i + 1, res);
      }
    }
  }
  sample();
  res.seconds = (performance.now() - started) / 1000;
  return res;
}
