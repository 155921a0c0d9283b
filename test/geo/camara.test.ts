import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CamaraOperatorDouble, makeTestPki } from '../doubles/camara-operator.js';
import { tempDir } from '../support/tmp.js';
import {
  CamaraAuthError,
  CamaraError,
  CamaraLocationError,
  CamaraLocationVerifier,
  CamaraProtocolError,
  CamaraRequestError,
  CamaraUnavailableError,
  evaluatePolicy,
  mobileReading,
  parsePolicies,
} from '../../src/geo/index.js';

// Network positions: a device in Frankfurt located to ±500 m, one that cannot be located, one
// whose last fix is an hour old. The operator covers 300 km around Frankfurt and refuses areas
// under 1 km radius (the spec's example minimum).
const FRA = { lat: 50.1109, lon: 8.6821 };
const now = Date.now();
const devices = [
  { phoneNumber: '+4915112345678', ipv4: { publicAddress: '84.125.93.10', publicPort: 59765 }, location: { ...FRA, accuracyM: 500, time: new Date(now - 10_000) } },
  { phoneNumber: '+4915100000001' },
  { phoneNumber: '+4915100000002', location: { ...FRA, accuracyM: 500, time: new Date(now - 3600_000) } },
];

describe('CamaraLocationVerifier against the CAMARA operator double (real TLS)', () => {
  const tmp = tempDir('terroir-camara-');
  let pki: ReturnType<typeof makeTestPki>;
  let op: CamaraOperatorDouble;
  let v: CamaraLocationVerifier;
  const extra: CamaraLocationVerifier[] = [];

  beforeAll(async () => {
    pki = makeTestPki(tmp.dir);
    op = await CamaraOperatorDouble.start({
      tls: { key: pki.key, cert: pki.cert },
      clientId: 'terroir-server',
      clientSecret: 's3cret:with/odd chars',
      devices,
      coverage: { ...FRA, radiusM: 300_000 },
      minRadiusM: 1000,
    });
    v = new CamaraLocationVerifier({ baseUrl: op.baseUrl, tokenUrl: op.tokenUrl, clientId: 'terroir-server', clientSecret: 's3cret:with/odd chars', ca: pki.caCert });
  });

  afterAll(async () => {
    await v?.close();
    await Promise.all(extra.map((x) => x.close()));
    await op?.stop();
    tmp.cleanup();
  });

  const mk = (over: Partial<ConstructorParameters<typeof CamaraLocationVerifier>[0]> = {}): CamaraLocationVerifier => {
    const x = new CamaraLocationVerifier({ baseUrl: op.baseUrl, tokenUrl: op.tokenUrl, clientId: 'terroir-server', clientSecret: 's3cret:with/odd chars', ca: pki.caCert, ...over });
    extra.push(x);
    return x;
  };

  it('answers TRUE when the network position lies wholly inside the area, and caches the token', async () => {
    const before = op.tokensIssued;
    const r = await v.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 }, { maxAgeS: 120 });
    expect(r.result).toBe('TRUE');
    expect(r.matchRate).toBeUndefined();
    expect(r.lastLocationTime).toBeInstanceOf(Date);
    expect(Math.abs(r.lastLocationTime!.getTime() - (now - 10_000))).toBeLessThan(1000);
    await v.verify({ ipv4Address: { publicAddress: '84.125.93.10', publicPort: 59765 } }, { ...FRA, radiusM: 5000 });
    expect(op.tokensIssued - before).toBeLessThanOrEqual(1);
    expect(op.lastCorrelator).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('answers FALSE for an area 20 km away and PARTIAL with matchRate when the circles overlap', async () => {
    const far = await v.verify({ phoneNumber: '+4915112345678' }, { lat: FRA.lat + 0.18, lon: FRA.lon, radiusM: 2000 });
    expect(far).toMatchObject({ result: 'FALSE' });
    // Area of radius 1 km centred 1 km north: its edge cuts through the ±500 m network circle,
    // leaving a bit less than half of the network circle inside (the lens formula gives ~45 %).
    const partial = await v.verify({ phoneNumber: '+4915112345678' }, { lat: FRA.lat + 0.009, lon: FRA.lon, radiusM: 1000 });
    expect(partial.result).toBe('PARTIAL');
    expect(partial.matchRate).toBeGreaterThan(35);
    expect(partial.matchRate).toBeLessThan(55);
    const reading = mobileReading(partial, { ...FRA, radiusM: 1000 }, 'operator');
    expect(reading).toBeNull();
  });

  it('turns a TRUE verification into an attested mobile reading of the requested circle', async () => {
    const area = { ...FRA, radiusM: 5000 };
    const r = await v.verify({ phoneNumber: '+4915112345678' }, area);
    const reading = mobileReading(r, area, 'operator:test');
    expect(reading).toMatchObject({ kind: 'mobile', sensorId: 'operator:test', lat: FRA.lat, lon: FRA.lon, horizontalErrorM: 5000, attested: true });
  });

  it.each([
    ['LOCATION_VERIFICATION.INVALID_AREA', 'GEO_OPERATOR_INVALID_AREA', '+4915112345678', { ...FRA, radiusM: 200 }, undefined],
    ['LOCATION_VERIFICATION.AREA_NOT_COVERED', 'GEO_OPERATOR_AREA_NOT_COVERED', '+4915112345678', { lat: 40.4168, lon: -3.7038, radiusM: 5000 }, undefined],
    ['LOCATION_VERIFICATION.UNABLE_TO_LOCATE', 'GEO_OPERATOR_UNABLE_TO_LOCATE', '+4915100000001', { ...FRA, radiusM: 5000 }, undefined],
    ['LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE', 'GEO_OPERATOR_UNABLE_TO_FULFILL_MAX_AGE', '+4915100000002', { ...FRA, radiusM: 5000 }, 60],
  ])('maps 422 %s to a CamaraLocationError', async (apiCode, code, phoneNumber, area, maxAgeS) => {
    const err = await v.verify({ phoneNumber }, area, maxAgeS === undefined ? {} : { maxAgeS }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CamaraLocationError);
    expect(err).toMatchObject({ code, status: 422, apiCode });
  });

  it('maps 404 for an unknown device (phone number or IPv6 address) to a request error', async () => {
    const nf = await v.verify({ phoneNumber: '+4915199999999' }, { ...FRA, radiusM: 5000 }).catch((e: unknown) => e);
    expect(nf).toBeInstanceOf(CamaraRequestError);
    expect(nf).toMatchObject({ code: 'GEO_OPERATOR_IDENTIFIER_NOT_FOUND', status: 404, apiCode: 'IDENTIFIER_NOT_FOUND' });
    const un = await v.verify({ ipv6Address: '2001:db8::1' }, { ...FRA, radiusM: 5000 }).catch((e: unknown) => e);
    expect(un).toMatchObject({ code: 'GEO_OPERATOR_IDENTIFIER_NOT_FOUND', status: 404, apiCode: 'IDENTIFIER_NOT_FOUND' });
  });

  it('refuses bad input locally, before any network call', async () => {
    const calls = op.verifyCalls;
    const bad = [
      () => v.verify({ phoneNumber: '0151 123' }, { ...FRA, radiusM: 5000 }),
      () => v.verify({}, { ...FRA, radiusM: 5000 }),
      () => v.verify({ phoneNumber: '+4915112345678' }, { lat: Number.NaN, lon: 8, radiusM: 5000 }),
      () => v.verify({ phoneNumber: '+4915112345678' }, { lat: 91, lon: 8, radiusM: 5000 }),
      () => v.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 0.5 }),
      () => v.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 }, { maxAgeS: -1 }),
      () => v.verify({ ipv4Address: { publicAddress: '84.125.93.10' } }, { ...FRA, radiusM: 5000 }),
    ];
    for (const call of bad) {
      const err = await call().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CamaraRequestError);
      expect((err as CamaraError).code).toBe('GEO_OPERATOR_BAD_REQUEST');
    }
    expect(op.verifyCalls).toBe(calls);
  });

  it('fetches a fresh token once when the operator revokes the cached one', async () => {
    await v.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 });
    const before = op.tokensIssued;
    const refused = op.unauthenticated;
    op.revokeAllTokens();
    const r = await v.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 });
    expect(r.result).toBe('TRUE');
    expect(op.tokensIssued).toBe(before + 1);
    expect(op.unauthenticated).toBe(refused + 1);
  });

  it('refreshes an expired token (operator lifetime 1 s)', async () => {
    const shortOp = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'c', clientSecret: 'd', devices, tokenLifetimeS: 1 });
    try {
      const x = new CamaraLocationVerifier({ baseUrl: shortOp.baseUrl, tokenUrl: shortOp.tokenUrl, clientId: 'c', clientSecret: 'd', ca: pki.caCert });
      extra.push(x);
      await x.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 });
      await x.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 });
      await new Promise((r) => setTimeout(r, 1100));
      await x.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 });
      // The 1 s token is refreshed 100 ms before it expires: a new one is fetched up front, so the
      // operator never sees an expired token (no 401 and retry).
      expect(shortOp.tokensIssued).toBeGreaterThanOrEqual(2);
      expect(shortOp.unauthenticated).toBe(0);
      expect(shortOp.verifyCalls).toBe(3);
    } finally {
      await shortOp.stop();
    }
  });

  it('reports wrong client credentials as CamaraAuthError from the token endpoint', async () => {
    const err = await mk({ clientSecret: 'wrong' }).verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CamaraAuthError);
    expect(err).toMatchObject({ code: 'GEO_OPERATOR_TOKEN', status: 401, apiCode: 'invalid_client' });
  });

  it('reports a 503 as CamaraUnavailableError', async () => {
    op.failNext(503);
    const err = await v.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CamaraUnavailableError);
    expect(err).toMatchObject({ code: 'GEO_OPERATOR_UNAVAILABLE', status: 503 });
  });

  it('refuses off-spec answers: PARTIAL without matchRate, non-JSON, oversized, wrong types', async () => {
    const area = { ...FRA, radiusM: 5000 };
    const dev = { phoneNumber: '+4915112345678' };
    const cases: [number, string, string | undefined, RegExp][] = [
      [200, '{"verificationResult":"PARTIAL","lastLocationTime":"2026-11-22T12:00:00Z"}', undefined, /matchRate must be present exactly when/],
      [200, '{"verificationResult":"TRUE","matchRate":50,"lastLocationTime":"2026-11-22T12:00:00Z"}', undefined, /matchRate must be present exactly when/],
      [200, '{"verificationResult":"MAYBE","lastLocationTime":"2026-11-22T12:00:00Z"}', undefined, /verificationResult/],
      [200, '{"verificationResult":"TRUE","lastLocationTime":"yesterday"}', undefined, /lastLocationTime/],
      [200, '<html>ok</html>', 'text/html', /is not JSON/],
      [200, '{"verificationResult":"TRUE",', undefined, /is not JSON/],
    ];
    for (const [status, body, type, re] of cases) {
      op.answerNext(status, body, type);
      const err = await v.verify(dev, area).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CamaraProtocolError);
      expect((err as Error).message).toMatch(re);
    }
    op.answerNext(200, JSON.stringify({ verificationResult: 'TRUE', lastLocationTime: '2026-11-22T12:00:00Z', padding: 'x'.repeat(70_000) }));
    const big = await v.verify(dev, area).catch((e: unknown) => e);
    expect(big).toMatchObject({ code: 'GEO_OPERATOR_PROTOCOL', message: expect.stringMatching(/\/verify exceeds 65536 bytes/) });
    // An error status with a body that is not CAMARA's ErrorInfo still maps by status.
    op.answerNext(422, 'nope', 'text/plain');
    expect(await v.verify(dev, area).catch((e: unknown) => e)).toMatchObject({ code: 'GEO_OPERATOR_UNPROCESSABLE', status: 422, apiCode: undefined });
  });

  it('verifies the operator certificate: an unrelated CA or the system roots fail the handshake', async () => {
    for (const x of [mk({ ca: pki.otherCaCert }), mk({ ca: undefined })]) {
      const err = await x.verify({ phoneNumber: '+4915112345678' }, { ...FRA, radiusM: 5000 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(CamaraUnavailableError);
      expect(String((err as Error).message)).toMatch(/certificate|self.signed|issuer/i);
    }
  });

  it('feeds a server-side policy decision: GNSS reading + operator TRUE → allow with gnss and mobile claims', async () => {
    const policies = parsePolicies(`
policies:
  de-gnss-operator:
    area: { countries: [DE] }
    sensors: { required: [gnss, mobile], minAgreeing: 2 }
    maxSensorDistanceM: 5000
    maxHorizontalErrorM: 5000   # the mobile reading's error circle is the area asked about
    operator: { required: true }
`);
    const nowDate = new Date();
    const gnss = { kind: 'gnss' as const, sensorId: 'gps0', time: new Date(nowDate.getTime() - 2000), lat: FRA.lat + 0.001, lon: FRA.lon, horizontalErrorM: 8, attested: true };
    // The server asks the operator about a circle around the node's own GNSS fix.
    const area = { lat: gnss.lat, lon: gnss.lon, radiusM: 2000 };
    const verdict = await v.verify({ phoneNumber: '+4915112345678' }, area, { maxAgeS: 120 });
    const mobile = mobileReading(verdict, area, 'operator:test');
    expect(mobile).not.toBeNull();
    const d = evaluatePolicy(policies.get('de-gnss-operator'), [gnss, mobile!], { now: nowDate, operatorResult: { ...verdict, area } });
    expect(d).toMatchObject({ decision: 'allow', claims: { country: 'DE', sensorKinds: ['gnss', 'mobile'], policy: 'de-gnss-operator' } });
    // The same node whose SIM the operator places 20 km away is denied.
    const far = await v.verify({ phoneNumber: '+4915112345678' }, { lat: FRA.lat + 0.18, lon: FRA.lon, radiusM: 2000 });
    expect(evaluatePolicy(policies.get('de-gnss-operator'), [gnss], { now: nowDate, operatorResult: far }).decision).toBe('deny');
  });

  it('insists on https URLs', () => {
    expect(() => new CamaraLocationVerifier({ baseUrl: 'http://127.0.0.1/x', tokenUrl: op.tokenUrl, clientId: 'a', clientSecret: 'b' })).toThrow(/https/);
  });
});
