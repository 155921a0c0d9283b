// The unix workload attestor: turns a caller's kernel-reported credentials (pid/uid/gid from
// SO_PEERCRED) into selectors, reading /proc for the binary and /etc/passwd, /etc/group for names.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { PeerCredentials } from '../../../native/peercred.js';
import type { Selector } from '../selectors.js';

export class WorkloadAttestationError extends Error {
  constructor(readonly code: 'process_gone' | 'process_changed' | 'unreadable', message: string) {
    super(message);
    this.name = 'WorkloadAttestationError';
  }
}

export interface UnixAttestorOptions {
  /** Compute unix:sha256 of the caller's binary (default true). */
  sha256?: boolean;
  /** Binaries larger than this are not hashed (no unix:sha256 selector); default 1 GiB. */
  maxBinaryBytes?: number;
  /** Where /proc and /etc live (tests never need to change these). */
  procRoot?: string;
  etcRoot?: string;
}

/**
 * The start time of a process, in clock ticks since boot (/proc/<pid>/stat field 22). A pid
 * reused by a new process gets a new start time, which is how reuse is detected.
 */
export function processStartTime(pid: number, procRoot = '/proc'): string {
  let stat: string;
  try {
    stat = fs.readFileSync(`${procRoot}/${pid}/stat`, 'latin1');
  } catch {
    throw new WorkloadAttestationError('process_gone', `process ${pid} no longer exists`);
  }
  // The command name (field 2) is in parentheses and may contain spaces or ')'; fields after the
  // last ')' are space separated, starting with field 3.
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const start = rest[22 - 3];
  if (start === undefined || !/^\d+$/.test(start)) {
    throw new WorkloadAttestationError('unreadable', `cannot parse /proc/${pid}/stat`);
  }
  return start;
}

/**
 * SHA-256 of an open file, read asynchronously through one reused buffer (a read stream would
 * allocate a fresh buffer per chunk: ~100 MB of garbage for a large binary such as node). Closes fd.
 */
function hashFd(fd: number): Promise<string | null> {
  const h = crypto.createHash('sha256');
  const buf = Buffer.allocUnsafe(256 * 1024);
  return new Promise((resolve) => {
    const step = (): void => {
      fs.read(fd, buf, 0, buf.length, null, (err, n) => {
        if (err) {
          fs.close(fd, () => resolve(null));
          return;
        }
        if (n === 0) {
          fs.close(fd, () => resolve(h.digest('hex')));
          return;
        }
        h.update(buf.subarray(0, n));
        step();
      });
    };
    step();
  });
}

/** The executable a process ran when its connection was accepted. */
export interface ExeIdentity {
  /** /proc/<pid>/exe's target ("… (deleted)" when the file was unlinked). */
  path: string;
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
}

/** A caller as recorded when its connection was accepted (see UnixAttestor.snapshot). */
export interface ProcessSnapshot {
  /** The pid's start time (pid-reuse detection). */
  startTime: string;
  /** The executable, or null when /proc/<pid>/exe could not be read. */
  exe: ExeIdentity | null;
  /** sha256 of that executable (hashing starts at accept); null when not hashed. */
  sha256: Promise<string | null> | null;
}

function sameFile(a: { dev: number; ino: number; size: number; mtimeMs: number }, b: fs.Stats): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs;
}

interface HashCacheEntry {
  key: string;
  hash: Promise<string | null>;
}

interface NameTable {
  mtimeMs: number;
  size: number;
  byId: Map<number, string>;
}

export class UnixAttestor {
  private readonly sha256: boolean;
  private readonly maxBinaryBytes: number;
  private readonly procRoot: string;
  private readonly etcRoot: string;
  // Hashing a large binary costs ~100 ms; remember it per (device, inode, size, mtime, ctime).
  private readonly hashes = new Map<string, HashCacheEntry>();
  private readonly tables = new Map<string, NameTable>();

  constructor(opts: UnixAttestorOptions = {}) {
    this.sha256 = opts.sha256 ?? true;
    this.maxBinaryBytes = opts.maxBinaryBytes ?? 1024 * 1024 * 1024;
    this.procRoot = opts.procRoot ?? '/proc';
    this.etcRoot = opts.etcRoot ?? '/etc';
  }

  /**
   * What the caller is when its connection is accepted: the pid's start time and the executable it
   * runs (device, inode, size, mtime, path), whose sha256 is computed from that very file (opened
   * now, hashed in the background). Calls on the connection are later attested against this
   * snapshot, so a process that execs another binary after connecting (keeping or passing on the
   * socket) is refused instead of being attested as the new binary.
   */
  snapshot(pid: number): ProcessSnapshot {
    const startTime = processStartTime(pid, this.procRoot);
    const link = `${this.procRoot}/${pid}/exe`;
    let exe: ExeIdentity | null = null;
    let sha256: Promise<string | null> | null = null;
    let fd: number | undefined;
    try {
      fd = fs.openSync(link, 'r');
    } catch {
      // Kernel threads and processes of other users without ptrace access have no readable exe.
      fd = undefined;
    }
    if (fd !== undefined) {
      try {
        const st = fs.fstatSync(fd);
        const exePath = fs.readlinkSync(link);
        // The path must name the file opened: an exec between open and readlink would split them.
        if (!sameFile(st, fs.statSync(link))) {
          throw new WorkloadAttestationError('process_changed', `process ${pid} exec'd while it was being identified`);
        }
        exe = { path: exePath, dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs };
      } catch (e) {
        fs.closeSync(fd);
        if (e instanceof WorkloadAttestationError) throw e;
        // The process exited or its exe became unreadable meanwhile: the start time check decides.
        exe = null;
        fd = undefined;
      }
      if (fd !== undefined) sha256 = this.sha256 ? this.binaryHash(fd) : (fs.closeSync(fd), null);
    }
    // What was read belongs to the process that connected (the pid was not reused meanwhile).
    this.checkSameProcess(pid, startTime);
    return { startTime, exe, sha256 };
  }

