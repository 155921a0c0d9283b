// The compose services' scripts, run natively with the same steps, Unified Identity off (the bring-up
// is stack-fixture.ts, shared with stack-unified.test.ts): swtpm, terroir-server (SQLite), registration
// and bootstrap bundle, terroir-agent attesting with the TPM, the two demo workloads doing mutual TLS
// as their own users, and gpsd fed by terroir's NMEA source. Each process is stopped by its PID.
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort, waitForPort } from '../support/ports.js';
import { stopChild } from '../support/proc.js';
import { CLIENT_UID, CONSUMER_UID, DEPLOY, ROOT, startStack, type Stack } from './stack-fixture.js';

const run = promisify(execFile);
let s: Stack;

beforeAll(async () => {
  s = await startStack({ unified: false });
}, 150_000);

afterAll(async () => {
  await s?.stop();
}, 30_000);

describe('the deployment scripts, natively, Unified Identity off', () => {
  it('register.sh wrote the bootstrap bundle and the entries, and is idempotent', async () => {
    const bundle = fs.readFileSync(path.join(s.dir, 'bootstrap', 'bootstrap-bundle.pem'), 'utf8');
    expect(bundle).toContain('-----BEGIN CERTIFICATE-----');
    const again = await run('bash', [path.join(DEPLOY, 'register.sh')], { env: s.serverEnv() });
    expect(again.stdout).toContain('register: spiffe://deploy.test/nodes/swtpm exists');
    expect(again.stdout).toContain('register: spiffe://deploy.test/workload/client exists');
  });

  it('the server answers its healthchecks (admin socket and /ready) and runs as a plain SPIFFE issuer', async () => {
    const res = await fetch(`http://127.0.0.1:${s.ports.health}/ready`);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ready: true, featureFlags: { UNIFIED_IDENTITY_ENABLED: { value: false } } });
    // The compose healthcheck's command: `terroir-server healthcheck` on the admin socket.
    const hc = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli/terroir-server.ts'), 'healthcheck', '-socketPath', path.join(s.dir, 'server', 'admin', 'api.sock')]);
    expect(hc.status, hc.stderr.toString()).toBe(0);
    const yaml = fs.readFileSync(path.join(s.dir, 'server', 'server.yaml'), 'utf8');
    expect(yaml).toContain('tpm: { enabled: true, manufacturerCaFiles:');
    // Flag off: no Keylime, no location policies written.
    expect(yaml).not.toMatch(/^(keylime|unifiedIdentity):/m);
    expect(fs.readFileSync(path.join(s.dir, 'agent', 'agent.yaml'), 'utf8')).not.toContain('unifiedIdentity');
  });

  it('the agent attested with the swtpm\'s EK chain and answers its healthcheck', async () => {
    expect(s.log('agent')).toMatch(/"spiffeId":"spiffe:\/\/deploy\.test\/agent\/tpm\/[0-9a-f]{64}"/);
    const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli/terroir-agent.ts'), 'healthcheck', '-socketPath', s.agentSocket]);
    expect(r.status, r.stderr.toString()).toBe(0);
  });

  it('the client workload gets its SVID and calls the consumer over mutual TLS; both check the peer\'s SPIFFE ID', async () => {
    const r = s.callOnce(CLIENT_UID, s.ports.consumer);
    expect(r.status, r.stderr.toString()).toBe(0);
    expect(JSON.parse(r.stdout.toString().trim())).toEqual({
      from: 'spiffe://deploy.test/workload/consumer', to: 'spiffe://deploy.test/workload/client',
      unifiedIdentity: 'not checked: UNIFIED_IDENTITY_ENABLED is off',
    });
    // The consumer logs after answering: wait for its line rather than race it.
    await s.until('the consumer did not log the call', () => s.log('consumer').includes('served spiffe://deploy.test/workload/client'), 5_000);
  }, 70_000);

  it('the consumer refuses a caller with another SPIFFE ID (the consumer\'s own user calling as a client), saying why', async () => {
    const r = s.callOnce(CONSUMER_UID, s.ports.consumer);
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toContain('the consumer refused us');
    expect(r.stderr.toString()).toContain('peer spiffe://deploy.test/workload/consumer is not spiffe://deploy.test/workload/client');
    await s.until('the consumer did not log the refusal', () => s.log('consumer').includes('refused spiffe://deploy.test/workload/consumer: peer spiffe://deploy.test/workload/consumer is not spiffe://deploy.test/workload/client'), 5_000);
  }, 70_000);

  it('a consumer that requires Unified Identity claims refuses the plain SVIDs of this deployment', async () => {
    const port = await freePort();
    await s.startConsumer('strict-consumer', port, { UNIFIED_IDENTITY_ENABLED: 'true', CONSUMER_REQUIRE_REGION: 'EU' });
    const r = s.callOnce(CLIENT_UID, port);
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toContain('peer spiffe://deploy.test/workload/client carries no Unified Identity claims');
  }, 70_000);

  it('a user with no registration entry gets no SVID, and is told why', async () => {
    const r = s.callOnce(65534, s.ports.consumer, { SVID_FETCH_TIMEOUT_S: '3' });
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toMatch(/no X\.509-SVID from the agent within 3 s: .*(PermissionDenied|PERMISSION_DENIED|withdrew|no identity)/i);
  }, 40_000);

  it('gpsd.sh: gpsd fed by terroir\'s own NMEA source (no gpsfake), fixes stamped with the current time and staying current; the compose health check passes; listening on all addresses with GPSD_LISTEN_ALL=1 (for agents on other hosts)', async () => {
    const gpsdPort = s.ports.gpsd;
    const child = s.start('gpsd', 'bash', [path.join(DEPLOY, 'gpsd.sh')], s.env({
      GPSD_PORT: String(gpsdPort), GPSD_LISTEN_ALL: '1', GPS_STEP_S: '0.2', GPS_LAT: '-33.8688', GPS_LON: '151.2093',
    }));
    /** The first current fix gpsd reports, through the compose service's health check (deploy/gps/healthcheck.mjs). */
    const fix = (): { lat?: number; lon?: number; time?: string } | undefined => {
      const r = spawnSync(process.execPath, [path.join(DEPLOY, 'gps', 'healthcheck.mjs'), '127.0.0.1', String(gpsdPort)], { timeout: 10_000 });
      return r.status === 0 ? JSON.parse(r.stdout.toString()) as { lat?: number; lon?: number; time?: string } : undefined;
    };
    /** gpsd.sh's children: the real gpsd and the NMEA source, and nothing else (no gpsfake). */
    const children = (): string[] => spawnSync('ps', ['-o', 'args=', '--ppid', String(child.pid)]).stdout.toString()
      .split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('sleep'));
    try {
      await waitForPort(gpsdPort, '127.0.0.1', 15_000);
      const procs = children();
      expect(procs.some((p) => /\bgpsd -N -n -S \d+ -G tcp:\/\/127\.0\.0\.1:\d+$/.test(p)), procs.join('\n')).toBe(true);
      expect(procs.some((p) => p.includes('live-nmea.mjs serve -33.8688 151.2093 0.2')), procs.join('\n')).toBe(true);
      expect(procs.filter((p) => /gpsfake|python/.test(p))).toEqual([]);
      // /proc/net/tcp: local address 00000000:<port hex>, state 0A (LISTEN).
      const wildcard = `00000000:${gpsdPort.toString(16).toUpperCase().padStart(4, '0')}`;
      const listening = fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').map((l) => l.trim().split(/\s+/));
      expect(listening.some((f) => f[1] === wildcard && f[3] === '0A'), `no listener on 0.0.0.0:${gpsdPort}`).toBe(true);
      let first: ReturnType<typeof fix>;
      await s.until('no current fix from gpsd', () => (first = fix()) !== undefined, 15_000);
      expect(first?.lat).toBeCloseTo(-33.8688, 4);
      expect(first?.lon).toBeCloseTo(151.2093, 4);
      // Live: the fix's time is the wall clock's.
      expect(Math.abs(Date.now() - Date.parse(first?.time ?? ''))).toBeLessThan(5_000);
      // And stays so: no log to play out, nothing restarts.
      await new Promise((r) => setTimeout(r, 2500));
      const later = fix();
      expect(later, s.log('gpsd')).toBeDefined();
      expect(Date.parse(later?.time ?? '')).toBeGreaterThan(Date.parse(first?.time ?? '') + 2000);
      expect(Math.abs(Date.now() - Date.parse(later?.time ?? ''))).toBeLessThan(5_000);
      expect(children()).toEqual(procs);
    } finally {
      await stopChild(child);
    }
    // Stopped by its PID, gpsd.sh stops gpsd and the source: nothing listens any more.
    await s.until('gpsd still listens after gpsd.sh stopped', () => !fs.readFileSync('/proc/net/tcp', 'utf8').includes(`:${gpsdPort.toString(16).toUpperCase().padStart(4, '0')} 00000000:0000 0A`), 5_000);
    // The health check fails, saying why, when no gpsd answers.
    const down = spawnSync(process.execPath, [path.join(DEPLOY, 'gps', 'healthcheck.mjs'), '127.0.0.1', String(gpsdPort)], { timeout: 10_000 });
    expect(down.status).toBe(1);
    expect(down.stderr.toString()).toContain(`gpsd healthcheck: gpsd at 127.0.0.1:${gpsdPort}`);
  }, 40_000);
});
