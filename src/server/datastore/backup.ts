// Backup and restore of a server's state (docs/backup.md): the datastore — SQLite's online backup, or
// pg_dump — and the files the server needs to come back as itself (the CA keys with their journal, the
// evidence log's audit key), listed with their SHA-256 in manifest.json. A backup is taken while the
// server runs. A restore checks every hash before it writes anything, and goes into a fresh data dir
// or an empty database only.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import pg from 'pg';
import pino from 'pino';
import { openDataStore } from './index.js';
import { EvidenceLog } from '../evidence/log.js';
import { loadOrCreateAuditKey } from '../evidence/key.js';
import { SCHEMA_VERSION } from './schema.js';
import type { DataStoreConfig } from './types.js';

export const MANIFEST = 'manifest.json';
const FORMAT = 'terroir-backup/1';
const DATASTORE_FILE = { sqlite: 'datastore.sqlite3', postgres: 'datastore.pgdump' } as const;
const KEYS = 'keys';
/** The evidence log's signing key in a backup (on the server: evidenceLog.keyFile, default `<dataDir>/audit-key`). */
export const AUDIT_KEY = 'audit-key';
/** The only names a manifest may list: nothing in a backup can point a restore outside its targets. */
const SAFE_PATH = /^(?:datastore\.sqlite3|datastore\.pgdump|audit-key|keys\/[A-Za-z0-9_][A-Za-z0-9._-]*)$/;
/** better-sqlite3's largest step: the whole database in one step. */
const ALL_PAGES = 0x7fffffff;

export type BackupErrorCode = 'target_not_empty' | 'not_found' | 'damaged' | 'incompatible' | 'schema_too_new' | 'tool_missing' | 'tool_failed';

