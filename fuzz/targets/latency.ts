// The latency witness: probe frames a landmark reads from a node (FrameReader, the TPM reply payload
// and the quote inside it), the signed measurement a landmark hands the server (verifyMeasurement),
// and the landmark's own configuration file (parseLandmarkConfig).
import crypto from 'node:crypto';
import YAML from 'yaml';
import { LandmarkConfigError, parseLandmarkConfig } from '../../src/landmark/landmark.js';
import { MeasurementError, signMeasurement, verifyMeasurement } from '../../src/latency/measurement.js';
import {
  decodeTpmPayload, encodeChallenge, encodeRefusal, encodeReply, encodeTpmPayload, FrameReader, ProbeProtocolError,
} from '../../src/latency/protocol.js';
import { SpiffeId } from '../../src/spiffe/index.js';
import { parseTpm2bPublic, TpmError } from '../../src/tpm/index.js';
import { verifyQuoteBinding } from '../../src/tpm/quote.js';
import { CONFIG_FILE_MS, below, chance, mutateBytes, mutateJsonValue, mutateText, pick, type FuzzTarget } from '../engine.js';
import { testPki, tpmFile } from './seeds.js';

export const probeFrames: FuzzTarget = {
  name: 'probe-frames',
  description: 'Latency probe frames (FrameReader over arbitrary chunking), the TPM reply payload (decodeTpmPayload) and the quote in it (verifyQuoteBinding), as the prober reads them',
  async setup() {
    const attest = tpmFile('quote-rsa2048.attest');
    const sig = tpmFile('quote-rsa2048.sig');
    const ak = parseTpm2bPublic(tpmFile('ak-rsa2048.pub'));
    const challenge = crypto.randomBytes(32);
    const tpmReply = encodeReply(encodeTpmPayload(attest, sig));
    const seeds = [
      Buffer.concat([encodeChallenge('tpm', challenge), tpmReply]),
      Buffer.concat([encodeChallenge('agent-key', challenge), encodeReply(crypto.randomBytes(72))]),
      Buffer.concat([tpmReply, encodeRefusal('node busy: too many probes'), tpmReply]),
      encodeRefusal('x'.repeat(600)),
      encodeTpmPayload(attest, sig),
    ];
    return {
      generate: (r) => mutateBytes(r, seeds),
      run(b) {
        const reader = new FrameReader();
        // Chunk boundaries from the input itself, so a reproducer replays the same split.
        let at = 0;
        let k = 0;
        while (at < b.length) {
          const n = 1 + ((b[k++ % b.length] as number) % 97);
          for (const f of reader.push(Buffer.from(b.subarray(at, at + n)))) {
            if (f.type !== 'reply') continue;
            const q = decodeTpmPayload(f.payload);
            verifyQuoteBinding({ akPublic: ak, attest: q.attest, signature: q.signature, expectedExtraData: challenge });
          }
          at += n;
        }
        // A bare payload, as if framing had been fine.
        decodeTpmPayload(b);
      },
      expected: (e) => e instanceof ProbeProtocolError || e instanceof TpmError,
    };
  },
};

const MEASUREMENT_TYPE = 'terroir-latency-measurement+jws';
const b64u = (text: string): string => Buffer.from(text, 'utf8').toString('base64url');

