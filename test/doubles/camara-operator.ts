/**
 * Test double of a mobile operator's CAMARA Device Location Verification API, release r3.2 (API
 * v3.0.0): ../shared/spec/camara/location-verification.yaml, and the r3.2 test definitions
 * (camaraproject/DeviceLocation code/Test_definitions/location-verification.feature at tag r3.2),
 * plus the OAuth2 client-credentials token endpoint the operator would run, with the client
 * authentication of CAMARA's Security and Interoperability Profile (IdentityAndConsentManagement
 * documentation/CAMARA-Security-Interoperability.md, "Client Authentication": private_key_jwt per
 * RFC 7523, assertion exp at most 300 s ahead) and client_secret_basic for older registrations.
 *
 * It speaks the real protocol over real TLS, checks bearer tokens and scope, refuses every request
 * the spec refuses with the status and code the test definitions name (scenario tags in the
 * comments below; test/geo/camara-double.test.ts is the contract test of these rules), and answers
 * from configured geography: each known device has a network-estimated position (a circle) the
 * double compares with the requested area exactly as the spec describes TRUE / FALSE / PARTIAL
 * (matchRate = |R ∩ N| / |N|). It never answers with a fix older than the maxAge asked for
 * (scenario location_verification_03): it answers 422 UNABLE_TO_FULFILL_MAX_AGE instead.
 */
