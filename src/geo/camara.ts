import { createPrivateKey, KeyObject, randomUUID } from 'node:crypto';
import { isIPv6 } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { SignJWT } from 'jose';
import { Agent, request, type Dispatcher } from 'undici';
import { z } from 'zod';
import { GeoError } from './errors.js';
import type { OperatorVerification } from './evaluate.js';
import { assertLatLon, type LocationReading } from './reading.js';

/**
 * Client of a mobile operator's CAMARA Device Location Verification API (r3.2: API v3.0.0,
 * `POST /verify`; ../shared/spec/camara/location-verification.yaml), run on the server: the
 * operator, not the node, says whether the node's SIM is inside a circle.
 *
 * Access tokens: OAuth2 client credentials (two-legged), cached until shortly before expiry. The
 * client authenticates with `private_key_jwt` (RFC 7523 client assertion, which CAMARA's Security
 * and Interoperability Profile requires) or `client_secret_basic` (operators that still offer it).
 * TLS is always verified, against `ca` when given, else the system roots.
 *
 * Every answer is checked against the spec before it is believed: `lastLocationTime` must be a real
 * RFC 3339 date-time with a zone, not in the future beyond `clockSkewS`, and not older than the
 * `maxAge` that was sent (r3.2 test definition location_verification_03: an operator that cannot
 * meet maxAge answers 422 UNABLE_TO_FULFILL_MAX_AGE, never an older fix).
 */
export interface CamaraConfig {
  /** API root including the version path, e.g. https://op.example/location-verification/v3 */
  baseUrl: string;
  tokenUrl: string;
  clientId: string;
  /** client_secret_basic: the OAuth2 client secret. Give this or `privateKeyJwt`, not both. */
  clientSecret?: string;
  /** private_key_jwt (RFC 7523): the key registered with the operator (its public half) signs a short client assertion per token request. */
  privateKeyJwt?: { key: KeyObject | string | Buffer; alg: CamaraSigningAlg; kid?: string };
  /** PEM CA certificate(s) to trust instead of the system roots. */
  ca?: Buffer;
  scope?: string;
  timeoutMs?: number;
  maxResponseBytes?: number;
  /** How far (s) the operator's clock may be ahead of ours, or behind when judging maxAge. Default 5. */
  clockSkewS?: number;
  /**
   * 429/503 with Retry-After: wait and retry once when the wait is at most this (ms), else fail at
   * once with the time to retry after, and send nothing to the operator until then. Default 2000.
   */
  maxRetryWaitMs?: number;
}

export type CamaraSigningAlg = 'ES256' | 'RS256' | 'PS256';
export const CAMARA_SIGNING_ALGS: readonly CamaraSigningAlg[] = ['ES256', 'RS256', 'PS256'];

export interface CamaraDevice {
  phoneNumber?: string;
  ipv4Address?: { publicAddress: string; privateAddress?: string; publicPort?: number };
  ipv6Address?: string;
  /**
   * Refused: r3.2 (Commonalities 0.6, Device NOTE2) keeps it in the schema only for the future and
   * "CAMARA does not currently allow its use". Present here so a caller gets a clear error.
   */
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
  | 'GEO_OPERATOR_OUT_OF_RANGE'
  | 'GEO_OPERATOR_IDENTIFIER_NOT_FOUND'
  | 'GEO_OPERATOR_SERVICE_NOT_APPLICABLE'
  | 'GEO_OPERATOR_MISSING_IDENTIFIER'
  | 'GEO_OPERATOR_UNNECESSARY_IDENTIFIER'
  | 'GEO_OPERATOR_UNSUPPORTED_IDENTIFIER'
  | 'GEO_OPERATOR_IDENTIFIER_MISMATCH'
  | 'GEO_OPERATOR_UNPROCESSABLE'
  | 'GEO_OPERATOR_AREA_NOT_COVERED'
  | 'GEO_OPERATOR_INVALID_AREA'
  | 'GEO_OPERATOR_UNABLE_TO_LOCATE'
  | 'GEO_OPERATOR_UNABLE_TO_FULFILL_MAX_AGE'
  | 'GEO_OPERATOR_RATE_LIMITED'
  | 'GEO_OPERATOR_UNAVAILABLE'
  | 'GEO_OPERATOR_PROTOCOL'
  | 'GEO_OPERATOR_BAD_LOCATION_TIME'
  | 'GEO_OPERATOR_MAX_AGE_VIOLATED';

/**
 * Any failure talking to the operator. `status` and `apiCode` are the HTTP status and CAMARA error
 * code, when there was a response; `retryAfterS` the operator's Retry-After (429/503), when it gave one.
 */
export class CamaraError extends GeoError {
  declare readonly code: CamaraErrorCode;
  readonly status: number | undefined;
  readonly apiCode: string | undefined;
  readonly retryAfterS: number | undefined;

