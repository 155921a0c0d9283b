// PostgreSQL restarted under load (issue 18 part 4): a real server on PostgreSQL with admin writes
// (entries, over the admin socket) and agent writes (join-token attestations, over the agent API) in
// flight; the postmaster is stopped (fast shutdown) for a few seconds and started again on the same
// data dir and port. The server must reconnect unaided (its pg pool), refuse what it cannot do during
// the outage with UNAVAILABLE (never a wrong answer, never a crash), say not ready on /ready during the
// outage and ready after, and keep every write it acknowledged before, during and after.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { adminServiceClient, type BatchEntryResponse, type JoinToken, type ListEntriesResponse } from '../../src/api/admin-api.js';
import { startPostgres, type TestPostgres } from '../support/postgres.js';
import { agentClient, attest, newKey, startTestServer, TD, unary, type AgentClient, type TestServer } from '../server/e2e/helpers.js';

const DOWN_MS = 3000;

let pg: TestPostgres;
let ts: TestServer;
let admin: grpc.Client & Record<string, (...a: unknown[]) => unknown>;

beforeAll(async () => {
  // Durable settings: the test cluster's default (synchronous_commit=off) acknowledges commits whose
  // WAL a killed postmaster's children never flush, and the crash test would lose them.
  pg = await startPostgres({ durable: true });
  const url = await pg.createDatabase('terroir_restart');
  ts = await startTestServer({
    dataStore: { type: 'postgres', connectionString: url, poolSize: 4 },
    agentApi: { attestationRateLimit: { perSecond: 1000, burst: 1000 } },
  });
  const Admin = adminServiceClient();
  admin = new Admin(`unix://${ts.server.adminSocketPath}`, grpc.credentials.createInsecure()) as typeof admin;
}, 30_000);

afterAll(async () => {
  admin?.close();
  await ts?.stop();
  await pg?.stop();
});

interface Attempt {
  at: number;
  /** When the answer came (set by record()). */
  end?: number;
  kind: 'entry' | 'agent' | 'read';
  ok: boolean;
  code?: number;
  message?: string;
  /** What was written (entry SPIFFE ID, or the attested agent's SPIFFE ID). */
  id?: string;
  /** For reads: the SPIFFE IDs returned. */
  seen?: string[];
}

const grpcCode = (err: unknown): { code: number; message: string } => {
  const e = err as grpc.ServiceError;
  return { code: typeof e.code === 'number' ? e.code : -1, message: e.details ?? e.message };
};

async function writeEntry(n: number): Promise<Attempt> {
  const spiffeId = `spiffe://${TD}/restart/w${n}`;
  const at = Date.now();
  try {
    const r = await unary<BatchEntryResponse>(admin as never, 'BatchCreateEntry', {
      entries: [{ spiffeId, parentId: `spiffe://${TD}/restart/parent`, selectors: [{ type: 'unix', value: `uid:${n}` }] }],
    });
    const s = r.results[0]?.status;
    return s?.code === grpc.status.OK ? { at, kind: 'entry', ok: true, id: spiffeId } : { at, kind: 'entry', ok: false, code: s?.code ?? -1, message: s?.message ?? '' };
  } catch (err) {
    return { at, kind: 'entry', ok: false, ...grpcCode(err) };
  }
}

/** GenerateJoinToken (admin write) then AttestAgent with it (agent write: the node record). */
async function attestAgent(): Promise<Attempt> {
  const at = Date.now();
  let c: AgentClient | undefined;
  try {
    const token = await unary<JoinToken>(admin as never, 'GenerateJoinToken', { ttl: 600 });
    c = agentClient(ts.server);
    const res = await attest(c, { params: { joinToken: { token: token.value }, csr: newKey().csr } });
    const id = res[0]?.result?.spiffeId;
    return id ? { at, kind: 'agent', ok: true, id } : { at, kind: 'agent', ok: false, code: -1, message: 'no result' };
  } catch (err) {
    return { at, kind: 'agent', ok: false, ...grpcCode(err) };
  } finally {
    c?.close();
  }
}

async function readEntries(): Promise<Attempt> {
  const at = Date.now();
  try {
    const r = await unary<ListEntriesResponse>(admin as never, 'ListEntries', { pageSize: 1000 });
    return { at, kind: 'read', ok: true, seen: r.entries.map((e) => e.spiffeId) };
  } catch (err) {
    return { at, kind: 'read', ok: false, ...grpcCode(err) };
  }
}

async function ready(): Promise<{ at: number; status: number; body: string }> {
  const at = Date.now();
  try {
    const res = await fetch(`http://127.0.0.1:${ts.server.healthPort}/ready`, { signal: AbortSignal.timeout(4000) });
    return { at, status: res.status, body: await res.text() };
  } catch (err) {
    return { at, status: -1, body: String(err) };
  }
}

