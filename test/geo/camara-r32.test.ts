// Regression tests for issue 13 (CAMARA r3.2 conformance of CamaraLocationVerifier), each written
// before its fix. Spec: ../shared/spec/camara/location-verification.yaml (r3.2, API 3.0.0) and the
// r3.2 test definitions (camaraproject/DeviceLocation code/Test_definitions/location-verification.feature
// at tag r3.2); client authentication: CAMARA Security and Interoperability Profile ("Client
// Authentication": private_key_jwt, assertion lifetime ≤ 300 s) and RFC 7523.
import { generateKeyPairSync } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CamaraOperatorDouble, makeTestPki, type CamaraOperatorOptions } from '../doubles/camara-operator.js';
import { tempDir } from '../support/tmp.js';
import {
  CamaraAuthError,
  CamaraError,
  CamaraLocationVerifier,
  CamaraProtocolError,
  CamaraRequestError,
  CamaraUnavailableError,
  parseRfc3339,
  type CamaraConfig,
} from '../../src/geo/camara.js';

const FRA = { lat: 50.1109, lon: 8.6821 };
const AREA = { ...FRA, radiusM: 5000 };
const PHONE = '+4915112345678';
const V6 = '2001:db8:85a3:8d3:1319:8a2e:370:7344';
const start = Date.now();
const iso = (ms: number): string => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

