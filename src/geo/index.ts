// Public surface of the geolocation layer: sensor plugins, canonical claims, the CAMARA
// operator client, and sovereign-location policies.
export { GeoError, InvalidReadingError, SensorError, ClaimsError, PolicyError, UnknownPolicyError, GeofenceError } from './errors.js';
export type { SensorErrorCode } from './errors.js';
export { assertValidReading, assertLatLon, readingFromJson, readingToJson, SENSOR_KINDS } from './reading.js';
export type { LocationReading, LocationReadingJson, SensorKind } from './reading.js';
export type { SensorPlugin, ReadOptions } from './sensor.js';
export { createSensor, sensorConfigSchema } from './create-sensor.js';
export type { SensorConfig } from './create-sensor.js';
export { GpsdSensor } from './gpsd.js';
export type { GpsdSensorOptions } from './gpsd.js';
export { NmeaSensor } from './nmea.js';
export type { NmeaSensorOptions } from './nmea.js';
export { StaticSensor } from './static-sensor.js';
export type { StaticSensorOptions } from './static-sensor.js';
export { canonicalClaims, claimsDigest } from './claims.js';
export {
  CamaraLocationVerifier,
  CamaraError,
  CamaraAuthError,
  CamaraRequestError,
  CamaraLocationError,
  CamaraUnavailableError,
  CamaraProtocolError,
  mobileReading,
} from './camara.js';
export type { CamaraConfig, CamaraDevice, CamaraArea, CamaraErrorCode } from './camara.js';
export { parsePolicies, PolicySet, MAX_POLICY_BYTES } from './policy.js';
export type { LocationPolicy } from './policy.js';
export { evaluatePolicy, MAX_FUTURE_SKEW_S, OPERATOR_WITNESS_ID, LATENCY_WITNESS_ID, MAX_LATENCY_LANDMARKS, assuranceAtLeast, LOCATION_ASSURANCE_LEVELS, type LocationAssurance } from './evaluate.js';
export type { PolicyDecision, CoarseLocationClaims, EvaluationContext, OperatorVerification } from './evaluate.js';
export { countryAt } from './borders.js';
export { MAX_GEOFENCE_VERTICES } from './geofence.js';
export type { Geofence } from './geofence.js';
export { distanceM } from './spherical.js';
export {
  SPEED_OF_LIGHT_M_S, PROBE_STRENGTHS, MAX_LANDMARK_DISKS, radiusForRttM, estimateRadiusM, surfaceRadiusM, boundFromDisks, assertLandmarkDisk,
} from './latency.js';
export type { ProbeStrength, LandmarkDisk, LatencyBound } from './latency.js';
