// terroir-server datastore backup / restore against real servers. SQLite: the CLI, as a process of its
// own, backs up a running server while it writes; the backup, restored into a fresh data dir, serves
// the same entries, nodes and CA, and an agent attested before the backup keeps syncing and renewing
// against the restored server, while a node attested after it is told to attest again. Damaged,
// incomplete, too-new backups and occupied targets are refused. PostgreSQL: real pg_dump and
// pg_restore against a private cluster.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../../src/agent/agent.js';
import { parseAgentConfig } from '../../../src/agent/config.js';
import type { RenewAgentResponse } from '../../../src/api/agent-api.js';
import { main } from '../../../src/cli/terroir-server.js';
import { loadServerConfig } from '../../../src/server/config.js';
import type { BackupManifest } from '../../../src/server/datastore/backup.js';
import { openDataStore, SCHEMA_VERSION } from '../../../src/server/datastore/index.js';
import { startServer, type RunningServer } from '../../../src/server/run.js';
import { exportLog } from '../../../src/server/evidence/export.js';
import { verifyExport } from '../../../src/server/evidence/verify.js';
import { freePort } from '../../support/ports.js';
import { PG_BIN, startPostgres, type TestPostgres } from '../../support/postgres.js';
import { tempDir } from '../../support/tmp.js';
import { agentClient, attest, attestWithToken, newKey, TD, unary } from '../e2e/helpers.js';

const silent = pino({ level: 'silent' });
const mode = (p: string): number => fs.statSync(p).mode & 0o777;
const sha256 = (p: string): string => crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
const readManifest = (dir: string): BackupManifest => JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as BackupManifest;

interface Run { code: number; out: string; err: string }

/** The CLI as its own process: a backup runs next to the server, never inside it. */
function spawnCli(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'src/cli/terroir-server.ts', ...args], { timeout: 30_000 }, (err, out, errText) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out, err: errText });
    });
  });
}

/** The same CLI in this process (main, as the binary calls it): cheaper for the refusals. */
async function cli(...args: string[]): Promise<Run> {
  let out = '';
  let err = '';
  const code = await main(args, { out: (s) => { out += s; }, err: (s) => { err += s; } });
  return { code, out, err };
}

function writeConfig(file: string, doc: Record<string, unknown>): string {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(doc, null, 1)); // JSON is YAML
  return file;
}

/** Rewrites one file's hash and size in a backup's manifest (what an attacker who edits both would do). */
function rehash(dir: string, rel: string, patch: Partial<BackupManifest> = {}): void {
  const m = readManifest(dir);
  const f = m.files.find((x) => x.path === rel)!;
  f.sha256 = sha256(path.join(dir, rel));
  f.size = fs.statSync(path.join(dir, rel)).size;
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ ...m, ...patch }, null, 2));
}

