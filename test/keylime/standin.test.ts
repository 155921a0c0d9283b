// The development stand-in as a process (test/doubles/keylime-standin.ts) on the PKI that
// deploy/certs-init.sh makes: it serves over mTLS with that PKI, says what it is, is refused by a
// default client, and stops on SIGTERM.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeylimeVerifierClient } from '../../src/keylime/client.js';
import { KeylimeRequestError } from '../../src/keylime/errors.js';
import { ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const LAUNCHER = path.join(ROOT, 'test/doubles/keylime-standin.ts');
const tmp = tempDir('terroir-standin-');
const pki = path.join(tmp.dir, 'keylime');
const group = new ProcessGroup();

beforeAll(() => {
  const r = spawnSync('bash', [path.join(ROOT, 'deploy/certs-init.sh'), tmp.dir], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
});
afterAll(async () => {
  await group.stopAll();
  tmp.cleanup();
});

function client(port: number, allowDevelopmentStandIn: boolean): KeylimeVerifierClient {
  return new KeylimeVerifierClient({
    url: `https://localhost:${port}`, caFile: path.join(pki, 'ca.crt'),
    certFile: path.join(pki, 'terroir-client.crt'), keyFile: path.join(pki, 'terroir-client.key'),
    timeoutMs: 3000, allowDevelopmentStandIn,
  });
}

describe('keylime-standin.ts', () => {
  it('serves on the certs-init PKI, announces itself, is refused unless allowed, and stops on SIGTERM', async () => {
    const child = group.start(process.execPath, ['--import', 'tsx', LAUNCHER, '--pki', pki], { cwd: ROOT });
    let stderr = '';
    child.stderr?.on('data', (b: Buffer) => { stderr += b.toString(); });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout?.on('data', (b: Buffer) => {
        out += b.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0] as string);
      });
      child.once('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    const ready = JSON.parse(line) as { standIn: boolean; url: string; port: number };
    expect(ready).toEqual({ standIn: true, url: `https://localhost:${ready.port}`, port: ready.port });
    expect(stderr).toMatch(/DEVELOPMENT STAND-IN for a Keylime verifier/);

    const strict = client(ready.port, false);
    const allowed = client(ready.port, true);
    try {
      const err = await strict.apiVersion().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(KeylimeRequestError);
      expect((err as KeylimeRequestError).kind).toBe('stand_in');
      expect(await allowed.apiVersion()).toMatch(/^2\.\d+$/);
    } finally {
      await strict.close();
      await allowed.close();
    }

    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  }, 30_000);

  it('refuses missing or bad arguments with a clear message', () => {
    for (const [args, message] of [
      [[], /--pki is required/],
      [['--pki', path.join(tmp.dir, 'nowhere')], /cannot read .*verifier\.crt.*certs-init\.sh/],
      [['--pki', pki, '--port', 'x'], /--port needs a TCP port number/],
      [['--pki', pki, '--insecure'], /unknown argument --insecure/],
    ] as [string[], RegExp][]) {
      const r = spawnSync(process.execPath, ['--import', 'tsx', LAUNCHER, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 20_000 });
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(message);
    }
  }, 60_000);
});
