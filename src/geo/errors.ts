/**
 * Errors of the geolocation layer. Every error carries a stable `code` so callers (server, agent,
 * audit log) can branch on it without parsing messages; messages say what was wrong and what to do.
 */
export class GeoError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A location reading with impossible values (NaN, out of range, negative error, bad time). */
export class InvalidReadingError extends GeoError {
  constructor(message: string) {
    super('GEO_INVALID_READING', message);
  }
}

export type SensorErrorCode =
  | 'GEO_SENSOR_CONFIG'
  | 'GEO_SENSOR_TIMEOUT'
  | 'GEO_SENSOR_ABORTED'
  | 'GEO_SENSOR_CLOSED'
  | 'GEO_SENSOR_PROTOCOL'
  | 'GEO_SENSOR_JUMP'
  | 'GEO_SENSOR_IO';

/** A sensor plugin could not produce a trustworthy reading. */
export class SensorError extends GeoError {
  declare readonly code: SensorErrorCode;
  readonly sensorId: string;

  constructor(code: SensorErrorCode, sensorId: string, message: string, options?: { cause?: unknown }) {
    super(code, `${sensorId}: ${message}`, options);
    this.sensorId = sensorId;
  }
}

/** A claims document that cannot be canonicalised (non-finite number, cycle, unsupported value). */
export class ClaimsError extends GeoError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('GEO_CLAIMS_INVALID', message, options);
  }
}

/** A policy document that does not validate; the message names the offending field. */
export class PolicyError extends GeoError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('GEO_POLICY_INVALID', message, options);
  }
}

/** A policy name that is not in the policy set. */
export class UnknownPolicyError extends GeoError {
  readonly policyName: string;

  constructor(name: string, known: readonly string[]) {
    super('GEO_POLICY_UNKNOWN', `unknown location policy ${JSON.stringify(name)}; known policies: ${known.length ? known.join(', ') : '(none)'}`);
    this.policyName = name;
  }
}

/** A GeoJSON geofence that is malformed, too large, self-intersecting or crosses the antimeridian. */
export class GeofenceError extends GeoError {
  constructor(message: string) {
    super('GEO_GEOFENCE_INVALID', message);
  }
}