export const measurement: FuzzTarget = {
  name: 'latency-measurement',
  description: 'Signed latency measurements (verifyMeasurement: compact JWS, x5c chain as an X.509-SVID, signature, every field); half the inputs are re-signed with the landmark\'s real key so field checks are reached',
  async setup() {
    const pki = testPki();
    const now = new Date();
    const svid = { id: SpiffeId.parse(pki.landmark.id), certificatesDer: pki.landmark.chain, privateKey: pki.landmark.key, expiresAt: new Date(Date.now() + 86400_000) };
    const m = { landmark: pki.landmark.id, node: 'spiffe://example.org/agent/n1', strength: 'tpm' as const, rounds: 5, rttMinS: 0.0021, rttP50S: 0.0024, measuredAt: now, request: 'req-0123456789abcdef' };
    const good = await signMeasurement(svid, m);
    const [h, p] = good.split('.') as [string, string, string];
    const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8')) as Record<string, unknown>;
    const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8')) as Record<string, unknown>;
    const dict = ['typ', 'alg', 'x5c', 'ES256', 'RS256', 'none', MEASUREMENT_TYPE, 'v', 'landmark', 'node', 'strength', 'rounds', 'rttMinS', 'rttP50S', 'measuredAt', 'request',
      pki.landmark.id, m.node, m.request, 'tpm', 'agent-key', now.toISOString()];
    const opts = { bundles: pki.bundles, landmark: m.landmark, node: m.node, request: m.request, strength: m.strength, now };
    return {
      generate(r) {
        if (chance(r, 0.5)) return Buffer.from(chance(r, 0.5) ? mutateText(r, good, ['.', '-', '_', '=']) : mutateBytes(r, [Buffer.from(good)]).toString('latin1'), 'latin1');
        // Structured: mutate the header or the payload and sign again (ES256, whatever the header
        // says) with the landmark's real key, so the checks after the signature are reached.
        const hdr = chance(r, 0.3) ? mutateJsonValue(r, header, dict) : header;
        const pl = hdr === header || chance(r, 0.5) ? mutateJsonValue(r, payload, dict) : payload;
        const input = `${b64u(JSON.stringify(hdr) ?? 'null')}.${b64u(JSON.stringify(pl) ?? 'null')}`;
        const sig = crypto.sign('sha256', Buffer.from(input, 'latin1'), { key: pki.landmark.key, dsaEncoding: 'ieee-p1363' });
        return Buffer.from(`${input}.${sig.toString('base64url')}`, 'latin1');
      },
      run: (b) => verifyMeasurement(b.toString('latin1'), opts),
      expected: (e) => e instanceof MeasurementError,
    };
  },
};

const LANDMARK_YAML = `id: spiffe://example.org/landmark/paris
listen: { address: 0.0.0.0, port: 8443 }
svid: { workloadApiSocket: /run/terroir/agent.sock }
concurrency: 2
queue: 64
probeTimeoutMs: 10000
logLevel: info
`;
const LANDMARK_FILES = { id: 'spiffe://example.org/landmark/fra', listen: { port: 0 }, svid: { certFile: 'svid.pem', keyFile: 'svid.key', bundleFile: 'bundle.pem' } };

export const landmarkConfig: FuzzTarget = {
  name: 'landmark-config',
  description: 'The landmark configuration file, YAML (parseLandmarkConfig: YAML, zod schema)',
  async setup() {
    const docs = [YAML.parse(LANDMARK_YAML) as unknown, LANDMARK_FILES];
    const dict = ['id', 'listen', 'address', 'port', 'svid', 'workloadApiSocket', 'certFile', 'keyFile', 'bundleFile', 'concurrency', 'queue', 'probeTimeoutMs', 'logLevel',
      'spiffe://example.org/x', 'spiffe://', 'silent', 'trace'];
    return {
      generate(r) {
        switch (below(r, 3)) {
          case 0: return Buffer.from(mutateText(r, LANDMARK_YAML, dict), 'utf8');
          case 1: return Buffer.from(JSON.stringify(mutateJsonValue(r, pick(r, docs), dict)) ?? '', 'utf8');
          default: {
            const v = mutateJsonValue(r, pick(r, docs), dict);
            try { return Buffer.from(YAML.stringify(v), 'utf8'); } catch { return Buffer.from(JSON.stringify(v) ?? '', 'utf8'); }
          }
        }
      },
      run: (b) => parseLandmarkConfig(b.toString('utf8'), 'fuzz.yaml'),
      expected: (e) => e instanceof LandmarkConfigError,
      hangMs: CONFIG_FILE_MS,
    };
  },
};
