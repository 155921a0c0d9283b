// The latency probe against lying nodes: real mTLS on loopback, the real responder and prober, and
// hand-made hostile responders (a wrong key, replayed replies, a relay). Each attack must end in a
// ProbeError; only an honest node's signed answers yield a round trip.
import crypto from 'node:crypto';
import type net from 'node:net';
import type tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTpmCredentialSource, type TpmSession } from '../../src/agent/tpm-session.js';
import { radiusForRttM } from '../../src/geo/latency.js';
import { marshalTpmtPublic, parseTpm2bPublic, parseTpmtPublic, toTpm2bPublic, type TpmEccPublic } from '../../src/tpm/public.js';
import { encodeReply, encodeTpmPayload, FrameReader, probeDigest, ProbeProtocolError, encodeChallenge } from '../../src/latency/protocol.js';
import { probeNode, ProbeError } from '../../src/latency/prober.js';
import { startProbeResponder, type ProbeResponder } from '../../src/latency/responder.js';
import { signMeasurement, verifyMeasurement, MeasurementError } from '../../src/latency/measurement.js';
import type { TrustDomain } from '../../src/spiffe/id.js';
import { authorizeOneOf } from '../../src/workload/authorizer.js';
import type { X509SourceLike } from '../../src/workload/source.js';
import { createTlsServer } from '../../src/workload/tls.js';
import { startDelayRelay } from '../support/delay-relay.js';
import { startSwtpm, type Swtpm } from '../support/swtpm.js';
import { makeDomain, type TestDomain, type TestSvid } from '../workload/fixtures.js';

const td = makeDomain('probe.test');
const other = makeDomain('elsewhere.test');
const NODE = '/agent/tpm/node-1';
const LANDMARK = '/landmark/paris';

function sourceOf(svid: TestSvid, domain: TestDomain = td): X509SourceLike {
  const s = { id: svid.id, certificatesDer: svid.chain, privateKey: svid.key, expiresAt: new Date(Date.now() + 3600_000) };
  const bundles = [domain.bundle()];
  return {
    getX509Svid: () => s,
    getX509Bundles: () => bundles,
    getX509BundleForTrustDomain: (t: TrustDomain) => (t.equals(domain.td) ? bundles[0] : undefined),
    onUpdate: () => () => undefined,
  };
}

const nodeSvid = td.svid(NODE);
const landmarkSvid = td.svid(LANDMARK);
const nodeSource = sourceOf(nodeSvid);
const landmarkSource = sourceOf(landmarkSvid);
const nodeId = nodeSvid.id.toString();
const landmarkId = landmarkSvid.id.toString();

