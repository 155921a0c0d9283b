import { randomUUID } from 'node:crypto';
import { Agent, request, type Dispatcher } from 'undici';
import { z } from 'zod';
import { GeoError } from './errors.js';
import type { OperatorVerification } from './evaluate.js';
import { assertLatLon, type LocationReading } from './reading.js';

/**
 * Client of a mobile operator's CAMARA Device Location Verification API (v3, `POST /verify`),
 * run on the server: the operator, not the node, says whether the node's SIM is inside a circle.
 * OAuth2 client-credentials tokens (client_secret_basic) are cached until shortly before expiry.
 * TLS is always verified, against `ca` when given, else the system roots.
 */
export interface CamaraConfig {
  /** API root including the version path, e.g. https://op.example/location-verification/v3 */
  baseUrl: string;
  tokenUrl: string;
  clientId: string;
  clientSecret: string;
  /** PEM CA certificate(s) to trust instead of the system roots. */
  ca?: Buffer;
  scope?: string;
  timeoutMs?: number;
  maxResponseBytes?: number;
}

export interface CamaraDevice {
  phoneNumber?: string;
  ipv4Address?: { publicAddress: string; privateAddress?: string; publicPort?: number };
  ipv6Address?: string;
  networkAccessIdentifier?: string;
}

export interface CamaraArea {
  lat: number;
  lon: number;
  radiusM: number;
}

export type CamaraErrorCode =
  | 'GEO_OPERATOR_BAD_REQUEST'
  | 'GEO_OPERATOR_TOKEN'
  | 'GEO_OPERATOR_UNAUTHENTICATED'
  | 'GEO_OPERATOR_PERMISSION_DENIED'
  | 'GEO_OPERATOR_INVALID_ARGUMENT'
  | 'GEO_OPERATOR_IDENTIFIER_NOT_FOUND'
  | 'GEO_OPERATOR_IDENTIFIER_REJECTED'
  | 'GEO_OPERATOR_AREA_NOT_COVERED'
  | 'GEO_OPERATOR_INVALID_AREA'
  | 'GEO_OPERATOR_UNABLE_TO_LOCATE'
  | 'GEO_OPERATOR_UNABLE_TO_FULFILL_MAX_AGE'
  | 'GEO_OPERATOR_RATE_LIMITED'
  | 'GEO_OPERATOR_UNAVAILABLE'
  | 'GEO_OPERATOR_PROTOCOL';

/** Any failure talking to the operator. `status` and `apiCode` are the HTTP status and CAMARA error code, when there was a response. */
export class CamaraError extends GeoError {
  declare readonly code: CamaraErrorCode;
  readonly status: number | undefined;
  readonly apiCode: string | undefined;

  constructor(code: CamaraErrorCode, message: string, details: { status?: number; apiCode?: string; cause?: unknown } = {}) {
    super(code, message, { cause: details.cause });
    this.status = details.status;
    this.apiCode = details.apiCode;
  }
}
/** The token endpoint refused us, or the API refused the token or its scope (401/403). */
export class CamaraAuthError extends CamaraError {}
/** The request was wrong: local validation, 400, 404, or a 422 about the device identifier. */
export class CamaraRequestError extends CamaraError {}
/** 422 LOCATION_VERIFICATION.*: the operator cannot verify this area or device right now. */
export class CamaraLocationError extends CamaraError {}
/** 429, 5xx, timeouts and network failures: try again later. */
export class CamaraUnavailableError extends CamaraError {}
/** The operator answered something the spec does not allow. */
export class CamaraProtocolError extends CamaraError {}

const PHONE = /^\+[1-9][0-9]{4,14}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

const tokenResponse = z.object({
  access_token: z.string().min(1).max(8192),
  token_type: z.string().regex(/^bearer$/i),
  expires_in: z.number().positive().max(86400 * 30).optional(),
});

const verifyResponse = z.object({
  verificationResult: z.enum(['TRUE', 'FALSE', 'PARTIAL']),
  lastLocationTime: z.string().regex(RFC3339),
  matchRate: z.int().min(1).max(99).optional(),
  device: z.record(z.string(), z.unknown()).optional(),
});

const errorInfo = z.object({ status: z.int(), code: z.string().max(256), message: z.string().max(4096) });

