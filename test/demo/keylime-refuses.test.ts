// The flag-on demo pointed at a verifier that refuses every attestation request the way Keylime 7.14
// refused terroir's (HTTP 400, default.missing_param "tpm_ek"): the demo used to wait forever for the
// agent. It must end within 60 s, non-zero, printing the reason, and stop everything it started.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { createPki, startVerifier, type KeylimePki } from '../keylime/helpers/fixture.js';
import { tempDir } from '../support/tmp.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
let tmp: { dir: string; cleanup: () => void };
let pki: KeylimePki;
let verifier: TestKeylimeVerifier;

beforeAll(async () => {
  tmp = tempDir('terroir-demo-refused-');
  pki = await createPki(tmp.dir);
  verifier = await startVerifier(pki);
  // Posing as the real Keylime the user named (a stand-in would be refused for being one), answering
  // every POST /verify/evidence with Keylime's 400.
  verifier.announceStandIn = false;
  verifier.fault = { mode: 'bad-request' };
});

afterAll(async () => {
  await verifier?.close();
  tmp?.cleanup();
});

function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

describe('UNIFIED_IDENTITY_ENABLED=true npm run demo against a verifier that refuses every attestation', () => {
  it('exits non-zero within 60 s with Keylime\'s reason, and stops what it started', async () => {
    const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(TERROIR_|SPIFFE_|UNIFIED_IDENTITY|KEEP$|NODE_ENV$)/.test(k)));
    const t0 = Date.now();
    const r = await new Promise<{ code: number | null; out: string; err: string }>((resolve, reject) => {
      const child = spawn('bash', [path.join(ROOT, 'scripts/demo.sh')], {
        cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...base, DEMO_SKIP_SETUP: '1', TERROIR_FROM_SOURCE: '1', UNIFIED_IDENTITY_ENABLED: 'true',
          TERROIR_KEYLIME_URL: `https://localhost:${verifier.port}`, TERROIR_KEYLIME_CA: pki.files.serverCa,
          TERROIR_KEYLIME_CERT: pki.files.clientCert, TERROIR_KEYLIME_KEY: pki.files.clientKey,
        },
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
      child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
      // Past the 60 s the issue allows, stop it (by its PID) and fail with what it printed.
      const timer = setTimeout(() => { child.kill('SIGTERM'); reject(new Error(`the demo did not end within 60 s:\n${out}\n${err}`)); }, 60_000);
      child.once('exit', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
    });
    expect(Date.now() - t0).toBeLessThan(60_000);
    expect(r.code, r.out + r.err).toBe(1);
    expect(r.out).toContain(`Keylime verifier: https://localhost:${verifier.port} (yours`);
    // The reason, as the agent's healthcheck reports it: the server's status and Keylime's failure.
    expect(r.err).toContain('demo: the server refused this node\'s attestation');
    expect(r.err).toMatch(/Agent is unhealthy: node attestation refused .*FAILED_PRECONDITION: .*Keylime refused the request/);
    expect(r.err).toContain('default.missing_param');
    expect(r.err).toContain('missing parameter "tpm_ek"');
    expect(r.err).not.toMatch(/unreachable/i);
    // The verifier was asked, and answered its 400, before the demo gave up.
    expect(verifier.counters.requests).toBeGreaterThan(0);
    const pids = [...r.out.matchAll(/(?:^PID=|server pid |gpsd pid )(\d+)/gm)].map((m) => Number(m[1]));
    expect(pids.length).toBe(3);
    for (const pid of pids) expect(alive(pid), `pid ${pid} still runs`).toBe(false);
  }, 90_000);
});
