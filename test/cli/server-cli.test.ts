// The terroir-server CLI, spawned for real, against a real admin server on a real Unix socket
// backed by a real SQLite file.
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FlagError, FlagSet } from '../../src/cli/flags.js';
import { ProcessGroup, captureOutput } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { formatTable } from '../../src/cli/output.js';
import { TrustDomain } from '../../src/spiffe/index.js';
import { caCertificate, startAdminFixture, type AdminFixture } from '../server/admin/fixtures.js';

interface Run { code: number; stdout: string; stderr: string }

let fx: AdminFixture;

/** Runs the CLI asynchronously (the admin server lives in this process and must keep serving). */
function cli(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', 'src/cli/terroir-server.ts', ...args, '-socketPath', fx.socketPath],
      { timeout: 20_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
      });
  });
}

const AGENT = 'spiffe://example.org/agent/join_token/cli';

beforeAll(async () => { fx = await startAdminFixture(); });
afterAll(async () => { await fx?.close(); });

describe('terroir-server CLI against a real admin socket', () => {
  it('creates, shows, updates and deletes entries with SPIRE flags and kebab-case aliases', async () => {
    const created = await cli('entry', 'create', '-spiffeID', 'spiffe://example.org/web', '-parentID', AGENT,
      '-selector', 'unix:uid:1000', '-selector', 'unix:gid:50', '-x509SVIDTTL', '600', '-jwtSVIDTTL=120', '-dns', 'web.example.org',
      '-federatesWith', 'spiffe://other.org', '-hint', 'frontend');
    expect(created.stderr).toBe('');
    expect(created.code).toBe(0);
    expect(created.stdout).toMatch(/^ENTRY ID\s+SPIFFE ID\s+PARENT ID\s+SELECTORS/);
    expect(created.stdout).toContain('spiffe://example.org/web');
    const [stored] = await fx.store.listEntries({ spiffeId: 'spiffe://example.org/web' });
    expect(stored).toMatchObject({ parentId: AGENT, x509SvidTtl: 600, jwtSvidTtl: 120, dnsNames: ['web.example.org'], federatesWith: ['other.org'], hint: 'frontend' });
    expect(stored!.selectors).toEqual([{ type: 'unix', value: 'gid:50' }, { type: 'unix', value: 'uid:1000' }]);

    const kebab = await cli('entry', 'create', '--spiffe-id', 'spiffe://example.org/db', '-parent-id=' + AGENT, '-selector', 'unix:uid:1001', '--x509-svid-ttl', '300');
    expect(kebab.code).toBe(0);
    const shown = await cli('entry', 'show', '-parentID', AGENT, '-output', 'json');
    expect(shown.code).toBe(0);
    const listed = JSON.parse(shown.stdout) as { entries: { spiffeId: string; x509SvidTtl: number }[] };
    expect(listed.entries.map((e) => [e.spiffeId, e.x509SvidTtl]).sort()).toEqual([['spiffe://example.org/db', 300], ['spiffe://example.org/web', 600]]);
    const bySelector = await cli('entry', 'show', '-selector', 'unix:uid:1000');
    expect(bySelector.stdout).toMatch(/^Found 1 entry\n/);

    const updated = await cli('entry', 'update', '-entryID', stored!.id, '-x509SVIDTTL', '90', '-selector', 'unix:uid:7');
    expect(updated.code).toBe(0);
    expect(await fx.store.getEntry(stored!.id)).toMatchObject({ x509SvidTtl: 90, hint: 'frontend', selectors: [{ type: 'unix', value: 'uid:7' }] });

    const deleted = await cli('entry', 'delete', '-entryID', stored!.id);
    expect(deleted).toMatchObject({ code: 0, stdout: `Deleted entry ${stored!.id}\n` });
    const again = await cli('entry', 'delete', '-entryID', stored!.id);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe(`Failed to delete entry ${stored!.id}: no entry with id ${stored!.id}\n`);
  });

  it('prints the server\'s message and exits non-zero on bad input, writing nothing', async () => {
    const before = (await fx.store.listEntries()).length;
    const [badId, badTtl, wrongTd, badSelector, noSelector] = await Promise.all([
      cli('entry', 'create', '-spiffeID', 'spiffe://example.org/a/../b', '-parentID', AGENT, '-selector', 'unix:uid:1'),
      cli('entry', 'create', '-spiffeID', 'spiffe://example.org/a', '-parentID', AGENT, '-selector', 'unix:uid:1', '-x509SVIDTTL', '-5'),
      cli('entry', 'create', '-spiffeID', 'spiffe://example.org/a', '-parentID', 'spiffe://elsewhere.org/agent', '-selector', 'unix:uid:1'),
      cli('entry', 'create', '-spiffeID', 'spiffe://example.org/a', '-parentID', AGENT, '-selector', 'unix'),
      cli('entry', 'create', '-spiffeID', 'spiffe://example.org/a', '-parentID', AGENT),
    ]);
    expect(badId.code).toBe(1);
    expect(badId.stderr).toMatch(/^Error: entries\[0\]: spiffeId: invalid SPIFFE ID "spiffe:\/\/example.org\/a\/..\/b"/);
    expect(badTtl.stderr).toContain('entries[0]: x509SvidTtl must be a whole number of seconds from 1 to 31536000');
    expect(wrongTd.stderr).toContain('parentId: "spiffe://elsewhere.org/agent" is not in the server\'s trust domain "example.org"');
    expect(badSelector).toMatchObject({ code: 2, stderr: 'Error: selector "unix" must be type:value, e.g. unix:uid:1000\n' });
    expect(noSelector).toMatchObject({ code: 2, stderr: 'Error: at least one -selector is required\n' });
    expect((await fx.store.listEntries()).length).toBe(before);
    const unknownFlag = await cli('entry', 'create', '-spiffeId', 'spiffe://example.org/a', '-colour', 'red');
    expect(unknownFlag.code).toBe(2);
    expect(unknownFlag.stderr).toMatch(/^terroir-server entry create: flag provided but not defined: -colour/);
  });

  it('creates entries in batches from a SPIRE-style -data file', async () => {
    const file = path.join(fx.dir, 'entries.json');
    fs.writeFileSync(file, JSON.stringify({
      entries: [
        { spiffe_id: 'spiffe://example.org/data/1', parent_id: AGENT, selectors: [{ type: 'unix', value: 'uid:501' }], x509_svid_ttl: 200 },
        { spiffe_id: { trust_domain: 'example.org', path: '/data/2' }, parent_id: { trust_domain: 'example.org', path: '/agent/x' },
          selectors: [{ type: 'unix', value: 'uid:502' }], federates_with: ['spiffe://partner.org'], admin: true },
        { spiffe_id: 'spiffe://example.org/data/1', parent_id: AGENT, selectors: [{ type: 'unix', value: 'uid:501' }] },
      ],
    }));
    const r = await cli('entry', 'create', '-data', file);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^Failed to create entry spiffe:\/\/example.org\/data\/1: an entry with id .* already exists\n$/);
    expect(await fx.store.listEntries({ spiffeId: 'spiffe://example.org/data/2' })).toMatchObject([
      { parentId: 'spiffe://example.org/agent/x', federatesWith: ['partner.org'], admin: true },
    ]);
    expect((await fx.store.listEntries({ spiffeId: 'spiffe://example.org/data/1' }))[0]!.x509SvidTtl).toBe(200);
    fs.writeFileSync(file, '{"entries": [{"spiffe_id": 5}]}');
    expect(await cli('entry', 'create', '-data', file)).toMatchObject({ code: 1, stderr: `Error: ${file}: entries[0].spiffe_id must be a SPIFFE ID string or {trust_domain, path}\n` });
  });

  it('creates node-alias entries with -node', async () => {
    const r = await cli('entry', 'create', '-node', '-spiffeID', 'spiffe://example.org/nodes/eu', '-selector', 'tpm:ek-issuer:CN=Mfr');
    expect(r.code).toBe(0);
    const [alias] = await fx.store.listEntries({ spiffeId: 'spiffe://example.org/nodes/eu' });
    expect(alias!.parentId).toBe('spiffe://example.org/spire/server');
  });

  it('lists, shows, bans and evicts agents', async () => {
    const node = (id: string) => ({
      spiffeId: `spiffe://example.org/agent/tpm/${id}`, attestationType: 'tpm' as const, selectors: [{ type: 'tpm', value: `ek-hash:${id}` }],
      serialNumber: `serial-${id}`, expiresAt: new Date(Date.now() + 3_600_000), attestationData: { ekHash: id },
    });
    await fx.store.createNode(node('c1'));
    await fx.store.createNode(node('c2'));
    const list = await cli('agent', 'list');
    expect(list.stdout).toMatch(/^Found 2 attested agents\nSPIFFE ID\s+ATTESTATION\s+SERIAL/);
    expect(list.stdout).toContain('serial-c2');
    const [ban, evict] = await Promise.all([
      cli('agent', 'ban', '-spiffeID', 'spiffe://example.org/agent/tpm/c1'),
      cli('agent', 'evict', '-spiffe-id', 'spiffe://example.org/agent/tpm/c2'),
    ]);
    expect(ban).toMatchObject({ code: 0, stdout: 'Agent spiffe://example.org/agent/tpm/c1 banned\n' });
    expect(evict).toMatchObject({ code: 0, stdout: 'Agent spiffe://example.org/agent/tpm/c2 evicted\n' });
    const show = await cli('agent', 'show', '-spiffeID', 'spiffe://example.org/agent/tpm/c1', '-output', 'json');
    expect(JSON.parse(show.stdout)).toMatchObject({ banned: true, attestationType: 'tpm' });
    const gone = await cli('agent', 'show', '-spiffeID', 'spiffe://example.org/agent/tpm/c2');
    expect(gone).toMatchObject({ code: 1, stderr: 'Error: no attested agent spiffe://example.org/agent/tpm/c2\n' });
  });

  it('generates a join token the datastore accepts once', async () => {
    const r = await cli('token', 'generate', '-ttl', '60', '-spiffeID', 'spiffe://example.org/agent/edge-1', '-output', 'json');
    expect(r.code).toBe(0);
    const t = JSON.parse(r.stdout) as { value: string; expiresAt: number; agentSpiffeId: string };
    expect(t.agentSpiffeId).toBe('spiffe://example.org/agent/edge-1');
    expect(await fx.store.consumeJoinToken(t.value)).toMatchObject({ spiffeId: 'spiffe://example.org/agent/edge-1' });
    expect(await fx.store.consumeJoinToken(t.value)).toBeUndefined();
    const pretty = await cli('token', 'generate');
    expect(pretty.stdout).toMatch(/^Token: [0-9a-f]{32}\nExpires: \d{4}-/);
  });

  it('shows the bundle and sets, lists and deletes federated bundles', async () => {
    const pem = await cli('bundle', 'show');
    expect(pem.code).toBe(0);
    const der = Buffer.from(/-----BEGIN CERTIFICATE-----\n([\s\S]+?)-----END CERTIFICATE-----/.exec(pem.stdout)![1]!.replace(/\s/g, ''), 'base64');
    expect(der.equals(fx.bundle.x509Authorities()[0]!)).toBe(true);
    expect(new crypto.X509Certificate(der).ca).toBe(true);
    const spiffe = await cli('bundle', 'show', '-format', 'spiffe');
    expect(JSON.parse(spiffe.stdout)).toMatchObject({ keys: [{ use: 'x509-svid' }], spiffe_sequence: 3 });

    const otherCa = new crypto.X509Certificate(caCertificate(TrustDomain.parse('other.org')));
    const file = path.join(fx.dir, 'other.pem');
    fs.writeFileSync(file, otherCa.toString());
    const set = await cli('bundle', 'set', '-id', 'spiffe://other.org', '-path', file);
    expect(set).toMatchObject({ code: 0, stdout: 'Bundle for other.org set (1 X.509 authorities)\n' });
    const list = await cli('bundle', 'list');
    expect(list.stdout).toMatch(/^TRUST DOMAIN\s+X509 AUTHORITIES\s+SEQUENCE\nother\.org\s+1\s+0\n$/);
    const badFile = path.join(fx.dir, 'bad.json');
    fs.writeFileSync(badFile, '{"keys": "nope"}');
    const bad = await cli('bundle', 'set', '-id', 'bad.org', '-path', badFile, '-format', 'spiffe');
    expect(bad).toMatchObject({ code: 1, stderr: 'Error: bundle for bad.org: bundle has no "keys" array\n' });
    const del = await cli('bundle', 'delete', '-id', 'spiffe://other.org');
    expect(del.code).toBe(0);
    expect(await fx.store.getBundle('other.org')).toBeUndefined();
  });

  it('reports health', async () => {
    expect(await cli('healthcheck')).toMatchObject({ code: 0, stdout: 'Server is healthy.\n' });
  });
});