  /**
   * Selectors for a caller, from the snapshot taken when its connection was accepted. The caller is
   * refused when the process has exited, the pid now belongs to another process (start time), its
   * uid/gid changed, or it runs another executable than in the snapshot (exec after connecting).
   * A bare start time (no snapshot) takes the snapshot now: the path and hash are then today's.
   */
  async attest(cred: PeerCredentials, snapshot: ProcessSnapshot | string): Promise<Selector[]> {
    const { pid, uid, gid } = cred;
    let snap: ProcessSnapshot;
    if (typeof snapshot === 'string') {
      this.checkSameProcess(pid, snapshot);
      snap = this.snapshot(pid);
      this.checkSameProcess(pid, snapshot);
    } else {
      snap = snapshot;
    }
    this.checkSameProcess(pid, snap.startTime);
    this.checkSameExecutable(pid, snap.exe);

    // SO_PEERCRED reports the effective ids at connect(); /proc/<pid>/status lists real, effective,
    // saved and filesystem ids. The effective ones are what the process acts as.
    const status = this.readProc(pid, 'status');
    const effectiveUid = /^Uid:\s+\d+\s+(\d+)/m.exec(status)?.[1];
    const effectiveGid = /^Gid:\s+\d+\s+(\d+)/m.exec(status)?.[1];
    if (effectiveUid !== String(uid) || effectiveGid !== String(gid)) {
      // The process changed identity since it connected: attest neither identity.
      throw new WorkloadAttestationError('process_changed', `process ${pid} changed its uid/gid after connecting`);
    }

    const selectors: Selector[] = [
      { type: 'unix', value: `uid:${uid}` },
      { type: 'unix', value: `gid:${gid}` },
    ];
    const user = this.nameOf('passwd', uid);
    if (user !== undefined) selectors.push({ type: 'unix', value: `user:${user}` });
    const group = this.nameOf('group', gid);
    if (group !== undefined) selectors.push({ type: 'unix', value: `group:${group}` });

    if (snap.exe !== null) {
      selectors.push({ type: 'unix', value: `path:${snap.exe.path}` });
      const hash = snap.sha256 === null ? null : await snap.sha256;
      if (hash !== null) selectors.push({ type: 'unix', value: `sha256:${hash}` });
    }

    this.checkSameProcess(pid, snap.startTime);
    this.checkSameExecutable(pid, snap.exe);
    return selectors;
  }

  private checkSameProcess(pid: number, startTime: string): void {
    const now = processStartTime(pid, this.procRoot);
    if (now !== startTime) {
      throw new WorkloadAttestationError('process_changed', `pid ${pid} now belongs to another process (start time changed)`);
    }
  }

  /** The process still runs the executable of the snapshot (same device, inode, size and mtime). */
  private checkSameExecutable(pid: number, exe: ExeIdentity | null): void {
    let st: fs.Stats | null;
    try {
      st = fs.statSync(`${this.procRoot}/${pid}/exe`);
    } catch {
      st = null;
    }
    if (exe === null && st === null) return;
    if (exe === null || st === null || !sameFile(exe, st)) {
      throw new WorkloadAttestationError('process_changed',
        `process ${pid} runs another executable than when it connected (exec after connecting); reconnect to be attested again`);
    }
  }

  private readProc(pid: number, file: string): string {
    try {
      return fs.readFileSync(`${this.procRoot}/${pid}/${file}`, 'latin1');
    } catch {
      throw new WorkloadAttestationError('process_gone', `process ${pid} no longer exists`);
    }
  }

  // Hash an fd opened on /proc/<pid>/exe, which is the very file the process runs even if the path
  // was replaced or deleted since. Closes fd.
  private binaryHash(fd: number): Promise<string | null> {
    let st: fs.Stats;
    try {
      st = fs.fstatSync(fd);
    } catch {
      fs.closeSync(fd);
      return Promise.resolve(null);
    }
    if (st.size > this.maxBinaryBytes) {
      fs.closeSync(fd);
      return Promise.resolve(null);
    }
    const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
    const hit = this.hashes.get(key);
    if (hit) {
      fs.closeSync(fd);
      return hit.hash;
    }
    const hash = hashFd(fd);
    this.hashes.set(key, { key, hash });
    // A failed read is not remembered, so the next call tries again.
    void hash.then((v) => {
      if (v === null) this.hashes.delete(key);
    });
    return hash;
  }

  private nameOf(file: 'passwd' | 'group', id: number): string | undefined {
    const path = `${this.etcRoot}/${file}`;
    let st: fs.Stats;
    try {
      st = fs.statSync(path);
    } catch {
      return undefined;
    }
    let table = this.tables.get(file);
    if (!table || table.mtimeMs !== st.mtimeMs || table.size !== st.size) {
      const byId = new Map<number, string>();
      for (const line of fs.readFileSync(path, 'utf8').split('\n')) {
        // name:password:id:...
        const f = line.split(':');
        if (f.length < 3 || f[0] === '' || line.startsWith('#')) continue;
        const n = Number(f[2]);
        if (Number.isInteger(n) && !byId.has(n)) byId.set(n, f[0] as string);
      }
      table = { mtimeMs: st.mtimeMs, size: st.size, byId };
      this.tables.set(file, table);
    }
    return table.byId.get(id);
  }
}