describe('CAMARA r3.2 conformance (issue 13)', () => {
  const tmp = tempDir('terroir-camara-r32-');
  let pki: ReturnType<typeof makeTestPki>;
  let op: CamaraOperatorDouble;
  let v: CamaraLocationVerifier;
  const closers: (() => Promise<void>)[] = [];

  const devices: CamaraOperatorOptions['devices'] = [
    { phoneNumber: PHONE, ipv6: V6, freshLocate: true, location: { ...FRA, accuracyM: 500, time: new Date(start - 10_000) } },
    { phoneNumber: '+4915100000009', serviceNotApplicable: true, location: { ...FRA, accuracyM: 500, time: new Date(start - 10_000) } },
  ];

  beforeAll(async () => {
    pki = makeTestPki(tmp.dir);
    op = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'terroir-server', clientSecret: 's3cret', devices, minRadiusM: 1000 });
    v = client();
  });

  afterAll(async () => {
    for (const c of closers) await c();
    await op?.stop();
    tmp.cleanup();
  });

  function client(over: Partial<CamaraConfig> = {}, target: CamaraOperatorDouble = op): CamaraLocationVerifier {
    const x = new CamaraLocationVerifier({ baseUrl: target.baseUrl, tokenUrl: target.tokenUrl, clientId: 'terroir-server', clientSecret: 's3cret', ca: pki.caCert, ...over } as CamaraConfig);
    closers.push(() => x.close());
    return x;
  }
  const fail = (p: Promise<unknown>): Promise<CamaraError> => p.then(() => { throw new Error('expected a refusal'); }, (e: unknown) => e as CamaraError);

  describe('lastLocationTime', () => {
    it.each([
      '2023-13-07T10:40:52Z', // month 13
      '2023-02-29T10:40:52Z', // 2023 is no leap year
      '2023-04-31T10:40:52Z',
      '2023-09-07T24:00:00Z',
      '2023-09-07T10:60:52Z',
      '2023-09-07T10:40:52+24:00',
      '2023-09-07T10:40:52', // RFC 3339 and the spec: a time zone is required
      '2023-09-07 10:40:52Z',
    ])('%s is not a real RFC 3339 date-time: refused, never an Invalid Date', async (t) => {
      expect(() => parseRfc3339(t)).toThrow();
      op.answerNext(200, JSON.stringify({ verificationResult: 'TRUE', lastLocationTime: t }));
      const err = await fail(v.verify({ phoneNumber: PHONE }, AREA, { maxAgeS: 120 }));
      expect(err).toBeInstanceOf(CamaraProtocolError);
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_BAD_LOCATION_TIME', status: 200 });
      expect(err.message).toContain('lastLocationTime');
    });

    it('parses offsets and fractions to the right instant; 2024-02-29 is real', () => {
      expect(parseRfc3339('2023-09-07T12:40:52.250+02:00').toISOString()).toBe('2023-09-07T10:40:52.250Z');
      expect(parseRfc3339('2023-09-07t10:40:52z').toISOString()).toBe('2023-09-07T10:40:52.000Z');
      expect(parseRfc3339('2024-02-29T00:00:00-00:30').toISOString()).toBe('2024-02-29T00:30:00.000Z');
    });

    it('a time in the future beyond the clock skew is refused; within it, accepted', async () => {
      op.answerNext(200, JSON.stringify({ verificationResult: 'TRUE', lastLocationTime: iso(Date.now() + 3600_000) }));
      const err = await fail(v.verify({ phoneNumber: PHONE }, AREA));
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_BAD_LOCATION_TIME' });
      expect(err.message).toMatch(/in the future/);
      op.answerNext(200, JSON.stringify({ verificationResult: 'TRUE', lastLocationTime: iso(Date.now() + 2000) }));
      expect((await v.verify({ phoneNumber: PHONE }, AREA)).result).toBe('TRUE');
    });

    it('an answer whose lastLocationTime is older than the maxAge asked for is refused (scenario 03)', async () => {
      op.answerNext(200, JSON.stringify({ verificationResult: 'TRUE', lastLocationTime: iso(Date.now() - 600_000) }));
      const err = await fail(v.verify({ phoneNumber: PHONE }, AREA, { maxAgeS: 120 }));
      expect(err).toBeInstanceOf(CamaraProtocolError);
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_MAX_AGE_VIOLATED', status: 200 });
      expect(err.message).toMatch(/maxAge 120 s/);
      // Without maxAge any age is acceptable (the policy judges age itself).
      op.answerNext(200, JSON.stringify({ verificationResult: 'TRUE', lastLocationTime: iso(Date.now() - 600_000) }));
      expect((await v.verify({ phoneNumber: PHONE }, AREA)).result).toBe('TRUE');
      // maxAge 0 asks for a fresh calculation: the double locates anew, the answer is accepted.
      expect((await v.verify({ phoneNumber: PHONE }, AREA, { maxAgeS: 0 })).result).toBe('TRUE');
    });

    it('an answer about another device than the one asked about is refused', async () => {
      op.answerNext(200, JSON.stringify({ verificationResult: 'TRUE', lastLocationTime: iso(Date.now()), device: { phoneNumber: '+4915199999999' } }));
      const err = await fail(v.verify({ phoneNumber: PHONE }, AREA));
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_PROTOCOL' });
      expect(err.message).toMatch(/device/);
    });
  });

  describe('error codes: each its own', () => {
    it('SERVICE_NOT_APPLICABLE, UNNECESSARY_IDENTIFIER, UNSUPPORTED_IDENTIFIER from the double', async () => {
      const na = await fail(v.verify({ phoneNumber: '+4915100000009' }, AREA));
      expect(na).toBeInstanceOf(CamaraRequestError);
      expect(na).toMatchObject({ code: 'GEO_OPERATOR_SERVICE_NOT_APPLICABLE', status: 422, apiCode: 'SERVICE_NOT_APPLICABLE' });
      const v4only = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'terroir-server', clientSecret: 's3cret', devices, supportedIdentifiers: ['phoneNumber', 'ipv4Address'] });
      closers.push(() => v4only.stop());
      const un = await fail(client({}, v4only).verify({ ipv6Address: V6 }, AREA));
      expect(un).toMatchObject({ code: 'GEO_OPERATOR_UNSUPPORTED_IDENTIFIER', status: 422, apiCode: 'UNSUPPORTED_IDENTIFIER' });
      // A three-legged token already names the device; sending it too is UNNECESSARY_IDENTIFIER.
      const three = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'terroir-server', clientSecret: 's3cret', devices, tokensIdentify: PHONE });
      closers.push(() => three.stop());
      const unn = await fail(client({}, three).verify({ phoneNumber: PHONE }, AREA));
      expect(unn).toMatchObject({ code: 'GEO_OPERATOR_UNNECESSARY_IDENTIFIER', status: 422, apiCode: 'UNNECESSARY_IDENTIFIER' });
      expect(unn.message).toMatch(/three-legged|3-legged/);
    });

    it.each([
      [422, 'MISSING_IDENTIFIER', 'GEO_OPERATOR_MISSING_IDENTIFIER', CamaraRequestError],
      [422, 'IDENTIFIER_MISMATCH', 'GEO_OPERATOR_IDENTIFIER_MISMATCH', CamaraRequestError],
      [422, 'SOMETHING_NEW', 'GEO_OPERATOR_UNPROCESSABLE', CamaraRequestError],
      [400, 'INVALID_ARGUMENT', 'GEO_OPERATOR_INVALID_ARGUMENT', CamaraRequestError],
      [400, 'OUT_OF_RANGE', 'GEO_OPERATOR_OUT_OF_RANGE', CamaraRequestError],
      [404, 'IDENTIFIER_NOT_FOUND', 'GEO_OPERATOR_IDENTIFIER_NOT_FOUND', CamaraRequestError],
      [403, 'PERMISSION_DENIED', 'GEO_OPERATOR_PERMISSION_DENIED', CamaraAuthError],
      [502, 'BAD_GATEWAY', 'GEO_OPERATOR_UNAVAILABLE', CamaraUnavailableError],
    ])('HTTP %i %s → %s', async (status, apiCode, code, cls) => {
      op.answerNext(status, JSON.stringify({ status, code: apiCode, message: 'x' }));
      const err = await fail(v.verify({ phoneNumber: PHONE }, AREA));
      expect(err).toBeInstanceOf(cls);
      expect(err).toMatchObject({ code, status, apiCode });
    });

    it('403 from the double when the token lacks the scope', async () => {
      const noScope = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'terroir-server', clientSecret: 's3cret', devices, grantedScopes: [] });
      closers.push(() => noScope.stop());
      const err = await fail(client({}, noScope).verify({ phoneNumber: PHONE }, AREA));
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_PERMISSION_DENIED', status: 403, apiCode: 'PERMISSION_DENIED' });
    });

    it('401 twice: one token refresh and one retry, then GEO_OPERATOR_UNAUTHENTICATED', async () => {
      await v.verify({ phoneNumber: PHONE }, AREA);
      const tokens = op.tokensIssued;
      const calls = op.verifyCalls;
      op.failNext(401, { times: 2 });
      const err = await fail(v.verify({ phoneNumber: PHONE }, AREA));
      expect(err).toBeInstanceOf(CamaraAuthError);
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_UNAUTHENTICATED', status: 401, apiCode: 'UNAUTHENTICATED' });
      expect(op.tokensIssued).toBe(tokens + 1);
      expect(op.verifyCalls).toBe(calls + 2);
    });

    it('429 with a short Retry-After: waits it out once and retries', async () => {
      op.failNext(429, { retryAfter: '1' });
      const calls = op.verifyCalls;
      const t0 = Date.now();
      expect((await v.verify({ phoneNumber: PHONE }, AREA)).result).toBe('TRUE');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(950);
      expect(op.verifyCalls).toBe(calls + 2);
    });

    it('429 with a long Retry-After: a clear "retry after N s" error at once, and no request until then', async () => {
      const x = client();
      op.failNext(429, { retryAfter: '120' });
      const t0 = Date.now();
      const err = await fail(x.verify({ phoneNumber: PHONE }, AREA));
      expect(Date.now() - t0).toBeLessThan(900);
      expect(err).toBeInstanceOf(CamaraUnavailableError);
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_RATE_LIMITED', status: 429, retryAfterS: 120 });
      expect(err.message).toMatch(/retry after 120 s/);
      const calls = op.verifyCalls;
      const again = await fail(x.verify({ phoneNumber: PHONE }, AREA));
      expect(again).toMatchObject({ code: 'GEO_OPERATOR_RATE_LIMITED' });
      expect(again.retryAfterS).toBeGreaterThan(100);
      expect(op.verifyCalls).toBe(calls);
      // An HTTP-date Retry-After counts too.
      const y = client();
      op.failNext(429, { retryAfter: new Date(Date.now() + 90_000).toUTCString() });
      const dated = await fail(y.verify({ phoneNumber: PHONE }, AREA));
      expect(dated.retryAfterS).toBeGreaterThan(80);
      expect(dated.retryAfterS).toBeLessThanOrEqual(91);
    });

    it('429 without Retry-After: rate limited, no retry', async () => {
      const x = client();
      op.failNext(429);
      const calls = op.verifyCalls;
      const err = await fail(x.verify({ phoneNumber: PHONE }, AREA));
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_RATE_LIMITED', status: 429, retryAfterS: undefined });
      expect(op.verifyCalls).toBe(calls + 1);
    });
  });

  describe('device identifiers', () => {
    it.each(['not:an:address', ':', '2001:db8::1::2', '2001:db8::g', 'fe80::1%eth0', '2001:db8::/64', '1.2.3.4', '12345:db8::1'])(
      'ipv6Address %s is refused locally', async (a) => {
        const calls = op.verifyCalls;
        const err = await fail(v.verify({ ipv6Address: a }, AREA));
        expect(err).toMatchObject({ code: 'GEO_OPERATOR_BAD_REQUEST' });
        expect(err.message).toMatch(/ipv6Address/);
        expect(op.verifyCalls).toBe(calls);
      });

    it('a valid IPv6 address reaches the operator', async () => {
      expect((await v.verify({ ipv6Address: V6 }, AREA)).result).toBe('TRUE');
      expect((await v.verify({ ipv6Address: '::ffff:84.125.93.10' }, AREA).catch((e: unknown) => e))).toMatchObject({ code: 'GEO_OPERATOR_IDENTIFIER_NOT_FOUND' });
    });

    it('networkAccessIdentifier is never sent (r3.2 does not allow it)', async () => {
      const calls = op.verifyCalls;
      const err = await fail(v.verify({ phoneNumber: PHONE, networkAccessIdentifier: '123456789@domain.com' }, AREA));
      expect(err).toMatchObject({ code: 'GEO_OPERATOR_BAD_REQUEST' });
      expect(err.message).toMatch(/networkAccessIdentifier.*not allow/);
      expect(op.verifyCalls).toBe(calls);
    });
  });

  describe('private_key_jwt (RFC 7523)', () => {
    const keys = {
      ES256: generateKeyPairSync('ec', { namedCurve: 'P-256' }),
      RS256: generateKeyPairSync('rsa', { modulusLength: 2048 }),
      PS256: generateKeyPairSync('rsa', { modulusLength: 2048 }),
    };

    it.each(['ES256', 'RS256', 'PS256'] as const)('%s: the double verifies the assertion and issues a token', async (alg) => {
      const jwtOp = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'terroir-server', clientKey: { publicKey: keys[alg].publicKey, alg }, devices });
      closers.push(() => jwtOp.stop());
      const x = client({ clientSecret: undefined, privateKeyJwt: { key: keys[alg].privateKey.export({ type: 'pkcs8', format: 'pem' }), alg, kid: 'k1' } }, jwtOp);
      expect((await x.verify({ phoneNumber: PHONE }, AREA)).result).toBe('TRUE');
      const a = jwtOp.lastAssertion!;
      expect(a.header).toMatchObject({ alg, kid: 'k1' });
      expect(a.claims).toMatchObject({ iss: 'terroir-server', sub: 'terroir-server', aud: jwtOp.tokenUrl });
      expect(a.claims.exp - a.claims.iat).toBeLessThanOrEqual(60);
      expect(a.claims.jti).toMatch(/^[0-9a-f-]{36}$/);
      // A second token request carries a fresh jti (the double refuses replays).
      jwtOp.revokeAllTokens();
      expect((await x.verify({ phoneNumber: PHONE }, AREA)).result).toBe('TRUE');
      expect(jwtOp.lastAssertion!.claims.jti).not.toBe(a.claims.jti);
    });

    it('the wrong key, or a client secret for a private_key_jwt client, is invalid_client', async () => {
      const jwtOp = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'terroir-server', clientKey: { publicKey: keys.ES256.publicKey, alg: 'ES256' }, devices });
      closers.push(() => jwtOp.stop());
      const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const wrong = await fail(client({ clientSecret: undefined, privateKeyJwt: { key: other.privateKey, alg: 'ES256' } }, jwtOp).verify({ phoneNumber: PHONE }, AREA));
      expect(wrong).toBeInstanceOf(CamaraAuthError);
      expect(wrong).toMatchObject({ code: 'GEO_OPERATOR_TOKEN', status: 401, apiCode: 'invalid_client' });
      const basic = await fail(client({}, jwtOp).verify({ phoneNumber: PHONE }, AREA));
      expect(basic).toMatchObject({ code: 'GEO_OPERATOR_TOKEN', status: 401, apiCode: 'invalid_client' });
    });

    it('config errors: neither or both methods, a key that does not fit the algorithm', () => {
      const base = { baseUrl: op.baseUrl, tokenUrl: op.tokenUrl, clientId: 'c' };
      expect(() => new CamaraLocationVerifier(base as CamaraConfig)).toThrow(/clientSecret.*privateKeyJwt|one of/);
      expect(() => new CamaraLocationVerifier({ ...base, clientSecret: 'x', privateKeyJwt: { key: keys.ES256.privateKey, alg: 'ES256' } })).toThrow(/not both|exactly one/);
      expect(() => new CamaraLocationVerifier({ ...base, privateKeyJwt: { key: keys.RS256.privateKey, alg: 'ES256' } })).toThrow(/ES256 needs an EC P-256 key/);
      expect(() => new CamaraLocationVerifier({ ...base, privateKeyJwt: { key: keys.ES256.privateKey, alg: 'PS256' } })).toThrow(/PS256 needs an RSA key/);
      expect(() => new CamaraLocationVerifier({ ...base, privateKeyJwt: { key: 'not a key', alg: 'ES256' } })).toThrow(/private key/);
      expect(() => new CamaraLocationVerifier({ ...base, privateKeyJwt: { key: keys.ES256.publicKey, alg: 'ES256' } })).toThrow(/private key/);
    });
  });
});
