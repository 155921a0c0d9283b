// The latency witness end to end: swtpm, the Keylime test verifier, gpsd with a Berlin fix, a real
// server and agent with the flag on; landmarks are the server itself (loopback) and a landmark
// process in a network namespace of its own, reaching the node through a user-space delay relay
// (the kernel has no netem). The node's GNSS says Berlin; where the landmarks put it decides.
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../../src/agent/agent.js';
import { NodeAttestationError } from '../../src/agent/node-attestor.js';
import type { RunningServer } from '../../src/server/index.js';
import { SvidIssuer } from '../../src/server/ca/issuer.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { unifiedIdentityFromCertificate } from '../../src/spiffe/unified-identity.js';
import { specClient, X509Stream } from '../keylime-e2e/fixture.js';
import { startDelayRelay, type DelayRelay } from '../support/delay-relay.js';
import { createNetNs, type NetNs } from '../support/netns.js';
import { freePort } from '../support/ports.js';
import { startAgent, startUnifiedDeployment, TD, type UnifiedDeployment } from '../unified-identity/fixture.js';
import { BERLIN } from '../unified-identity/nmea.js';

const SERVER_ID = `spiffe://${TD}/spire/server`;
const REMOTE_ID = `spiffe://${TD}/landmark/potsdam`;
const POTSDAM = { lat: 52.3906, lon: 13.0645 };
const MADRID = { lat: 40.4168, lon: -3.7038 };
const EXTRA_POLICIES = `
  eu-latency:
    area: { regions: [EU] }
    minAssurance: latency-bounded
    maxReadingAgeS: 300
`;

let d: UnifiedDeployment;
const agents: Agent[] = [];

beforeAll(async () => {
  d = await startUnifiedDeployment();
}, 60_000);

afterAll(async () => {
  for (const a of agents) await a.stop();
  await d?.stop();
});

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function agentWithProbe(server: RunningServer, name: string, port: number, landmarks: string[], advertise?: string): Promise<Agent> {
  const a = await startAgent(d, server, true, name, false, {
    latencyProbe: { bindAddress: '127.0.0.1', port, landmarks, ...(advertise ? { advertiseAddress: advertise } : {}) },
  });
  agents.push(a);
  return a;
}

async function stopAgent(a: Agent): Promise<void> {
  await a.stop();
  agents.splice(agents.indexOf(a), 1);
}

