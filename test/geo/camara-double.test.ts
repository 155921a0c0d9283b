// Contract test of the CAMARA operator double (test/doubles/camara-operator.ts): raw HTTPS requests,
// no terroir client, checking that the double refuses what the real r3.2 API refuses, with the
// status and code the r3.2 test definitions name (camaraproject/DeviceLocation
// code/Test_definitions/location-verification.feature at tag r3.2; scenario tags below), that every
// error code it sends is one ../shared/spec/camara/location-verification.yaml allows for that status,
// and that its token endpoint checks private_key_jwt client assertions as RFC 7523 and CAMARA's
// Security and Interoperability Profile ("Client Authentication") require.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { SignJWT } from 'jose';
import { Agent, request } from 'undici';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CamaraOperatorDouble, makeTestPki, type CamaraOperatorOptions } from '../doubles/camara-operator.js';
import { tempDir } from '../support/tmp.js';
import { parseRfc3339 } from '../../src/geo/camara.js';

const SPEC = path.resolve(process.cwd(), '../shared/spec/camara/location-verification.yaml');
const FRA = { lat: 50.1109, lon: 8.6821 };
const PHONE = '+4915112345678';
const AREA = { areaType: 'CIRCLE', center: { latitude: FRA.lat, longitude: FRA.lon }, radius: 5000 };
const now = Date.now();
const devices: CamaraOperatorOptions['devices'] = [
  { phoneNumber: PHONE, ipv4: { publicAddress: '84.125.93.10', publicPort: 59765 }, location: { ...FRA, accuracyM: 500, time: new Date(now - 10_000) } },
  { phoneNumber: '+4915100000001' },
  { phoneNumber: '+4915100000002', location: { ...FRA, accuracyM: 500, time: new Date(now - 3600_000) } },
  { phoneNumber: '+4915100000009', serviceNotApplicable: true, location: { ...FRA, accuracyM: 500, time: new Date(now) } },
];

/** status → the error codes the spec allows for POST /verify (from its response $refs). */
function specErrorCodes(): Map<number, string[]> {
  const doc = YAML.parse(fs.readFileSync(SPEC, 'utf8')) as {
    paths: Record<string, { post: { responses: Record<string, { $ref?: string }> } }>;
    components: { responses: Record<string, { content: Record<string, { schema: { allOf: { properties?: { code?: { enum: string[] } } }[] } }> }> };
  };
  const out = new Map<number, string[]>();
  for (const [status, r] of Object.entries(doc.paths['/verify']!.post.responses)) {
    if (r.$ref === undefined) continue;
    const name = r.$ref.split('/').pop()!;
    const schema = doc.components.responses[name]!.content['application/json']!.schema;
    out.set(Number(status), schema.allOf.flatMap((s) => s.properties?.code?.enum ?? []));
  }
  return out;
}

