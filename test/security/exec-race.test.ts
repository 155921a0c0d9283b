// Attack: exec race against the unix workload attestor. An unprivileged process (nobody) connects to
// the Workload API, waits until the agent has accepted the connection, then execs a binary that an
// entry selects by unix:path + unix:sha256, and the exec'd binary makes the call on the inherited
// socket. Attesting at call time would read the new /proc/<pid>/exe and hand over that binary's SVID
// and key; the agent must refuse the call, because the process is no longer the one that connected.
import crypto from 'node:crypto';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { IdentityCache, type CacheEntry } from '../../src/agent/cache.js';
import { UnixAttestor, processStartTime } from '../../src/agent/attestor/unix.js';
import { WorkloadApiServer, type JwtProvider } from '../../src/agent/workloadapi/server.js';
import { makeCa, makeSvid, type TestCa } from '../agent/fixtures.js';
import { stopChild } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const PYTHON = '/usr/bin/python3';
const NODE = fs.realpathSync(process.execPath);
const nodeSha = crypto.createHash('sha256').update(fs.readFileSync(NODE)).digest('hex');
const TARGET = 'spiffe://example.org/exec-target';

// Run by the exec'd node: FetchX509SVID over the inherited socket descriptor (argv[2]); prints whether
// a response message arrived and whether it names the target SPIFFE ID, or the gRPC status.
const FD_CLIENT = `
import http2 from 'node:http2';
import net from 'node:net';
const [where, target] = process.argv.slice(2);
// A socket path (the binary connects itself) or an inherited descriptor number.
const connect = () => (where.startsWith('/') ? net.connect(where) : new net.Socket({ fd: Number(where), readable: true, writable: true }));
const done = (r) => { console.log(JSON.stringify(r)); process.exit(0); };
const session = http2.connect('http://localhost', { createConnection: connect });
session.on('error', (e) => done({ ok: false, code: -1, details: e.message }));
const req = session.request({ ':method': 'POST', ':path': '/SpiffeWorkloadAPI/FetchX509SVID',
  'content-type': 'application/grpc', te: 'trailers', 'workload.spiffe.io': 'true' });
let data = Buffer.alloc(0);
const status = (h) => {
  if (h['grpc-status'] !== undefined && h['grpc-status'] !== '0') done({ ok: false, code: Number(h['grpc-status']), details: decodeURIComponent(h['grpc-message'] ?? '') });
};
req.on('response', status);
req.on('trailers', status);
req.on('data', (d) => {
  data = Buffer.concat([data, d]);
  if (data.length >= 5 && data.length >= 5 + data.readUInt32BE(1)) done({ ok: true, gotTarget: data.includes(Buffer.from(target)) });
});
setTimeout(() => done({ ok: false, code: -2, details: 'timeout' }), 10000);
req.end(Buffer.from([0, 0, 0, 0, 0]));
`;

// Run as nobody by python3: connect, wait until the agent has accepted (its HTTP/2 SETTINGS frame is
// readable; MSG_PEEK leaves it for the next binary), keep the descriptor across exec, exec node.
const CONNECT_THEN_EXEC = `
import os, socket, sys
sock, node, client, target = sys.argv[1:5]
s = socket.socket(socket.AF_UNIX)
s.connect(sock)
s.recv(1, socket.MSG_PEEK)
s.set_inheritable(True)
os.execv(node, [node, client, str(s.fileno()), target])
`;

function asNobody(cmd: string, args: string[], cwd: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    execFile('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', cmd, ...args], { cwd, timeout: 20_000 }, (err, stdout, stderr) => {
      const line = stdout.trim().split('\n').at(-1) ?? '';
      try {
        resolve(JSON.parse(line) as Record<string, unknown>);
      } catch {
        reject(new Error(`no result (${err?.message ?? ''}): ${stdout} ${stderr}`));
      }
    });
  });
}

