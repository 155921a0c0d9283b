// The README's main command, scripts/demo.sh, run as a newcomer would (minus setup.sh and the build,
// which CI has just done: DEMO_SKIP_SETUP=1, sources through tsx): flag off it shows a plain SVID;
// flag on it starts gpsd and the clearly labelled Keylime stand-in and shows the SVID's claims. Either
// way it stops every process it started and removes its directory.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectNoCoordinates } from '../support/coordinates.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

interface Run { code: number | null; out: string; err: string }

function demo(env: Record<string, string>, timeoutMs = 90_000): Promise<Run> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(TERROIR_|SPIFFE_|UNIFIED_IDENTITY|KEEP$)/.test(k)));
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [path.join(ROOT, 'scripts/demo.sh')], {
      cwd: ROOT, env: { ...base, DEMO_SKIP_SETUP: '1', TERROIR_FROM_SOURCE: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => { out += b.toString(); });
    child.stderr.on('data', (b: Buffer) => { err += b.toString(); });
    const timer = setTimeout(() => { child.kill('SIGTERM'); reject(new Error(`demo did not finish in ${timeoutMs} ms:\n${out}\n${err}`)); }, timeoutMs);
    child.once('exit', (code) => { clearTimeout(timer); resolve({ code, out, err }); });
  });
}

/** Running, that is: not gone and not a zombie waiting for init to reap it (swtpm's parent exits before it). */
function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Every PID the demo printed, and its working directory: all must be gone once it exits. */
function expectCleanedUp(out: string): void {
  const pids = [...out.matchAll(/(?:^PID=|server pid |gpsd pid )(\d+)/gm)].map((m) => Number(m[1]));
  expect(pids.length).toBeGreaterThanOrEqual(2);
  for (const pid of pids) expect(alive(pid), `pid ${pid} still runs`).toBe(false);
  const dir = /Writing SVIDs, keys and bundles to (\/tmp\/terroir-demo\.[^/\s]+)\/svid/.exec(out)?.[1];
  expect(dir).toBeDefined();
  expect(fs.existsSync(dir!)).toBe(false);
}

describe('npm run demo (scripts/demo.sh)', () => {
  it('flag off: the node attests with the swtpm and the workload shows a plain SVID and a JWT-SVID', async () => {
    const r = await demo({});
    expect(r.code, r.err + r.out).toBe(0);
    expect(r.out).toContain('SPIFFE ID:\t\tspiffe://demo.terroir/workload/demo');
    expect(r.out).toMatch(/svid\.0\.pem: OK/);
    expect(r.out).toMatch(/Unified Identity:\tnone \(a plain SVID/);
    expect(r.out).toContain('SVID is valid.');
    // The SVID leads to its evidence, and the log checks out offline.
    expect(r.out).toMatch(/^audit public key: demo\.terroir\/terroir\/evidence\+[0-9a-f]{8}\+/m);
    expect(r.out).toMatch(/^OK: demo\.terroir\/terroir\/evidence — \d+ records \(1 accepted and 0 refused attestations/m);
    expect(r.out).toMatch(/^"terroir_evidence":\{"log":"demo\.terroir\/terroir\/evidence","index":\d+\}$/m);
    expect(r.out).not.toContain('DEVELOPMENT STAND-IN');
    expectCleanedUp(r.out);
  }, 120_000);

  it('flag on: gpsd, the labelled Keylime stand-in and a landmark in Paris; the SVID carries the node\'s claims (FR, EU, policy eu, latency-bounded)', async () => {
    const r = await demo({ UNIFIED_IDENTITY_ENABLED: 'true' });
    expect(r.code, r.err + r.out).toBe(0);
    expect(r.out).toContain('Keylime verifier: DEVELOPMENT STAND-IN');
    const line = /^Unified Identity:\t(\{.*\})$/m.exec(r.out)?.[1];
    expect(line, r.out).toBeDefined();
    const claims = JSON.parse(line!) as Record<string, unknown>;
    expect(claims).toMatchObject({
      country: 'FR', region: 'EU', policy: 'eu', sensorKinds: ['gnss'], verifier: 'keylime-development-stand-in',
      // The server, a landmark declared in Paris, timed the node on loopback: the witness and its radius.
      assurance: 'latency-bounded', latency: [{ landmark: 'spiffe://demo.terroir/spire/server', strength: 'agent-key', radiusKm: expect.any(Number) }],
    });
    expect(claims['witnesses']).toEqual(['latency', 'node:gnss']);
    expect(claims['satisfiedPolicies']).toContain('eu-latency');
    expectNoCoordinates(claims, { lat: 48.8566, lon: 2.3522 });
    // openssl, independently, sees the extension; the JWT-SVID carries the same claims.
    expect(r.out).toMatch(/2\.25\.250341728606082657925786220697128205103:/);
    expect(r.out).toContain('"unified_identity":{');
    expect(r.out).toContain('the DEVELOPMENT STAND-IN Keylime verifier (not Keylime) accepted its quote');
    // With the flag on the auditor also re-verifies the quote and recomputes the location decision.
    expect(r.out).toMatch(/^OK: demo\.terroir\/terroir\/evidence — \d+ records \(\d+ accepted and 0 refused attestations.*; [1-9]\d* attestations? re-verified/m);
    expectCleanedUp(r.out);
  }, 120_000);

  it('with NODE_ENV=production the server refuses the stand-in: the demo stops with the reason and cleans up', async () => {
    const r = await demo({ UNIFIED_IDENTITY_ENABLED: 'true', NODE_ENV: 'production' });
    expect(r.code).toBe(1);
    expect(r.err).toContain('demo: terroir-server exited; its log:');
    expect(r.err).toContain('keylime.allowDevelopmentStandIn is true but NODE_ENV=production');
    const pids = [...r.out.matchAll(/(?:^PID=|gpsd pid )(\d+)/gm)].map((m) => Number(m[1]));
    expect(pids.length).toBe(2);
    for (const pid of pids) expect(alive(pid), `pid ${pid} still runs`).toBe(false);
  }, 60_000);

  it('refuses an unclear flag value or a half-named Keylime verifier before starting anything', async () => {
    const bad = await demo({ UNIFIED_IDENTITY_ENABLED: 'maybe' });
    expect(bad.code).toBe(2);
    expect(bad.err).toContain("UNIFIED_IDENTITY_ENABLED must be true or false, got 'maybe'");
    const half = await demo({ UNIFIED_IDENTITY_ENABLED: 'true', TERROIR_KEYLIME_URL: 'https://verifier.example:8881' });
    expect(half.code).toBe(2);
    expect(half.err).toContain('TERROIR_KEYLIME_URL needs TERROIR_KEYLIME_CA');
    const off = await demo({ TERROIR_KEYLIME_URL: 'https://verifier.example:8881' });
    expect(off.code).toBe(2);
    expect(off.err).toContain('UNIFIED_IDENTITY_ENABLED is off');
    for (const r of [bad, half, off]) expect(r.out).not.toContain('software TPM');
  }, 60_000);
});