it('PostgreSQL stopped and started again under load: UNAVAILABLE meanwhile, not ready, reconnects unaided, loses no acknowledged write', async () => {
  const attempts: Attempt[] = [];
  const probes: { at: number; status: number; body: string }[] = [];
  let running = true;
  let n = 0;
  const record = (a: Attempt): void => { attempts.push({ ...a, end: Date.now() }); };
  // Three writers and a reader, each one request at a time, plus a /ready probe.
  const loops = [
    ...[0, 1].map(async () => { while (running) { record(await writeEntry(n++)); await sleep(20); } }),
    (async () => { while (running) { record(await attestAgent()); await sleep(20); } })(),
    (async () => { while (running) { record(await readEntries()); await sleep(50); } })(),
    (async () => { while (running) { probes.push(await ready()); await sleep(100); } })(),
  ];

  await sleep(1500);
  const downAt = Date.now();
  await pg.halt('fast');
  await sleep(DOWN_MS);
  const upAt = Date.now();
  await pg.resume();
  const resumedAt = Date.now();
  // Writes go on until a few succeed after the restart.
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline && (Date.now() < resumedAt + 2000 || attempts.filter((a) => a.ok && a.kind !== 'read' && a.at > resumedAt).length < 10)) await sleep(100);
  running = false;
  await Promise.all(loops);

  const before = attempts.filter((a) => a.at < downAt);
  const during = attempts.filter((a) => a.at > downAt + 200 && a.at < upAt);
  const after = attempts.filter((a) => a.at > resumedAt + 500);
  expect(before.filter((a) => a.ok).length).toBeGreaterThan(5);
  // During the outage: refused, and refused as UNAVAILABLE saying what is wrong.
  const refused = during.filter((a) => !a.ok);
  expect(refused.length).toBeGreaterThan(3);
  for (const a of refused) {
    expect({ kind: a.kind, code: a.code, message: a.message }).toMatchObject({ code: grpc.status.UNAVAILABLE });
    expect(a.message).toMatch(/datastore|PostgreSQL/i);
  }
  // After: everything succeeds again, with nothing restarted.
  expect(after.length).toBeGreaterThan(3);
  expect(after.filter((a) => !a.ok)).toEqual([]);

  // /ready: 503 naming the datastore during the outage, 200 after.
  const probesDuring = probes.filter((p) => p.at > downAt + 200 && p.at < upAt);
  expect(probesDuring.length).toBeGreaterThan(3);
  for (const p of probesDuring) {
    expect(p.status).toBe(503);
    expect(p.body).toMatch(/"datastore"/);
  }
  expect(probes.filter((p) => p.at > resumedAt + 500).every((p) => p.status === 200)).toBe(true);

  // Never a wrong answer: a read that succeeded saw every entry acknowledged before it began.
  const acked = attempts.filter((a) => a.ok && a.kind === 'entry');
  for (const r of attempts.filter((a) => a.kind === 'read' && a.ok)) {
    const seen = new Set(r.seen);
    for (const w of acked.filter((x) => (x.end as number) < r.at)) expect(seen.has(w.id as string), w.id).toBe(true);
  }
  // Every acknowledged write is there.
  const entries = new Set((await ts.server.store.listEntries()).map((e) => e.spiffeId.toString()));
  for (const w of acked) expect(entries.has(w.id as string), w.id).toBe(true);
  for (const w of attempts.filter((a) => a.ok && a.kind === 'agent')) expect(await ts.server.store.getNode(w.id as string), w.id).toBeDefined();
  console.log(`pg restart: ${attempts.length} requests, ${before.length} before, ${refused.length} refused during ${DOWN_MS} ms down, `
    + `${after.length} after; first success ${Math.min(...attempts.filter((a) => a.ok && a.at > resumedAt).map((a) => a.at)) - resumedAt} ms after PostgreSQL accepted again; `
    + `${acked.length} entries and ${attempts.filter((a) => a.ok && a.kind === 'agent').length} agents acknowledged, all present`);
}, 40_000);

it('the postmaster killed (SIGKILL, a crash): crash recovery at the next start, reconnects unaided, acknowledged writes kept', async () => {
  const attempts: Attempt[] = [];
  let running = true;
  let n = 100_000;
  const loop = (async () => { while (running) { attempts.push({ ...(await writeEntry(n++)), end: Date.now() }); await sleep(20); } })();
  await sleep(500);
  const downAt = Date.now();
  await pg.halt('kill');
  await sleep(1500);
  await pg.resume(); // crash recovery replays the WAL
  const resumedAt = Date.now();
  while (Date.now() < resumedAt + 2000) await sleep(100);
  running = false;
  await loop;
  for (const a of attempts.filter((x) => !x.ok)) {
    expect(a.code).toBe(grpc.status.UNAVAILABLE);
    expect(a.at).toBeGreaterThan(downAt - 1000); // refusals only around the crash
    expect(a.at).toBeLessThan(resumedAt + 500); // until PostgreSQL (after its recovery) accepts again
  }
  expect(attempts.filter((a) => !a.ok && a.at > downAt + 200).length).toBeGreaterThan(0);
  expect(attempts.filter((a) => a.ok && a.at > resumedAt + 500).length).toBeGreaterThan(3);
  const entries = new Set((await ts.server.store.listEntries()).map((e) => e.spiffeId.toString()));
  for (const w of attempts.filter((a) => a.ok)) expect(entries.has(w.id as string), w.id).toBe(true);
}, 30_000);

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