/** A hostile endpoint serving the node's SVID over mTLS, answering challenges with `answer`. */
async function hostileResponder(answer: (challenge: Buffer, round: number, landmark: string) => Buffer): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = createTlsServer({ source: nodeSource, authorizer: authorizeOneOf([landmarkId]) }, (socket: tls.TLSSocket, peer) => {
    const reader = new FrameReader();
    let round = 0;
    socket.on('data', (c: Buffer) => {
      for (const f of reader.push(c)) if (f.type === 'challenge') socket.write(answer(f.challenge, round++, peer.id.toString()));
    });
    socket.on('error', () => undefined);
  });
  server.on('connection', (s: net.Socket) => { sockets.add(s); s.once('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

describe('latency probe, agent-key strength', () => {
  let responder: ProbeResponder;
  beforeAll(async () => {
    responder = await startProbeResponder({ source: nodeSource, landmarks: authorizeOneOf([landmarkId]), host: '127.0.0.1', port: 0, maxRounds: 50 });
  });
  afterAll(async () => { await responder.close(); });

  it('times an honest node on loopback: every reply signed, the minimum round trip a small radius', async () => {
    const r = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: responder.port, nodeId, strength: 'agent-key', rounds: 20 });
    expect(r).toMatchObject({ nodeId, landmarkId, strength: 'agent-key', rounds: 20 });
    expect(r.rttMinS).toBeGreaterThan(0);
    expect(r.rttMinS).toBeLessThanOrEqual(r.rttP50S);
    // Loopback with TLS and an ECDSA signature per round: well under 10 ms even on a loaded CI machine.
    expect(r.rttMinS).toBeLessThan(0.01);
    expect(radiusForRttM(r.rttMinS)).toBeLessThan(1_500_000);
  });

  it('a landmark the node does not list cannot probe it (its mTLS is refused)', async () => {
    const stranger = sourceOf(td.svid('/landmark/rogue'));
    await expect(probeNode({ source: stranger, host: '127.0.0.1', port: responder.port, nodeId, strength: 'agent-key', rounds: 2 }))
      .rejects.toBeInstanceOf(ProbeError);
  });

  it('an endpoint serving another node\'s SVID is refused before any challenge', async () => {
    const err = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: responder.port, nodeId: `spiffe://probe.test/agent/tpm/someone-else`, strength: 'agent-key', rounds: 2 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProbeError);
    expect((err as ProbeError).code).toBe('connect');
  });

  it('a responder signing with a key that is not its SVID\'s is refused (bad-signature)', async () => {
    const wrong = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const h = await hostileResponder((ch, _i, lm) => encodeReply(crypto.sign('sha256', probeDigest(ch, lm, nodeId), wrong)));
    try {
      const err = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: h.port, nodeId, strength: 'agent-key', rounds: 3 }).catch((e: unknown) => e);
      expect((err as ProbeError).code).toBe('bad-signature');
      expect((err as Error).message).toMatch(/reply 1 .* not signed by the key of its agent SVID/);
    } finally {
      await h.close();
    }
  });

  it('replies replayed from an earlier probe (answering before signing) are refused', async () => {
    const recorded: Buffer[] = [];
    let replay = false;
    const h = await hostileResponder((ch, i, lm) => {
      if (replay) return recorded[i] as Buffer;
      const r = encodeReply(crypto.sign('sha256', probeDigest(ch, lm, nodeId), nodeSvid.key));
      recorded.push(r);
      return r;
    });
    try {
      await expect(probeNode({ source: landmarkSource, host: '127.0.0.1', port: h.port, nodeId, strength: 'agent-key', rounds: 3 })).resolves.toBeDefined();
      replay = true;
      const err = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: h.port, nodeId, strength: 'agent-key', rounds: 3 }).catch((e: unknown) => e);
      expect((err as ProbeError).code).toBe('bad-signature');
    } finally {
      await h.close();
    }
  });

  it('a reply signed for another landmark does not count for this one', async () => {
    const h = await hostileResponder((ch) => encodeReply(crypto.sign('sha256', probeDigest(ch, 'spiffe://probe.test/landmark/near-the-node', nodeId), nodeSvid.key)));
    try {
      const err = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: h.port, nodeId, strength: 'agent-key', rounds: 2 }).catch((e: unknown) => e);
      expect((err as ProbeError).code).toBe('bad-signature');
    } finally {
      await h.close();
    }
  });

  it('a relay in front of the node only adds time: 5 ms each way gives at least 10 ms and ≥ 1,499 km', async () => {
    const relay = await startDelayRelay({ listenHost: '127.0.0.1', targetHost: '127.0.0.1', targetPort: responder.port, delayMs: 5 });
    try {
      const r = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: relay.port, nodeId, strength: 'agent-key', rounds: 5 });
      expect(r.rttMinS).toBeGreaterThanOrEqual(0.010);
      expect(radiusForRttM(r.rttMinS)).toBeGreaterThanOrEqual(1_499_000);
    } finally {
      await relay.close();
    }
  });

  it('bounds what a landmark can ask: more rounds than the node allows are refused with a reason', async () => {
    const small = await startProbeResponder({ source: nodeSource, landmarks: authorizeOneOf([landmarkId]), host: '127.0.0.1', port: 0, maxRounds: 3 });
    try {
      const err = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: small.port, nodeId, strength: 'agent-key', rounds: 5 }).catch((e: unknown) => e);
      expect((err as ProbeError).code).toBe('refused');
      expect((err as Error).message).toMatch(/more than 3 rounds/);
    } finally {
      await small.close();
    }
  });

  it('a node without a TPM quoter refuses tpm probes, saying so', async () => {
    const ak = Buffer.from('0016000100', 'hex'); // never parsed far: the node refuses first
    const err = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: responder.port, nodeId, strength: 'tpm', rounds: 1, akPublic: ak }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ProbeError);
    expect((err as ProbeError).code).toMatch(/invalid-argument|refused/);
  });
});

describe('latency probe frames and binding', () => {
  it('the digest binds challenge, landmark and node, with length prefixes (no splicing of IDs)', () => {
    const ch = crypto.randomBytes(32);
    const base = probeDigest(ch, 'spiffe://t/a', 'spiffe://t/bc');
    expect(probeDigest(ch, 'spiffe://t/ab', 'spiffe://t/c').equals(base)).toBe(false);
    expect(probeDigest(crypto.randomBytes(32), 'spiffe://t/a', 'spiffe://t/bc').equals(base)).toBe(false);
    expect(probeDigest(ch, 'spiffe://t/a', 'spiffe://t/bc').equals(base)).toBe(true);
    expect(() => probeDigest(Buffer.alloc(31), 'a', 'b')).toThrow(ProbeProtocolError);
  });

  it('refuses unknown frames, unknown strengths and oversized replies; splits frames across chunks', () => {
    expect(() => new FrameReader().push(Buffer.from([0x09]))).toThrow(/unknown probe frame type 0x9/);
    expect(() => new FrameReader().push(Buffer.concat([Buffer.from([0x01, 0x07]), Buffer.alloc(32)]))).toThrow(/unknown probe strength/);
    const huge = Buffer.alloc(5);
    huge[0] = 0x02;
    huge.writeUInt32BE(1 << 30, 1);
    expect(() => new FrameReader().push(huge)).toThrow(/at most 4096/);
    const r = new FrameReader();
    const frame = encodeChallenge('tpm', Buffer.alloc(32, 7));
    expect(r.push(frame.subarray(0, 10))).toEqual([]);
    const out = r.push(Buffer.concat([frame.subarray(10), encodeReply(Buffer.from('sig'))]));
    expect(out.map((f) => f.type)).toEqual(['challenge', 'reply']);
  });
});