  constructor(code: CamaraErrorCode, message: string, details: { status?: number; apiCode?: string; retryAfterS?: number; cause?: unknown } = {}) {
    super(code, message, { cause: details.cause });
    this.status = details.status;
    this.apiCode = details.apiCode;
    this.retryAfterS = details.retryAfterS;
  }
}
/** The token endpoint refused us, or the API refused the token or its scope (401/403). */
export class CamaraAuthError extends CamaraError {}
/** The request was wrong: local validation, 400, 404, or a 422 about the device identifier. */
export class CamaraRequestError extends CamaraError {}
/** 422 LOCATION_VERIFICATION.*: the operator cannot verify this area or device right now. */
export class CamaraLocationError extends CamaraError {}
/** 429, 5xx, timeouts and network failures: try again later (`retryAfterS` when the operator said when). */
export class CamaraUnavailableError extends CamaraError {}
/** The operator answered something the spec does not allow (including an impossible, future or too old lastLocationTime). */
export class CamaraProtocolError extends CamaraError {}

const PHONE = /^\+[1-9][0-9]{4,14}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
// RFC 3339 section 5.6 date-time; "T" and "Z" may be lower case (section 5.6 NOTE). The ranges are checked after the match.
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/**
 * Parses an RFC 3339 date-time (with its mandatory zone) into the instant it names. Throws for
 * anything else, including strings of the right shape that name no calendar time
 * (2023-13-07, 2023-02-29, 24:00, +24:00): never returns an Invalid Date. A leap second (:60) is
 * read as the last millisecond of its minute.
 */
export function parseRfc3339(s: string): Date {
  const m = typeof s === 'string' && s.length <= 64 ? RFC3339.exec(s) : null;
  if (m === null) throw new Error(`${JSON.stringify(String(s).slice(0, 64))} is not an RFC 3339 date-time with a time zone (e.g. 2023-09-07T10:40:52Z)`);
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const daysInMonth = [31, year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  const bad = (what: string): never => {
    throw new Error(`${JSON.stringify(s)} is not a real time: ${what}`);
  };
  if (month < 1 || month > 12) bad(`month ${month}`);
  if (day < 1 || day > daysInMonth[month - 1]!) bad(`day ${day} of month ${month} in ${year}`);
  if (hour > 23) bad(`hour ${hour}`);
  if (minute > 59) bad(`minute ${minute}`);
  if (second > 60) bad(`second ${second}`);
  let offsetMin = 0;
  if (m[8] === undefined) {
    const oh = Number(m[10]);
    const om = Number(m[11]);
    if (oh > 23 || om > 59) bad(`zone offset ${m[9]}${m[10]}:${m[11]}`);
    offsetMin = (m[9] === '-' ? -1 : 1) * (oh * 60 + om);
  }
  const ms = second === 60 ? 999 : Math.floor(Number(`0${m[7] ?? ''}`) * 1000);
  const t = Date.UTC(year, month - 1, day, hour, minute, Math.min(second, 59), ms) - offsetMin * 60_000;
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) bad('outside the representable range');
  return d;
}

const tokenResponse = z.object({
  access_token: z.string().min(1).max(8192),
  token_type: z.string().regex(/^bearer$/i),
  expires_in: z.number().positive().max(86400 * 30).optional(),
});

const verifyResponse = z.object({
  verificationResult: z.enum(['TRUE', 'FALSE', 'PARTIAL']),
  lastLocationTime: z.string().max(64),
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

/** 422 codes about the device identifier (r3.2 VerifyLocationUnprocessableEntity422, plus Commonalities 0.5's IDENTIFIER_MISMATCH), each with what it means for terroir. */
const IDENTIFIER_CODES: Record<string, [CamaraErrorCode, string]> = {
  SERVICE_NOT_APPLICABLE: ['GEO_OPERATOR_SERVICE_NOT_APPLICABLE', 'says the service is not applicable to this device (e.g. its subscription type); ask the operator, or map the node to another SIM'],
  MISSING_IDENTIFIER: ['GEO_OPERATOR_MISSING_IDENTIFIER', 'cannot identify the device: no device in the request and none in the access token'],
  UNNECESSARY_IDENTIFIER: ['GEO_OPERATOR_UNNECESSARY_IDENTIFIER', 'says the access token already identifies a device (a three-legged token), so the request must not name one; terroir uses two-legged client-credentials tokens: have the operator register this client for client credentials'],
  UNSUPPORTED_IDENTIFIER: ['GEO_OPERATOR_UNSUPPORTED_IDENTIFIER', 'supports none of the device identifiers sent; map the node to an identifier type the operator supports (phoneNumber, ipv4Address, ipv6Address)'],
  IDENTIFIER_MISMATCH: ['GEO_OPERATOR_IDENTIFIER_MISMATCH', 'says the device identifiers sent do not belong to the same device; fix the node\'s device mapping'],
};

// Refresh this long before the operator's stated expiry, so a token never dies in flight.
const TOKEN_SKEW_MS = 30_000;
// Lifetime of a client assertion. CAMARA's profile allows at most 300 s; it is used at once.
const ASSERTION_LIFETIME_S = 60;
const CLIENT_ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
// lastLocationTime is usually given to the second: a fix taken 0.9 s before the cut-off may read 1 s older.
const TIME_RESOLUTION_S = 1;
// A Retry-After beyond this is treated as this (a day): the operator is down, not pacing us.
const MAX_RETRY_AFTER_S = 86_400;

type ClientAuth = { method: 'client_secret_basic'; secret: string } | { method: 'private_key_jwt'; key: KeyObject; alg: CamaraSigningAlg; kid: string | undefined };

export class CamaraLocationVerifier {
  private readonly baseUrl: URL;
  private readonly tokenUrl: URL;
  private readonly clientId: string;
  private readonly auth: ClientAuth;
  private readonly scope: string;
  private readonly timeoutMs: number;
  private readonly maxBytes: number;
  private readonly clockSkewMs: number;
  private readonly maxRetryWaitMs: number;
  private readonly dispatcher: Dispatcher;
  private token: { value: string; expiresAt: number } | undefined;
  private tokenInFlight: Promise<string> | undefined;
  /** The operator asked us (Retry-After) not to call before this instant (ms); 0: no such request. */
  private quietUntil = 0;
  private quietStatus = 429;

  constructor(cfg: CamaraConfig) {
    this.baseUrl = httpsUrl(cfg.baseUrl, 'baseUrl');
    this.tokenUrl = httpsUrl(cfg.tokenUrl, 'tokenUrl');
    if (!cfg.clientId) throw new CamaraRequestError('GEO_OPERATOR_BAD_REQUEST', 'CAMARA clientId is required');
    this.clientId = cfg.clientId;
    this.auth = clientAuth(cfg);
    this.scope = cfg.scope ?? 'location-verification:verify';
    this.timeoutMs = cfg.timeoutMs ?? 10_000;
    this.maxBytes = cfg.maxResponseBytes ?? 64 * 1024;
    const skew = cfg.clockSkewS ?? 5;
    if (!(Number.isFinite(skew) && skew >= 0 && skew <= 300)) throw new CamaraRequestError('GEO_OPERATOR_BAD_REQUEST', 'CAMARA clockSkewS must be 0-300 seconds');
    this.clockSkewMs = skew * 1000;
    this.maxRetryWaitMs = cfg.maxRetryWaitMs ?? 2000;
    this.dispatcher = new Agent({ connect: cfg.ca ? { ca: cfg.ca } : {}, headersTimeout: this.timeoutMs, bodyTimeout: this.timeoutMs });
  }

  /** The client authentication method in use (for logs and the start-up message). */
  get authMethod(): ClientAuth['method'] {
    return this.auth.method;
  }

  /**
   * Asks the operator whether `device` is inside the circle `area`. maxAgeS (seconds) bounds how
   * old the operator's location fix may be; absent means any age.
   */
  async verify(device: CamaraDevice, area: CamaraArea, opts: { maxAgeS?: number } = {}): Promise<OperatorVerification> {
    const sentBody = buildRequest(device, area, opts.maxAgeS);
    const body = JSON.stringify(sentBody);
    const url = new URL(`${this.baseUrl.pathname.replace(/\/$/, '')}/verify`, this.baseUrl);
    let refreshed = false;
    let waited = false;
    for (;;) {
      this.checkQuiet();
      const token = await this.accessToken();
      this.checkQuiet();
      const sentAt = Date.now();
      const res = await this.send(url, {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json',
        'x-correlator': randomUUID(),
      }, body);
      // A token the operator revoked or expired early: fetch a fresh one once, then give up.
      if (res.status === 401 && !refreshed) {
        refreshed = true;
        if (this.token?.value === token) this.token = undefined;
        continue;
      }
      if (res.status === 429 || res.status === 503) {
        const after = retryAfterS(res.headers['retry-after']);
        if (after !== undefined && after * 1000 <= this.maxRetryWaitMs && !waited) {
          // A short pause the operator asked for: wait it out once within this attestation.
          waited = true;
          await sleep(after * 1000);
          continue;
        }
        if (after !== undefined) {
          this.quietUntil = Math.max(this.quietUntil, Date.now() + after * 1000);
          this.quietStatus = res.status;
        }
        throw apiError(res.status, res.json, after);
      }
      if (res.status !== 200) throw apiError(res.status, res.json);
      return this.checkAnswer(res.json, sentBody, sentAt, opts.maxAgeS);
    }
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }

  /** While the operator's Retry-After runs, nothing is sent: the same clear error, with the seconds left. */
  private checkQuiet(): void {
    const left = this.quietUntil - Date.now();
    if (left <= 0) return;
    const s = Math.ceil(left / 1000);
    throw new CamaraUnavailableError(this.quietStatus === 429 ? 'GEO_OPERATOR_RATE_LIMITED' : 'GEO_OPERATOR_UNAVAILABLE',
      `operator asked not to be called for ${s} more s (HTTP ${this.quietStatus} with Retry-After); nothing sent; retry after ${s} s`,
      { status: this.quietStatus, retryAfterS: s });
  }

  /** Validates a 200 answer against the spec and the request it answers. */
  private checkAnswer(json: unknown, sentBody: Record<string, unknown>, sentAt: number, maxAgeS: number | undefined): OperatorVerification {
    const proto = (code: CamaraErrorCode, m: string): never => {
      throw new CamaraProtocolError(code, `operator /verify response: ${m}`, { status: 200 });
    };
    const parsed = verifyResponse.safeParse(json);
    if (!parsed.success) {
      proto('GEO_OPERATOR_PROTOCOL', `does not follow the spec: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    const r = parsed.data!;
    if ((r.verificationResult === 'PARTIAL') !== (r.matchRate !== undefined)) {
      proto('GEO_OPERATOR_PROTOCOL', 'matchRate must be present exactly when verificationResult is PARTIAL');
    }
    let t: Date;
    try {
      t = parseRfc3339(r.lastLocationTime);
    } catch (err) {
      return proto('GEO_OPERATOR_BAD_LOCATION_TIME', `lastLocationTime: ${(err as Error).message}; answer refused`);
    }
    const now = Date.now();
    if (t.getTime() > now + this.clockSkewMs) {
      proto('GEO_OPERATOR_BAD_LOCATION_TIME', `lastLocationTime ${r.lastLocationTime} is in the future (${Math.round((t.getTime() - now) / 1000)} s ahead of this server's clock, ${this.clockSkewMs / 1000} s allowed); answer refused`);
    }
    if (maxAgeS !== undefined) {
      const ageS = (sentAt - t.getTime()) / 1000;
      if (ageS > maxAgeS + TIME_RESOLUTION_S + this.clockSkewMs / 1000) {
        proto('GEO_OPERATOR_MAX_AGE_VIOLATED', `lastLocationTime ${r.lastLocationTime} is ${Math.round(ageS)} s old, older than the maxAge ${maxAgeS} s asked for `
          + '(r3.2: an operator that cannot meet maxAge answers 422 LOCATION_VERIFICATION.UNABLE_TO_FULFILL_MAX_AGE; test definition location_verification_03); answer refused');
      }
    }
    if (r.device !== undefined) {
      const why = answeredDeviceMismatch(r.device, sentBody.device as Record<string, unknown>);
      if (why !== undefined) proto('GEO_OPERATOR_PROTOCOL', `${why}; answer refused`);
    }
    const out: OperatorVerification = { result: r.verificationResult, lastLocationTime: t };
    if (r.matchRate !== undefined) out.matchRate = r.matchRate;
    return out;
  }

  private accessToken(): Promise<string> {
    if (this.token !== undefined && Date.now() < this.token.expiresAt) return Promise.resolve(this.token.value);
    this.tokenInFlight ??= this.fetchToken().finally(() => {
      this.tokenInFlight = undefined;
    });
    return this.tokenInFlight;
  }

  private async fetchToken(): Promise<string> {
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
    const form = new URLSearchParams({ grant_type: 'client_credentials', scope: this.scope });
    if (this.auth.method === 'client_secret_basic') {
      headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(this.clientId)}:${encodeURIComponent(this.auth.secret)}`).toString('base64')}`;
    } else {
      form.set('client_id', this.clientId);
      form.set('client_assertion_type', CLIENT_ASSERTION_TYPE);
      form.set('client_assertion', await this.clientAssertion(this.auth));
    }
    const res = await this.send(this.tokenUrl, headers, form.toString());
    if (res.status !== 200) {
      const o = (res.json ?? {}) as { error?: unknown; error_description?: unknown };
      const what = typeof o.error === 'string' ? `${o.error}${typeof o.error_description === 'string' ? `: ${o.error_description.slice(0, 300)}` : ''}` : 'no OAuth2 error body';
      const busy = res.status >= 500 || res.status === 429;
      const hint = this.auth.method === 'client_secret_basic' ? 'check clientId, the client secret and scope'
        : 'check clientId, that the operator has this key\'s public half (and kid) registered for private_key_jwt, the clock, and scope';
      throw new (busy ? CamaraUnavailableError : CamaraAuthError)(busy ? 'GEO_OPERATOR_UNAVAILABLE' : 'GEO_OPERATOR_TOKEN',
        `operator token endpoint refused client credentials (${this.auth.method}; HTTP ${res.status}, ${what}); ${hint}`, { status: res.status, apiCode: typeof o.error === 'string' ? o.error : undefined });
    }
    const parsed = tokenResponse.safeParse(res.json);
    if (!parsed.success) {
      throw new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', 'operator token response is not an OAuth2 bearer token response (access_token, token_type=Bearer, expires_in)', { status: 200 });
    }
    const lifetimeMs = (parsed.data.expires_in ?? 60) * 1000;
    this.token = { value: parsed.data.access_token, expiresAt: Date.now() + Math.max(0, lifetimeMs - Math.min(TOKEN_SKEW_MS, lifetimeMs / 10)) };
    return parsed.data.access_token;
  }

  /** RFC 7523 section 2.2 / 3: iss = sub = client_id, aud = the token endpoint, a fresh jti, a short exp. */
  private clientAssertion(a: Extract<ClientAuth, { method: 'private_key_jwt' }>): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({})
      .setProtectedHeader({ alg: a.alg, typ: 'JWT', ...(a.kid !== undefined ? { kid: a.kid } : {}) })
      .setIssuer(this.clientId)
      .setSubject(this.clientId)
      .setAudience(this.tokenUrl.href)
      .setJti(randomUUID())
      .setIssuedAt(now)
      .setExpirationTime(now + ASSERTION_LIFETIME_S)
      .sign(a.key);
  }

  private async send(url: URL, headers: Record<string, string>, body: string): Promise<{ status: number; json: unknown; headers: Dispatcher.ResponseData['headers'] }> {
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
    if (text === '') return { status: res.statusCode, json: undefined, headers: res.headers };
    const type = String(res.headers['content-type'] ?? '');
    try {
      if (!/^application\/([a-z.+-]*\+)?json\b/i.test(type)) throw new Error(`content-type ${JSON.stringify(type)}`);
      return { status: res.statusCode, json: JSON.parse(text) as unknown, headers: res.headers };
    } catch (err) {
      // An error status with a non-JSON body is still an error status; only a 200 must be JSON.
      if (res.statusCode !== 200) return { status: res.statusCode, json: undefined, headers: res.headers };
      throw new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', `operator response from ${url.pathname} is not JSON (${(err as Error).message})`, { status: res.statusCode, cause: err });
    }
  }
}

function clientAuth(cfg: CamaraConfig): ClientAuth {
  const bad = (m: string): never => {
    throw new CamaraRequestError('GEO_OPERATOR_BAD_REQUEST', `CAMARA client authentication: ${m}`);
  };
  const hasSecret = cfg.clientSecret !== undefined;
  const hasKey = cfg.privateKeyJwt !== undefined;
  if (hasSecret && hasKey) bad('give exactly one of clientSecret (client_secret_basic) or privateKeyJwt (private_key_jwt), not both');
  if (!hasSecret && !hasKey) bad('give one of clientSecret (client_secret_basic) or privateKeyJwt (private_key_jwt; CAMARA\'s security profile requires it)');
  if (hasSecret) {
    if (typeof cfg.clientSecret !== 'string' || cfg.clientSecret === '') bad('clientSecret is empty');
    return { method: 'client_secret_basic', secret: cfg.clientSecret! };
  }
  const { key: raw, alg, kid } = cfg.privateKeyJwt!;
  let key: KeyObject;
  try {
    key = camaraSigningKey(raw, alg);
  } catch (err) {
    return bad(`privateKeyJwt: ${(err as Error).message}`);
  }
  if (kid !== undefined && (typeof kid !== 'string' || kid === '' || kid.length > 256)) bad('privateKeyJwt.kid must be a non-empty string of at most 256 characters');
  return { method: 'private_key_jwt', key, alg, kid };
}

/**
 * The private key for private_key_jwt client assertions with `alg`, checked to fit it (ES256: EC
 * P-256; RS256/PS256: RSA of at least 2048 bits). Throws an Error saying what is wrong.
 */
export function camaraSigningKey(raw: KeyObject | string | Buffer, alg: CamaraSigningAlg): KeyObject {
  if (!CAMARA_SIGNING_ALGS.includes(alg)) throw new Error(`the signing algorithm must be one of ${CAMARA_SIGNING_ALGS.join(', ')}`);
  let key: KeyObject;
  try {
    key = raw instanceof KeyObject ? raw : createPrivateKey(raw);
  } catch (err) {
    throw new Error(`not a PEM private key (PKCS#8, SEC1 or PKCS#1): ${(err as Error).message}`, { cause: err });
  }
  if (key.type !== 'private') throw new Error(`needs a private key, not a ${key.type} key`);
  if (alg === 'ES256' && !(key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1')) {
    throw new Error(`ES256 needs an EC P-256 key (this one: ${key.asymmetricKeyType}${key.asymmetricKeyDetails?.namedCurve ? ` ${key.asymmetricKeyDetails.namedCurve}` : ''})`);
  }
  if (alg !== 'ES256' && !(key.asymmetricKeyType === 'rsa' && (key.asymmetricKeyDetails?.modulusLength ?? 0) >= 2048)) {
    throw new Error(`${alg} needs an RSA key of at least 2048 bits (this one: ${key.asymmetricKeyType}${key.asymmetricKeyDetails?.modulusLength ? ` ${key.asymmetricKeyDetails.modulusLength} bits` : ''})`);
  }
  return key;
}

/** Seconds from a Retry-After header (delta-seconds or an HTTP-date, RFC 9110 section 10.2.3); undefined when absent or unreadable. */
function retryAfterS(h: string | string[] | undefined): number | undefined {
  const v = (Array.isArray(h) ? h[0] : h)?.trim();
  if (v === undefined || v === '') return undefined;
  let s: number;
  if (/^\d{1,10}$/.test(v)) s = Number(v);
  else {
    const t = Date.parse(v);
    if (Number.isNaN(t) || !/GMT$/.test(v)) return undefined;
    s = Math.max(0, Math.ceil((t - Date.now()) / 1000));
  }
  return Math.min(s, MAX_RETRY_AFTER_S);
}

/** Why the device the operator says it answered about is not (one of) the device(s) asked about; undefined when it is. */
function answeredDeviceMismatch(answered: Record<string, unknown>, sent: Record<string, unknown>): string | undefined {
  const keys = Object.keys(answered);
  if (keys.length !== 1) return `device must name exactly the one identifier used (DeviceResponse maxProperties 1), got ${keys.length}`;
  const k = keys[0]!;
  const a = answered[k];
  const s = sent[k];
  const other = `device names another device than the one asked about (${k})`;
  if (s === undefined) return `device names an identifier that was not sent (${k.slice(0, 40)})`;
  if (k === 'phoneNumber') return a === s ? undefined : other;
  // A zone index (fe80::1%eth0) passes isIPv6 but not the URL parser; terroir never sends one (buildRequest), so it names another device.
  if (k === 'ipv6Address') return typeof a === 'string' && !a.includes('%') && isIPv6(a) && ipv6Canonical(a) === ipv6Canonical(s as string) ? undefined : other;
  if (k === 'ipv4Address') {
    const x = (a ?? {}) as Record<string, unknown>;
    const y = s as Record<string, unknown>;
    if (x.publicAddress !== y.publicAddress) return other;
    for (const f of ['privateAddress', 'publicPort']) if (x[f] !== undefined && x[f] !== y[f]) return other;
    return undefined;
  }
  return other;
}

function ipv6Canonical(a: string): string {
  return new URL(`http://[${a}]/`).hostname;
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
    // DeviceIpv6Address (format: ipv6): one address, no prefix length, no zone index.
    const a = device.ipv6Address;
    if (typeof a !== 'string' || a.length > 45 || a.includes('%') || !isIPv6(a)) {
      bad(`device.ipv6Address must be a single IPv6 address (e.g. 2001:db8:85a3:8d3:1319:8a2e:370:7344, no /prefix or %zone), got ${JSON.stringify(String(a).slice(0, 60))}`);
    }
    dev.ipv6Address = a;
  }
  if (device.networkAccessIdentifier !== undefined) {
    bad('device.networkAccessIdentifier is not sent: CAMARA r3.2 does not allow its use (Commonalities 0.6, Device NOTE2); identify the device by phoneNumber, ipv4Address or ipv6Address');
  }
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

function apiError(status: number, json: unknown, retryAfter?: number): CamaraError {
  const info = errorInfo.safeParse(json);
  const apiCode = info.success ? info.data.code : undefined;
  const detail = info.success ? `${info.data.code}: ${info.data.message.slice(0, 300)}` : 'no CAMARA error body';
  const msg = (what: string): string => `operator ${what} (HTTP ${status}, ${detail})`;
  const d = { status, apiCode, ...(retryAfter !== undefined ? { retryAfterS: retryAfter } : {}) };
  if (status === 401) return new CamaraAuthError('GEO_OPERATOR_UNAUTHENTICATED', msg('rejected the access token even after fetching a fresh one'), d);
  if (status === 403) return new CamaraAuthError('GEO_OPERATOR_PERMISSION_DENIED', msg('denied permission; the client needs scope location-verification:verify'), d);
  if (status === 400) {
    if (apiCode === 'OUT_OF_RANGE') return new CamaraRequestError('GEO_OPERATOR_OUT_OF_RANGE', msg('rejected a value of the request as out of range'), d);
    return new CamaraRequestError('GEO_OPERATOR_INVALID_ARGUMENT', msg('rejected the request as invalid'), d);
  }
  if (status === 404) return new CamaraRequestError('GEO_OPERATOR_IDENTIFIER_NOT_FOUND', msg('does not know this device'), d);
  if (status === 422) {
    const lc = apiCode !== undefined ? LOCATION_CODES[apiCode] : undefined;
    if (lc !== undefined) return new CamaraLocationError(lc, msg('cannot verify the location'), d);
    const ic = apiCode !== undefined ? IDENTIFIER_CODES[apiCode] : undefined;
    if (ic !== undefined) return new CamaraRequestError(ic[0], msg(ic[1]), d);
    return new CamaraRequestError('GEO_OPERATOR_UNPROCESSABLE', msg('cannot process the request (a 422 code r3.2 does not define)'), d);
  }
  const later = retryAfter !== undefined ? `; retry after ${retryAfter} s` : '';
  if (status === 429) return new CamaraUnavailableError('GEO_OPERATOR_RATE_LIMITED', `${msg('is rate limiting us')}${later || '; no Retry-After given, retry later'}`, d);
  if (status >= 500) return new CamaraUnavailableError('GEO_OPERATOR_UNAVAILABLE', `${msg('failed')}${later}`, d);
  return new CamaraProtocolError('GEO_OPERATOR_PROTOCOL', msg('answered with an unexpected status'), d);
}