describe('CAMARA operator double: the r3.2 contract', () => {
  const tmp = tempDir('terroir-camara-double-');
  const codes = specErrorCodes();
  let pki: ReturnType<typeof makeTestPki>;
  let op: CamaraOperatorDouble;
  let dispatcher: Agent;
  const doubles: CamaraOperatorDouble[] = [];

  beforeAll(async () => {
    pki = makeTestPki(tmp.dir);
    op = await start({});
    dispatcher = new Agent({ connect: { ca: pki.caCert } });
  });

  afterAll(async () => {
    await dispatcher?.close();
    for (const d of doubles) await d.stop();
    tmp.cleanup();
  });

  async function start(over: Partial<CamaraOperatorOptions>): Promise<CamaraOperatorDouble> {
    const d = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'c', clientSecret: 's', devices, coverage: { ...FRA, radiusM: 300_000 }, minRadiusM: 1000, ...over });
    doubles.push(d);
    return d;
  }

  interface Reply { status: number; json: Record<string, unknown>; headers: Record<string, string | string[] | undefined> }

  async function verify(body: unknown, opts: { target?: CamaraOperatorDouble; token?: string | null; raw?: boolean } = {}): Promise<Reply> {
    const target = opts.target ?? op;
    const token = opts.token === undefined ? target.issueToken() : opts.token;
    const correlator = randomUUID();
    const res = await request(`${target.baseUrl}/verify`, {
      method: 'POST', dispatcher,
      headers: { 'content-type': 'application/json', 'x-correlator': correlator, ...(token !== null ? { authorization: `Bearer ${token}` } : {}) },
      ...(body === undefined ? {} : { body: opts.raw === true ? (body as string) : JSON.stringify(body) }),
    });
    const json = (await res.body.json()) as Record<string, unknown>;
    // Every answer: JSON, the correlator echoed.
    expect(String(res.headers['content-type'])).toMatch(/^application\/json/);
    expect(res.headers['x-correlator']).toBe(correlator);
    return { status: res.statusCode, json, headers: res.headers };
  }

  /** An error reply: the status, the code, ErrorInfo, and a code the spec allows for that status. */
  function expectError(r: Reply, status: number, code: string): void {
    expect({ status: r.status, code: r.json.code }).toEqual({ status, code });
    expect(r.json.status).toBe(status);
    expect(typeof r.json.message === 'string' && r.json.message.length > 0).toBe(true);
    expect(codes.get(status)).toContain(code);
  }

  /** A success reply complying with VerifyLocationResponse and its unwritten rules. */
  function expectAnswer(r: Reply): void {
    expect(r.status).toBe(200);
    expect(['TRUE', 'FALSE', 'PARTIAL']).toContain(r.json.verificationResult);
    expect(() => parseRfc3339(r.json.lastLocationTime as string)).not.toThrow();
    expect(r.json.matchRate !== undefined).toBe(r.json.verificationResult === 'PARTIAL');
    if (r.json.matchRate !== undefined) expect(r.json.matchRate).toSatisfy((m: number) => Number.isInteger(m) && m >= 1 && m <= 99);
    if (r.json.device !== undefined) expect(Object.keys(r.json.device as object)).toHaveLength(1);
  }

  it('the spec file is the r3.2 one the double follows', () => {
    expect(codes.get(422)).toEqual(expect.arrayContaining(['SERVICE_NOT_APPLICABLE', 'MISSING_IDENTIFIER', 'UNSUPPORTED_IDENTIFIER', 'UNNECESSARY_IDENTIFIER', 'LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE']));
    expect(codes.get(400)).toEqual(['INVALID_ARGUMENT', 'OUT_OF_RANGE']);
  });

  it('01/02/04: TRUE inside, FALSE 20 km away, PARTIAL at the edge; the device named is the one used', async () => {
    const t = await verify({ device: { phoneNumber: PHONE, ipv4Address: { publicAddress: '84.125.93.10', publicPort: 59765 } }, area: AREA });
    expectAnswer(t);
    expect(t.json).toMatchObject({ verificationResult: 'TRUE', device: { phoneNumber: PHONE } });
    const f = await verify({ device: { phoneNumber: PHONE }, area: { ...AREA, center: { latitude: FRA.lat + 0.18, longitude: FRA.lon }, radius: 2000 } });
    expectAnswer(f);
    expect(f.json.verificationResult).toBe('FALSE');
    const p = await verify({ device: { phoneNumber: PHONE }, area: { ...AREA, center: { latitude: FRA.lat + 0.009, longitude: FRA.lon }, radius: 1000 } });
    expectAnswer(p);
    expect(p.json.verificationResult).toBe('PARTIAL');
  });

  it('03: with maxAge, lastLocationTime is not older than maxAge; 422.3: else UNABLE_TO_FULFILL_MAX_AGE', async () => {
    const sentAt = Date.now();
    const r = await verify({ device: { phoneNumber: PHONE }, area: AREA, maxAge: 60 });
    expectAnswer(r);
    expect(sentAt - parseRfc3339(r.json.lastLocationTime as string).getTime()).toBeLessThanOrEqual(60_000);
    expectError(await verify({ device: { phoneNumber: '+4915100000002' }, area: AREA, maxAge: 60 }), 422, 'LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE');
    expectError(await verify({ device: { phoneNumber: PHONE }, area: AREA, maxAge: 0 }), 422, 'LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE');
    // No location known at all: with maxAge UNABLE_TO_FULFILL_MAX_AGE, without UNABLE_TO_LOCATE (422.4).
    expectError(await verify({ device: { phoneNumber: '+4915100000001' }, area: AREA, maxAge: 60 }), 422, 'LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE');
    expectError(await verify({ device: { phoneNumber: '+4915100000001' }, area: AREA }), 422, 'LOCATION_VERIFICATION.UNABLE_TO_LOCATE');
  });

  it('C01.01 / C01.02: an empty device or a non-compliant identifier is 400 INVALID_ARGUMENT', async () => {
    for (const device of [
      {}, { phoneNumber: '015112345678' }, { phoneNumber: 4915112345678 },
      { ipv4Address: { publicAddress: '84.125.93.10' } }, { ipv4Address: { publicAddress: '999.1.1.1', publicPort: 1 } }, { ipv4Address: '84.125.93.10' },
      { ipv6Address: 'zz::1' }, { ipv6Address: '2001:db8::/64' }, { ipv6Address: 'fe80::1%eth0' }, { networkAccessIdentifier: 42 },
    ]) {
      expectError(await verify({ device, area: AREA }), 400, 'INVALID_ARGUMENT');
    }
  });

  it('C01.03: a compliant identifier of no known device is 404 IDENTIFIER_NOT_FOUND', async () => {
    expectError(await verify({ device: { phoneNumber: '+4915199999999' }, area: AREA }), 404, 'IDENTIFIER_NOT_FOUND');
    expectError(await verify({ device: { ipv6Address: '2001:db8::1' }, area: AREA }), 404, 'IDENTIFIER_NOT_FOUND');
  });

  it('C02.04 / C01.05: three-legged token with a device → UNNECESSARY_IDENTIFIER; two-legged without → MISSING_IDENTIFIER', async () => {
    const three = await start({ tokensIdentify: PHONE });
    expectError(await verify({ device: { phoneNumber: PHONE }, area: AREA }, { target: three }), 422, 'UNNECESSARY_IDENTIFIER');
    const ok = await verify({ area: AREA }, { target: three });
    expectAnswer(ok);
    expect(ok.json.device).toBeUndefined();
    expectError(await verify({ area: AREA }), 422, 'MISSING_IDENTIFIER');
  });

  it('C01.06: only unsupported identifiers → UNSUPPORTED_IDENTIFIER (networkAccessIdentifier is never supported)', async () => {
    expectError(await verify({ device: { networkAccessIdentifier: '123456789@domain.com' }, area: AREA }), 422, 'UNSUPPORTED_IDENTIFIER');
    const v4 = await start({ supportedIdentifiers: ['phoneNumber', 'ipv4Address'] });
    expectError(await verify({ device: { ipv6Address: '2001:db8::1' }, area: AREA }, { target: v4 }), 422, 'UNSUPPORTED_IDENTIFIER');
  });

  it('C01.07: a device the service is not offered for → SERVICE_NOT_APPLICABLE', async () => {
    expectError(await verify({ device: { phoneNumber: '+4915100000009' }, area: AREA }), 422, 'SERVICE_NOT_APPLICABLE');
  });

  it('400.1 / 400.2 / 400.3 / 400.4: missing or non-compliant body and area properties', async () => {
    expectError(await verify(undefined), 400, 'INVALID_ARGUMENT');
    expectError(await verify('{"area":', { raw: true }), 400, 'INVALID_ARGUMENT');
    expectError(await verify({}), 400, 'INVALID_ARGUMENT');
    const dev = { phoneNumber: PHONE };
    const bodies: unknown[] = [
      { device: dev, area: { ...AREA, areaType: 'POLYGON' } },
      { device: dev, area: { ...AREA, center: { latitude: 91, longitude: 8 } } },
      { device: dev, area: { ...AREA, center: { latitude: '50', longitude: 8 } } },
      { device: dev, area: { ...AREA, center: { latitude: 50, longitude: -181 } } },
      { device: dev, area: { ...AREA, radius: 0 } },
      { device: dev, area: { ...AREA, radius: '5000' } },
      { device: dev, area: AREA, maxAge: 1.5 },
      { device: dev, area: AREA, maxAge: '60' },
      { device: dev },
      { device: dev, area: { center: AREA.center, radius: 5000 } },
      { device: dev, area: { areaType: 'CIRCLE', radius: 5000 } },
      { device: dev, area: { areaType: 'CIRCLE', center: { longitude: 8 }, radius: 5000 } },
      { device: dev, area: { areaType: 'CIRCLE', center: { latitude: 50 }, radius: 5000 } },
      { device: dev, area: { areaType: 'CIRCLE', center: AREA.center } },
    ];
    for (const b of bodies) expectError(await verify(b), 400, 'INVALID_ARGUMENT');
  });

  it('401.1 / 401.2 / 401.3: no, expired or invalid token; 403: a token without the scope', async () => {
    const body = { device: { phoneNumber: PHONE }, area: AREA };
    expectError(await verify(body, { token: null }), 401, 'UNAUTHENTICATED');
    expectError(await verify(body, { token: op.issueToken({ lifetimeS: 0 }) }), 401, 'UNAUTHENTICATED');
    expectError(await verify(body, { token: 'not-a-token' }), 401, 'UNAUTHENTICATED');
    expectError(await verify(body, { token: op.issueToken({ scopes: [] }) }), 403, 'PERMISSION_DENIED');
  });

  it('422.1 / 422.2: an area outside coverage, an area below the minimum radius', async () => {
    expectError(await verify({ device: { phoneNumber: PHONE }, area: { ...AREA, center: { latitude: 40.4168, longitude: -3.7038 } } }), 422, 'LOCATION_VERIFICATION.AREA_NOT_COVERED');
    expectError(await verify({ device: { phoneNumber: PHONE }, area: { ...AREA, radius: 200 } }), 422, 'LOCATION_VERIFICATION.INVALID_AREA');
  });

  it('429 and 503 carry Retry-After when asked to', async () => {
    op.failNext(429, { retryAfter: '7' });
    const r = await verify({ device: { phoneNumber: PHONE }, area: AREA });
    expect(r.status).toBe(429);
    expect(r.headers['retry-after']).toBe('7');
    expect(r.json).toMatchObject({ status: 429, code: 'TOO_MANY_REQUESTS' });
  });

  describe('token endpoint', () => {
    const es = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    let jwtOp: CamaraOperatorDouble;
    beforeAll(async () => {
      jwtOp = await start({ clientSecret: undefined, clientKey: { publicKey: es.publicKey, alg: 'ES256' } });
    });

    async function token(form: Record<string, string>, headers: Record<string, string> = {}, target = jwtOp): Promise<{ status: number; json: Record<string, unknown> }> {
      const res = await request(target.tokenUrl, {
        method: 'POST', dispatcher, headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
        body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'location-verification:verify', ...form }).toString(),
      });
      return { status: res.statusCode, json: (await res.body.json()) as Record<string, unknown> };
    }

    interface AssertionOpts { iss?: string; sub?: string; aud?: string; expIn?: number; iat?: number | null; jti?: string | null; alg?: string; key?: Parameters<SignJWT['sign']>[0] }
    function assertion(o: AssertionOpts = {}): Promise<string> {
      const t = Math.floor(Date.now() / 1000);
      let j = new SignJWT({}).setProtectedHeader({ alg: o.alg ?? 'ES256' }).setIssuer(o.iss ?? 'c').setSubject(o.sub ?? 'c')
        .setAudience(o.aud ?? jwtOp.tokenUrl).setExpirationTime(t + (o.expIn ?? 60));
      if (o.iat !== null) j = j.setIssuedAt(o.iat ?? t);
      if (o.jti !== null) j = j.setJti(o.jti ?? randomUUID());
      return j.sign(o.key ?? es.privateKey);
    }
    const withAssertion = async (o: AssertionOpts = {}, extra: Record<string, string> = {}): Promise<Record<string, string>> => ({
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: await assertion(o), ...extra,
    });

    it('accepts a valid assertion once; the same assertion again is a replay', async () => {
      const form = await withAssertion();
      const ok = await token(form);
      expect(ok.status).toBe(200);
      expect(ok.json).toMatchObject({ token_type: 'Bearer', scope: 'location-verification:verify' });
      const replay = await token(form);
      expect(replay).toMatchObject({ status: 401, json: { error: 'invalid_client' } });
      expect(jwtOp.lastTokenRefusal).toMatch(/replay/);
    });

    it.each<[string, AssertionOpts, Record<string, string>?]>([
      ['another key', { key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey }],
      ['iss is not the client', { iss: 'other' }],
      ['sub is not the client', { sub: 'other' }],
      ['aud is another endpoint', { aud: 'https://127.0.0.1/other/token' }],
      ['expired', { expIn: -60, iat: Math.floor(Date.now() / 1000) - 120 }],
      ['exp more than 300 s ahead', { expIn: 600, iat: null }],
      ['exp - iat more than 300 s', { expIn: 200, iat: Math.floor(Date.now() / 1000) - 200 }],
      ['iat in the future', { iat: Math.floor(Date.now() / 1000) + 120, expIn: 200 }],
      ['no jti', { jti: null }],
      ['RS256 where ES256 is registered', { alg: 'RS256', key: rsa.privateKey }],
      ['client_id of another client', {}, { client_id: 'other' }],
    ])('refuses an assertion: %s', async (_what, o, extra) => {
      const r = await token(await withAssertion(o, extra ?? {}));
      expect(r).toMatchObject({ status: 401, json: { error: 'invalid_client' } });
    });

    it('refuses alg none, a wrong assertion type, two methods at once, and a secret for a private_key_jwt client', async () => {
      const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from(JSON.stringify({ iss: 'c', sub: 'c', aud: jwtOp.tokenUrl, exp: Math.floor(Date.now() / 1000) + 60, jti: randomUUID() })).toString('base64url')}.`;
      expect(await token({ client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: none })).toMatchObject({ status: 401 });
      expect(await token({ ...(await withAssertion()), client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:saml2-bearer' })).toMatchObject({ status: 401 });
      const basic = `Basic ${Buffer.from('c:s').toString('base64')}`;
      expect(await token(await withAssertion(), { authorization: basic })).toMatchObject({ status: 400, json: { error: 'invalid_request' } });
      expect(await token({}, { authorization: basic })).toMatchObject({ status: 401, json: { error: 'invalid_client' } });
      expect(await token({})).toMatchObject({ status: 401, json: { error: 'invalid_client' } });
    });

    it('a client_secret_basic client: the right secret only, and no assertion instead', async () => {
      expect((await token({}, { authorization: `Basic ${Buffer.from('c:s').toString('base64')}` }, op)).status).toBe(200);
      expect(await token({}, { authorization: `Basic ${Buffer.from('c:x').toString('base64')}` }, op)).toMatchObject({ status: 401, json: { error: 'invalid_client' } });
      expect(await token(await withAssertion(), {}, op)).toMatchObject({ status: 401, json: { error: 'invalid_client' } });
    });
  });
});
