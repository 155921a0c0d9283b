// A node the server refuses: `terroir-agent run` as a real process against a real server that does not
// know its join token. The agent neither exits nor hammers: it backs off (capped, exponential), logs
// the server's reason each time, and `terroir-agent healthcheck` reports that reason with exit 1 —
// until the operator fixes the server side, when the next attempt attests and the agent is healthy.
import crypto from 'node:crypto';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { healthStatusPath, type AgentHealthStatus } from '../../src/agent/health-status.js';
import { parseServerConfig, startServer, type RunningServer } from '../../src/server/index.js';
import { Bundle, TrustDomain } from '../../src/spiffe/index.js';
import { freePort } from '../support/ports.js';
import { ProcessGroup, captureOutput, stopChild } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const TD = 'refusal.test';
const CLI = ['--import', 'tsx', path.resolve(import.meta.dirname, '../../src/cli/terroir-agent.ts')];

async function agentCli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [...CLI, ...args], { timeout: 20_000 });
    return { code: 0, out: stdout, err: stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : -1, out: x.stdout ?? '', err: x.stderr ?? '' };
  }
}

async function until<T>(fn: () => T | undefined | Promise<T | undefined>, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface LogLine { msg: string; time: number; err?: string; code?: string; attempt?: number; retryInMs?: number }

function refusals(out: string): LogLine[] {
  return out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as LogLine)
    .filter((l) => l.msg === 'the server refused node attestation; backing off');
}

