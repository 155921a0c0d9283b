/**
 * Test double of a mobile operator's CAMARA Device Location Verification API v3
 * (../shared/spec/camara/location-verification.yaml) plus the OAuth2 client-credentials token
 * endpoint the operator would run. It speaks the real protocol over real TLS, checks bearer tokens
 * and scope, validates requests as the spec defines them, and answers from configured geography:
 * each known device has a network-estimated position (a circle) the double compares with the
 * requested area exactly as the spec describes TRUE / FALSE / PARTIAL (matchRate = |R ∩ N| / |N|).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { IncomingMessage, ServerResponse } from 'node:http';

const SCOPE = 'location-verification:verify';
const API_PATH = '/location-verification/v3/verify';
const TOKEN_PATH = '/oauth2/token';
const MAX_BODY = 16 * 1024;
const EARTH_R = 6_371_008.8;
const PHONE = /^\+[1-9][0-9]{4,14}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const CORRELATOR = /^[a-zA-Z0-9-_:;./<>{}]{0,256}$/;

export interface OperatorDevice {
  phoneNumber?: string;
  ipv4?: { publicAddress: string; publicPort: number };
  /** Where the network places the device; absent means the network cannot locate it. */
  location?: { lat: number; lon: number; accuracyM: number; time: Date };
}

export interface CamaraOperatorOptions {
  tls: { key: Buffer; cert: Buffer };
  clientId: string;
  clientSecret: string;
  tokenLifetimeS?: number;
  devices: OperatorDevice[];
  /** Requested areas whose centre lies outside this circle get AREA_NOT_COVERED. */
  coverage?: { lat: number; lon: number; radiusM: number };
  /** Operators may refuse small areas (spec: "e.g. 1000 meters"). */
  minRadiusM?: number;
}

interface Token {
  expiresAt: number;
  scopes: string[];
}

export class CamaraOperatorDouble {
  tokensIssued = 0;
  verifyCalls = 0;
  /** /verify calls refused with 401 (missing, unknown or expired token). */
  unauthenticated = 0;
  lastCorrelator: string | undefined;
  private readonly tokens = new Map<string, Token>();
  private failStatus: number | undefined;
  private canned: { status: number; body: string; contentType: string } | undefined;

  private constructor(
    private readonly server: https.Server,
    private readonly opts: CamaraOperatorOptions,
  ) {}

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

