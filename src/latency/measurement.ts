// A landmark's report of one probe, signed with its SVID key as a compact JWS whose x5c carries the
// landmark's X.509-SVID chain: the server (and later an auditor) can check who measured what, for
// which request, without trusting the connection it arrived on.
import crypto from 'node:crypto';
import { CompactSign, compactVerify } from 'jose';
import type { X509BundleSource } from '../spiffe/bundle.js';
import type { X509Svid } from '../spiffe/svid-source.js';
import { verifyX509Svid } from '../spiffe/x509svid.js';
import type { ProbeStrength } from './protocol.js';

export const MEASUREMENT_TYPE = 'terroir-latency-measurement+jws';
/** Largest measurement accepted (the x5c chain is most of it). */
export const MAX_MEASUREMENT_BYTES = 16 * 1024;

export interface LatencyMeasurement {
  landmark: string;
  node: string;
  strength: ProbeStrength;
  rounds: number;
  rttMinS: number;
  rttP50S: number;
  measuredAt: Date;
  /** The server's request id, echoed so a measurement answers one request only. */
  request: string;
}

export class MeasurementError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MeasurementError';
  }
}

function algFor(key: crypto.KeyObject): string {
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1') return 'ES256';
    if (curve === 'secp384r1') return 'ES384';
  }
  if (key.asymmetricKeyType === 'rsa') return 'RS256';
  throw new MeasurementError(`cannot sign measurements with a ${key.asymmetricKeyType ?? 'unknown'} key`);
}

export async function signMeasurement(svid: X509Svid, m: LatencyMeasurement): Promise<string> {
  const payload = Buffer.from(JSON.stringify({
    v: 1, landmark: m.landmark, node: m.node, strength: m.strength, rounds: m.rounds,
    rttMinS: m.rttMinS, rttP50S: m.rttP50S, measuredAt: m.measuredAt.toISOString(), request: m.request,
  }));
  return new CompactSign(payload)
    .setProtectedHeader({ alg: algFor(svid.privateKey), typ: MEASUREMENT_TYPE, x5c: svid.certificatesDer.map((d) => d.toString('base64')) })
    .sign(svid.privateKey);
}

export interface VerifyMeasurementOptions {
  bundles: X509BundleSource;
  /** The landmark the server asked (its SPIFFE ID must be the signer's). */
  landmark: string;
  node: string;
  request: string;
  strength: ProbeStrength;
  now?: Date;
  /** How far measuredAt may be from now (default 60 s). */
  maxSkewS?: number;
}

/** Verifies the signer's SVID against the bundles, the signature, and every field against the request. */
export async function verifyMeasurement(jws: string, o: VerifyMeasurementOptions): Promise<LatencyMeasurement> {
  if (typeof jws !== 'string' || jws.length > MAX_MEASUREMENT_BYTES) throw new MeasurementError(`a measurement is a compact JWS of at most ${MAX_MEASUREMENT_BYTES} bytes`);
  const parts = jws.split('.');
  if (parts.length !== 3) throw new MeasurementError('a measurement is a compact JWS (three dot-separated parts)');
  let header: { typ?: unknown; x5c?: unknown };
  try {
    header = JSON.parse(Buffer.from(parts[0] as string, 'base64url').toString('utf8')) as typeof header;
  } catch (e) {
    throw new MeasurementError('measurement header is not JSON', { cause: e });
  }
  // JSON.parse gives null, numbers or arrays too: only an object is a header.
  if (!isJsonObject(header)) throw new MeasurementError('measurement header is not a JSON object');
  if (header.typ !== MEASUREMENT_TYPE) throw new MeasurementError(`measurement typ must be ${MEASUREMENT_TYPE}`);
  if (!Array.isArray(header.x5c) || header.x5c.length === 0 || header.x5c.length > 8 || !header.x5c.every((c) => typeof c === 'string')) {
    throw new MeasurementError('measurement x5c must list the landmark\'s certificate chain');
  }
  const chain = (header.x5c as string[]).map((c) => Buffer.from(c, 'base64'));
  let leaf: crypto.X509Certificate;
  try {
    const v = verifyX509Svid(chain, o.bundles, o.now ? { now: o.now } : {});
    if (v.id.toString() !== o.landmark) throw new MeasurementError(`measurement is signed by ${v.id.toString()}, not by the landmark asked (${o.landmark})`);
    leaf = v.leaf;
  } catch (e) {
    if (e instanceof MeasurementError) throw e;
    throw new MeasurementError(`measurement signer is not a valid SVID of this trust domain: ${(e as Error).message}`, { cause: e });
  }
  let payload: Record<string, unknown>;
  try {
    const r = await compactVerify(jws, leaf.publicKey, { algorithms: ['ES256', 'ES384', 'RS256'] });
    payload = JSON.parse(Buffer.from(r.payload).toString('utf8')) as Record<string, unknown>;
  } catch (e) {
    throw new MeasurementError(`measurement signature does not verify: ${(e as Error).message}`, { cause: e });
  }
  if (!isJsonObject(payload)) throw new MeasurementError('measurement payload is not a JSON object');
  const str = (k: string): string => {
    const v = payload[k];
    if (typeof v !== 'string') throw new MeasurementError(`measurement field ${k} must be a string`);
    return v;
  };
  const num = (k: string): number => {
    const v = payload[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new MeasurementError(`measurement field ${k} must be a non-negative number`);
    return v;
  };
  if (payload['v'] !== 1) throw new MeasurementError('measurement version must be 1');
  if (str('landmark') !== o.landmark) throw new MeasurementError('measurement names another landmark than its signer');
  if (str('node') !== o.node) throw new MeasurementError(`measurement is about ${str('node')}, not ${o.node}`);
  if (str('request') !== o.request) throw new MeasurementError('measurement answers another request (replayed)');
  if (str('strength') !== o.strength) throw new MeasurementError(`measurement strength is ${str('strength')}, ${o.strength} was asked`);
  const rttMinS = num('rttMinS');
  const rttP50S = num('rttP50S');
  if (rttMinS <= 0 || rttP50S < rttMinS) throw new MeasurementError('measurement round trips are inconsistent (min must be > 0 and ≤ p50)');
  const rounds = num('rounds');
  if (!Number.isInteger(rounds) || rounds < 1) throw new MeasurementError('measurement rounds must be a positive integer');
  const measuredAt = new Date(str('measuredAt'));
  if (Number.isNaN(measuredAt.getTime())) throw new MeasurementError('measurement measuredAt is not a time');
  const skew = Math.abs((o.now ?? new Date()).getTime() - measuredAt.getTime()) / 1000;
  if (skew > (o.maxSkewS ?? 60)) throw new MeasurementError(`measurement was taken ${Math.round(skew)} s from now; check the landmark's clock`);
  return { landmark: o.landmark, node: o.node, strength: o.strength, rounds, rttMinS, rttP50S, measuredAt, request: o.request };
}

function isJsonObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}