const LOCATION_CODES: Record<string, CamaraErrorCode> = {
  'LOCATION_VERIFICATION.AREA_NOT_COVERED': 'GEO_OPERATOR_AREA_NOT_COVERED',
  'LOCATION_VERIFICATION.INVALID_AREA': 'GEO_OPERATOR_INVALID_AREA',
  'LOCATION_VERIFICATION.UNABLE_TO_LOCATE': 'GEO_OPERATOR_UNABLE_TO_LOCATE',
  'LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE': 'GEO_OPERATOR_UNABLE_TO_FULFILL_MAX_AGE',
};

// Refresh this long before the operator's stated expiry, so a token never dies in flight.
const TOKEN_SKEW_MS = 30_000;

export class CamaraLocationVerifier {
  private readonly baseUrl: URL;
  private readonly tokenUrl: URL;
  private readonly clientId: string;
  private readonly clientSecret: string;
  private readonly scope: string;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;
  private readonly dispatcher: Dispatcher;
  private token: { value: string; expiresAt: number } | undefined;
  private tokenInFlight: Promise<string> | undefined;

  constructor(cfg: CamaraConfig) {
    this.baseUrl = httpsUrl(cfg.baseUrl, 'baseUrl');
    this.tokenUrl = httpsUrl(cfg.tokenUrl, 'tokenUrl');
    if (!cfg.clientId || !cfg.clientSecret) {
      throw new CamaraRequestError('GEO_OPERATOR_BAD_REQUEST', 'CAMARA clientId and clientSecret are required');
    }
    this.clientId = cfg.clientId;
    this.clientSecret = cfg.clientSecret;
    this.scope = cfg.scope ?? 'location-verification:verify';
    this.timeoutMs = cfg.timeoutMs ?? 10_000;
    this.maxBytes = cfg.maxResponseBytes ?? 64 * 1024;
    this.dispatcher = new Agent({ connect: cfg.ca ? { ca: cfg.ca } : {}, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs });
  }

  /**
   * Asks the operator whether `device` is inside the circle `area`. maxAgeS (seconds) bounds how
   * old the operator's location fix may be; absent means any age.
   */
  async verify(device: CamaraDevice, area: CamaraArea, opts: { maxAgeS?: number } = {}): Promise<OperatorVerification> {
    const body = JSON.stringify(buildRequest(device, area, opts.maxAgeS));
    const url = new URL(`${this.baseUrl.pathname.replace(/\/$/, '')}/verify`, this.baseUrl);
    for (let attempt = 0; ; attempt++) {
      const token = await this.accessToken();
      const res = await this.send(url, {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json',
        'x-correlator': randomUUID(),
      }, body);
      // A token the operator revoked early: fetch a fresh one once, then give up.
      if (res.status === 401 && attempt === 0) {
        this.token = undefined;
        continue;
      }
      if (res.status !== 200) throw apiError(res.status, res.json);
      const parsed = verifyResponse.safeParse(res.json);
      if (!parsed.success) {
        throw new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', `operator /verify response does not follow the spec: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`, { status: 200 });
      }
      const r = parsed.data;
      if ((r.verificationResult === 'PARTIAL') !== (r.matchRate !== undefined)) {
        throw new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', 'operator /verify response: matchRate must be present exactly when verificationResult is PARTIAL', { status: 200 });
      }
      const out: OperatorVerification = { result: r.verificationResult, lastLocationTime: new Date(r.lastLocationTime) };
      if (r.matchRate !== undefined) out.matchRate = r.matchRate;
      return out;
    }
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }

  private accessToken(): Promise<string> {
    if (this.token !== undefined && Date.now() < this.token.expiresAt) return Promise.resolve(this.token.value);
    this.tokenInFlight ??= this.fetchToken().finally(() => {
      this.tokenInFlight = undefined;
    });
    return this.tokenInFlight;
  }

