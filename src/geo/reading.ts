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