describe('latency witness: the server as its own landmark', () => {
  it('a node next to the landmark (Berlin, loopback) is latency-bounded; an entry needing it gets an SVID whose claims show the witness', async () => {
    const server = await d.startServer({
      flag: true, keylime: true, extraPolicies: EXTRA_POLICIES,
      latency: { landmarks: [{ id: SERVER_ID, ...BERLIN }], rounds: 30 },
    });
    const agent = await agentWithProbe(server, 'lt-berlin', await freePort(), [SERVER_ID]);
    const id = agent.spiffeId as string;
    // Attestation answers first (self-reported); the landmark round then upgrades the claims.
    const claims = await until('latency-bounded claims', async () => {
      const c = (await server.store.getNode(id))?.claims;
      return c?.['assurance'] === 'latency-bounded' ? c : undefined;
    });
    expect(claims['witnesses']).toEqual(expect.arrayContaining(['latency', 'node:gnss']));
    expect(claims['country']).toBe('DE');
    expect(claims['satisfiedPolicies']).toEqual(expect.arrayContaining(['eu-only', 'eu-latency']));
    const latency = claims['latency'] as { landmark: string; radiusKm: number; strength: string }[];
    expect(latency).toHaveLength(1);
    expect(latency[0]).toMatchObject({ landmark: SERVER_ID, strength: 'agent-key' });
    // Loopback, TLS and a signature per round: a few tens of kilometres at most on a loaded machine.
    expect(latency[0]!.radiusKm).toBeGreaterThan(0);
    expect(latency[0]!.radiusKm).toBeLessThan(300);

    const uid = process.getuid!();
    const spiffeId = `spiffe://${TD}/workload/latency-app`;
    const [r] = await server.store.createEntries([{ spiffeId, parentId: id, selectors: [{ type: 'unix', value: `uid:${uid}` }], federatesWith: [], locationPolicy: 'eu-latency' }]);
    expect(r?.ok).toBe(true);
    const client = specClient(agent.socketPath);
    const stream = new X509Stream(client);
    const msg = await stream.waitFor((m) => m.svids.some((s) => s.spiffe_id === spiffeId)).finally(() => { stream.close(); client.close(); });
    const svid = msg.svids.find((s) => s.spiffe_id === spiffeId)!;
    const certClaims = unifiedIdentityFromCertificate(new crypto.X509Certificate(svid.x509_svid.subarray(0, svid.x509_svid.readUInt16BE(2) + 4)).raw);
    expect(certClaims).toMatchObject({ assurance: 'latency-bounded', country: 'DE' });
    expect(certClaims?.['latency']).toEqual(latency);
    await stopAgent(agent);
  }, 60_000);

  it('tpm strength: each challenge answered by a quote of the AK the node attested with', async () => {
    const server = await d.startServer({
      flag: true, keylime: true, extraPolicies: EXTRA_POLICIES,
      latency: { landmarks: [{ id: SERVER_ID, ...BERLIN }], rounds: 5, strength: 'tpm' },
    });
    const agent = await agentWithProbe(server, 'lt-tpm', await freePort(), [SERVER_ID]);
    // Where the disk lands depends on swtpm's speed (a few hundred km: near the Baltic it may not place
    // the node); what is checked here is that the round was a tpm round the server accepted.
    const disks = await until('a tpm latency round', async () => {
      const got = server.unifiedIdentity?.latencyDisks(agent.spiffeId as string);
      return got && got.length > 0 ? got : undefined;
    });
    expect(disks).toEqual([expect.objectContaining({ landmark: SERVER_ID, strength: 'tpm' })]);
    expect(disks[0]!.rttS).toBeGreaterThan(0);
    await stopAgent(agent);
  }, 60_000);

  it('a lying node: GNSS says Berlin, the landmark in Madrid answers in microseconds: claims withdrawn, attestation refused', async () => {
    const server = await d.startServer({
      flag: true, keylime: true, extraPolicies: EXTRA_POLICIES,
      latency: { landmarks: [{ id: SERVER_ID, ...MADRID }], rounds: 5 },
    });
    const port = await freePort();
    const agent = await agentWithProbe(server, 'lt-madrid', port, [SERVER_ID]);
    const id = agent.spiffeId as string;
    // The round puts the node within a few km of Madrid, which its Berlin fix contradicts.
    await until('withdrawn claims', async () => ((await server.store.getNode(id))?.claims === undefined ? true : undefined));
    await stopAgent(agent);
    // The landmarks' disks stay on record while fresh: attesting again with the same fix is refused.
    const err = await d.attest(server, d.provider(d.berlin), { latencyProbeEndpoint: { host: '127.0.0.1', port } }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(NodeAttestationError);
    expect((err as Error).message).toMatch(/landmark|speed of light|latency/i);
  }, 60_000);
});

describe('latency witness: a landmark process on a host of its own (network namespace)', () => {
  let ns: NetNs | undefined;
  let landmark: ChildProcess | undefined;
  let relay: DelayRelay | undefined;

  afterAll(async () => {
    await relay?.close();
    if (landmark && landmark.exitCode === null) {
      landmark.kill('SIGTERM');
      await new Promise((r) => landmark!.once('exit', r));
    }
    ns?.remove();
  });

  it('through the delay relay: 1 ms each way leaves a disk that reaches the Baltic (no witness); without it the remote landmark places the node', async () => {
    ns = createNetNs('trlm');
    const server = await d.startServer({
      flag: true, keylime: true, extraPolicies: EXTRA_POLICIES,
      latency: { landmarks: [{ id: REMOTE_ID, ...POTSDAM, url: `https://${ns.nsIp}:8443` }], rounds: 30, attempts: 6 },
    });
    // The landmark's SVID, minted by the server's CA (as an agent's Workload API would hand it over).
    const dir = fs.mkdtempSync(path.join(d.dir, 'landmark-'));
    const keys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const issued = new SvidIssuer({ ca: server.ca, maxTtlSeconds: 3600 }).mintX509(SpiffeId.parse(REMOTE_ID), keys.publicKey, 3600);
    fs.writeFileSync(path.join(dir, 'svid.pem'), issued.certChain.map((c) => new crypto.X509Certificate(c).toString()).join(''));
    fs.writeFileSync(path.join(dir, 'svid.key'), keys.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    fs.writeFileSync(path.join(dir, 'bundle.pem'), server.ca.x509Roots().map((c) => new crypto.X509Certificate(c).toString()).join(''));
    fs.writeFileSync(path.join(dir, 'landmark.yaml'), [
      `id: ${REMOTE_ID}`,
      `listen: { address: ${ns.nsIp}, port: 8443 }`,
      `svid: { certFile: ${dir}/svid.pem, keyFile: ${dir}/svid.key, bundleFile: ${dir}/bundle.pem }`,
      'logLevel: warn',
    ].join('\n'));
    const cli = path.resolve('src/cli/terroir-server.ts');
    let stderr = '';
    landmark = spawn('ip', ['netns', 'exec', ns.name, process.execPath, '--import', 'tsx', cli, 'landmark', 'run', '-c', path.join(dir, 'landmark.yaml')], { stdio: ['ignore', 'ignore', 'pipe'] });
    landmark.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });

    // The node's endpoint on loopback; landmarks reach it only through the relay on the veth address.
    const port = await freePort();
    relay = await startDelayRelay({ listenHost: ns.hostIp, listenPort: port, targetHost: '127.0.0.1', targetPort: port, delayMs: 1 });
    const slow = await agentWithProbe(server, 'lt-far', port, [REMOTE_ID], ns.hostIp);
    const id = slow.spiffeId as string;
    // 1 ms each way (plus the real path) is ≥ 300 km around Potsdam: it reaches the Baltic, outside
    // every country, so it places the node nowhere: the claims stay as the node's sensors made them.
    const outcome = await until('the audit of the slow round', async () => {
      const c = (await server.store.getNode(id))?.claims;
      if (relay!.connections() > 0 && c !== undefined && c['assurance'] === 'self-reported') {
        // Give the round time to land; a later upgrade would fail the assertion below.
        await new Promise((r) => setTimeout(r, 1500));
        return (await server.store.getNode(id))?.claims;
      }
      return undefined;
    }, 30_000).catch((e: unknown) => { throw new Error(`${(e as Error).message}; landmark stderr: ${stderr}`); });
    expect(outcome['assurance']).toBe('self-reported');
    expect(outcome['witnesses']).toEqual(['node:gnss']);
    expect(outcome['satisfiedPolicies']).not.toContain('eu-latency');
    await stopAgent(slow);

    await relay.close();
    relay = await startDelayRelay({ listenHost: ns.hostIp, listenPort: port, targetHost: '127.0.0.1', targetPort: port, delayMs: 0 });
    const near = await agentWithProbe(server, 'lt-near', port, [REMOTE_ID], ns.hostIp);
    // Without the delay the disk (a few tens of km around Potsdam, wide margins on a loaded machine:
    // it must hold Berlin's fix and stay off the Baltic) places the node inside the EU.
    const claims = await until('the remote landmark as a witness', async () => {
      const c = (await server.store.getNode(near.spiffeId as string))?.claims;
      return Array.isArray(c?.['witnesses']) && (c['witnesses'] as string[]).includes('latency') ? c : undefined;
    }, 30_000);
    expect(claims['latency']).toEqual([expect.objectContaining({ landmark: REMOTE_ID, strength: 'agent-key' })]);
    await stopAgent(near);
  }, 90_000);
});