describe('landmark measurements', () => {
  const m = { landmark: landmarkId, node: nodeId, strength: 'agent-key' as const, rounds: 10, rttMinS: 0.0001, rttP50S: 0.0002, measuredAt: new Date(), request: 'req-0123456789abcdef' };
  const expectOpts = { bundles: landmarkSource, landmark: landmarkId, node: nodeId, request: m.request, strength: 'agent-key' as const };

  it('verifies a landmark\'s signed measurement and refuses every altered one', async () => {
    const jws = await signMeasurement(landmarkSource.getX509Svid(), m);
    await expect(verifyMeasurement(jws, expectOpts)).resolves.toMatchObject({ rttMinS: 0.0001, rounds: 10 });
    const [h, p, s] = jws.split('.') as [string, string, string];
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...payload, rttMinS: 0.000001 })).toString('base64url')}.${s}`;
    await expect(verifyMeasurement(forged, expectOpts)).rejects.toThrow(/signature does not verify/);
    await expect(verifyMeasurement(jws, { ...expectOpts, request: 'req-another-request' })).rejects.toThrow(/another request \(replayed\)/);
    await expect(verifyMeasurement(jws, { ...expectOpts, node: 'spiffe://probe.test/agent/x' })).rejects.toThrow(/is about/);
    await expect(verifyMeasurement(jws, { ...expectOpts, strength: 'tpm' })).rejects.toThrow(/strength/);
    await expect(verifyMeasurement(jws, { ...expectOpts, landmark: 'spiffe://probe.test/landmark/berlin' })).rejects.toThrow(/not by the landmark asked/);
    await expect(verifyMeasurement(jws, { ...expectOpts, now: new Date(Date.now() + 3600_000 * 2) })).rejects.toThrow(MeasurementError);
  });

  it('a measurement signed by another trust domain\'s landmark is refused', async () => {
    const foreign = other.svid(LANDMARK);
    const jws = await signMeasurement(sourceOf(foreign, other).getX509Svid(), { ...m, landmark: foreign.id.toString() });
    await expect(verifyMeasurement(jws, { ...expectOpts, landmark: foreign.id.toString() })).rejects.toThrow(/not a valid SVID of this trust domain/);
  });
});

describe('latency probe, tpm strength (swtpm)', () => {
  let swtpm: Swtpm;
  let tpm: TpmSession;
  let responder: ProbeResponder;
  let akPublic: Buffer;
  beforeAll(async () => {
    swtpm = await startSwtpm();
    tpm = await openTpmCredentialSource({ tcti: swtpm.tcti, ekKind: 'rsa2048' });
    akPublic = (await tpm.attestationData()).akPublic;
    responder = await startProbeResponder({
      source: nodeSource, landmarks: authorizeOneOf([landmarkId]), host: '127.0.0.1', port: 0,
      quote: (d) => (tpm.probeQuote as NonNullable<TpmSession['probeQuote']>)(d),
    });
  }, 30_000);
  afterAll(async () => {
    await responder?.close();
    await tpm?.close();
    await swtpm?.stop();
  });

  it('each challenge is answered by a quote of the attested AK, checked after timing', async () => {
    const r = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: responder.port, nodeId, strength: 'tpm', rounds: 5, akPublic });
    expect(r.strength).toBe('tpm');
    expect(r.rttMinS).toBeGreaterThan(0);
  });

  it('quotes by another AK than the one the server vouches for are refused', async () => {
    // The same public area with another key (a software P-256 point): the node's real quotes do not
    // verify under it. (A second AK on this swtpm would take the first one's handle: no resource manager.)
    const real = parseTpm2bPublic(akPublic) as TpmEccPublic;
    const jwk = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' });
    const { raw: _raw, ...fields } = real;
    const wrongAk = toTpm2bPublic(parseTpmtPublic(marshalTpmtPublic({ ...fields, unique: { x: Buffer.from(jwk.x as string, 'base64url'), y: Buffer.from(jwk.y as string, 'base64url') } })));
    expect(wrongAk.equals(akPublic)).toBe(false);
    const err = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: responder.port, nodeId, strength: 'tpm', rounds: 2, akPublic: wrongAk }).catch((e: unknown) => e);
    expect((err as ProbeError).code).toBe('bad-signature');
    expect((err as Error).message).toMatch(/not a quote by its attested AK/);
  });

  it('an agent-key signature offered to a tpm probe is refused', async () => {
    const h = await hostileResponder((ch, _i, lm) => encodeReply(encodeTpmPayload(Buffer.from('not an attest'), crypto.sign('sha256', probeDigest(ch, lm, nodeId), nodeSvid.key))));
    try {
      const err = await probeNode({ source: landmarkSource, host: '127.0.0.1', port: h.port, nodeId, strength: 'tpm', rounds: 1, akPublic }).catch((e: unknown) => e);
      expect((err as ProbeError).code).toBe('bad-signature');
    } finally {
      await h.close();
    }
  });
});
