// The unix workload attestor against real processes, with sha256sum and /etc as the oracle.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { UnixAttestor, WorkloadAttestationError, processStartTime } from '../../src/agent/attestor/unix.js';
import { peerCredentialsOfSocket } from '../../native/peercred.js';
import { stopChild } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const children: ChildProcess[] = [];
afterEach(async () => {
  await Promise.all(children.splice(0).map((c) => stopChild(c, 500)));
});

function startSleep(asNobody = false): ChildProcess {
  // setpriv switches identity and execs in place, so the pid we hold is the sleep itself.
  const child = asNobody
    ? spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '/bin/sleep', '30'], { stdio: 'ignore' })
    : spawn('/bin/sleep', ['30'], { stdio: 'ignore' });
  children.push(child);
  return child;
}

async function waitForExe(pid: number, exe: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      if (fs.readlinkSync(`/proc/${pid}/exe`) === exe) return;
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`process ${pid} never ran ${exe}`);
}

const sleepPath = fs.realpathSync('/bin/sleep');
const sleepSha = execFileSync('sha256sum', [sleepPath]).toString().split(' ')[0];

describe('unix workload attestor', () => {
  it('reports uid, gid, user, group, binary path and sha256 of a real process', async () => {
    const child = startSleep();
    await waitForExe(child.pid!, sleepPath);
    const a = new UnixAttestor();
    const sel = await a.attest({ pid: child.pid!, uid: 0, gid: 0 }, processStartTime(child.pid!));
    expect(sel.map((s) => `${s.type}:${s.value}`).sort()).toEqual([
      'unix:gid:0', `unix:path:${sleepPath}`, `unix:sha256:${sleepSha}`, 'unix:uid:0', 'unix:user:root', 'unix:group:root',
    ].sort());
  });

  it('names another user and group from /etc/passwd and /etc/group', async () => {
    const child = startSleep(true);
    await waitForExe(child.pid!, sleepPath);
    const sel = await new UnixAttestor({ sha256: false }).attest({ pid: child.pid!, uid: 65534, gid: 65534 }, processStartTime(child.pid!));
    const texts = sel.map((s) => `${s.type}:${s.value}`);
    expect(texts).toContain('unix:uid:65534');
    expect(texts).toContain('unix:user:nobody');
    expect(texts).toContain('unix:group:nogroup');
    expect(texts.some((t) => t.startsWith('unix:sha256:'))).toBe(false);
  });

  it('refuses a caller whose credentials do not match the process (changed uid)', async () => {
    const child = startSleep();
    await waitForExe(child.pid!, sleepPath);
    await expect(new UnixAttestor().attest({ pid: child.pid!, uid: 1000, gid: 0 }, processStartTime(child.pid!)))
      .rejects.toMatchObject({ code: 'process_changed' });
  });

  it('uses the effective ids, as SO_PEERCRED does (real and effective differ)', async () => {
    const child = spawn('setpriv', ['--ruid=0', '--euid=65534', '--rgid=0', '--egid=65534', '--clear-groups', '/bin/sleep', '30'], { stdio: 'ignore' });
    children.push(child);
    await waitForExe(child.pid!, sleepPath);
    const start = processStartTime(child.pid!);
    const sel = await new UnixAttestor({ sha256: false }).attest({ pid: child.pid!, uid: 65534, gid: 65534 }, start);
    expect(sel.map((x) => x.value)).toContain('uid:65534');
    await expect(new UnixAttestor().attest({ pid: child.pid!, uid: 0, gid: 0 }, start)).rejects.toMatchObject({ code: 'process_changed' });
  });

  it('refuses a pid that has exited', async () => {
    const child = startSleep();
    await waitForExe(child.pid!, sleepPath);
    const start = processStartTime(child.pid!);
    await stopChild(child, 500);
    const err = await new UnixAttestor().attest({ pid: child.pid!, uid: 0, gid: 0 }, start).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkloadAttestationError);
    expect((err as WorkloadAttestationError).code).toBe('process_gone');
  });

  it('refuses a pid now held by a different process (start time differs)', async () => {
    const child = startSleep();
    await waitForExe(child.pid!, sleepPath);
    const real = processStartTime(child.pid!);
    const earlier = String(BigInt(real) - 1n);
    await expect(new UnixAttestor().attest({ pid: child.pid!, uid: 0, gid: 0 }, earlier)).rejects.toMatchObject({ code: 'process_changed' });
  });

  it('peer credentials of a real connection name the connecting process', async () => {
    const { dir, cleanup } = tempDir('terroir-peer-');
    const sock = path.join(dir, 'p.sock');
    const got = new Promise<{ pid: number; uid: number; gid: number }>((resolve, reject) => {
      const srv = net.createServer((s) => {
        try {
          resolve(peerCredentialsOfSocket(s));
        } catch (e) {
          reject(e);
        }
        s.destroy();
        srv.close();
      });
      srv.listen(sock);
    });
    // A separate process connects, so the pid is not ours.
    const child = spawn('python3', ['-c', `import socket,time;s=socket.socket(socket.AF_UNIX);s.connect(${JSON.stringify(sock)});time.sleep(2)`], { stdio: 'ignore' });
    children.push(child);
    const cred = await got;
    expect(cred.pid).toBe(child.pid);
    expect(cred.uid).toBe(process.getuid!());
    cleanup();
  });
});