describe('datastore backup and restore (SQLite)', () => {
  const tmp = tempDir('terroir-backup-');
  const backupDir = path.join(tmp.dir, 'backup');
  let port: number;
  let n = 0;
  let configA: string;
  let configB: string;
  let serverA: RunningServer | undefined;
  let serverB: RunningServer | undefined;
  let agent: Agent | undefined;
  let agentId: string;
  let early: Awaited<ReturnType<typeof attestWithToken>>;
  let renewedLater: { id: string; chain: Buffer[]; key: crypto.KeyObject };
  let late: Awaited<ReturnType<typeof attestWithToken>>;
  let before: string[];
  let during: string[];
  let ca: { roots: string[]; active: string; jwt: string[]; auditKey: string };

  const serverDoc = (dataDir: string): Record<string, unknown> => ({
    trustDomain: TD, dataDir, logLevel: 'silent',
    ca: { keyStore: 'disk' },
    agentApi: { bindAddress: '127.0.0.1', port, watchIntervalMs: 100 },
    health: { enabled: false },
  });
  const freshConfig = (): string => {
    const d = path.join(tmp.dir, `fresh-${n++}`);
    return writeConfig(path.join(d, 'server.yaml'), serverDoc(path.join(d, 'data')));
  };
  /** A private copy of the good backup to damage. */
  const copyOfBackup = (): string => {
    const d = path.join(tmp.dir, `copy-${n++}`);
    fs.cpSync(backupDir, d, { recursive: true });
    return d;
  };

  beforeAll(async () => {
    port = await freePort();
    configA = writeConfig(path.join(tmp.dir, 'a', 'server.yaml'), serverDoc(path.join(tmp.dir, 'a', 'data')));
    configB = writeConfig(path.join(tmp.dir, 'b', 'server.yaml'), serverDoc(path.join(tmp.dir, 'b', 'data')));
    serverA = await startServer(loadServerConfig(configA, {}), { logger: silent });
    const token = crypto.randomBytes(8).toString('hex');
    await serverA.store.createJoinToken({ token, expiresAt: new Date(Date.now() + 600_000) });
    agent = await Agent.start(parseAgentConfig({
      trustDomain: TD, serverAddress: '127.0.0.1', serverPort: port,
      dataDir: path.join(tmp.dir, 'agent'), socketPath: path.join(tmp.dir, 'agent.sock'),
      insecureBootstrap: true, syncIntervalMs: 200, logLevel: 'silent',
      nodeAttestor: { joinToken: { token } },
    }, {}), { logger: silent });
    agentId = agent.spiffeId!;
    const created = await serverA.store.createEntries([0, 1, 2].map((i) => ({
      spiffeId: `spiffe://${TD}/workload/${i}`, parentId: agentId,
      selectors: [{ type: 'unix', value: `uid:${i === 0 ? process.getuid!() : 50_000 + i}` }], federatesWith: [],
    })));
    before = created.map((r) => { if (!r.ok) throw new Error(r.message); return r.value.id; });
    await agent.syncOnce();
    expect(agent.cache.svid(before[0]!)).toBeDefined();
    early = await attestWithToken(serverA);
    renewedLater = await attestWithToken(serverA);
  });

  afterAll(async () => {
    await agent?.stop();
    await serverA?.stop();
    await serverB?.stop();
    tmp.cleanup();
  });

  it('backs up a running server from another process while it writes: datastore, CA keys, audit key, manifest', async () => {
    const auditKey = path.join(tmp.dir, 'a', 'data', 'audit-key');
    // Builds without the evidence log make no audit key; a stand-in shows it travels all the same.
    if (!fs.existsSync(auditKey)) fs.writeFileSync(auditKey, 'stand-in audit key\n', { mode: 0o600 });
    ca = { roots: [], active: '', jwt: [], auditKey: sha256(auditKey) };

    let writing = true;
    during = [];
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        const [r] = await serverA!.store.createEntries([{ spiffeId: `spiffe://${TD}/during/${i}`, parentId: agentId, selectors: [{ type: 'unix', value: `uid:${60_000 + i}` }], federatesWith: [] }]);
        if (r?.ok) during.push(r.value.id);
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    const run = await spawnCli('datastore', 'backup', '-c', configA, '--out', backupDir);
    writing = false;
    await writer;
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    expect(run.out).toContain(`Backup of ${TD} written to ${backupDir}`);
    expect(during.length).toBeGreaterThan(5);

    const m = readManifest(backupDir);
    expect(m).toMatchObject({ format: 'terroir-backup/1', trustDomain: TD, datastore: 'sqlite', schemaVersion: SCHEMA_VERSION,
      terroirVersion: (JSON.parse(fs.readFileSync('package.json', 'utf8')) as { version: string }).version });
    const paths = m.files.map((f) => f.path);
    expect(paths[0]).toBe('datastore.sqlite3');
    expect(paths).toContain('keys/journal.json');
    expect(paths.filter((p) => /^keys\/ca-[0-9a-f-]{36}\.key\.pem$/.test(p)).length).toBeGreaterThanOrEqual(2); // X.509 and JWT
    expect(paths).toContain('audit-key');
    for (const f of m.files) {
      expect(sha256(path.join(backupDir, f.path))).toBe(f.sha256);
      expect(mode(path.join(backupDir, f.path))).toBe(0o600);
    }
    expect(mode(backupDir)).toBe(0o700);
    expect(mode(path.join(backupDir, 'keys'))).toBe(0o700);
    expect(mode(path.join(backupDir, 'manifest.json'))).toBe(0o600);
    // One self-contained file: no WAL beside it.
    expect(fs.readdirSync(backupDir).sort()).toEqual(['audit-key', 'datastore.sqlite3', 'keys', 'manifest.json']);

    // What the restored server must match, a node it will not know, and one whose SVID it will not know.
    late = await attestWithToken(serverA!);
    const k = newKey();
    const c = agentClient(serverA!, renewedLater);
    const renewed = await unary<RenewAgentResponse>(c, 'RenewAgent', { csr: k.csr });
    c.close();
    renewedLater = { id: renewedLater.id, chain: renewed.svid!.certChain, key: k.privateKey };
    const c2 = agentClient(serverA!, renewedLater); // first use: the renewed SVID becomes the node's current one
    await unary(c2, 'SyncEntries', { knownRevision: '' });
    c2.close();
    ca.roots = serverA!.ca.x509Roots().map((d) => d.toString('base64')).sort();
    ca.active = serverA!.ca.activeX509().id;
    ca.jwt = serverA!.ca.authorities().jwt.map((a) => a.kid).sort();
    await serverA!.stop();
    serverA = undefined;
  });

  it('restores into a fresh data dir: the same entries, nodes and CA keys', async () => {
    const run = await spawnCli('datastore', 'restore', '-c', configB, '--from', backupDir);
    expect(run.err).toMatch(/^Warning: the evidence log is back at \d+ records \(the backup's\): checkpoints signed after the backup no longer match it; a datastore_restore record at index \d+ says so to auditors\n$/);
    expect(run.code).toBe(0);
    expect(run.out).toMatch(/registration entries, 3 attested nodes\n/);
    const data = path.join(tmp.dir, 'b', 'data');
    expect(mode(path.join(data, 'datastore.sqlite3'))).toBe(0o600);
    expect(mode(path.join(data, 'keys'))).toBe(0o700);
    for (const k of fs.readdirSync(path.join(data, 'keys'))) expect(mode(path.join(data, 'keys', k))).toBe(0o600);
    expect(sha256(path.join(data, 'audit-key'))).toBe(ca.auditKey);
    expect(mode(path.join(data, 'audit-key'))).toBe(0o600);

    serverB = await startServer(loadServerConfig(configB, {}), { logger: silent });
    const ids = (await serverB.store.listEntries()).map((e) => e.id);
    // A consistent snapshot: everything written before the backup, then some prefix of the writes made during it.
    for (const id of before) expect(ids).toContain(id);
    const restoredDuring = ids.filter((id) => !before.includes(id)).sort();
    expect(restoredDuring).toEqual(during.slice(0, restoredDuring.length).sort());
    const nodes = (await serverB.store.listNodes()).map((x) => x.spiffeId).sort();
    expect(nodes).toEqual([agentId, early.id, renewedLater.id].sort());
    expect(serverB.ca.x509Roots().map((d) => d.toString('base64')).sort()).toEqual(ca.roots);
    expect(serverB.ca.activeX509().id).toBe(ca.active);
    expect(serverB.ca.authorities().jwt.map((a) => a.kid).sort()).toEqual(ca.jwt);
    // The evidence log came along: the restored server's export still verifies with the same audit key.
    const lines: string[] = [];
    const { size } = await exportLog(serverB.evidenceLog!, (c) => { lines.push(...c.split('\n').filter((l) => l !== '')); });
    expect(size).toBeGreaterThan(0);
    const report = await verifyExport(lines, { verifierKeys: [serverB.auditVerifierKey!] });
    expect(report.failure).toBeUndefined();
    expect(report.attestations.accepted).toBeGreaterThanOrEqual(3);
    expect(lines.some((l) => l.startsWith('{"i":') && Buffer.from((JSON.parse(l) as { body: string }).body, 'base64').toString().includes('"action":"datastore_restore"'))).toBe(true);
  });

  it('an agent attested before the backup keeps syncing and renewing against the restored server', async () => {
    // The same port, the same CA: the agent's stored SVID is still good; a join token cannot be used twice, so no re-attestation.
    await expect.poll(() => agent!.syncOnce().then(() => true, () => false), { timeout: 20_000, interval: 200 }).toBe(true);
    expect(agent!.spiffeId).toBe(agentId);
    const [r] = await serverB!.store.createEntries([{ spiffeId: `spiffe://${TD}/after-restore`, parentId: agentId, selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }], federatesWith: [] }]);
    if (!r?.ok) throw new Error('createEntries failed');
    await expect.poll(async () => { await agent!.syncOnce().catch(() => undefined); return agent!.cache.svid(r.value.id) !== undefined; }, { timeout: 10_000 }).toBe(true);
    const activeCa = new crypto.X509Certificate(serverB!.ca.activeX509().certificateDer);
    expect(new crypto.X509Certificate(agent!.cache.svid(r.value.id)!.chain[0]!).verify(activeCa.publicKey)).toBe(true);

    const k = newKey();
    const c = agentClient(serverB!, early);
    const renewed = await unary<RenewAgentResponse>(c, 'RenewAgent', { csr: k.csr });
    c.close();
    expect(new crypto.X509Certificate(renewed.svid!.certChain[0]!).verify(activeCa.publicKey)).toBe(true);
    const c2 = agentClient(serverB!, { chain: renewed.svid!.certChain, key: k.privateKey });
    await expect(unary(c2, 'SyncEntries', { knownRevision: '' })).resolves.toBeDefined();
    c2.close();
  });

  it('a node attested after the backup is unknown to the restored server and cannot reuse its join token', async () => {
    const c = agentClient(serverB!, late);
    await expect(unary(c, 'SyncEntries', { knownRevision: '' })).rejects.toMatchObject({
      code: grpc.status.UNAUTHENTICATED, details: expect.stringContaining(`agent ${late.id} is not attested`),
    });
    c.close();
    const c2 = agentClient(serverB!);
    await expect(attest(c2, { params: { joinToken: { token: late.token }, csr: newKey().csr } })).rejects.toMatchObject({
      code: grpc.status.PERMISSION_DENIED, details: expect.stringContaining('join token is unknown'),
    });
    c2.close();
  });

  it('an SVID renewed after the backup is not the current one in the restored datastore: refused', async () => {
    const c = agentClient(serverB!, renewedLater);
    await expect(unary(c, 'SyncEntries', { knownRevision: '' })).rejects.toMatchObject({
      code: grpc.status.UNAUTHENTICATED, details: expect.stringContaining('presented an SVID that is no longer its current one'),
    });
    c.close();
  });

  it('refuses a backup with a changed byte or a truncated file, naming the file, and writes nothing', async () => {
    const flipped = copyOfBackup();
    const db = path.join(flipped, 'datastore.sqlite3');
    const bytes = fs.readFileSync(db);
    const mid = bytes.length >> 1;
    bytes[mid] = bytes[mid]! ^ 0x01;
    fs.writeFileSync(db, bytes);
    const target = freshConfig();
    const run = await cli('datastore', 'restore', '-c', target, '--from', flipped);
    expect(run.code).toBe(1);
    expect(run.err).toMatch(/^Error: datastore\.sqlite3 does not match its SHA-256 in manifest\.json/);
    expect(fs.existsSync(path.join(path.dirname(target), 'data'))).toBe(false);

    const truncated = copyOfBackup();
    fs.truncateSync(path.join(truncated, 'keys', 'journal.json'), 10);
    const run2 = await cli('datastore', 'restore', '-c', freshConfig(), '--from', truncated);
    expect(run2.code).toBe(1);
    expect(run2.err).toMatch(/keys\/journal\.json is 10 bytes but manifest\.json says \d+: the file is truncated/);
  });

  it('refuses an incomplete backup: a listed file missing, or no manifest', async () => {
    const missing = copyOfBackup();
    const key = readManifest(missing).files.find((f) => f.path.endsWith('.key.pem'))!.path;
    fs.rmSync(path.join(missing, key));
    const run = await cli('datastore', 'restore', '-c', freshConfig(), '--from', missing);
    expect(run.code).toBe(1);
    expect(run.err).toContain(`the backup is missing ${key}`);

    const unfinished = copyOfBackup();
    fs.rmSync(path.join(unfinished, 'manifest.json'));
    expect((await cli('datastore', 'restore', '-c', freshConfig(), '--from', unfinished)).err).toContain('has no manifest.json');
  });

  it('refuses to restore over an existing datastore, CA keys or audit key', async () => {
    const file = path.join(tmp.dir, 'b', 'data', 'datastore.sqlite3');
    const run = await cli('datastore', 'restore', '-c', configB, '--from', backupDir);
    expect(run.code).toBe(1);
    expect(run.err).toContain(`the datastore ${file} already exists`);
    // Keys alone are enough to refuse: they belong to some CA.
    const target = freshConfig();
    const keyDir = path.join(path.dirname(target), 'data', 'keys');
    fs.mkdirSync(keyDir, { recursive: true });
    fs.writeFileSync(path.join(keyDir, 'journal.json'), '{}');
    const run2 = await cli('datastore', 'restore', '-c', target, '--from', backupDir);
    expect(run2.err).toContain(`the CA key directory ${keyDir} is not empty`);
    expect(fs.existsSync(path.join(path.dirname(target), 'data', 'datastore.sqlite3'))).toBe(false);
  });

  it('refuses a backup from a newer schema, and one whose manifest and copy disagree', async () => {
    const newer = copyOfBackup();
    const db = new Database(path.join(newer, 'datastore.sqlite3'));
    db.prepare('INSERT INTO schema_version (version, applied_at) VALUES (?, ?)').run(SCHEMA_VERSION + 1, Date.now());
    db.close();
    rehash(newer, 'datastore.sqlite3', { schemaVersion: SCHEMA_VERSION + 1 });
    const run = await cli('datastore', 'restore', '-c', freshConfig(), '--from', newer);
    expect(run.code).toBe(1);
    expect(run.err).toContain(`schema is at version ${SCHEMA_VERSION + 1}`);
    expect(run.err).toContain(`knows versions up to ${SCHEMA_VERSION}`);

    // The copy says newer, the manifest still says current: altered, refused before the server sees it.
    const disagree = copyOfBackup();
    fs.copyFileSync(path.join(newer, 'datastore.sqlite3'), path.join(disagree, 'datastore.sqlite3'));
    rehash(disagree, 'datastore.sqlite3');
    const target = freshConfig();
    const run2 = await cli('datastore', 'restore', '-c', target, '--from', disagree);
    expect(run2.err).toContain(`manifest.json says schema version ${SCHEMA_VERSION} but the datastore copy records ${SCHEMA_VERSION + 1}`);
    // Nothing half-restored stays behind.
    const data = path.join(path.dirname(target), 'data');
    expect(fs.existsSync(data) ? fs.readdirSync(data) : []).toEqual([]);
  });

  it('a backup never goes into a non-empty directory', async () => {
    const run = await cli('datastore', 'backup', '-c', configB, '--out', backupDir);
    expect(run.code).toBe(1);
    expect(run.err).toContain(`${backupDir} is not empty`);
    expect(readManifest(backupDir).createdAt).toBeTruthy();
  });
});