import { createHash, createPublicKey, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import { isIPv6, type AddressInfo } from 'node:net';
import path from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { decodeJwt, decodeProtectedHeader, jwtVerify, type JWTPayload } from 'jose';

const SCOPE = 'location-verification:verify';
const API_PATH = '/location-verification/v3/verify';
const TOKEN_PATH = '/oauth2/token';
const MAX_BODY = 16 * 1024;
const EARTH_R = 6_371_008.8;
const PHONE = /^\+[1-9][0-9]{4,14}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const CORRELATOR = /^[a-zA-Z0-9-_:;./<>{}]{0,256}$/;
const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
/** CAMARA profile: exp at most 300 s after receipt, and exp - iat at most 300 s. */
const MAX_ASSERTION_LIFETIME_S = 300;
const ASSERTION_CLOCK_TOLERANCE_S = 5;

export type DeviceIdentifierType = 'phoneNumber' | 'ipv4Address' | 'ipv6Address';

export interface OperatorDevice {
  phoneNumber?: string;
  ipv4?: { publicAddress: string; publicPort: number };
  ipv6?: string;
  /** Where the network places the device; absent means the network cannot locate it. */
  location?: { lat: number; lon: number; accuracyM: number; time: Date };
  /** The network can locate the device afresh on request (its fix is then "now"), as for maxAge 0. */
  freshLocate?: boolean;
  /** The service is not offered for this subscription (scenario C01.07: 422 SERVICE_NOT_APPLICABLE). */
  serviceNotApplicable?: boolean;
}

export interface CamaraOperatorOptions {
  tls: { key: Buffer; cert: Buffer };
  clientId: string;
  /** The client is registered for client_secret_basic with this secret. */
  clientSecret?: string;
  /** The client is registered for private_key_jwt with this public key and algorithm. */
  clientKey?: { publicKey: KeyObject | string; alg: 'ES256' | 'RS256' | 'PS256' };
  tokenLifetimeS?: number;
  devices: OperatorDevice[];
  /** Requested areas whose centre lies outside this circle get AREA_NOT_COVERED. */
  coverage?: { lat: number; lon: number; radiusM: number };
  /** Operators may refuse small areas (spec: "e.g. 1000 meters"). */
  minRadiusM?: number;
  /** Identifier types this operator supports (default all three); networkAccessIdentifier never (r3.2). */
  supportedIdentifiers?: DeviceIdentifierType[];
  /** Issue three-legged tokens that identify the device with this phone number (the request must then not name a device). */
  tokensIdentify?: string;
  /** Scopes the client is granted (default: location-verification:verify); a token without it gets 403. */
  grantedScopes?: string[];
}

interface Token {
  expiresAt: number;
  scopes: string[];
  /** Three-legged: the device the token identifies. */
  device?: OperatorDevice;
}

export class CamaraOperatorDouble {
  tokensIssued = 0;
  verifyCalls = 0;
  /** /verify calls refused with 401 (missing, unknown or expired token). */
  unauthenticated = 0;
  /** Token requests refused (any reason), and the last refusal's error_description. */
  tokenRefusals = 0;
  lastTokenRefusal: string | undefined;
  lastCorrelator: string | undefined;
  /** The last client assertion accepted (private_key_jwt). */
  lastAssertion: { header: Record<string, unknown>; claims: JWTPayload & { iss: string; sub: string; aud: string | string[]; exp: number; iat: number; jti: string } } | undefined;
  private readonly tokens = new Map<string, Token>();
  /** jti values of accepted assertions, until their exp (single use). */
  private readonly seenJti = new Map<string, number>();
  private readonly publicKey: KeyObject | undefined;
  private fail: { status: number; left: number; retryAfter?: string } | undefined;
  private canned: { status: number; body: string; contentType: string } | undefined;

  private constructor(
    private readonly server: https.Server,
    private readonly opts: CamaraOperatorOptions,
  ) {
    if ((opts.clientSecret === undefined) === (opts.clientKey === undefined)) throw new Error('register the client with exactly one of clientSecret and clientKey');
    this.publicKey = opts.clientKey && (typeof opts.clientKey.publicKey === 'string' ? createPublicKey(opts.clientKey.publicKey) : opts.clientKey.publicKey);
  }

  static async start(opts: CamaraOperatorOptions): Promise<CamaraOperatorDouble> {
    const server = https.createServer({ key: opts.tls.key, cert: opts.tls.cert });
    const d = new CamaraOperatorDouble(server, opts);
    server.on('request', (req, res) => {
      d.handle(req, res).catch((err: unknown) => {
        if (!res.headersSent) send(res, 500, { status: 500, code: 'INTERNAL', message: String(err) });
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return d;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  get baseUrl(): string {
    return `https://127.0.0.1:${this.port}/location-verification/v3`;
  }

  get tokenUrl(): string {
    return `https://127.0.0.1:${this.port}${TOKEN_PATH}`;
  }

  /** Invalidates every issued token, as an operator's key rotation or revocation would. */
  revokeAllTokens(): void {
    this.tokens.clear();
  }

  /** Issues a token as the endpoint would (for raw contract tests); `scopes` default to the granted ones. */
  issueToken(opts: { scopes?: string[]; lifetimeS?: number } = {}): string {
    return this.mint(opts.scopes ?? this.opts.grantedScopes ?? [SCOPE], opts.lifetimeS);
  }

  /**
   * Answers the next authenticated /verify (the next `times`, default 1) with this status and a
   * CAMARA error body (e.g. 401, 429, 503), with a Retry-After header when given.
   */
  failNext(status: number, opts: { times?: number; retryAfter?: string } = {}): void {
    this.fail = { status, left: opts.times ?? 1, ...(opts.retryAfter !== undefined ? { retryAfter: opts.retryAfter } : {}) };
  }

  /**
   * Answers the next authenticated /verify with exactly this (possibly off-spec) response, to test
   * how the client copes with a misbehaving operator.
   */
  answerNext(status: number, body: string, contentType = 'application/json'): void {
    this.canned = { status, body, contentType };
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'https://localhost');
    if (url.pathname === TOKEN_PATH) return this.token(req, res);
    if (url.pathname === API_PATH) return this.verify(req, res);
    send(res, 404, { status: 404, code: 'NOT_FOUND', message: 'The specified resource is not found.' });
  }

  private mint(scopes: string[], lifetimeS?: number): string {
    const token = randomBytes(24).toString('base64url');
    const lifetime = lifetimeS ?? this.opts.tokenLifetimeS ?? 3600;
    const device = this.opts.tokensIdentify !== undefined ? this.opts.devices.find((d) => d.phoneNumber === this.opts.tokensIdentify) : undefined;
    this.tokens.set(token, { expiresAt: Date.now() + lifetime * 1000, scopes, ...(device ? { device } : {}) });
    this.tokensIssued++;
    return token;
  }

  private refuseToken(res: ServerResponse, status: number, error: string, description: string): void {
    this.tokenRefusals++;
    this.lastTokenRefusal = description;
    if (status === 401) res.setHeader('www-authenticate', 'Basic realm="operator"');
    send(res, status, { error, error_description: description });
  }

  private async token(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'POST') return this.refuseToken(res, 405, 'invalid_request', 'use POST');
    if (!String(req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) {
      return this.refuseToken(res, 400, 'invalid_request', 'form-encoded body required');
    }
    const body = await readBody(req);
    if (body === null) return this.refuseToken(res, 413, 'invalid_request', 'body too large');
    const form = new URLSearchParams(body.toString('utf8'));
    const auth = String(req.headers.authorization ?? '');
    const assertion = form.get('client_assertion');
    const usesBasic = auth.startsWith('Basic ');
    const usesPostSecret = form.has('client_secret');
    // RFC 6749 section 2.3: a client MUST NOT use more than one authentication method per request.
    if ([usesBasic, usesPostSecret, assertion !== null].filter(Boolean).length > 1) {
      return this.refuseToken(res, 400, 'invalid_request', 'more than one client authentication method');
    }
    if (this.opts.clientKey !== undefined) {
      if (assertion === null) return this.refuseToken(res, 401, 'invalid_client', 'this client is registered for private_key_jwt');
      const why = await this.checkAssertion(form, assertion);
      if (why !== undefined) return this.refuseToken(res, 401, 'invalid_client', `client_assertion refused: ${why}`);
    } else {
      if (!usesBasic) return this.refuseToken(res, 401, 'invalid_client', 'this client is registered for client_secret_basic');
      const decoded = Buffer.from(auth.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      let id = '';
      let secret = '';
      try {
        if (colon > 0) {
          id = decodeURIComponent(decoded.slice(0, colon));
          secret = decodeURIComponent(decoded.slice(colon + 1));
        }
      } catch {
        // Malformed percent-encoding: authentication fails below.
      }
      if (!sameSecret(id, this.opts.clientId) || !sameSecret(secret, this.opts.clientSecret ?? '')) {
        return this.refuseToken(res, 401, 'invalid_client', 'client authentication failed');
      }
    }
    if (form.get('grant_type') !== 'client_credentials') {
      return this.refuseToken(res, 400, 'unsupported_grant_type', 'only client_credentials is supported');
    }
    const scopes = (form.get('scope') ?? SCOPE).split(' ').filter(Boolean);
    if (scopes.some((s) => s !== SCOPE)) return this.refuseToken(res, 400, 'invalid_scope', `only ${SCOPE}`);
    // RFC 6749 section 3.3: the server may issue fewer scopes than requested, and says so.
    const granted = scopes.filter((s) => (this.opts.grantedScopes ?? [SCOPE]).includes(s));
    const token = this.mint(granted);
    res.setHeader('cache-control', 'no-store');
    send(res, 200, { access_token: token, token_type: 'Bearer', expires_in: this.opts.tokenLifetimeS ?? 3600, scope: granted.join(' ') });
  }

  /** RFC 7523 sections 2.2 and 3 with the CAMARA profile's lifetime limit: why the assertion is refused, or undefined. */
  private async checkAssertion(form: URLSearchParams, assertion: string): Promise<string | undefined> {
    const key = this.opts.clientKey!;
    if (form.get('client_assertion_type') !== CLIENT_ASSERTION_TYPE) return `client_assertion_type must be ${CLIENT_ASSERTION_TYPE}`;
    const clientIdParam = form.get('client_id');
    if (clientIdParam !== null && clientIdParam !== this.opts.clientId) return 'client_id does not match';
    let header: Record<string, unknown>;
    let claims: JWTPayload;
    try {
      header = decodeProtectedHeader(assertion) as Record<string, unknown>;
      ({ payload: claims } = await jwtVerify(assertion, this.publicKey!, {
        algorithms: [key.alg], issuer: this.opts.clientId, subject: this.opts.clientId, audience: this.tokenUrl,
        requiredClaims: ['exp', 'jti'], clockTolerance: ASSERTION_CLOCK_TOLERANCE_S,
      }));
    } catch (err) {
      return (err as Error).message;
    }
    const now = Math.floor(Date.now() / 1000);
    const exp = claims.exp!;
    if (exp > now + MAX_ASSERTION_LIFETIME_S) return `exp is more than ${MAX_ASSERTION_LIFETIME_S} s after receipt`;
    if (claims.iat !== undefined) {
      if (claims.iat > now + ASSERTION_CLOCK_TOLERANCE_S) return 'iat is in the future';
      if (exp - claims.iat > MAX_ASSERTION_LIFETIME_S) return `exp - iat exceeds ${MAX_ASSERTION_LIFETIME_S} s`;
    }
    const jti = claims.jti!;
    if (typeof jti !== 'string' || jti === '' || jti.length > 256) return 'jti must be a non-empty string';
    for (const [j, e] of this.seenJti) if (e + ASSERTION_CLOCK_TOLERANCE_S < now) this.seenJti.delete(j);
    if (this.seenJti.has(jti)) return 'jti was already used (replay)';
    this.seenJti.set(jti, exp);
    this.lastAssertion = { header, claims: decodeJwt(assertion) as NonNullable<CamaraOperatorDouble['lastAssertion']>['claims'] };
    return undefined;
  }

  private async verify(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.verifyCalls++;
    const bad = (m: string): void => camaraError(res, 400, 'INVALID_ARGUMENT', m);
    const correlator = req.headers['x-correlator'];
    if (typeof correlator === 'string') {
      if (!CORRELATOR.test(correlator)) return bad('x-correlator header is malformed');
      res.setHeader('x-correlator', correlator);
      this.lastCorrelator = correlator;
    }
    if (req.method !== 'POST') return camaraError(res, 405, 'METHOD_NOT_ALLOWED', 'use POST');
    // 401.1-401.3: no, expired or invalid token.
    const auth = String(req.headers.authorization ?? '');
    const tok = auth.startsWith('Bearer ') ? this.tokens.get(auth.slice(7)) : undefined;
    if (tok === undefined || tok.expiresAt <= Date.now()) {
      this.unauthenticated++;
      return camaraError(res, 401, 'UNAUTHENTICATED', 'Request not authenticated due to missing, invalid, or expired credentials. A new authentication is required.');
    }
    // 403: the token lacks the scope.
    if (!tok.scopes.includes(SCOPE)) return camaraError(res, 403, 'PERMISSION_DENIED', 'Client does not have sufficient permissions to perform this action.');
    if (this.canned !== undefined) {
      const c = this.canned;
      this.canned = undefined;
      res.writeHead(c.status, { 'content-type': c.contentType });
      res.end(c.body);
      return;
    }
    if (this.fail !== undefined) {
      const f = this.fail;
      if (--f.left <= 0) this.fail = undefined;
      if (f.retryAfter !== undefined) res.setHeader('retry-after', f.retryAfter);
      if (f.status === 401) {
        this.unauthenticated++;
        return camaraError(res, 401, 'UNAUTHENTICATED', 'Request not authenticated due to missing, invalid, or expired credentials. A new authentication is required.');
      }
      const code = { 429: 'TOO_MANY_REQUESTS', 500: 'INTERNAL', 502: 'BAD_GATEWAY', 503: 'UNAVAILABLE', 504: 'TIMEOUT' }[f.status] ?? 'UNAVAILABLE';
      return camaraError(res, f.status, code, f.status === 429 ? 'Either out of resource quota or reaching rate limiting.' : 'Service Unavailable.');
    }
    // 400.1 / 400.2: the body must be a JSON object.
    if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) return bad('Client specified an invalid argument, request body or query param.');
    const raw = await readBody(req);
    if (raw === null) return bad('request body too large');
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
      if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error('not an object');
    } catch {
      return bad('Client specified an invalid argument, request body or query param.');
    }
    // 400.3 / 400.4: area (required) is a CIRCLE with a centre Point and a radius ≥ 1.
    const area = body.area as Record<string, unknown> | undefined;
    if (!isObject(area)) return bad('area is required');
    if (area.areaType !== 'CIRCLE') return bad('area.areaType must be CIRCLE');
    const center = area.center;
    if (!isObject(center)) return bad('area.center is required');
    const lat = center.latitude;
    const lon = center.longitude;
    const radius = area.radius;
    if (typeof lat !== 'number' || !Number.isFinite(lat) || lat < -90 || lat > 90) return bad('area.center.latitude must be a number from -90 to 90');
    if (typeof lon !== 'number' || !Number.isFinite(lon) || lon < -180 || lon > 180) return bad('area.center.longitude must be a number from -180 to 180');
    if (typeof radius !== 'number' || !Number.isFinite(radius) || radius < 1) return bad('area.radius must be a number ≥ 1');
    // MaxAge: an integer number of seconds (a negative age means nothing: out of range).
    const maxAge = body.maxAge;
    if (maxAge !== undefined && (typeof maxAge !== 'number' || !Number.isInteger(maxAge))) return bad('maxAge must be an integer number of seconds');
    if (typeof maxAge === 'number' && maxAge < 0) return camaraError(res, 400, 'OUT_OF_RANGE', 'maxAge must not be negative');
    // C01.01 / C01.02: a device, when present, has at least one identifier and each follows its schema.
    const device = body.device;
    let ids: Partial<Record<DeviceIdentifierType | 'networkAccessIdentifier', unknown>> = {};
    if (device !== undefined) {
      if (!isObject(device) || Object.keys(device).length === 0) return bad('device needs at least one identifier');
      const { phoneNumber, ipv4Address, ipv6Address, networkAccessIdentifier } = device;
      if (phoneNumber !== undefined && (typeof phoneNumber !== 'string' || !PHONE.test(phoneNumber))) return bad('device.phoneNumber must be E.164 with a leading +');
      if (ipv4Address !== undefined) {
        const ip = ipv4Address as Record<string, unknown>;
        const okPub = isObject(ip) && typeof ip.publicAddress === 'string' && IPV4.test(ip.publicAddress);
        const okPriv = isObject(ip) && (ip.privateAddress === undefined || (typeof ip.privateAddress === 'string' && IPV4.test(ip.privateAddress)));
        const okPort = isObject(ip) && (ip.publicPort === undefined || (Number.isInteger(ip.publicPort) && (ip.publicPort as number) >= 0 && (ip.publicPort as number) <= 65535));
        if (!okPub || !okPriv || !okPort || (ip.privateAddress === undefined && ip.publicPort === undefined)) {
          return bad('device.ipv4Address needs publicAddress and privateAddress or publicPort');
        }
      }
      if (ipv6Address !== undefined && (typeof ipv6Address !== 'string' || ipv6Address.includes('%') || !isIPv6(ipv6Address))) return bad('device.ipv6Address must be an IPv6 address');
      if (networkAccessIdentifier !== undefined && (typeof networkAccessIdentifier !== 'string' || networkAccessIdentifier === '')) return bad('device.networkAccessIdentifier must be a string');
      ids = { phoneNumber, ipv4Address, ipv6Address, networkAccessIdentifier };
    }
    let known: OperatorDevice | undefined;
    let used: DeviceIdentifierType | undefined;
    if (tok.device !== undefined) {
      // C02.04: a three-legged token already identifies the device.
      if (device !== undefined) return camaraError(res, 422, 'UNNECESSARY_IDENTIFIER', 'The device is already identified by the access token.');
      known = tok.device;
    } else {
      // C01.05: a two-legged token identifies no device, so the request must.
      if (device === undefined) return camaraError(res, 422, 'MISSING_IDENTIFIER', 'The device cannot be identified.');
      // C01.06: networkAccessIdentifier is never supported (r3.2), others as configured.
      const supported = this.opts.supportedIdentifiers ?? ['phoneNumber', 'ipv4Address', 'ipv6Address'];
      used = supported.find((k) => ids[k] !== undefined);
      if (used === undefined) return camaraError(res, 422, 'UNSUPPORTED_IDENTIFIER', 'The identifier provided is not supported.');
      // Only the chosen identifier is looked at; the provider does not check the others (DeviceResponse).
      const v = ids[used];
      known = this.opts.devices.find((d) => {
        if (used === 'phoneNumber') return d.phoneNumber === v;
        if (used === 'ipv6Address') return d.ipv6 !== undefined && canonical6(d.ipv6) === canonical6(v as string);
        const ip = v as { publicAddress: string; publicPort?: number };
        return d.ipv4 !== undefined && d.ipv4.publicAddress === ip.publicAddress && d.ipv4.publicPort === ip.publicPort;
      });
      // C01.03
      if (known === undefined) return camaraError(res, 404, 'IDENTIFIER_NOT_FOUND', 'Device identifier not found.');
    }
    // C01.07
    if (known.serviceNotApplicable === true) return camaraError(res, 422, 'SERVICE_NOT_APPLICABLE', 'The service is not available for the provided identifier.');
    // 422.2 and 422.1
    if (radius < (this.opts.minRadiusM ?? 1)) return camaraError(res, 422, 'LOCATION_VERIFICATION.INVALID_AREA', 'The requested area is too small');
    const cov = this.opts.coverage;
    if (cov !== undefined && haversine(lat, lon, cov.lat, cov.lon) > cov.radiusM) {
      return camaraError(res, 422, 'LOCATION_VERIFICATION.AREA_NOT_COVERED', 'Unable to cover the requested area');
    }
    // 422.4 / 422.3: unknown location; with maxAge, "not known at all" is UNABLE_TO_FULFILL_MAX_AGE.
    const loc = known.location;
    if (loc === undefined && maxAge !== undefined) return camaraError(res, 422, 'LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE', 'Unable to provide expected freshness for location');
    if (loc === undefined) return camaraError(res, 422, 'LOCATION_VERIFICATION.UNABLE_TO_LOCATE', 'The network is unable to locate the device');
    // 03: never a fix older than maxAge.
    const fixTime = known.freshLocate === true ? new Date() : loc.time;
    if (maxAge !== undefined && (Date.now() - fixTime.getTime()) / 1000 > (maxAge as number)) {
      return camaraError(res, 422, 'LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE', 'Unable to provide expected freshness for location');
    }
    const d = haversine(lat, lon, loc.lat, loc.lon);
    const out: Record<string, unknown> = { lastLocationTime: fixTime.toISOString() };
    if (d + loc.accuracyM <= radius) out.verificationResult = 'TRUE';
    else if (d >= radius + loc.accuracyM) out.verificationResult = 'FALSE';
    else {
      out.verificationResult = 'PARTIAL';
      const rate = Math.round((100 * lensArea(radius, loc.accuracyM, d)) / (Math.PI * loc.accuracyM ** 2));
      out.matchRate = Math.min(99, Math.max(1, rate));
    }
    // DeviceResponse: only when the request named the device, exactly the identifier used.
    if (used !== undefined) out.device = { [used]: ids[used] };
    send(res, 200, out);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function canonical6(a: string): string {
  return new URL(`http://[${a}]/`).hostname;
}

function camaraError(res: ServerResponse, status: number, code: string, message: string): void {
  send(res, status, { status, code, message });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) return null;
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

function sameSecret(a: string, b: string): boolean {
  // Hash first so the comparison is constant-time regardless of length.
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}

function haversine(lat1: number, lon1: number, lat2: number, lon2: number): number {
  const r = Math.PI / 180;
  const s = Math.sin(((lat2 - lat1) * r) / 2) ** 2 + Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin(((lon2 - lon1) * r) / 2) ** 2;
  return 2 * EARTH_R * Math.asin(Math.min(1, Math.sqrt(s)));
}

/** Area of the intersection of two circles (radii r1, r2, centres d apart), planar. */
function lensArea(r1: number, r2: number, d: number): number {
  if (d >= r1 + r2) return 0;
  if (d <= Math.abs(r1 - r2)) return Math.PI * Math.min(r1, r2) ** 2;
  const a = r1 * r1 * Math.acos((d * d + r1 * r1 - r2 * r2) / (2 * d * r1));
  const b = r2 * r2 * Math.acos((d * d + r2 * r2 - r1 * r1) / (2 * d * r2));
  const c = 0.5 * Math.sqrt((-d + r1 + r2) * (d + r1 - r2) * (d - r1 + r2) * (d + r1 + r2));
  return a + b - c;
}

/** A throwaway CA and a server certificate for 127.0.0.1/localhost, made with openssl in `dir`. */
export function makeTestPki(dir: string): { caCert: Buffer; key: Buffer; cert: Buffer; otherCaCert: Buffer } {
  const p = (f: string): string => path.join(dir, f);
  const run = (args: string[]): void => {
    execFileSync('openssl', args, { stdio: 'pipe' });
  };
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', p('ca.key'), '-out', p('ca.crt'), '-days', '1', '-subj', '/CN=terroir test operator CA']);
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', p('other.key'), '-out', p('other.crt'), '-days', '1', '-subj', '/CN=unrelated CA']);
  run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', '/CN=operator.test']);
  fs.writeFileSync(p('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  run(['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.crt'), '-CAkey', p('ca.key'), '-CAcreateserial', '-out', p('server.crt'), '-days', '1', '-extfile', p('ext.cnf')]);
  return { caCert: fs.readFileSync(p('ca.crt')), key: fs.readFileSync(p('server.key')), cert: fs.readFileSync(p('server.crt')), otherCaCert: fs.readFileSync(p('other.crt')) };
}
