// Attack: `terroir-agent api fetch x509 -write DIR` into a directory another user could prepare. A
// symlink planted at the key path must not make the CLI write the workload's private key through it
// (into a file the attacker can read, or over a file the victim owns); an existing key file left
// world-readable must not keep its loose mode. Files are written atomically (temp file, rename).
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityCache } from '../../src/agent/cache.js';
import { UnixAttestor } from '../../src/agent/attestor/unix.js';
import { WorkloadApiServer, type JwtProvider } from '../../src/agent/workloadapi/server.js';
import { makeCa, makeSvid, type TestCa } from '../agent/fixtures.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const CLI = ['--import', 'tsx', path.resolve(import.meta.dirname, '../../src/cli/terroir-agent.ts')];

async function fetchWrite(socket: string, dir: string): Promise<{ code: number; out: string; err: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [...CLI, 'api', 'fetch', 'x509', '-socketPath', socket, '-write', dir], { timeout: 30_000 });
    return { code: 0, out: stdout, err: stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : -1, out: x.stdout ?? '', err: x.stderr ?? '' };
  }
}

describe('attack: api fetch x509 -write through a planted symlink or onto a loose key file', () => {
  const tmp = tempDir('terroir-sec-write-');
  const socket = path.join(tmp.dir, 'public', 'agent.sock');
  let ca: TestCa;
  let server: WorkloadApiServer;

  const jwt: JwtProvider = {
    fetchJwtSvid: () => Promise.reject(new Error('not used')),
    validateJwtSvid: () => Promise.reject(new Error('not used')),
  };

  beforeAll(async () => {
    ca = makeCa('example.org');
    const cache = new IdentityCache('example.org');
    cache.setBundles(ca.bundle(1), []);
    cache.setEntries([{
      id: 'e-me', spiffeId: 'spiffe://example.org/me', selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }],
      federatesWith: [], hint: '', jwtSvidTtl: 300,
    }]);
    cache.putSvids(new Map([['e-me', makeSvid(ca, 'spiffe://example.org/me')]]));
    server = await WorkloadApiServer.start({ socketPath: socket, cache, attestor: new UnixAttestor(), jwt, logger: pino({ level: 'silent' }) });
  });

  afterAll(async () => {
    await server?.close();
    ca?.cleanup();
    tmp.cleanup();
  });

  it('a symlink planted at svid.0.key is refused and its target is left untouched', async () => {
    const dir = path.join(tmp.dir, 'out-link');
    fs.mkdirSync(dir);
    const target = path.join(tmp.dir, 'attacker-readable');
    fs.writeFileSync(target, 'original\n', { mode: 0o644 });
    fs.symlinkSync(target, path.join(dir, 'svid.0.key'));
    const res = await fetchWrite(socket, dir);
    expect(res.code).not.toBe(0);
    expect(res.err).toMatch(/symbolic link/);
    expect(fs.readFileSync(target, 'utf8')).toBe('original\n');
    expect(fs.statSync(target).mode & 0o777).toBe(0o644);
    expect(fs.lstatSync(path.join(dir, 'svid.0.key')).isSymbolicLink()).toBe(true);
    // Nothing of the key was written anywhere in the directory (no temp file left either).
    for (const f of fs.readdirSync(dir)) {
      if (f !== 'svid.0.key') expect(fs.readFileSync(path.join(dir, f), 'utf8')).not.toContain('PRIVATE KEY');
    }
  });

  it('a symlink planted at a certificate path is refused too', async () => {
    const dir = path.join(tmp.dir, 'out-link-pem');
    fs.mkdirSync(dir);
    const target = path.join(tmp.dir, 'victim.pem');
    fs.writeFileSync(target, 'victim\n');
    fs.symlinkSync(target, path.join(dir, 'bundle.0.pem'));
    const res = await fetchWrite(socket, dir);
    expect(res.code).not.toBe(0);
    expect(fs.readFileSync(target, 'utf8')).toBe('victim\n');
  });

  it('an existing 0644 key file is replaced by a 0600 one', async () => {
    const dir = path.join(tmp.dir, 'out-loose');
    fs.mkdirSync(dir);
    const key = path.join(dir, 'svid.0.key');
    fs.writeFileSync(key, 'old\n', { mode: 0o644 });
    fs.chmodSync(key, 0o644);
    const res = await fetchWrite(socket, dir);
    expect(res.code, res.err).toBe(0);
    expect(fs.statSync(key).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(key, 'utf8')).toContain('-----BEGIN PRIVATE KEY-----');
    expect(fs.statSync(path.join(dir, 'svid.0.pem')).mode & 0o777).toBe(0o644);
    // Written through temp files renamed into place: none left behind.
    expect(fs.readdirSync(dir).sort()).toEqual(['bundle.0.pem', 'svid.0.key', 'svid.0.pem']);
  });
});
