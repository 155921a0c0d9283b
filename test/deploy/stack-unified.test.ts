// The compose services' scripts, run natively with Unified Identity on (bring-up: stack-fixture.ts):
// certs-init.sh → the Keylime development stand-in on that PKI → swtpm.sh → gpsd.sh (a live fix in
// Paris) → server.sh (flag on, Keylime one-shot, deploy/location-policies.yaml) → register.sh →
// agent.sh (gpsd sensor) → the consumer, requiring region EU and policy eu, and the client, each as
// its own user. Negatives: consumers whose policy the client does not meet, and a second node whose
// gpsd puts it in New York. Every process is stopped by its PID.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unifiedIdentityFromCertificate } from '../../src/spiffe/unified-identity.js';
import { pemToDer } from '../../src/spiffe/pem.js';
import { freePort, freePortPair, waitForPort } from '../support/ports.js';
import { stopChild } from '../support/proc.js';
import { CLIENT_UID, DEPLOY, ROOT, startStack, type Stack } from './stack-fixture.js';
import { expectNoCoordinates } from '../support/coordinates.js';

let s: Stack;

beforeAll(async () => {
  s = await startStack({
    unified: true,
    consumerEnv: { CONSUMER_REQUIRE_REGION: 'EU', CONSUMER_REQUIRE_POLICY: 'eu', CONSUMER_ALLOW_DEV_STANDIN: 'true' },
  });
}, 150_000);

afterAll(async () => {
  await s?.stop();
}, 30_000);