export class BackupError extends Error {
  override readonly name = 'BackupError';
  constructor(readonly code: BackupErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** What backup and restore need of the server config (a ServerConfig fits). */
export interface ServerState {
  trustDomain: string;
  dataDir: string;
  dataStore: DataStoreConfig;
  ca: { keyStore: 'memory' | 'disk'; keyDir?: string | undefined };
  /** The evidence log's settings, in builds that have one. */
  evidenceLog?: { enabled?: boolean; keyFile?: string | undefined; origin?: string | undefined } | undefined;
}

/** Where the server keeps the evidence log's audit key. */
function auditKeyFile(state: ServerState): string {
  return state.evidenceLog?.keyFile ?? path.join(state.dataDir, AUDIT_KEY);
}

export interface BackupFile {
  /** Relative to the backup directory. */
  path: string;
  sha256: string;
  size: number;
}

export interface BackupManifest {
  format: typeof FORMAT;
  createdAt: string;
  terroirVersion: string;
  trustDomain: string;
  datastore: DataStoreConfig['type'];
  schemaVersion: number;
  files: BackupFile[];
}

export interface ToolOptions {
  /** Where pg_dump and pg_restore are; default: found on PATH. */
  pgBinDir?: string | undefined;
}

export interface BackupResult {
  dir: string;
  manifest: BackupManifest;
  warnings: string[];
}

export interface RestoreResult {
  manifest: BackupManifest;
  /** Files written (absolute paths); for PostgreSQL the database is not among them. */
  written: string[];
  entries: number;
  nodes: number;
  warnings: string[];
}

// --------------------------------------------------------------------------- backup

/** Copies the server's state into `outDir` (new, or an empty directory), manifest last. */
export async function backupServer(state: ServerState, outDir: string, opts: ToolOptions & { now?: () => Date } = {}): Promise<BackupResult> {
  const dir = path.resolve(outDir);
  const createdDir = prepareOutDir(dir);
  const warnings: string[] = [];
  try {
    const dsName = DATASTORE_FILE[state.dataStore.type];
    const dsFile = path.join(dir, dsName);
    const schemaVersion = state.dataStore.type === 'sqlite'
      ? await backupSqlite(state.dataStore.path, dsFile)
      : await backupPostgres(state.dataStore.connectionString, dsFile, opts);
    const files = [await describe(dir, dsName)];
    // The keys after the datastore: a key the copied bundle names is then on disk already (keys are
    // written before the bundle that publishes them), so the restored server can sign with every
    // authority its datastore knows.
    if (state.ca.keyStore === 'disk' && state.ca.keyDir !== undefined) {
      files.push(...await copyKeyDir(state.ca.keyDir, dir, warnings));
    } else {
      warnings.push('ca.keyStore is memory: there are no CA keys to back up; a restored server mints a new CA, and every agent must attest again');
    }
    // Without it a restored server signs the evidence log with a new key, one auditors do not know.
    const auditKey = auditKeyFile(state);
    if (fs.existsSync(auditKey)) {
      copySecret(auditKey, path.join(dir, AUDIT_KEY));
      files.push(await describe(dir, AUDIT_KEY));
    }
    const manifest: BackupManifest = {
      format: FORMAT,
      createdAt: (opts.now?.() ?? new Date()).toISOString(),
      terroirVersion: terroirVersion(),
      trustDomain: state.trustDomain,
      datastore: state.dataStore.type,
      schemaVersion,
      files,
    };
    // Written last: a directory without a manifest is an unfinished backup, and restore refuses it.
    writeSecret(path.join(dir, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
    fsyncDir(dir);
    return { dir, manifest, warnings };
  } catch (err) {
    // The directory was empty: everything in it is ours. No half backup is left to be mistaken for one.
    for (const name of fs.readdirSync(dir)) fs.rmSync(path.join(dir, name), { recursive: true, force: true });
    if (createdDir) fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}

/** Creates `dir` 0700, or takes an existing empty one; true when created here. */
function prepareOutDir(dir: string): boolean {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700);
    return true;
  }
  if (!st.isDirectory()) throw new BackupError('target_not_empty', `${dir} exists and is not a directory; give a new directory for the backup`);
  if (fs.readdirSync(dir).length > 0) {
    throw new BackupError('target_not_empty', `${dir} is not empty; a backup goes into a new or empty directory (it never overwrites another backup)`);
  }
  fs.chmodSync(dir, 0o700);
  return false;
}

async function backupSqlite(source: string, dest: string): Promise<number> {
  if (source === ':memory:' || !fs.existsSync(source)) {
    throw new BackupError('not_found', `there is no SQLite datastore at ${source}; is the config the one of the server to back up?`);
  }
  // A connection of our own, read-only: the server's connection (and its queue) is not involved.
  const db = new Database(source, { readonly: true, fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    // Created 0600 before SQLite writes it: node records and attestation data are secrets.
    fs.closeSync(fs.openSync(dest, 'wx', 0o600));
    // All pages in one step, i.e. one read transaction and one consistent snapshot. Copied in small
    // steps, every write the server commits meanwhile would restart the copy from the first page.
    await db.backup(dest, { progress: () => ALL_PAGES });
  } catch (err) {
    throw new BackupError('tool_failed', `SQLite online backup of ${source} failed: ${(err as Error).message}`, { cause: err });
  } finally {
    db.close();
  }
  const copy = new Database(dest, { fileMustExist: true });
  try {
    const check = copy.pragma('integrity_check') as { integrity_check: string }[];
    if (check.length !== 1 || check[0]?.integrity_check !== 'ok') {
      throw new BackupError('damaged', `the copy of ${source} fails PRAGMA integrity_check (${check.slice(0, 5).map((r) => r.integrity_check).join('; ')}); `
        + 'check the server\'s disk and its database (sqlite3 <file> "PRAGMA integrity_check") before trusting any backup of it');
    }
    const version = sqliteSchemaVersion(copy, source);
    // One self-contained file: the copy leaves WAL mode, so no -wal file belongs with it.
    copy.pragma('journal_mode = DELETE');
    return version;
  } finally {
    copy.close();
  }
}

function sqliteSchemaVersion(db: Database.Database, what: string): number {
  let row: { v: number | null } | undefined;
  try {
    row = db.prepare('SELECT MAX(version) AS v FROM schema_version').get() as typeof row;
  } catch (err) {
    throw new BackupError('incompatible', `${what} is not a terroir datastore (no schema_version table): ${(err as Error).message}`, { cause: err });
  }
  if (row?.v === null || row?.v === undefined) throw new BackupError('incompatible', `${what} is not a terroir datastore (schema_version is empty)`);
  return Number(row.v);
}

async function backupPostgres(connectionString: string, dest: string, opts: ToolOptions): Promise<number> {
  fs.closeSync(fs.openSync(dest, 'wx', 0o600));
  // pg_dump takes its snapshot in one transaction: consistent while the servers keep writing.
  await runPgTool(opts, 'pg_dump', ['--format=custom', `--file=${dest}`], connectionString);
  fs.chmodSync(dest, 0o600);
  return pgDumpSchemaVersion(opts, dest);
}

/** The schema version recorded in a custom-format dump, read back with pg_restore (which proves the dump readable). */
async function pgDumpSchemaVersion(opts: ToolOptions, dump: string): Promise<number> {
  const sql = await runPgTool(opts, 'pg_restore', ['--data-only', '--table=schema_version', '--file=-', dump]);
  const lines = sql.split('\n');
  const start = lines.findIndex((l) => /^COPY \S*schema_version\b.* FROM stdin;$/.test(l));
  if (start === -1) throw new BackupError('incompatible', `${dump} holds no schema_version table: the database is not a terroir datastore (or the server never started on it)`);
  let max = 0;
  for (const line of lines.slice(start + 1)) {
    if (line === '\\.') break;
    max = Math.max(max, Number(line.split('\t')[0]));
  }
  if (!Number.isInteger(max) || max <= 0) throw new BackupError('incompatible', `${dump}: schema_version holds no version`);
  return max;
}

async function copyKeyDir(keyDir: string, dir: string, warnings: string[]): Promise<BackupFile[]> {
  let names: fs.Dirent[];
  try {
    names = fs.readdirSync(keyDir, { withFileTypes: true });
  } catch (err) {
    throw new BackupError('not_found', `cannot read the CA key directory ${keyDir} (ca.keyDir): ${(err as Error).message}; `
      + 'without it a restored server would be another CA', { cause: err });
  }
  fs.mkdirSync(path.join(dir, KEYS), { mode: 0o700 });
  // The journal first: a key minted while we copy is at worst an extra file no journal names, while
  // a key the journal names was written before the journal was.
  const files = names.filter((d) => d.isFile() && !d.name.endsWith('.tmp'))
    .map((d) => d.name)
    .sort((a, b) => (a === 'journal.json' ? -1 : b === 'journal.json' ? 1 : a.localeCompare(b)));
  for (const d of names) {
    if (!d.isFile()) warnings.push(`${path.join(keyDir, d.name)} is not a regular file; not backed up`);
  }
  const out: BackupFile[] = [];
  for (const name of files) {
    const rel = `${KEYS}/${name}`;
    if (!SAFE_PATH.test(rel)) {
      warnings.push(`${path.join(keyDir, name)}: unexpected file name; not backed up`);
      continue;
    }
    try {
      copySecret(path.join(keyDir, name), path.join(dir, KEYS, name));
    } catch (err) {
      // Retired while we copied (the CA removes expired keys): nothing needs it any more.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw err;
    }
    out.push(await describe(dir, rel));
  }
  if (!out.some((f) => f.path === `${KEYS}/journal.json`)) {
    warnings.push(`${keyDir} has no journal.json: the restored server will not know these keys and mints a new CA`);
  }
  return out;
}

// --------------------------------------------------------------------------- restore

/**
 * Restores the backup in `fromDir` into the places `state` names. Refuses, before writing anything,
 * a backup that is damaged, of another trust domain or backend, or newer than this build, and a
 * target that already holds a datastore, CA keys or an audit key.
 */
export async function restoreServer(state: ServerState, fromDir: string, opts: ToolOptions = {}): Promise<RestoreResult> {
  const dir = path.resolve(fromDir);
  const manifest = readManifest(dir);
  await verifyFiles(dir, manifest);
  checkCompatible(state, manifest);
  const dsFile = path.join(dir, DATASTORE_FILE[manifest.datastore]);
  if (state.dataStore.type === 'postgres') {
    // The dump's own record, not only the manifest's word: restoring a newer schema is refused before pg_restore runs.
    const inDump = await pgDumpSchemaVersion(opts, dsFile);
    if (inDump !== manifest.schemaVersion) throw inconsistent(manifest.schemaVersion, inDump);
  }
  await checkTargetFresh(state, manifest);

  const written: string[] = [];
  const warnings: string[] = [];
  let pgRestored = false;
  try {
    const keys = manifest.files.filter((f) => f.path.startsWith(`${KEYS}/`));
    if (keys.length > 0) {
      const keyDir = state.ca.keyDir as string;
      if (!fs.existsSync(keyDir)) {
        fs.mkdirSync(keyDir, { recursive: true, mode: 0o700 });
        written.push(keyDir);
      }
      fs.chmodSync(keyDir, 0o700);
      for (const f of keys) await placeSecret(dir, f, path.join(keyDir, f.path.slice(KEYS.length + 1)), written);
    } else {
      warnings.push('the backup holds no CA keys (the server kept them in memory): the restored server mints a new CA, and every agent must attest again');
    }
    const audit = manifest.files.find((f) => f.path === AUDIT_KEY);
    if (audit) {
      const dest = auditKeyFile(state);
      if (!fs.existsSync(path.dirname(dest))) {
        fs.mkdirSync(path.dirname(dest), { recursive: true, mode: 0o700 });
        written.push(path.dirname(dest));
      }
      await placeSecret(dir, audit, dest, written);
    } else if (state.evidenceLog?.enabled) {
      warnings.push('the backup holds no audit key: the restored server makes a new one for the evidence log; give auditors its verifier key');
    }
    if (state.dataStore.type === 'sqlite') {
      await placeSqlite(dir, manifest, state.dataStore.path, written);
    } else {
      // One transaction: a failed pg_restore leaves the database as empty as it was.
      await runPgTool(opts, 'pg_restore', ['--no-owner', '--no-privileges', '--exit-on-error', '--single-transaction', dsFile], state.dataStore.connectionString);
      pgRestored = true;
    }
    // Once through openDataStore: migrations run (an older schema is brought up to date) and the
    // restored database is proven usable before a server depends on it.
    const store = await openDataStore(state.dataStore);
    try {
      const entries = (await store.listEntries()).length;
      const nodes = (await store.listNodes()).length;
      if (!await store.getBundle(state.trustDomain)) {
        warnings.push(`the restored datastore holds no bundle for ${state.trustDomain}; the server publishes a new one at start`);
      }
      await markRestore(state, store, manifest, warnings);
      return { manifest, written, entries, nodes, warnings };
    } finally {
      await store.close();
    }
  } catch (err) {
    // Nothing half-restored stays behind to be mistaken for a server's state.
    const db = state.dataStore.type === 'sqlite' && written.includes(state.dataStore.path) ? state.dataStore.path : undefined;
    for (const p of written.reverse()) fs.rmSync(p, { recursive: true, force: true });
    if (db !== undefined) for (const s of ['-wal', '-shm']) fs.rmSync(`${db}${s}`, { force: true });
    if (pgRestored && err instanceof Error) {
      err.message += ' (the database already holds the restored data: drop and create it again before another restore)';
    }
    throw err;
  }
}

/**
 * The evidence log rolls back with the datastore: checkpoints signed after the backup describe leaves
 * the restored log no longer has, and its next ones will disagree with them (auditors see a fork).
 * Say so in the log itself, signed, so the fork is explained where auditors look.
 */
async function markRestore(state: ServerState, store: Awaited<ReturnType<typeof openDataStore>>, manifest: BackupManifest, warnings: string[]): Promise<void> {
  const ev = state.evidenceLog;
  const keyFile = auditKeyFile(state);
  if (ev?.enabled === false || ev?.origin === undefined || !fs.existsSync(keyFile)) return;
  const log = new EvidenceLog({
    store: store.evidence, origin: ev.origin, serverName: 'datastore-restore', signer: loadOrCreateAuditKey(keyFile, ev.origin).signer,
    logger: pino({ level: 'silent' }),
  });
  const size = await log.size();
  await log.append({
    kind: 'event', action: 'datastore_restore', caller: 'terroir-server datastore restore', result: 'ok',
    details: { backupCreatedAt: manifest.createdAt, logSizeAtBackup: size },
  });
  await log.close();
  await log.checkpoint();
  warnings.push(`the evidence log is back at ${size} records (the backup's): checkpoints signed after the backup no longer match it; a datastore_restore record at index ${size} says so to auditors`);
}

function readManifest(dir: string): BackupManifest {
  const file = path.join(dir, MANIFEST);
  let doc: unknown;
  try {
    doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
    throw new BackupError(missing ? 'not_found' : 'damaged', missing
      ? `${dir} has no ${MANIFEST}: it is not a terroir backup, or the backup did not finish`
      : `${file} is unreadable (${(err as Error).message}); the backup is damaged`, { cause: err });
  }
  const bad = (what: string): BackupError => new BackupError('damaged', `${file}: ${what}; the backup is damaged or was not made by terroir-server datastore backup`);
  const m = doc as Partial<BackupManifest> | null;
  if (m === null || typeof m !== 'object') throw bad('not a JSON object');
  if (m.format !== FORMAT) {
    const format: unknown = m.format;
    throw typeof format === 'string' && format.startsWith('terroir-backup/')
      ? new BackupError('schema_too_new', `${file} is in format ${format}, which this terroir-server (${terroirVersion()}) does not know; restore it with the terroir version that made it (${String(m.terroirVersion)}) or a newer one`)
      : bad(`"format" is not ${FORMAT}`);
  }
  if (m.datastore !== 'sqlite' && m.datastore !== 'postgres') throw bad('"datastore" is neither sqlite nor postgres');
  if (typeof m.trustDomain !== 'string' || typeof m.createdAt !== 'string' || typeof m.terroirVersion !== 'string') throw bad('"trustDomain", "createdAt" or "terroirVersion" is missing');
  if (typeof m.schemaVersion !== 'number' || !Number.isInteger(m.schemaVersion) || m.schemaVersion < 1) throw bad('"schemaVersion" is not a positive whole number');
  if (!Array.isArray(m.files)) throw bad('"files" is not a list');
  const seen = new Set<string>();
  for (const f of m.files as unknown[]) {
    const e = f as Partial<BackupFile> | null;
    if (e === null || typeof e !== 'object' || typeof e.path !== 'string' || !SAFE_PATH.test(e.path)) throw bad(`a file entry names ${JSON.stringify((e as { path?: unknown } | null)?.path)}, which no backup contains`);
    if (typeof e.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(e.sha256) || typeof e.size !== 'number') throw bad(`${e.path} has no valid sha256 and size`);
    if (seen.has(e.path)) throw bad(`${e.path} is listed twice`);
    seen.add(e.path);
  }
  const ds = DATASTORE_FILE[m.datastore];
  if (!seen.has(ds)) throw bad(`the ${m.datastore} datastore file ${ds} is not listed`);
  if (seen.has(DATASTORE_FILE[m.datastore === 'sqlite' ? 'postgres' : 'sqlite'])) throw bad('both datastore files are listed');
  return m as BackupManifest;
}

/** Every listed file is there, a regular file, with its size and SHA-256. */
async function verifyFiles(dir: string, manifest: BackupManifest): Promise<void> {
  for (const f of manifest.files) {
    const file = path.join(dir, f.path);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(file);
    } catch {
      throw new BackupError('damaged', `the backup is missing ${f.path}, which ${MANIFEST} lists; it is incomplete, restore another backup`);
    }
    if (!st.isFile()) throw new BackupError('damaged', `${f.path} in the backup is not a regular file (a link or a directory); refusing to restore it`);
    if (st.size !== f.size) {
      throw new BackupError('damaged', `${f.path} is ${st.size} bytes but ${MANIFEST} says ${f.size}: the file is truncated or was altered; restore another backup`);
    }
    if (await sha256File(file) !== f.sha256) {
      throw new BackupError('damaged', `${f.path} does not match its SHA-256 in ${MANIFEST}: the file is damaged or was altered; restore another backup`);
    }
  }
}

function checkCompatible(state: ServerState, m: BackupManifest): void {
  if (m.trustDomain !== state.trustDomain) {
    throw new BackupError('incompatible', `the backup is of trust domain ${m.trustDomain} but the config says ${state.trustDomain}; restore it with the config of that server`);
  }
  if (m.datastore !== state.dataStore.type) {
    throw new BackupError('incompatible', `the backup holds a ${m.datastore} datastore but the config uses ${state.dataStore.type}; `
      + `restore it into a server configured with a ${m.datastore} datastore (backup and restore do not move data between backends)`);
  }
  if (m.schemaVersion > SCHEMA_VERSION) {
    throw new BackupError('schema_too_new', `the backup's datastore schema is at version ${m.schemaVersion} (made by terroir ${m.terroirVersion}) but this terroir-server `
      + `(${terroirVersion()}) knows versions up to ${SCHEMA_VERSION}; restore it with terroir ${m.terroirVersion} or newer`);
  }
  if (m.files.some((f) => f.path.startsWith(`${KEYS}/`)) && (state.ca.keyStore !== 'disk' || state.ca.keyDir === undefined)) {
    throw new BackupError('incompatible', 'the backup holds CA keys but the config has ca.keyStore: memory, where they would be lost; set ca.keyStore: disk (and ca.keyDir if you like)');
  }
}

function inconsistent(manifestSays: number, fileSays: number): BackupError {
  return new BackupError('damaged', `${MANIFEST} says schema version ${manifestSays} but the datastore copy records ${fileSays}: the backup was altered; restore another backup`);
}

async function checkTargetFresh(state: ServerState, m: BackupManifest): Promise<void> {
  const occupied = (what: string): BackupError => new BackupError('target_not_empty',
    `${what}; a restore goes into a fresh data dir or an empty database and never overwrites a server's state: `
    + 'point the config (dataDir, dataStore, ca.keyDir) at new places, or move the old state away first');
  if (state.dataStore.type === 'sqlite') {
    for (const f of [state.dataStore.path, `${state.dataStore.path}-wal`]) {
      if (fs.existsSync(f)) throw occupied(`the datastore ${f} already exists`);
    }
  } else {
    const client = new pg.Client({ connectionString: state.dataStore.connectionString });
    client.on('error', () => undefined);
    try {
      await client.connect();
    } catch (err) {
      throw new BackupError('not_found', `cannot connect to the target database: ${(err as Error).message}; create an empty database first (createdb) and name it in dataStore.connectionString`, { cause: err });
    }
    try {
      const present = (await client.query<{ t: string | null }>("SELECT to_regclass('schema_version')::text AS t")).rows[0]?.t;
      if (present) {
        const n = Number((await client.query<{ n: string }>('SELECT COUNT(*) AS n FROM schema_version')).rows[0]?.n ?? 0);
        if (n > 0) throw occupied(`the target database already holds a terroir datastore (schema_version has ${n} row${n === 1 ? '' : 's'})`);
      }
    } finally {
      await client.end().catch(() => undefined);
    }
  }
  const keyDir = state.ca.keyDir;
  if (state.ca.keyStore === 'disk' && keyDir !== undefined && fs.existsSync(keyDir) && fs.readdirSync(keyDir).length > 0) {
    throw occupied(`the CA key directory ${keyDir} is not empty`);
  }
  if (m.files.some((f) => f.path === AUDIT_KEY) && fs.existsSync(auditKeyFile(state))) {
    throw occupied(`the audit key ${auditKeyFile(state)} already exists`);
  }
}

/** Copies one file 0600 (never over an existing one) and checks it arrived as the manifest says. */
async function placeSecret(dir: string, f: BackupFile, dest: string, written: string[]): Promise<void> {
  copySecret(path.join(dir, f.path), dest);
  written.push(dest);
  // Hashed again where it landed: the backup may have changed since it was verified.
  if (await sha256File(dest) !== f.sha256) throw new BackupError('damaged', `${f.path} changed while it was being restored; restore again`);
}

async function placeSqlite(dir: string, m: BackupManifest, target: string, written: string[]): Promise<void> {
  const f = m.files.find((x) => x.path === DATASTORE_FILE.sqlite) as BackupFile;
  fs.mkdirSync(path.dirname(target), { recursive: true, mode: 0o700 });
  const staged = `${target}.restoring`;
  await placeSecret(dir, f, staged, written);
  const db = new Database(staged, { readonly: true, fileMustExist: true });
  try {
    const inCopy = sqliteSchemaVersion(db, `${f.path} in the backup`);
    if (inCopy !== m.schemaVersion) throw inconsistent(m.schemaVersion, inCopy);
  } finally {
    db.close();
  }
  // A link, not a rename: it fails if a datastore appeared at the target meanwhile.
  fs.linkSync(staged, target);
  written.push(target);
  fs.rmSync(staged);
  written.splice(written.indexOf(staged), 1);
  fsyncDir(path.dirname(target));
}

// --------------------------------------------------------------------------- files and tools

function copySecret(src: string, dest: string): void {
  fs.copyFileSync(src, dest, fs.constants.COPYFILE_EXCL);
  fs.chmodSync(dest, 0o600);
  const fd = fs.openSync(dest, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function writeSecret(file: string, text: string): void {
  const fd = fs.openSync(file, 'wx', 0o600);
  try {
    fs.writeSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

async function sha256File(file: string): Promise<string> {
  const hash = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function describe(dir: string, rel: string): Promise<BackupFile> {
  const file = path.join(dir, rel);
  return { path: rel, sha256: await sha256File(file), size: fs.statSync(file).size };
}

/**
 * Runs pg_dump or pg_restore. The connection string goes in --dbname, but a password in it is moved
 * to PGPASSWORD: command lines are visible to every user of the machine (ps).
 */
function runPgTool(opts: ToolOptions, tool: 'pg_dump' | 'pg_restore', args: string[], connectionString?: string): Promise<string> {
  const bin = opts.pgBinDir ? path.join(opts.pgBinDir, tool) : tool;
  const env: NodeJS.ProcessEnv = { ...process.env };
  const fullArgs = ['--no-password', ...args];
  if (connectionString !== undefined) {
    let conn = connectionString;
    try {
      const url = new URL(connectionString);
      if (/^postgres(?:ql)?:$/.test(url.protocol) && url.password !== '') {
        env.PGPASSWORD = decodeURIComponent(url.password);
        url.password = '';
        conn = url.toString();
      }
    } catch {
      // Not a URL (key=value form): passed as it is.
    }
    fullArgs.unshift(`--dbname=${conn}`);
  }
  return new Promise((resolve, reject) => {
    execFile(bin, fullArgs, { env, encoding: 'utf8', maxBuffer: 256 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) { resolve(stdout); return; }
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        reject(new BackupError('tool_missing', `${tool} not found ${opts.pgBinDir ? `in ${opts.pgBinDir}` : 'on PATH'}: install the PostgreSQL client tools `
          + '(Debian/Ubuntu: apt-get install postgresql-client; the same major version as the server or newer), '
          + 'or name their directory with --pg-bin-dir or PG_BIN_DIR (e.g. /usr/lib/postgresql/15/bin)', { cause: err }));
        return;
      }
      const why = stderr.trim().split('\n').slice(-5).join('\n') || err.message;
      reject(new BackupError('tool_failed', `${tool} failed: ${why}`, { cause: err }));
    });
  });
}

let version: string | undefined;
/** This build's version from package.json (looked up from here: src/ when run with tsx, dist/src/ when built). */
export function terroirVersion(): string {
  if (version !== undefined) return version;
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'terroir' && typeof pkg.version === 'string') return (version = pkg.version);
    } catch {
      // no package.json here; look further up
    }
    const up = path.dirname(dir);
    if (up === dir) return (version = 'unknown');
    dir = up;
  }
}