describe('attack: exec after connecting (unix attestor exec race)', () => {
  const tmp = tempDir('terroir-sec-exec-');
  const socketDir = path.join(tmp.dir, 'public');
  const socket = path.join(socketDir, 'agent.sock');
  const clientDir = path.join(tmp.dir, 'client');
  const client = path.join(clientDir, 'fd-client.mjs');
  let ca: TestCa;
  let server: WorkloadApiServer;
  const children: ChildProcess[] = [];

  const jwt: JwtProvider = {
    fetchJwtSvid: () => Promise.reject(new Error('not used')),
    validateJwtSvid: () => Promise.reject(new Error('not used')),
  };

  beforeAll(async () => {
    fs.chmodSync(tmp.dir, 0o755);
    fs.mkdirSync(socketDir, { mode: 0o755 });
    fs.mkdirSync(clientDir, { mode: 0o755 });
    fs.chmodSync(clientDir, 0o755);
    fs.writeFileSync(client, FD_CLIENT, { mode: 0o644 });
    ca = makeCa('example.org');
    const cache = new IdentityCache('example.org');
    cache.setBundles(ca.bundle(1), []);
    const entry: CacheEntry = {
      id: 'e-target', spiffeId: TARGET, federatesWith: [], hint: '', jwtSvidTtl: 300,
      selectors: ['uid:65534', `path:${NODE}`, `sha256:${nodeSha}`].map((value) => ({ type: 'unix', value })),
    };
    cache.setEntries([entry]);
    cache.putSvids(new Map([['e-target', makeSvid(ca, TARGET)]]));
    server = await WorkloadApiServer.start({ socketPath: socket, cache, attestor: new UnixAttestor(), jwt, logger: pino({ level: 'silent' }) });
  });

  afterEach(async () => {
    await Promise.all(children.splice(0).map((c) => stopChild(c, 500)));
  });

  afterAll(async () => {
    await server?.close();
    ca?.cleanup();
    tmp.cleanup();
  });

  it('control: the selected binary connecting and calling itself, as nobody, gets the SVID', async () => {
    expect(await asNobody(NODE, [client, socket, TARGET], clientDir)).toEqual({ ok: true, gotTarget: true });
  });

  it('a nobody process that connects, then execs the selected binary which calls on the inherited socket, is refused', async () => {
    const res = await asNobody(PYTHON, ['-c', CONNECT_THEN_EXEC, socket, NODE, client, TARGET], clientDir);
    expect(res).toMatchObject({ ok: false, code: 7 }); // PERMISSION_DENIED
    expect(String(res['details'])).toMatch(/another executable|changed/);
  });

  it('the attestor refuses a process that exec\'d another binary since its snapshot (same pid, same start time)', async () => {
    // python3 waits for a line on stdin, then execs sleep in place: the pid and start time stay.
    const child = spawn(PYTHON, ['-c', 'import os,sys; sys.stdin.readline(); os.execv("/bin/sleep", ["sleep", "30"])'], { stdio: ['pipe', 'ignore', 'ignore'] });
    children.push(child);
    const pid = child.pid!;
    const attestor = new UnixAttestor();
    let snap: ReturnType<UnixAttestor['snapshot']> | undefined;
    for (let i = 0; i < 1000 && snap === undefined; i++) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/exe`) === fs.realpathSync(PYTHON)) snap = attestor.snapshot(pid);
      } catch {
        // not yet
      }
      if (snap === undefined) await new Promise((r) => setTimeout(r, 5));
    }
    expect(snap).toBeDefined();
    const start = processStartTime(pid);
    const cred = { pid, uid: process.getuid!(), gid: process.getgid!() };
    expect((await attestor.attest(cred, snap!)).map((s) => s.value)).toContain(`path:${fs.realpathSync(PYTHON)}`);
    child.stdin!.write('go\n');
    const sleep = fs.realpathSync('/bin/sleep');
    for (let i = 0; i < 1000; i++) {
      try {
        if (fs.readlinkSync(`/proc/${pid}/exe`) === sleep) break;
      } catch {
        // not yet
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(fs.readlinkSync(`/proc/${pid}/exe`)).toBe(sleep);
    expect(processStartTime(pid)).toBe(start);
    await expect(attestor.attest(cred, snap!)).rejects.toMatchObject({ code: 'process_changed' });
  });
});