describe('datastore backup and restore (PostgreSQL: pg_dump, pg_restore)', () => {
  const tmp = tempDir('terroir-backup-pg-');
  let pgs: TestPostgres;
  let server: RunningServer | undefined;
  let configP: string;
  const serverDoc = (dataDir: string, connectionString: string): Record<string, unknown> => ({
    trustDomain: TD, dataDir, logLevel: 'silent',
    dataStore: { type: 'postgres', connectionString, poolSize: 4 },
    ca: { keyStore: 'disk' },
    agentApi: { bindAddress: '127.0.0.1', port: 0 },
    health: { enabled: false },
  });

  beforeAll(async () => {
    pgs = await startPostgres();
    const src = await pgs.createDatabase('backup_src');
    configP = writeConfig(path.join(tmp.dir, 'p', 'server.yaml'), serverDoc(path.join(tmp.dir, 'p', 'data'), src));
    server = await startServer(loadServerConfig(configP, {}), { logger: silent });
  });
  afterAll(async () => {
    await server?.stop();
    await pgs?.stop();
    tmp.cleanup();
  });

  it('backs up the running server with pg_dump and restores with pg_restore into a fresh database', async () => {
    const created = await server!.store.createEntries([1, 2, 3].map((i) => ({
      spiffeId: `spiffe://${TD}/pg/${i}`, parentId: `spiffe://${TD}/agent/x`, selectors: [{ type: 'unix', value: `uid:${i}` }], federatesWith: [],
    })));
    const node = await attestWithToken(server!);
    const out = path.join(tmp.dir, 'backup');
    const run = await spawnCli('datastore', 'backup', '-c', configP, '--out', out, '--pg-bin-dir', PG_BIN);
    expect(run.err).toBe('');
    expect(run.code).toBe(0);
    const m = readManifest(out);
    expect(m).toMatchObject({ datastore: 'postgres', schemaVersion: SCHEMA_VERSION, trustDomain: TD });
    expect(m.files[0]!.path).toBe('datastore.pgdump');
    expect(mode(path.join(out, 'datastore.pgdump'))).toBe(0o600);

    const dst = await pgs.createDatabase('backup_dst');
    const configQ = writeConfig(path.join(tmp.dir, 'q', 'server.yaml'), serverDoc(path.join(tmp.dir, 'q', 'data'), dst));
    const restored = await spawnCli('datastore', 'restore', '-c', configQ, '--from', out, '--pg-bin-dir', PG_BIN);
    expect(restored.err).toMatch(/^Warning: the evidence log is back at \d+ records \(the backup's\): checkpoints signed after the backup no longer match it; a datastore_restore record at index \d+ says so to auditors\n$/);
    expect(restored.code).toBe(0);
    expect(restored.out).toContain('3 registration entries, 1 attested node');

    const store = await openDataStore({ type: 'postgres', connectionString: dst });
    try {
      expect((await store.listEntries()).map((e) => e.id).sort()).toEqual(created.map((r) => (r.ok ? r.value.id : '')).sort());
      expect((await store.getNode(node.id))?.serialNumber).toBe((await server!.store.getNode(node.id))?.serialNumber);
      expect((await store.getBundle(TD))?.bundleJson).toBe((await server!.store.getBundle(TD))?.bundleJson);
    } finally {
      await store.close();
    }
    expect(fs.readdirSync(path.join(tmp.dir, 'q', 'data', 'keys')).sort()).toEqual(fs.readdirSync(path.join(tmp.dir, 'p', 'data', 'keys')).filter((f) => !f.endsWith('.tmp')).sort());

    // The source database holds a datastore: restoring into it is refused, whatever the data dir.
    const over = writeConfig(path.join(tmp.dir, 'r', 'server.yaml'), serverDoc(path.join(tmp.dir, 'r', 'data'), pgs.url('backup_src')));
    const refused = await cli('datastore', 'restore', '-c', over, '--from', out, '--pg-bin-dir', PG_BIN);
    expect(refused.code).toBe(1);
    expect(refused.err).toMatch(/the target database already holds a terroir datastore \(schema_version has \d+ rows?\)/);
  });

  it('names the missing package when pg_dump is not where it is looked for', async () => {
    const run = await cli('datastore', 'backup', '-c', configP, '--out', path.join(tmp.dir, 'nowhere'), '--pg-bin-dir', path.join(tmp.dir, 'no-bin'));
    expect(run.code).toBe(1);
    expect(run.err).toContain(`pg_dump not found in ${path.join(tmp.dir, 'no-bin')}`);
    expect(run.err).toContain('apt-get install postgresql-client');
    expect(fs.existsSync(path.join(tmp.dir, 'nowhere'))).toBe(false);
  });
});
