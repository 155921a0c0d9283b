// deploy/gpsd.sh listens on loopback only unless told otherwise (issue 13): a gpsd other hosts can
// reach lets any of them answer as the node's GNSS receiver. Compose shares the namespace with the agent.
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort, waitForPort } from '../support/ports.js';
import { captureOutput, ProcessGroup } from '../support/proc.js';

const DEPLOY = path.resolve(import.meta.dirname, '../../deploy');
const procs = new ProcessGroup();
afterAll(() => procs.stopAll());

/** Listening sockets on `port` in /proc/net/tcp and tcp6, as local address fields (hex). */
function listeners(port: number): string[] {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  return ['/proc/net/tcp', '/proc/net/tcp6'].flatMap((f) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').slice(1) : []))
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[1]?.endsWith(`:${hex}`) && f[3] === '0A')
    .map((f) => f[1] as string);
}

describe('deploy/gpsd.sh', () => {
  it('listens on loopback only by default', async () => {
    const port = await freePort();
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(GPS|TERROIR_)/.test(k)));
    const child = procs.start('bash', [path.join(DEPLOY, 'gpsd.sh')], { env: { ...env, GPSD_PORT: String(port) } });
    const out = captureOutput(child);
    await waitForPort(port, '127.0.0.1', 15_000);
    const found = listeners(port);
    expect(found.length, out()).toBeGreaterThan(0);
    // 127.0.0.1 (0100007F) and ::1; never the wildcard 0.0.0.0 / ::.
    for (const a of found) expect(['0100007F', '00000000000000000000000001000000'], a).toContain(a.split(':')[0]);
  }, 30_000);
});