  /** Answers the next /verify with this status and a CAMARA error body (e.g. 503). */
  failNext(status: number): void {
    this.failStatus = status;
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

  private async token(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'POST') return send(res, 405, { error: 'invalid_request', error_description: 'use POST' });
    if (!String(req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')) {
      return send(res, 400, { error: 'invalid_request', error_description: 'form-encoded body required' });
    }
    const body = await readBody(req);
    if (body === null) return send(res, 413, { error: 'invalid_request', error_description: 'body too large' });
    const form = new URLSearchParams(body.toString('utf8'));
    let id = form.get('client_id') ?? '';
    let secret = form.get('client_secret') ?? '';
    const auth = String(req.headers.authorization ?? '');
    if (auth.startsWith('Basic ')) {
      const decoded = Buffer.from(auth.slice(6), 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon > 0) {
        id = decodeURIComponent(decoded.slice(0, colon));
        secret = decodeURIComponent(decoded.slice(colon + 1));
      }
    }
    if (!sameSecret(id, this.opts.clientId) || !sameSecret(secret, this.opts.clientSecret)) {
      res.setHeader('www-authenticate', 'Basic realm="operator"');
      return send(res, 401, { error: 'invalid_client', error_description: 'client authentication failed' });
    }
    if (form.get('grant_type') !== 'client_credentials') {
      return send(res, 400, { error: 'unsupported_grant_type', error_description: 'only client_credentials is supported' });
    }
    const scopes = (form.get('scope') ?? SCOPE).split(' ').filter(Boolean);
    if (scopes.some((s) => s !== SCOPE)) return send(res, 400, { error: 'invalid_scope', error_description: `only ${SCOPE}` });
    const token = randomBytes(24).toString('base64url');
    const lifetime = this.opts.tokenLifetimeS ?? 3600;
    this.tokens.set(token, { expiresAt: Date.now() + lifetime * 1000, scopes });
    this.tokensIssued++;
    res.setHeader('cache-control', 'no-store');
    send(res, 200, { access_token: token, token_type: 'Bearer', expires_in: lifetime, scope: scopes.join(' ') });
  }

  private async verify(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.verifyCalls++;
    const correlator = req.headers['x-correlator'];
    if (typeof correlator === 'string') {
      if (!CORRELATOR.test(correlator)) return camaraError(res, 400, 'INVALID_ARGUMENT', 'x-correlator header is malformed');
      res.setHeader('x-correlator', correlator);
      this.lastCorrelator = correlator;
    }
    if (req.method !== 'POST') return camaraError(res, 405, 'METHOD_NOT_ALLOWED', 'use POST');
    const auth = String(req.headers.authorization ?? '');
    const tok = auth.startsWith('Bearer ') ? this.tokens.get(auth.slice(7)) : undefined;
    if (tok === undefined || tok.expiresAt <= Date.now()) {
      this.unauthenticated++;
      return camaraError(res, 401, 'UNAUTHENTICATED', 'Request not authenticated due to missing, invalid, or expired credentials. A new authentication is required.');
    }
    if (!tok.scopes.includes(SCOPE)) return camaraError(res, 403, 'PERMISSION_DENIED', 'Client does not have sufficient permissions to perform this action.');
    if (this.canned !== undefined) {
      const c = this.canned;
      this.canned = undefined;
      res.writeHead(c.status, { 'content-type': c.contentType });
      res.end(c.body);
      return;
    }
    if (this.failStatus !== undefined) {
      const s = this.failStatus;
      this.failStatus = undefined;
      return camaraError(res, s, s === 429 ? 'TOO_MANY_REQUESTS' : 'UNAVAILABLE', 'Service Unavailable.');
    }
    if (!String(req.headers['content-type'] ?? '').startsWith('application/json')) {
      return camaraError(res, 400, 'INVALID_ARGUMENT', 'Client specified an invalid argument, request body or query param.');
    }
    const raw = await readBody(req);
    if (raw === null) return camaraError(res, 400, 'INVALID_ARGUMENT', 'request body too large');
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
      if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error('not an object');
    } catch {
      return camaraError(res, 400, 'INVALID_ARGUMENT', 'Client specified an invalid argument, request body or query param.');
    }
    // Area (required): a CIRCLE with a centre Point and radius ≥ 1.
    const area = body.area as Record<string, unknown> | undefined;
    if (area === undefined || area === null || typeof area !== 'object') return camaraError(res, 400, 'INVALID_ARGUMENT', 'area is required');
    if (area.areaType !== 'CIRCLE') return camaraError(res, 400, 'INVALID_ARGUMENT', 'areaType must be CIRCLE');
    const center = area.center as { latitude?: unknown; longitude?: unknown } | undefined;
    const lat = center?.latitude;
    const lon = center?.longitude;
    const radius = area.radius;
    if (typeof lat !== 'number' || typeof lon !== 'number' || typeof radius !== 'number') {
      return camaraError(res, 400, 'INVALID_ARGUMENT', 'area.center.latitude, area.center.longitude and area.radius must be numbers');
    }
    if (lat < -90 || lat > 90 || lon < -180 || lon > 180 || radius < 1) return camaraError(res, 400, 'OUT_OF_RANGE', 'Client specified an invalid range.');
    const maxAge = body.maxAge;
    if (maxAge !== undefined && (typeof maxAge !== 'number' || !Number.isInteger(maxAge) || maxAge < 0)) {
      return camaraError(res, 400, 'INVALID_ARGUMENT', 'maxAge must be an integer number of seconds');
    }
    // Device: this double only issues two-legged tokens, so the device must be named.
    const device = body.device as Record<string, unknown> | undefined;
    if (device === undefined) return camaraError(res, 422, 'MISSING_IDENTIFIER', 'The device cannot be identified.');
    if (device === null || typeof device !== 'object' || Object.keys(device).length === 0) {
      return camaraError(res, 400, 'INVALID_ARGUMENT', 'device needs at least one identifier');
    }
    const phone = device.phoneNumber;
    if (phone !== undefined && (typeof phone !== 'string' || !PHONE.test(phone))) return camaraError(res, 400, 'INVALID_ARGUMENT', 'phoneNumber must be E.164');
    const ip = device.ipv4Address as { publicAddress?: unknown; privateAddress?: unknown; publicPort?: unknown } | undefined;
    if (ip !== undefined) {
      const okPub = typeof ip.publicAddress === 'string' && IPV4.test(ip.publicAddress);
      const okPriv = ip.privateAddress === undefined || (typeof ip.privateAddress === 'string' && IPV4.test(ip.privateAddress));
      const okPort = ip.publicPort === undefined || (Number.isInteger(ip.publicPort) && (ip.publicPort as number) >= 0 && (ip.publicPort as number) <= 65535);
      if (!okPub || !okPriv || !okPort || (ip.privateAddress === undefined && ip.publicPort === undefined)) {
        return camaraError(res, 400, 'INVALID_ARGUMENT', 'ipv4Address needs publicAddress and privateAddress or publicPort');
      }
    }
    if (phone === undefined && ip === undefined) {
      return camaraError(res, 422, 'UNSUPPORTED_IDENTIFIER', 'The identifier provided is not supported.');
    }
    const known = this.opts.devices.find((d) =>
      phone !== undefined ? d.phoneNumber === phone : d.ipv4 !== undefined && d.ipv4.publicAddress === ip?.publicAddress && d.ipv4.publicPort === ip?.publicPort);
    if (known === undefined) return camaraError(res, 404, 'IDENTIFIER_NOT_FOUND', 'Device identifier not found.');
    if (radius < (this.opts.minRadiusM ?? 1)) return camaraError(res, 422, 'LOCATION_VERIFICATION.INVALID_AREA', 'The requested area is too small');
    const cov = this.opts.coverage;
    if (cov !== undefined && haversine(lat, lon, cov.lat, cov.lon) > cov.radiusM) {
      return camaraError(res, 422, 'LOCATION_VERIFICATION.AREA_NOT_COVERED', 'Unable to cover the requested area');
    }
    const loc = known.location;
    if (loc === undefined) return camaraError(res, 422, 'LOCATION_VERIFICATION.UNABLE_TO_LOCATE', 'The network is unable to locate the device');
    if (maxAge !== undefined && (Date.now() - loc.time.getTime()) / 1000 > (maxAge as number)) {
      return camaraError(res, 422, 'LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE', 'Unable to provide expected freshness for location');
    }
    const d = haversine(lat, lon, loc.lat, loc.lon);
    const out: Record<string, unknown> = { lastLocationTime: loc.time.toISOString().replace(/\.\d{3}Z$/, 'Z') };
    if (d + loc.accuracyM <= radius) out.verificationResult = 'TRUE';
    else if (d >= radius + loc.accuracyM) out.verificationResult = 'FALSE';
    else {
      out.verificationResult = 'PARTIAL';
      const rate = Math.round((100 * lensArea(radius, loc.accuracyM, d)) / (Math.PI * loc.accuracyM ** 2));
      out.matchRate = Math.min(99, Math.max(1, rate));
    }
    out.device = phone !== undefined ? { phoneNumber: phone } : { ipv4Address: ip };
    send(res, 200, out);
  }
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
