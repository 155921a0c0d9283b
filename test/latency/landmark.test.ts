// The landmark process and the latency settings: its API serves only the server (mTLS), bounds what a
// caller can make it do, reports probe failures by name; the configs refuse what would make the
// witness unsound or silently inert.
import crypto from 'node:crypto';
import https from 'node:https';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAgentConfig } from '../../src/agent/config.js';
import { LandmarkClient, startProbeResponder, verifyMeasurement, type ProbeResponder } from '../../src/latency/index.js';
import { LandmarkConfigError, parseLandmarkConfig, startLandmark, type Landmark } from '../../src/landmark/landmark.js';
import { UnifiedIdentityPipeline } from '../../src/server/attestation/unified.js';
import { parseServerConfig } from '../../src/server/config.js';
import type { TrustDomain } from '../../src/spiffe/id.js';
import { authorizeId, authorizeOneOf } from '../../src/workload/authorizer.js';
import { SpiffeHttpsAgent } from '../../src/workload/https.js';
import type { X509SourceLike } from '../../src/workload/source.js';
import { makeDomain, type TestSvid } from '../workload/fixtures.js';

const td = makeDomain('landmark.test');
function sourceOf(svid: TestSvid): X509SourceLike {
  const s = { id: svid.id, certificatesDer: svid.chain, privateKey: svid.key, expiresAt: new Date(Date.now() + 3600_000) };
  const bundles = [td.bundle()];
  return {
    getX509Svid: () => s, getX509Bundles: () => bundles,
    getX509BundleForTrustDomain: (t: TrustDomain) => (t.equals(td.td) ? bundles[0] : undefined),
    onUpdate: () => () => undefined,
  };
}
const LM = 'spiffe://landmark.test/landmark/paris';
const serverSource = sourceOf(td.svid('/spire/server'));
const nodeSvid = td.svid('/agent/tpm/n1');
const NODE = nodeSvid.id.toString();
const cfgText = (extra = ''): string => `id: ${LM}\nlisten: { address: 127.0.0.1, port: 0 }\nsvid: { workloadApiSocket: /nonexistent }\nlogLevel: silent\n${extra}`;

describe('landmark API', () => {
  let landmark: Landmark;
  let node: ProbeResponder;
  beforeAll(async () => {
    node = await startProbeResponder({ source: sourceOf(nodeSvid), landmarks: authorizeOneOf([LM]), host: '127.0.0.1', port: 0 });
    landmark = await startLandmark(parseLandmarkConfig(cfgText('concurrency: 1\nqueue: 1\n')), { source: sourceOf(td.svid('/landmark/paris')), logger: pino({ level: 'silent' }) });
  });
  afterAll(async () => {
    await landmark?.stop();
    await node?.close();
  });

  const request = (over: Record<string, unknown> = {}): Record<string, unknown> => ({
    request: crypto.randomBytes(16).toString('hex'), node: NODE, host: '127.0.0.1', port: node.port, strength: 'agent-key', rounds: 5, ...over,
  });

  it('the server asks, the landmark probes and answers with a measurement the server can verify', async () => {
    const client = new LandmarkClient(serverSource);
    try {
      const body = request();
      const jws = await client.probe(`https://127.0.0.1:${landmark.port}`, LM, body as never, 5000);
      const m = await verifyMeasurement(jws, { bundles: serverSource, landmark: LM, node: NODE, request: body['request'] as string, strength: 'agent-key' });
      expect(m.rounds).toBe(5);
      expect(m.rttMinS).toBeGreaterThan(0);
    } finally {
      client.close();
    }
  });

  it('only the server may ask: another SVID of the trust domain is refused at the handshake', async () => {
    const client = new LandmarkClient(sourceOf(td.svid('/agent/tpm/curious')));
    try {
      await expect(client.probe(`https://127.0.0.1:${landmark.port}`, LM, request() as never, 3000)).rejects.toThrow(/cannot reach landmark|socket|reset|closed/i);
    } finally {
      client.close();
    }
  });

  it('the server checks the landmark is the one it declared: an impostor SVID is refused', async () => {
    const client = new LandmarkClient(serverSource);
    try {
      await expect(client.probe(`https://127.0.0.1:${landmark.port}`, 'spiffe://landmark.test/landmark/berlin', request() as never, 3000)).rejects.toThrow(/cannot reach landmark/);
    } finally {
      client.close();
    }
  });

  async function raw(body: string, path = '/v1/probe'): Promise<{ status: number; json: { error?: { code: string; message: string } } }> {
    const agent = new SpiffeHttpsAgent({ source: serverSource, authorizer: authorizeId(LM) });
    try {
      return await new Promise((resolve, reject) => {
        const req = https.request({ host: '127.0.0.1', port: landmark.port, path, method: 'POST', agent }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString() || '{}') as never }));
        });
        req.on('error', reject);
        req.end(body);
      });
    } finally {
      agent.destroy();
    }
  }

  it('refuses malformed, oversized and unknown requests with a reason, changing nothing', async () => {
    expect((await raw('{not json')).status).toBe(400);
    expect((await raw(JSON.stringify(request({ rounds: 100_000 })))).status).toBe(400);
    expect((await raw(JSON.stringify(request({ extra: 1 })))).status).toBe(400);
    expect((await raw(JSON.stringify(request({ node: 'not-a-spiffe-id' })))).status).toBe(400);
    const big = await raw(JSON.stringify(request({ akPublic: 'A'.repeat(40_000) })));
    expect(big.status).toBe(413);
    expect((await raw('{}', '/v1/anything')).status).toBe(404);
  });

  it('a probe that proves nothing is reported by name (422), not as a measurement', async () => {
    const r = await raw(JSON.stringify(request({ node: 'spiffe://landmark.test/agent/tpm/someone-else' })));
    expect(r.status).toBe(422);
    expect(r.json.error?.code).toBe('probe_connect');
  });
});