describe('the deployment scripts, natively, Unified Identity on', () => {
  it('server.sh wrote the keylime and unifiedIdentity sections; agent.sh the gpsd sensor', async () => {
    const yaml = fs.readFileSync(path.join(s.dir, 'server', 'server.yaml'), 'utf8');
    expect(yaml).toMatch(/^keylime:\n {2}verifierUrl: "https:\/\/localhost:\d+"\n/m);
    expect(yaml).toContain('  mode: oneshot\n');
    expect(yaml).toContain('  allowDevelopmentStandIn: true');
    expect(yaml).toContain(`  locationPolicies: { file: "${path.join(DEPLOY, 'location-policies.yaml')}" }`);
    expect(yaml).toContain('  defaultPolicy: "eu"\n  pcrs: [0,7,15]\n  tpmPolicy: {"15": ["' + '0'.repeat(64) + '"]}');
    const res = await fetch(`http://127.0.0.1:${s.ports.health}/ready`);
    expect(await res.json()).toMatchObject({ ready: true, featureFlags: { UNIFIED_IDENTITY_ENABLED: { value: true, source: 'env' } } });
    expect(fs.readFileSync(path.join(s.dir, 'agent', 'agent.yaml'), 'utf8'))
      .toContain(`  unifiedIdentity:\n    sensors:\n      - { type: gpsd, id: gpsd, host: "127.0.0.1", port: ${s.ports.gpsd} }`);
  });

  it('the client\'s X.509-SVID carries the node\'s claims: FR, EU, policy eu, checked by the stand-in, no coordinates', () => {
    const dir = path.join(s.dir, 'client-svid');
    fs.mkdirSync(dir, { mode: 0o700 });
    fs.chownSync(dir, CLIENT_UID, CLIENT_UID);
    const r = spawnSync('setpriv', ['--reuid', String(CLIENT_UID), '--regid', String(CLIENT_UID), '--clear-groups',
      process.execPath, '--import', `file://${ROOT}/node_modules/tsx/dist/loader.mjs`, path.join(ROOT, 'src/cli/terroir-agent.ts'), 'api', 'fetch', 'x509', '-write', dir],
    { env: s.workloadEnv(), timeout: 30_000 });
    expect(r.status, r.stderr.toString()).toBe(0);
    const leaf = pemToDer(fs.readFileSync(path.join(dir, 'svid.0.pem'), 'utf8'))[0];
    expect(leaf).toBeDefined();
    const claims = unifiedIdentityFromCertificate(leaf as Buffer);
    expect(claims).toMatchObject({ country: 'FR', region: 'EU', policy: 'eu', sensorKinds: ['gnss'], verifier: 'keylime-development-stand-in' });
    expect(claims?.satisfiedPolicies).toEqual(expect.arrayContaining(['eu', 'fr']));
    expect(claims?.satisfiedPolicies).not.toContain('de');
    expectNoCoordinates(claims, { lat: 48.8566, lon: 2.3522 });
  });

  it('the consumer accepts the client over mutual TLS for its claims and answers with them', async () => {
    const r = s.callOnce(CLIENT_UID, s.ports.consumer);
    expect(r.status, r.stderr.toString()).toBe(0);
    const answer = JSON.parse(r.stdout.toString().trim()) as { from: string; to: string; unifiedIdentity: { checked: boolean; required: unknown; caller: Record<string, unknown> } };
    expect(answer.from).toBe('spiffe://deploy.test/workload/consumer');
    expect(answer.to).toBe('spiffe://deploy.test/workload/client');
    expect(answer.unifiedIdentity).toMatchObject({
      checked: true,
      required: { regions: ['EU'], policies: ['eu'], allowDevelopmentStandIn: true },
      caller: { country: 'FR', region: 'EU', policy: 'eu', sensorKinds: ['gnss'] },
    });
    await s.until('the consumer did not log the call', () => s.log('consumer').includes('served spiffe://deploy.test/workload/client (FR, EU, policy eu)'), 5_000);
  }, 70_000);

  it('consumers whose policy the client does not meet refuse it and say why (country DE; claims only the stand-in checked)', async () => {
    const [de, strict] = [await freePort(), await freePort()];
    await Promise.all([
      s.startConsumer('consumer-de', de, { CONSUMER_REQUIRE_REGION: '', CONSUMER_REQUIRE_POLICY: '', CONSUMER_REQUIRE_COUNTRY: 'DE' }),
      // Compose's consumer: no CONSUMER_ALLOW_DEV_STANDIN, so claims the test double vouched for do not count.
      s.startConsumer('consumer-real-keylime-only', strict, { CONSUMER_ALLOW_DEV_STANDIN: '' }),
    ]);
    const r = s.callOnce(CLIENT_UID, de);
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toContain('the consumer refused us');
    expect(r.stderr.toString()).toContain('peer spiffe://deploy.test/workload/client has country \\"FR\\", not one of DE');
    await s.until('consumer-de did not log the refusal', () => s.log('consumer-de').includes('refused spiffe://deploy.test/workload/client: peer spiffe://deploy.test/workload/client has country "FR", not one of DE'), 5_000);
    const k = s.callOnce(CLIENT_UID, strict);
    expect(k.status).toBe(1);
    expect(k.stderr.toString()).toContain('claims were checked only by terroir\'s development Keylime stand-in, not by Keylime');
  }, 90_000);

  it('a node whose gpsd puts it in New York gets no SVID: the server refuses its attestation with the policy\'s reason', async () => {
    const tpmPort = await freePortPair();
    const gpsdPort = await freePort();
    const W = s.dir;
    s.start('swtpm-ny', 'bash', [path.join(DEPLOY, 'swtpm.sh')], s.env({
      // The same manufacturer CA as the first node: its EK is trusted, only its place is wrong.
      SWTPM_STATE_DIR: path.join(W, 'swtpm-ny', 'state'), SWTPM_CA_DIR: path.join(W, 'swtpm', 'ca'),
      SWTPM_PORT: String(tpmPort), SWTPM_BIND: '127.0.0.1',
    }));
    const gpsd = s.start('gpsd-ny', 'bash', [path.join(DEPLOY, 'gpsd.sh')], s.env({ GPSD_PORT: String(gpsdPort), GPSD_LISTEN_ALL: '0', GPS_LAT: '40.7128', GPS_LON: '-74.006' }));
    await Promise.all([waitForPort(tpmPort, '127.0.0.1', 30_000), waitForPort(gpsdPort, '127.0.0.1', 15_000)]);
    const agent = s.start('agent-ny', 'bash', [path.join(DEPLOY, 'agent.sh')], s.env({
      TERROIR_AGENT_SERVER_ADDRESS: '127.0.0.1', TERROIR_AGENT_SERVER_PORT: String(s.ports.agentApi),
      TERROIR_AGENT_DATA_DIR: path.join(W, 'agent-ny'), TERROIR_AGENT_SOCKET_DIR: path.join(W, 'run-ny'),
      TERROIR_BOOTSTRAP_BUNDLE: path.join(W, 'bootstrap', 'bootstrap-bundle.pem'),
      TERROIR_TPM_TCTI: `swtpm:host=127.0.0.1,port=${tpmPort}`,
      TERROIR_GPSD_HOST: '127.0.0.1', TERROIR_GPSD_PORT: String(gpsdPort),
    }));
    try {
      await s.until('the New York node was not refused', () => s.log('agent-ny').includes('node attestation refused: location policy eu denied: gnss sensor gpsd: position is outside the allowed area (in US)'), 45_000);
      expect(s.log('agent-ny')).not.toContain('"msg":"node attested"');
      // The refusal is audited with the policy's reason (precise readings go only to the success records).
      expect(s.log('server')).toMatch(/"action":"attest_agent","caller":"127\.0\.0\.1","subject":"ek_hash:[0-9a-f]{64}","result":"denied","reason":"location policy eu denied: gnss sensor gpsd: position is outside the allowed area \(in US\)/);
    } finally {
      await stopChild(agent);
      await stopChild(gpsd);
      spawnSync('bash', [path.join(ROOT, 'swtpm', 'stop.sh'), path.join(W, 'swtpm-ny', 'state')]);
    }
  }, 90_000);
});