describe('terroir-agent: a refused node backs off and says why', () => {
  const tmp = tempDir('terroir-agent-refusal-');
  const procs = new ProcessGroup();
  let server: RunningServer;

  beforeAll(async () => {
    server = await startServer(parseServerConfig({
      trustDomain: TD,
      dataDir: path.join(tmp.dir, 'server'),
      logLevel: 'silent',
      dataStore: { type: 'sqlite', path: path.join(tmp.dir, 'server', 'ds.sqlite3') },
      ca: { keyStore: 'memory', ttl: '1d', x509SvidTtl: '1h' },
      agentApi: { bindAddress: '127.0.0.1', port: await freePort(), watchIntervalMs: 100 },
      health: { enabled: false },
    }, tmp.dir, {}), { logger: pino({ level: 'silent' }) });
    fs.writeFileSync(path.join(tmp.dir, 'bundle.pem'), Bundle.parse(TrustDomain.parse(TD), server.ca.bundle().bundleJson).x509AuthoritiesPem());
    fs.chmodSync(tmp.dir, 0o755);
  });

  afterAll(async () => {
    await procs.stopAll(2000);
    await server?.stop();
    tmp.cleanup();
  });

  function startAgent(name: string, token: string): { proc: ReturnType<ProcessGroup['start']>; out: () => string; socket: string } {
    const socket = path.join(tmp.dir, `${name}-public`, 'api.sock');
    const cfg = path.join(tmp.dir, `${name}.yaml`);
    fs.writeFileSync(cfg, [
      'agent:',
      `  trustDomain: ${TD}`,
      '  serverAddress: 127.0.0.1',
      `  serverPort: ${server.agentApiPort}`,
      `  dataDir: ./${name}-data`,
      `  socketPath: ${socket}`,
      '  trustBundlePath: ./bundle.pem',
      '  syncIntervalMs: 1000',
      '  logLevel: info',
      '  nodeAttestor:',
      `    joinToken: { token: ${token} }`,
    ].join('\n'));
    const proc = procs.start(process.execPath, [...CLI, 'run', '-c', cfg]);
    return { proc, out: captureOutput(proc), socket };
  }

  it('refused: capped exponential backoff, the reason in every log line and in healthcheck; attests once the server accepts it', async () => {
    const token = crypto.randomBytes(16).toString('hex');
    const a = startAgent('a', token);
    const seen = await until(() => { const r = refusals(a.out()); return r.length >= 4 ? r : undefined; }, `four refusals (agent: ${a.out().slice(-2000)})`);
    // Each refusal names the server's reason and status, and the waits grow (each up to 10 % jitter below the doubling).
    for (const r of seen) {
      expect(r.code).toBe('PERMISSION_DENIED');
      expect(r.err).toMatch(/join token/i);
    }
    expect(seen.map((r) => r.attempt)).toEqual([1, 2, 3, 4]);
    const waits = seen.map((r) => r.retryInMs!);
    for (let i = 1; i < waits.length; i++) expect(waits[i]!).toBeGreaterThan(waits[i - 1]!);
    expect(waits[3]!).toBeGreaterThanOrEqual(0.9 * 4000);
    // Not hammering: the attempts are as far apart as the agent said they would be.
    for (let i = 1; i < seen.length; i++) expect(seen[i]!.time - seen[i - 1]!.time).toBeGreaterThanOrEqual(waits[i - 1]! - 50);
    // The process is alive, has no Workload API yet, and healthcheck says why.
    expect(a.proc.exitCode).toBeNull();
    expect(fs.existsSync(a.socket)).toBe(false);
    const hc = await agentCli(['healthcheck', '-socketPath', a.socket]);
    expect(hc.code).toBe(1);
    expect(hc.err).toMatch(/^Agent is unhealthy: node attestation refused \(\d+ failed attempts, last at .+; next attempt at .+\): PERMISSION_DENIED: .*join token/m);
    const status = JSON.parse(fs.readFileSync(healthStatusPath(a.socket), 'utf8')) as AgentHealthStatus;
    expect(status).toMatchObject({ pid: a.proc.pid, attestation: { state: 'failing', lastError: { kind: 'refused', code: 'PERMISSION_DENIED' } } });
    expect(status.attestation.failures).toBeGreaterThanOrEqual(4);

    // The operator creates the token: the next attempt is accepted, and the agent reports healthy.
    await server.store.createJoinToken({ token, expiresAt: new Date(Date.now() + 600_000) });
    await until(() => (a.out().includes('"msg":"node attested"') ? true : undefined), `the agent to attest (agent: ${a.out().slice(-2000)})`, 30_000);
    const ok = await until(async () => { const r = await agentCli(['healthcheck', '-socketPath', a.socket]); return r.code === 0 ? r : undefined; }, 'a healthy agent');
    expect(ok.out).toContain('Agent is healthy.');
    expect(JSON.parse(fs.readFileSync(healthStatusPath(a.socket), 'utf8'))).toMatchObject({ spiffeId: `spiffe://${TD}/agent/join_token/${token}`, attestation: { state: 'attested', failures: 0 } });
    await stopChild(a.proc, 5000);
    expect(a.proc.exitCode).toBe(0);
    expect(fs.existsSync(healthStatusPath(a.socket))).toBe(false);
  }, 60_000);

  it('SIGTERM while backing off ends the agent at once (exit 0), and its status file with it', async () => {
    const b = startAgent('b', crypto.randomBytes(16).toString('hex'));
    await until(() => (refusals(b.out()).length >= 3 ? true : undefined), `three refusals (agent: ${b.out().slice(-2000)})`);
    const t0 = Date.now();
    await stopChild(b.proc, 5000);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(b.proc.exitCode).toBe(0);
    expect(fs.existsSync(healthStatusPath(b.socket))).toBe(false);
    // A status file a killed agent left behind is not taken for the present.
    fs.mkdirSync(path.dirname(b.socket), { recursive: true });
    fs.writeFileSync(healthStatusPath(b.socket), JSON.stringify({ pid: 2 ** 22 + 12345, updatedAt: new Date().toISOString(), attestation: { state: 'failing', failures: 1 } }));
    const hc = await agentCli(['healthcheck', '-socketPath', b.socket, '-timeout', '1s']);
    expect(hc.code).toBe(1);
    expect(hc.err).toMatch(/is not running/);
  }, 40_000);
});
