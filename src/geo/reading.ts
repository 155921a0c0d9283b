import { InvalidReadingError } from './errors.js';

export type SensorKind = 'gnss' | 'mobile' | 'static';

export const SENSOR_KINDS: readonly SensorKind[] = ['gnss', 'mobile', 'static'];

/**
 * One position report from one sensor. Coordinates are WGS-84 degrees; `horizontalErrorM` is the
 * radius (metres) of the circle the sensor believes the true position lies in. `attested` is true
 * only when the position comes from hardware or an independent party, never from configuration.
 */
export interface LocationReading {
  kind: SensorKind;
  sensorId: string;
  time: Date;
  lat: number;
  lon: number;
  horizontalErrorM: number;
  attested: boolean;
  /**
   * How the reading reached the agent: `remote` when it was read from a sensor service on another host
   * (a gpsd the operator explicitly allowed off loopback), which anyone on that network path can
   * impersonate. Absent: local (serial device, loopback gpsd, Unix socket).
   */
  link?: 'remote';
  evidence?: unknown;
}

/** Throws InvalidReadingError unless every field of the reading is usable. */
export function assertValidReading(r: LocationReading): void {
  const who = typeof r?.sensorId === 'string' && r.sensorId !== '' ? r.sensorId : '(no sensorId)';
  if (r === null || typeof r !== 'object') throw new InvalidReadingError('reading must be an object');
  if (!SENSOR_KINDS.includes(r.kind)) {
    throw new InvalidReadingError(`${who}: kind must be one of ${SENSOR_KINDS.join(', ')}, got ${JSON.stringify(r.kind)}`);
  }
  if (typeof r.sensorId !== 'string' || r.sensorId === '' || r.sensorId.length > 256) {
    throw new InvalidReadingError('sensorId must be a non-empty string of at most 256 characters');
  }
  assertLatLon(r.lat, r.lon, who);
  if (typeof r.horizontalErrorM !== 'number' || !Number.isFinite(r.horizontalErrorM) || r.horizontalErrorM < 0) {
    throw new InvalidReadingError(`${who}: horizontalErrorM must be a finite number ≥ 0, got ${String(r.horizontalErrorM)}`);
  }
  if (!(r.time instanceof Date) || Number.isNaN(r.time.getTime())) {
    throw new InvalidReadingError(`${who}: time must be a valid Date`);
  }
  if (typeof r.attested !== 'boolean') throw new InvalidReadingError(`${who}: attested must be a boolean`);
  if (r.link !== undefined && r.link !== 'remote') throw new InvalidReadingError(`${who}: link must be "remote" or absent`);
}

/** Throws InvalidReadingError unless lat ∈ [-90, 90] and lon ∈ [-180, 180] are finite numbers. */
export function assertLatLon(lat: number, lon: number, who = 'position'): void {
  if (typeof lat !== 'number' || !Number.isFinite(lat) || lat < -90 || lat > 90) {
    throw new InvalidReadingError(`${who}: latitude must be a finite number in [-90, 90], got ${String(lat)}`);
  }
  if (typeof lon !== 'number' || !Number.isFinite(lon) || lon < -180 || lon > 180) {
    throw new InvalidReadingError(`${who}: longitude must be a finite number in [-180, 180], got ${String(lon)}`);
  }
}

/** A reading as plain JSON (time as an ISO 8601 string), for claims documents and the wire. */
export interface LocationReadingJson {
  kind: SensorKind;
  sensorId: string;
  time: string;
  lat: number;
  lon: number;
  horizontalErrorM: number;
  attested: boolean;
  link?: 'remote';
  evidence?: unknown;
}

export function readingToJson(r: LocationReading): LocationReadingJson {
  assertValidReading(r);
  const out: LocationReadingJson = {
    kind: r.kind,
    sensorId: r.sensorId,
    time: r.time.toISOString(),
    lat: r.lat,
    lon: r.lon,
    horizontalErrorM: r.horizontalErrorM,
    attested: r.attested,
  };
  if (r.link !== undefined) out.link = r.link;
  if (r.evidence !== undefined) out.evidence = r.evidence;
  return out;
}

// Exactly Date.prototype.toISOString's form, so parsing and re-serialising give the same bytes
// (and the same claims digest).
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const KNOWN_FIELDS = new Set(['kind', 'sensorId', 'time', 'lat', 'lon', 'horizontalErrorM', 'attested', 'link', 'evidence']);

/**
 * Parses a reading received as JSON (e.g. from an agent), refusing anything malformed with an
 * InvalidReadingError. Unknown fields are refused too: a reading is signed over as a whole.
 */
export function readingFromJson(v: unknown): LocationReading {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new InvalidReadingError('reading must be a JSON object');
  const o = v as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!KNOWN_FIELDS.has(k)) throw new InvalidReadingError(`reading has an unknown field ${JSON.stringify(k)}`);
  }
  if (typeof o.time !== 'string' || !ISO_TIME.test(o.time)) {
    throw new InvalidReadingError('reading time must be an ISO 8601 UTC time like 2026-11-22T12:00:00.000Z');
  }
  const time = new Date(o.time);
  if (Number.isNaN(time.getTime()) || time.toISOString() !== o.time) {
    throw new InvalidReadingError(`reading time ${JSON.stringify(o.time)} is not a valid calendar time`);
  }
  const r = {
    kind: o.kind,
    sensorId: o.sensorId,
    time,
    lat: o.lat,
    lon: o.lon,
    horizontalErrorM: o.horizontalErrorM,
    attested: o.attested,
  } as LocationReading;
  if (o.link !== undefined) r.link = o.link as 'remote';
  if (o.evidence !== undefined) r.evidence = o.evidence;
  assertValidReading(r);
  return r;
}
