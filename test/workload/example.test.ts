// The runnable example (examples/workload) as separate processes against the agent's real Workload
// API: the EU-only consumer serves an EU client and refuses a US one.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/attestor/unix.js';
import { IdentityCache, type CacheEntry } from '../../src/agent/cache.js';
import { WorkloadApiServer } from '../../src/agent/workloadapi/server.js';
import { freePort, waitForPort } from '../support/ports.js';
import { captureOutput, ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { makeDomain } from './fixtures.js';

const EXAMPLES = path.resolve(import.meta.dirname, '../../examples/workload');
const uid = process.getuid!();

function runClient(env: NodeJS.ProcessEnv): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', path.join(EXAMPLES, 'client.ts')], { env: { ...process.env, ...env }, timeout: 20_000 },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }));
  });
}

describe('examples/workload', () => {
  const tmp = tempDir('terroir-wlex-');
  const socket = path.join(tmp.dir, 'public', 'agent.sock');
  const procs = new ProcessGroup();
  let agent: WorkloadApiServer;
  let port: number;
  let consumerOutput: () => string = () => '';

  beforeAll(async () => {
    fs.mkdirSync(path.dirname(socket), { mode: 0o755 });
    const ex = makeDomain('example.org');
    const cache = new IdentityCache('example.org');
    cache.setBundles({ trustDomain: 'example.org', x509Authorities: [ex.caDer], jwks: Buffer.from(ex.bundle().toJSON()), sequence: 1 }, []);
    const entry = (id: string): CacheEntry => ({
      id, spiffeId: `spiffe://example.org/${id}`, selectors: [{ type: 'unix', value: `uid:${uid}` }], federatesWith: [], hint: '', jwtSvidTtl: 300,
    });
    cache.setEntries([entry('consumer'), entry('client-eu'), entry('client-us')]);
    const now = Date.now();
    const svid = (id: string, claims?: Record<string, unknown>) => {
      const s = ex.svid(`/${id}`, claims ? { claims } : {});
      return { spiffeId: s.id.toString(), chain: s.chain, key: s.pkcs8, notBefore: now - 10_000, notAfter: now + 3600_000 };
    };
    cache.putSvids(new Map([
      ['consumer', svid('consumer')],
      ['client-eu', svid('client-eu', { country: 'DE', region: 'EU', policy: 'eu-only' })],
      ['client-us', svid('client-us', { country: 'US', region: 'NA', policy: 'us-only' })],
    ]));
    agent = await WorkloadApiServer.start({
      socketPath: socket, cache, attestor: new UnixAttestor(), logger: pino({ level: 'silent' }),
      jwt: { fetchJwtSvid: () => Promise.reject(new Error('unused')), validateJwtSvid: () => Promise.reject(new Error('unused')) },
    });
    port = await freePort();
    const consumer = procs.start(process.execPath, ['--import', 'tsx', path.join(EXAMPLES, 'consumer.ts')], {
      env: { ...process.env, SPIFFE_ENDPOINT_SOCKET: `unix://${socket}`, PORT: String(port), SPIFFE_ID: 'spiffe://example.org/consumer' },
    });
    consumerOutput = captureOutput(consumer);
    await waitForPort(port, '127.0.0.1', 20_000);
  }, 30_000);

  afterAll(async () => {
    await procs.stopAll();
    await agent?.close();
    tmp.cleanup();
  });

  it('serves a client whose node is in the EU and refuses one in the US', async () => {
    const env = { SPIFFE_ENDPOINT_SOCKET: `unix://${socket}`, CONSUMER_URL: `https://127.0.0.1:${port}/`, CONSUMER_ID: 'spiffe://example.org/consumer' };
    const [eu, us] = await Promise.all([
      runClient({ ...env, SPIFFE_ID: 'spiffe://example.org/client-eu' }),
      runClient({ ...env, SPIFFE_ID: 'spiffe://example.org/client-us' }),
    ]);
    expect(eu, consumerOutput()).toMatchObject({ code: 0 });
    expect(JSON.parse(eu.out.replace(/^200 /, ''))).toEqual({ hello: 'spiffe://example.org/client-eu', country: 'DE', policy: 'eu-only' });
    expect(us.code).not.toBe(0);
    expect(us.out).toContain('refused');
    expect(consumerOutput()).toMatch(/client-us has region \\"NA\\", not one of EU/);
  }, 40_000);
});
