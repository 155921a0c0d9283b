/**
 * Crashes found with the fuzz targets (fuzz/, docs/fuzzing.md), each reduced to its cause: before the
 * fix these threw TypeError or RangeError instead of the module's own error.
 */
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { MockAgent } from 'undici';
import { CamaraLocationVerifier, CamaraProtocolError, GeofenceError, PolicyError, parsePolicies } from '../../src/geo/index.js';
import { PolygonFence } from '../../src/geo/geofence.js';
import { keylimeFailures } from '../../src/keylime/client.js';
import { MeasurementError, verifyMeasurement } from '../../src/latency/measurement.js';
import { testPki } from '../../fuzz/targets/seeds.js';

const POLYGON = { type: 'Polygon', coordinates: [[[8.6, 50.2], [8.7, 50.2], [8.7, 50.25], [8.6, 50.25], [8.6, 50.2]]] };

/** `depth` Features, each the geometry of the one around it. */
function nestedFeatures(depth: number): string {
  return '{"type":"Feature","geometry":'.repeat(depth) + JSON.stringify(POLYGON) + '}'.repeat(depth);
}

describe('geojson: Feature nested in Feature (fuzz target geojson, RangeError: Maximum call stack size exceeded)', () => {
  it('a 40,000-deep chain of Features is a GeofenceError, not a stack overflow', () => {
    expect(() => new PolygonFence('deep', JSON.parse(nestedFeatures(40_000)))).toThrow(GeofenceError);
  });

  it('any Feature inside a Feature is refused; FeatureCollection → Feature → Polygon still works', () => {
    expect(() => new PolygonFence('two', JSON.parse(nestedFeatures(2)))).toThrow(/nested too deep/);
    const fc = { type: 'FeatureCollection', features: [{ type: 'Feature', geometry: POLYGON }] };
    expect(new PolygonFence('ok', fc).classify(50.22, 8.65, 10)).toBe('inside');
    expect(new PolygonFence('ok', JSON.parse(nestedFeatures(1))).classify(50.22, 8.65, 10)).toBe('inside');
  });

  it('a type or coordinate that is an array nested thousands deep is a GeofenceError (the error message overflowed the stack)', () => {
    const deep = JSON.parse(`${'['.repeat(20_000)}${']'.repeat(20_000)}`) as unknown;
    expect(() => new PolygonFence('t', { type: deep })).toThrow(/got an array/);
    const ring = [[deep, 0], [1, 0], [1, 1], [0, 0]];
    expect(() => new PolygonFence('c', { type: 'Polygon', coordinates: [ring] })).toThrow(/longitude .* got an array/);
    expect(() => new PolygonFence('l', { type: 'Polygon', coordinates: [[[0, deep], [1, 0], [1, 1], [0, 0]]] })).toThrow(/latitude .* got an array/);
  });

  it('through a policy document it is a PolicyError naming the geofence', () => {
    const doc = JSON.stringify({ policies: { p: { area: { geofences: [{ name: 'deep', geojson: JSON.parse(nestedFeatures(3)) }] } } } });
    expect(() => parsePolicies(doc)).toThrow(PolicyError);
    expect(() => parsePolicies(doc)).toThrow(/geofences\[0\].*nested too deep/);
  });
});

describe('latency measurement: header or payload that is JSON but not an object (fuzz target latency-measurement, TypeError)', () => {
  const pki = testPki();
  const opts = { bundles: pki.bundles, landmark: pki.landmark.id, node: 'spiffe://example.org/agent/n1', request: 'req-0123456789abcdef', strength: 'tpm' as const };
  const b64u = (s: string): string => Buffer.from(s, 'utf8').toString('base64url');
  /** A compact JWS over `header` and `payload` (JSON texts), signed ES256 with the landmark's real key. */
  const signed = (header: string, payload: string): string => {
    const input = `${b64u(header)}.${b64u(payload)}`;
    return `${input}.${crypto.sign('sha256', Buffer.from(input), { key: pki.landmark.key, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`;
  };
  const header = JSON.stringify({ alg: 'ES256', typ: 'terroir-latency-measurement+jws', x5c: pki.landmark.chain.map((d) => d.toString('base64')) });

  it.each(['null', '7', '"text"', '[]'])('header %s is a MeasurementError', async (h) => {
    await expect(verifyMeasurement(signed(h, '{}'), opts)).rejects.toThrow(MeasurementError);
  });

  it.each(['null', '[1]', '"x"'])('a correctly signed payload %s is a MeasurementError', async (p) => {
    await expect(verifyMeasurement(signed(header, p), opts)).rejects.toThrow(/payload is not a JSON object/);
  });

  it('a correctly signed, well-formed measurement still verifies', async () => {
    const now = new Date();
    const payload = JSON.stringify({ v: 1, landmark: opts.landmark, node: opts.node, strength: 'tpm', rounds: 3, rttMinS: 0.002, rttP50S: 0.003, measuredAt: now.toISOString(), request: opts.request });
    await expect(verifyMeasurement(signed(header, payload), { ...opts, now })).resolves.toMatchObject({ rounds: 3, rttMinS: 0.002 });
  });
});

describe('keylime: a failure context nested a few thousand deep (fuzz target keylime-response, RangeError from JSON.stringify)', () => {
  it('is reported as unprintable instead of throwing out of the client', () => {
    const deep = JSON.parse(`${'['.repeat(5000)}${']'.repeat(5000)}`) as unknown;
    const failures = keylimeFailures({ failures: [{ type: 'pcr_validation.invalid_pcr_15', context: deep }, { type: 'x', context: { got: 1 } }] });
    expect(failures).toEqual([
      { type: 'pcr_validation.invalid_pcr_15', context: '(context not printable as JSON)' },
      { type: 'x', context: '{"got":1}' },
    ]);
  });
});

describe('CAMARA: an answer naming an IPv6 address with a zone index (found reading the camara target\'s code, TypeError: Invalid URL)', () => {
  it('is a CamaraProtocolError (another device), not a TypeError', async () => {
    const verifier = new CamaraLocationVerifier({
      baseUrl: 'https://operator.test/location-verification/v2', tokenUrl: 'https://operator.test/oauth2/token', clientId: 'c', clientSecret: 's',
    });
    const mock = new MockAgent();
    mock.disableNetConnect();
    (verifier as unknown as { dispatcher: unknown }).dispatcher = mock;
    const json = { 'content-type': 'application/json' };
    const pool = mock.get('https://operator.test');
    pool.intercept({ path: '/oauth2/token', method: 'POST' }).reply(200, { access_token: 't', token_type: 'Bearer', expires_in: 3600 }, { headers: json });
    pool.intercept({ path: '/location-verification/v2/verify', method: 'POST' })
      .reply(200, { verificationResult: 'TRUE', lastLocationTime: new Date().toISOString(), device: { ipv6Address: 'fe80::1%eth0' } }, { headers: json });
    try {
      const err = await verifier.verify({ ipv6Address: '2001:db8::1' }, { lat: 48.85, lon: 2.35, radiusM: 1000 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CamaraProtocolError);
      expect((err as Error).message).toMatch(/another device/);
    } finally {
      await verifier.close();
    }
  });
});