describe('terroir-server run', () => {
  const procs = new ProcessGroup();
  const tmp = tempDir('terroir-cli-run-');
  afterAll(async () => {
    await procs.stopAll();
    tmp.cleanup();
  });

  it('runs a server from a config file; the CLI finds its socket through -config; SIGTERM stops it', async () => {
    const config = path.join(tmp.dir, 'server.yaml');
    fs.writeFileSync(config, [
      'trustDomain: run.example', 'dataDir: ./data', 'logLevel: warn', 'ca:', '  keyStore: memory',
      'agentApi:', '  bindAddress: 127.0.0.1', '  port: 0', 'health:', '  enabled: false', '',
    ].join('\n'));
    const child = procs.start(process.execPath, ['--import', 'tsx', 'src/cli/terroir-server.ts', 'run', '-c', config]);
    const output = captureOutput(child);
    const socket = path.join(tmp.dir, 'data', 'admin.sock');
    const deadline = Date.now() + 20_000;
    while (!fs.existsSync(socket)) {
      if (child.exitCode !== null) throw new Error(`server exited early: ${output()}`);
      if (Date.now() > deadline) throw new Error(`no admin socket after 20 s: ${output()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const health = await new Promise<Run>((resolve) => {
      execFile(process.execPath, ['--import', 'tsx', 'src/cli/terroir-server.ts', 'healthcheck', '-config', config, '-output', 'json'],
        { timeout: 20_000 }, (err, stdout, stderr) => resolve({ code: err ? 1 : 0, stdout, stderr }));
    });
    expect(health.stderr).toBe('');
    expect(JSON.parse(health.stdout)).toEqual({ status: 'SERVING', trustDomain: 'run.example' });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(fs.existsSync(socket)).toBe(false);
  });

  it('says what is missing when run has no config', async () => {
    const r = await new Promise<Run>((resolve) => {
      execFile(process.execPath, ['--import', 'tsx', 'src/cli/terroir-server.ts', 'run'], { timeout: 20_000 },
        (err, stdout, stderr) => resolve({ code: err && typeof err.code === 'number' ? err.code : 0, stdout, stderr }));
    });
    expect(r).toMatchObject({ code: 2, stderr: 'Error: run needs the config file: terroir-server run -c server.yaml\n' });
  });
});

describe('flag parsing (SPIRE/Go style)', () => {
  const flags = new FlagSet([
    { name: 'spiffeID', type: 'string', usage: '' },
    { name: 'selector', type: 'list', usage: '' },
    { name: 'ttl', type: 'int', usage: '' },
    { name: 'node', type: 'bool', usage: '' },
    { name: 'config', type: 'string', usage: '', aliases: ['c'] },
  ]);

  it('accepts -f v, --f v, -f=v, kebab/snake aliases, repeats and stops at the first argument', () => {
    const p = flags.parse(['-spiffe-id', 'a', '--selector', 'x:1', '-selector=y:2', '-ttl=5', '-node', '-c', 'f.yaml', 'rest', '-ttl', '9']);
    expect(Object.fromEntries(p.values)).toEqual({ spiffeID: 'a', selector: ['x:1', 'y:2'], ttl: 5, node: true, config: 'f.yaml' });
    expect(p.args).toEqual(['rest', '-ttl', '9']);
    expect(flags.parse(['--spiffe_id=b', '-node=false', '--', '-x']).values.get('node')).toBe(false);
    expect(flags.parse(['-h']).help).toBe(true);
  });

  it('refuses unknown flags, missing values and bad numbers with clear messages', () => {
    expect(() => flags.parse(['-nope'])).toThrow(new FlagError('flag provided but not defined: -nope'));
    expect(() => flags.parse(['-ttl'])).toThrow('flag needs an argument: -ttl');
    expect(() => flags.parse(['-ttl', '1.5'])).toThrow('invalid value "1.5" for flag -ttl: not a whole number');
    expect(() => flags.parse(['-node=maybe'])).toThrow('invalid boolean value "maybe" for flag -node');
  });

  it('formats aligned tables', () => {
    expect(formatTable(['a', 'long header'], [['xxxx', '1'], ['y', '22']])).toBe('A     LONG HEADER\nxxxx  1\ny     22\n');
  });
});
