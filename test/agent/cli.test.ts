// The terroir-agent command line as an operator uses it: `run -c agent.yaml` as a real process
// attesting with a join token against a real server, then the `api` and `healthcheck` commands,
// with openssl as the independent check of what `api fetch x509 -write` wrote.
import crypto from 'node:crypto';
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseServerConfig, startServer, type RunningServer } from '../../src/server/index.js';
import { Bundle, TrustDomain } from '../../src/spiffe/index.js';
import { freePort } from '../support/ports.js';
import { ProcessGroup, captureOutput, stopChild } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const TD = 'cli.test';
const CLI = ['--import', 'tsx', path.resolve(import.meta.dirname, '../../src/cli/terroir-agent.ts')];

async function agentCli(args: string[], timeout = 20_000): Promise<{ code: number; out: string; err: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [...CLI, ...args], { timeout });
    return { code: 0, out: stdout, err: stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : -1, out: x.stdout ?? '', err: x.stderr ?? '' };
  }
}

async function until<T>(fn: () => Promise<T | undefined>, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

describe('terroir-agent CLI', () => {
  const tmp = tempDir('terroir-agent-cli-');
  const procs = new ProcessGroup();
  const socket = path.join(tmp.dir, 'public', 'api.sock');
  const token = crypto.randomBytes(16).toString('hex');
  let server: RunningServer;
  let agentOut: () => string;
  let agentProc: ReturnType<ProcessGroup['start']>;

  beforeAll(async () => {
    const config = parseServerConfig({
      trustDomain: TD,
      dataDir: path.join(tmp.dir, 'server'),
      logLevel: 'silent',
      dataStore: { type: 'sqlite', path: path.join(tmp.dir, 'server', 'ds.sqlite3') },
      // Short SVIDs so the agent renews its own SVID (RenewAgent) during the test.
      ca: { keyStore: 'disk', ttl: '1d', x509SvidTtl: '8s' },
      agentApi: { bindAddress: '127.0.0.1', port: await freePort(), watchIntervalMs: 100 },
      health: { enabled: false },
    }, tmp.dir, {});
    // tickMs: the server renews its own (equally short-lived) SVID on its housekeeping tick.
    server = await startServer(config, { logger: pino({ level: 'silent' }), tickMs: 500 });
    await server.store.createJoinToken({ token, expiresAt: new Date(Date.now() + 600_000) });
    // PEM, as `terroir-server bundle show` prints it (the e2e test uses SPIFFE bundle JSON).
    fs.writeFileSync(path.join(tmp.dir, 'bundle.pem'), Bundle.parse(TrustDomain.parse(TD), server.ca.bundle().bundleJson).x509AuthoritiesPem());
    fs.writeFileSync(path.join(tmp.dir, 'agent.yaml'), [
      'agent:',
      `  trustDomain: ${TD}`,
      '  serverAddress: 127.0.0.1',
      `  serverPort: ${server.agentApiPort}`,
      '  dataDir: ./agent-data',
      `  socketPath: ${socket}`,
      '  trustBundlePath: ./bundle.pem',
      '  syncIntervalMs: 1000',
      '  logLevel: info',
      '  nodeAttestor:',
      '    joinToken:',
      `      token: ${token}`,
    ].join('\n'));
    fs.chmodSync(tmp.dir, 0o755);
    agentProc = procs.start(process.execPath, [...CLI, 'run', '-c', path.join(tmp.dir, 'agent.yaml')]);
    agentOut = captureOutput(agentProc);
    await until(async () => (fs.existsSync(socket) ? true : undefined), `the agent socket (agent output: ${agentOut()})`);
    const [res] = await server.store.createEntries([{
      spiffeId: `spiffe://${TD}/cli-workload`, parentId: `spiffe://${TD}/agent/join_token/${token}`,
      selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }], federatesWith: [],
    }]);
    expect(res?.ok).toBe(true);
  });

  afterAll(async () => {
    await procs.stopAll(2000);
    await server?.stop();
    tmp.cleanup();
  });

  it('refuses an invalid config with the offending key named', () => {
    const bad = path.join(tmp.dir, 'bad.yaml');
    fs.writeFileSync(bad, 'agent:\n  trustDomain: Not_A_Domain\n  serverAddress: x\n  dataDir: d\n  nodeAttestor: {}\n');
    const r = spawnSync(process.execPath, [...CLI, 'run', '-c', bad]);
    expect(r.status).toBe(2);
    const err = r.stderr.toString();
    expect(err).toContain('trustDomain');
    expect(err).toContain('nodeAttestor');
  });

  it('healthcheck reports a running agent healthy, and a missing socket unhealthy', async () => {
    const ok = await agentCli(['healthcheck', '-socketPath', socket]);
    expect(ok.code).toBe(0);
    expect(ok.out).toContain('healthy');
    const bad = await agentCli(['healthcheck', '-socketPath', path.join(tmp.dir, 'nope.sock'), '-timeout', '1s']);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('unhealthy');
  });

  it('api fetch x509 -write writes svid.0.pem, svid.0.key (0600) and bundle.0.pem that openssl verifies', async () => {
    const out = path.join(tmp.dir, 'fetched');
    const r = await until(async () => {
      const x = await agentCli(['api', 'fetch', 'x509', '-socketPath', socket, '-write', out]);
      return x.code === 0 ? x : undefined;
    }, 'an X.509-SVID from the agent');
    expect(r.out).toContain(`spiffe://${TD}/cli-workload`);
    expect(r.out).toMatch(/Unified Identity:\tnone \(a plain SVID/);
    expect(fs.statSync(path.join(out, 'svid.0.key')).mode & 0o777).toBe(0o600);
    const verify = spawnSync('openssl', ['verify', '-CAfile', path.join(out, 'bundle.0.pem'), path.join(out, 'svid.0.pem')]);
    expect(verify.stdout.toString()).toContain(': OK');
    const cert = new crypto.X509Certificate(fs.readFileSync(path.join(out, 'svid.0.pem')));
    expect(cert.subjectAltName).toBe(`URI:spiffe://${TD}/cli-workload`);
    expect(cert.checkPrivateKey(crypto.createPrivateKey(fs.readFileSync(path.join(out, 'svid.0.key'))))).toBe(true);
  });

  it('api fetch jwt and api validate jwt', async () => {
    const f = await agentCli(['api', 'fetch', 'jwt', '-audience', 'payments', '-socketPath', socket]);
    expect(f.err).toBe('');
    expect(f.code).toBe(0);
    const tokenLine = f.out.split('\n')[1]?.trim() ?? '';
    expect(tokenLine.split('.')).toHaveLength(3);
    const v = await agentCli(['api', 'validate', 'jwt', '-audience', 'payments', '-svid', tokenLine, '-socketPath', socket]);
    expect(v.code).toBe(0);
    expect(v.out).toContain(`SPIFFE ID : spiffe://${TD}/cli-workload`);
    const wrong = await agentCli(['api', 'validate', 'jwt', '-audience', 'other', '-svid', tokenLine, '-socketPath', socket]);
    expect(wrong.code).toBe(1);
    expect(wrong.err).toContain('INVALID_ARGUMENT');
    const usage = await agentCli(['api', 'fetch', 'jwt', '-socketPath', socket]);
    expect(usage.code).toBe(2);
    expect(usage.err).toContain('-audience is required');
  });

  it('api watch prints updates as the SVID rotates; the agent renews its own SVID without re-attesting', async () => {
    const stateFile = path.join(tmp.dir, 'agent-data', 'agent-svid.json');
    const before = fs.readFileSync(stateFile, 'utf8');
    const w = procs.start(process.execPath, [...CLI, 'api', 'watch', '-socketPath', socket]);
    const out = captureOutput(w);
    // 8 s SVIDs rotate at about 3.6-4 s: two updates arrive on the one stream.
    await until(async () => (out().split('\n').filter((l) => l.includes('received 1 SVID')).length >= 2 ? true : undefined), `two watch updates (watch: ${out()}; agent: ${agentOut().slice(-3000)})`, 15_000);
    await stopChild(w, 1000);
    // The join-token node renewed through RenewAgent (its single-use token cannot attest again).
    await until(async () => (fs.readFileSync(stateFile, 'utf8') !== before ? true : undefined), 'the agent SVID to be renewed', 10_000);
    expect(agentOut()).toContain('agent SVID renewed');
    expect(agentOut().match(/"msg":"node attested"/g)).toHaveLength(1);
  });

  it('stops cleanly on SIGTERM and removes its socket', async () => {
    await stopChild(agentProc, 5000);
    expect(agentProc.exitCode).toBe(0);
    expect(fs.existsSync(socket)).toBe(false);
  });
});
