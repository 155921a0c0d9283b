// Two servers on one PostgreSQL append to one evidence log: concurrent group commits from both never
// fork it (one sequence of indexes, one tree), and what either signs, the other's export verifies.
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDataStore, type DataStore } from '../../src/server/datastore/index.js';
import { EvidenceLog } from '../../src/server/evidence/log.js';
import { exportLog } from '../../src/server/evidence/export.js';
import { verifyExport } from '../../src/server/evidence/verify.js';
import { generateNoteKey, leafHash, noteSignerFromKey, rootOf, verifyConsistency } from '../../src/translog/index.js';
import { startPostgres, type TestPostgres } from '../support/postgres.js';

const ORIGIN = 'pg.test/terroir/evidence';
let pgServer: TestPostgres;
const stores: DataStore[] = [];

beforeAll(async () => { pgServer = await startPostgres(); }, 60_000);
afterAll(async () => {
  await Promise.all(stores.map((s) => s.close()));
  await pgServer?.stop();
});

describe('two servers, one PostgreSQL, one log', () => {
  it('concurrent appends from both servers make one tree without gaps or forks', async () => {
    const url = await pgServer.createDatabase(`ev_${process.pid}`);
    const [a, b] = await Promise.all([1, 2].map(() => openDataStore({ type: 'postgres', connectionString: url, poolSize: 4 })));
    stores.push(a!, b!);
    const key = generateNoteKey(ORIGIN);
    const logger = pino({ level: 'silent' });
    const logs = [a!, b!].map((s, i) => new EvidenceLog({ store: s.evidence, origin: ORIGIN, serverName: `server-${i}`, signer: noteSignerFromKey(key.signerKey), logger }));
    const PER = 150;
    const indexes = await Promise.all(logs.flatMap((log, s) => Array.from({ length: PER }, (_, k) =>
      log.append({ kind: 'event', action: 'admin', caller: `server-${s}`, subject: `entry-${k}`, result: 'ok' }))));
    // Checkpoints signed by both while the other still appends.
    const more = Promise.all(logs.map((log, s) => Promise.all(Array.from({ length: 20 }, (_, k) =>
      log.append({ kind: 'event', action: 'admin', caller: `server-${s}`, subject: `late-${k}`, result: 'ok' })))));
    const mid = await Promise.all(logs.map((l) => l.checkpoint()));
    await more;
    expect(new Set(indexes).size).toBe(2 * PER);
    const size = await logs[0]!.size();
    expect(size).toBe(2 * PER + 40);
    const leaves = await logs[1]!.leaves(0, size);
    expect(leaves.map((l) => l.index)).toEqual(Array.from({ length: size }, (_, i) => i));
    // The stored tree is the tree of the leaves, as both servers see it.
    const root = rootOf(leaves.map((l) => leafHash(l.body!)));
    expect((await logs[0]!.head()).root.equals(root)).toBe(true);
    expect((await logs[1]!.head()).root.equals(root)).toBe(true);
    // Each mid-way checkpoint is a prefix of the final tree.
    for (const cp of mid) {
      const proof = await logs[0]!.consistencyProof(cp!.size, size);
      expect(() => verifyConsistency(cp!.size, size, proof, cp!.root, root)).not.toThrow();
    }
    const lines: string[] = [];
    await exportLog(logs[1]!, (c) => { lines.push(...c.split('\n').filter((l) => l !== '')); });
    const report = await verifyExport(lines, { verifierKeys: [key.verifierKey] });
    expect(report.failure).toBeUndefined();
    expect(report.size).toBe(size);
    await Promise.all(logs.map((l) => l.close()));
  });
});