describe('latency settings', () => {
  const serverBase = { trustDomain: 'landmark.test', dataDir: '/tmp/x' };
  const ui = (latency: unknown): Record<string, unknown> => ({
    ...serverBase, unifiedIdentity: { locationPolicies: { inline: 'policies:\n  eu: { area: { regions: [EU] } }\n' }, defaultPolicy: 'eu', latency },
  });

  it('server: landmarks are declared in the trust domain, once, with a url unless the server probes by itself', () => {
    const ok = parseServerConfig(ui({ landmarks: [{ id: 'spiffe://landmark.test/spire/server', lat: 48.85, lon: 2.35 }, { id: LM, lat: 48.85, lon: 2.35, url: 'https://10.0.0.2:8443' }] }), '/tmp', {});
    expect(ok.unifiedIdentity?.latency).toMatchObject({ strength: 'agent-key', rounds: 10, attempts: 4 });
    const refused = (latency: unknown, why: RegExp): void => { expect(() => parseServerConfig(ui(latency), '/tmp', {})).toThrow(why); };
    refused({ landmarks: [{ id: 'spiffe://other.test/landmark/x', lat: 0, lon: 0, url: 'https://a:1' }] }, /not in this server's trust domain/);
    refused({ landmarks: [{ id: LM, lat: 0, lon: 0 }] }, /needs the url of its landmark API/);
    refused({ landmarks: [{ id: 'spiffe://landmark.test/spire/server', lat: 0, lon: 0, url: 'https://a:1' }] }, /probes by itself: remove its url/);
    refused({ landmarks: [{ id: LM, lat: 0, lon: 0, url: 'https://a:1' }, { id: LM, lat: 1, lon: 1, url: 'https://b:1' }] }, /declared twice/);
    refused({ landmarks: [{ id: LM, lat: 91, lon: 0, url: 'https://a:1' }] }, /lat/);
    refused({ landmarks: [{ id: LM, lat: 0, lon: 0, url: 'http://a:1' }] }, /https:\/\//);
    refused({ landmarks: [] }, /at least one landmark/);
  });

  it('server: a default policy that needs the latency witness is refused (landmarks measure only after attestation)', () => {
    const cfg = parseServerConfig({
      ...serverBase, unifiedIdentity: { locationPolicies: { inline: 'policies:\n  eu: { area: { regions: [EU] }, minAssurance: latency-bounded }\n' }, defaultPolicy: 'eu' },
    }, '/tmp', {});
    expect(() => new UnifiedIdentityPipeline({ settings: cfg.unifiedIdentity!, keylime: undefined, logger: pino({ level: 'silent' }) })).toThrow(/requires the latency witness.*after its attestation/);
  });

  it('agent: a wildcard bind needs the advertised address; landmarks are SPIFFE IDs of the agent\'s trust domain', () => {
    const base = { trustDomain: 'landmark.test', serverAddress: '127.0.0.1', dataDir: '/tmp/a', trustBundlePath: '/tmp/b.json', nodeAttestor: { joinToken: { token: 't' } } };
    expect(parseAgentConfig({ ...base, latencyProbe: { bindAddress: '127.0.0.1', port: 9443, landmarks: [LM] } }, {}).latencyProbe?.port).toBe(9443);
    expect(() => parseAgentConfig({ ...base, latencyProbe: { port: 9443, landmarks: [LM] } }, {})).toThrow(/advertiseAddress is required/);
    expect(() => parseAgentConfig({ ...base, latencyProbe: { bindAddress: '127.0.0.1', port: 9443, landmarks: ['spiffe://other.test/landmark/x'] } }, {})).toThrow(/not in this agent's trust domain/);
    expect(() => parseAgentConfig({ ...base, latencyProbe: { bindAddress: '127.0.0.1', port: 9443, landmarks: [] } }, {})).toThrow(/list the landmarks/);
    expect(() => parseAgentConfig({ ...base, latencyProbe: { bindAddress: '127.0.0.1', port: 0, landmarks: [LM] } }, {})).toThrow();
  });

  it('landmark: the config is checked by key, and its SVID must carry the configured ID', async () => {
    expect(() => parseLandmarkConfig('id: spiffe://landmark.test/landmark/x\nlisten: { port: 1 }\nsvid: { certFile: a }\n')).toThrow(LandmarkConfigError);
    expect(() => parseLandmarkConfig(cfgText('bogus: 1\n'))).toThrow(/bogus|unrecognized/i);
    await expect(startLandmark(parseLandmarkConfig(cfgText()), { source: sourceOf(td.svid('/landmark/berlin')), logger: pino({ level: 'silent' }) }))
      .rejects.toThrow(/SVID is spiffe:\/\/landmark.test\/landmark\/berlin, but the config says id/);
  });
});