  private async fetchToken(): Promise<string> {
    const basic = Buffer.from(`${encodeURIComponent(this.clientId)}:${encodeURIComponent(this.clientSecret)}`).toString('base64');
    const form = new URLSearchParams({ grant_type: 'client_credentials', scope: this.scope }).toString();
    const res = await this.send(this.tokenUrl, {
      authorization: `Basic ${basic}`,
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    }, form);
    if (res.status !== 200) {
      const o = (res.json ?? {}) as { error?: unknown; error_description?: unknown };
      const what = typeof o.error === 'string' ? `${o.error}${typeof o.error_description === 'string' ? `: ${o.error_description}` : ''}` : 'no OAuth2 error body';
      const Cls = res.status >= 500 || res.status === 429 ? CamaraUnavailableError : CamaraAuthError;
      throw new Cls(res.status >= 500 || res.status === 429 ? 'GEO_OPERATOR_UNAVAILABLE' : 'GEO_OPERATOR_TOKEN',
        `operator token endpoint refused client credentials (HTTP ${res.status}, ${what}); check clientId/clientSecret and scope`, { status: res.status, apiCode: typeof o.error === 'string' ? o.error : undefined });
    }
    const parsed = tokenResponse.safeParse(res.json);
    if (!parsed.success) {
      throw new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', 'operator token response is not an OAuth2 bearer token response (access_token, token_type=Bearer, expires_in)', { status: 200 });
    }
    const lifetimeMs = (parsed.data.expires_in ?? 60) * 1000;
    this.token = { value: parsed.data.access_token, expiresAt: Date.now() + Math.max(0, lifetimeMs - Math.min(TOKEN_SKEW_MS, lifetimeMs / 10)) };
    return parsed.data.access_token;
  }

  private async send(url: URL, headers: Record<string, string>, body: string): Promise<{ status: number; json: unknown }> {
    let res: Dispatcher.ResponseData;
    try {
      res = await request(url, { method: 'POST', headers, body, dispatcher: this.dispatcher, signal: AbortSignal.timeout(this.timeoutMs) });
    } catch (err) {
      throw new CamaraUnavailableError('GEO_OPERATOR_UNAVAILABLE', `operator at ${url.origin} unreachable: ${(err as Error).message}`, { cause: err });
    }
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of res.body) {
        size += (chunk as Buffer).length;
        if (size > this.maxBytes) {
          res.body.destroy();
          throw new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', `operator response from ${url.pathname} exceeds ${this.maxBytes} bytes`, { status: res.statusCode });
        }
        chunks.push(chunk as Buffer);
      }
    } catch (err) {
      if (err instanceof CamaraError) throw err;
      throw new CamaraUnavailableError('GEO_OPERATOR_UNAVAILABLE', `operator response from ${url.pathname} broke off: ${(err as Error).message}`, { cause: err });
    }
    const text = Buffer.concat(chunks).toString('utf8');
    if (text === '') return { status: res.statusCode, json: undefined };
    const type = String(res.headers['content-type'] ?? '');
    try {
      if (!/^application\/([a-z.+-]*\+)?json\b/i.test(type)) throw new Error(`content-type ${JSON.stringify(type)}`);
      return { status: res.statusCode, json: JSON.parse(text) as unknown };
    } catch (err) {
      // An error status with a non-JSON body is still an error status; only a 200 must be JSON.
      if (res.statusCode !== 200) return { status: res.statusCode, json: undefined };
      throw new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', `operator response from ${url.pathname} is not JSON (${(err as Error).message})`, { status: res.statusCode, cause: err });
    }
  }
}

/** A mobile-kind reading for a TRUE verification, so policies can require a 'mobile' sensor; null otherwise. */
export function mobileReading(v: OperatorVerification, area: CamaraArea, sensorId: string, now = new Date()): LocationReading | null {
  if (v.result !== 'TRUE') return null;
  return {
    kind: 'mobile',
    sensorId,
    time: v.lastLocationTime ?? now,
    lat: area.lat,
    lon: area.lon,
    horizontalErrorM: area.radiusM,
    attested: true,
    evidence: { source: 'camara', result: v.result, lastLocationTime: v.lastLocationTime?.toISOString() },
  };
}

function httpsUrl(s: string, field: string): URL {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw new CamaraRequestError('GEO_OPERATOR_BAD_REQUEST', `CAMARA ${field} is not a URL: ${JSON.stringify(s)}`);
  }
  if (u.protocol !== 'https:') throw new CamaraRequestError('GEO_OPERATOR_BAD_REQUEST', `CAMARA ${field} must be https:// (credentials and locations never travel in clear)`);
  return u;
}

