import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitForPort } from './ports.js';
import { captureOutput, ProcessGroup } from './proc.js';

export interface Gpsfake {
  port: number;
  process: ChildProcess;
  output: () => string;
  /** gpsfake's gpsd control socket (gpsd -F: device add/remove commands, not the JSON protocol). */
  controlSocket: () => string | undefined;
  stop: () => Promise<void>;
}

/**
 * Starts a private gpsd fed by gpsfake replaying `logPath` once (`-1`), on a free port, and resolves
 * once gpsd lists the fake device. gpsd (without -n) opens that device only when a client WATCHes,
 * so connect the client under test promptly. stop() signals the gpsfake process by PID; gpsfake
 * then stops its own gpsd.
 */
export async function startGpsfake(logPath: string, cycleS = 0.1): Promise<Gpsfake> {
  // On a busy machine a port found free can be taken before gpsd binds it (gpsd then exits, or we
  // would talk to a stranger): a fresh port and a fresh gpsfake are then the cure.
  const failures: string[] = [];
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const group = new ProcessGroup();
    // gpsfake makes its control socket (gpsfake-<pid>.sock) in TMPDIR and leaves it behind when
    // stopped: a private directory, removed with it.
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'terroir-gpsfake-'));
    const stop = async (): Promise<void> => {
      await group.stopAll();
      fs.rmSync(tmp, { recursive: true, force: true });
    };
    const child = group.start('gpsfake', ['-q', '-P', String(port), '-1', '-c', String(cycleS), logPath], { env: { ...process.env, TMPDIR: tmp } });
    const output = captureOutput(child);
    try {
      await waitForPort(port, '127.0.0.1', 10_000);
      await waitForDevice(port, child, 8_000);
      const controlSocket = (): string | undefined => {
        const sock = fs.readdirSync(tmp).find((f) => /^gpsfake-\d+\.sock$/.test(f));
        return sock === undefined ? undefined : path.join(tmp, sock);
      };
      return { port, process: child, output, controlSocket, stop };
    } catch (err) {
      await stop();
      failures.push(`port ${port}: ${(err as Error).message} ${output().trim()}`);
    }
  }
  throw new Error(`gpsfake did not start: ${failures.join(' | ')}`);
}

// gpsfake registers its pty with gpsd a moment after gpsd starts listening; a client that WATCHes
// before that may never see the device opened. `?DEVICES;` asks without activating anything.
async function waitForDevice(port: number, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`gpsfake exited (${child.exitCode ?? child.signalCode})`);
    const count = await new Promise<number>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => s.write('?DEVICES;\n'));
      let buf = '';
      const done = (n: number): void => {
        s.destroy();
        resolve(n);
      };
      s.setTimeout(1000, () => done(0));
      s.on('error', () => done(0));
      s.on('data', (d) => {
        buf += d.toString();
        for (const line of buf.split('\n')) {
          if (line.includes('"class":"DEVICES"') && buf.indexOf(line) < buf.lastIndexOf('\n')) {
            try {
              const msg = JSON.parse(line) as { devices?: unknown[] };
              // The greeting also carries a DEVICES report; the answer to our query is the last one.
              if ((msg.devices?.length ?? 0) > 0) return done(msg.devices!.length);
            } catch {
              /* partial line: wait for more */
            }
          }
        }
      });
    });
    if (count > 0) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`gpsd on port ${port} listed no device within ${timeoutMs} ms`);
}