function buildRequest(device: CamaraDevice, area: CamaraArea, maxAgeS: number | undefined): Record<string, unknown> {
  const bad = (m: string): never => {
    throw new CamaraRequestError('GEO_OPERATOR_BAD_REQUEST', `CAMARA verify: ${m}`);
  };
  if (device === null || typeof device !== 'object') bad('device must be an object');
  const dev: Record<string, unknown> = {};
  if (device.phoneNumber !== undefined) {
    if (!PHONE.test(device.phoneNumber)) bad('device.phoneNumber must be E.164 with a leading +, e.g. +4915112345678');
    dev.phoneNumber = device.phoneNumber;
  }
  if (device.ipv4Address !== undefined) {
    const a = device.ipv4Address;
    if (!IPV4.test(a.publicAddress ?? '')) bad('device.ipv4Address.publicAddress must be a dotted IPv4 address');
    if (a.privateAddress !== undefined && !IPV4.test(a.privateAddress)) bad('device.ipv4Address.privateAddress must be a dotted IPv4 address');
    if (a.publicPort !== undefined && !(Number.isInteger(a.publicPort) && a.publicPort >= 0 && a.publicPort <= 65535)) bad('device.ipv4Address.publicPort must be an integer 0-65535');
    if (a.privateAddress === undefined && a.publicPort === undefined) bad('device.ipv4Address needs privateAddress or publicPort besides publicAddress');
    dev.ipv4Address = { ...a };
  }
  if (device.ipv6Address !== undefined) {
    if (typeof device.ipv6Address !== 'string' || !device.ipv6Address.includes(':')) bad('device.ipv6Address must be an IPv6 address');
    dev.ipv6Address = device.ipv6Address;
  }
  if (device.networkAccessIdentifier !== undefined) dev.networkAccessIdentifier = device.networkAccessIdentifier;
  if (Object.keys(dev).length === 0) bad('device needs at least one identifier (phoneNumber, ipv4Address, ipv6Address)');
  try {
    assertLatLon(area?.lat, area?.lon, 'area centre');
  } catch (err) {
    bad((err as Error).message);
  }
  if (typeof area.radiusM !== 'number' || !Number.isFinite(area.radiusM) || area.radiusM < 1) bad('area.radiusM must be a number ≥ 1 (metres)');
  const body: Record<string, unknown> = {
    device: dev,
    area: { areaType: 'CIRCLE', center: { latitude: area.lat, longitude: area.lon }, radius: area.radiusM },
  };
  if (maxAgeS !== undefined) {
    if (!Number.isInteger(maxAgeS) || maxAgeS < 0) bad('maxAgeS must be an integer ≥ 0');
    body.maxAge = maxAgeS;
  }
  return body;
}

function apiError(status: number, json: unknown): CamaraError {
  const info = errorInfo.safeParse(json);
  const apiCode = info.success ? info.data.code : undefined;
  const detail = info.success ? `${info.data.code}: ${info.data.message}` : 'no CAMARA error body';
  const msg = (what: string): string => `operator ${what} (HTTP ${status}, ${detail})`;
  const d = { status, apiCode };
  if (status === 401) return new CamaraAuthError('GEO_OPERATOR_UNAUTHENTICATED', msg('rejected the access token even after a refresh'), d);
  if (status === 403) return new CamaraAuthError('GEO_OPERATOR_PERMISSION_DENIED', msg('denied permission; the client needs scope location-verification:verify'), d);
  if (status === 400) return new CamaraRequestError('GEO_OPERATOR_INVALID_ARGUMENT', msg('rejected the request as invalid'), d);
  if (status === 404) return new CamaraRequestError('GEO_OPERATOR_IDENTIFIER_NOT_FOUND', msg('does not know this device'), d);
  if (status === 422) {
    const lc = apiCode !== undefined ? LOCATION_CODES[apiCode] : undefined;
    if (lc !== undefined) return new CamaraLocationError(lc, msg('cannot verify the location'), d);
    return new CamaraRequestError('GEO_OPERATOR_IDENTIFIER_REJECTED', msg('cannot process the request for this device identifier'), d);
  }
  if (status === 429) return new CamaraUnavailableError('GEO_OPERATOR_RATE_LIMITED', msg('is rate limiting us; retry later'), d);
  if (status >= 500) return new CamaraUnavailableError('GEO_OPERATOR_UNAVAILABLE', msg('failed'), d);
  return new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', msg('answered with an unexpected status'), d);
}
