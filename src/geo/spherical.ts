/**
 * Distances on a spherical Earth (mean radius, IUGG). The spherical model is off from the WGS-84
 * ellipsoid by at most ~0.5 %, which is far below the error circles we compare against.
 */
export const EARTH_RADIUS_M = 6_371_008.8;
export const METRES_PER_DEGREE = (Math.PI * EARTH_RADIUS_M) / 180;

const RAD = Math.PI / 180;

/** Great-circle distance in metres (haversine). */
export function distanceM(lat1: number, lon1: number, lat2: number, lon2: number): number {
  const dLat = (lat2 - lat1) * RAD;
  const dLon = (lon2 - lon1) * RAD;
  const s = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * RAD) * Math.cos(lat2 * RAD) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(s)));
}

/** Initial bearing (radians) from point 1 to point 2. */
function bearing(lat1: number, lon1: number, lat2: number, lon2: number): number {
  const φ1 = lat1 * RAD;
  const φ2 = lat2 * RAD;
  const Δλ = (lon2 - lon1) * RAD;
  return Math.atan2(Math.sin(Δλ) * Math.cos(φ2), Math.cos(φ1) * Math.sin(φ2) - Math.sin(φ1) * Math.cos(φ2) * Math.cos(Δλ));
}

/**
 * Shortest distance (metres) from point P to the great-circle segment A–B: the cross-track
 * distance when P projects inside the segment, otherwise the nearer endpoint. Works at the poles
 * and across the antimeridian, unlike a planar projection.
 */
export function distanceToSegmentM(
  pLat: number, pLon: number, aLat: number, aLon: number, bLat: number, bLon: number,
): number {
  const dAP = distanceM(aLat, aLon, pLat, pLon);
  const dAB = distanceM(aLat, aLon, bLat, bLon);
  if (dAB === 0) return dAP;
  const δ13 = dAP / EARTH_RADIUS_M;
  const θ13 = bearing(aLat, aLon, pLat, pLon);
  const θ12 = bearing(aLat, aLon, bLat, bLon);
  const δxt = Math.asin(Math.max(-1, Math.min(1, Math.sin(δ13) * Math.sin(θ13 - θ12))));
  const cosXt = Math.cos(δxt);
  const δat = cosXt === 0 ? 0 : Math.acos(Math.max(-1, Math.min(1, Math.cos(δ13) / cosXt)));
  // Along-track is signed by whether P lies ahead of A (towards B) or behind it.
  const ahead = Math.cos(θ13 - θ12) >= 0;
  const along = (ahead ? δat : -δat) * EARTH_RADIUS_M;
  if (along <= 0) return dAP;
  if (along >= dAB) return distanceM(bLat, bLon, pLat, pLon);
  return Math.abs(δxt) * EARTH_RADIUS_M;
}

/** The point reached from (lat, lon) after distM metres on the initial bearing bearingDeg. */
export function destination(lat: number, lon: number, bearingDeg: number, distM: number): [number, number] {
  const δ = distM / EARTH_RADIUS_M;
  const θ = bearingDeg * RAD;
  const φ1 = lat * RAD;
  const λ1 = lon * RAD;
  const φ2 = Math.asin(Math.sin(φ1) * Math.cos(δ) + Math.cos(φ1) * Math.sin(δ) * Math.cos(θ));
  const λ2 = λ1 + Math.atan2(Math.sin(θ) * Math.sin(δ) * Math.cos(φ1), Math.cos(δ) - Math.sin(φ1) * Math.sin(φ2));
  return [φ2 / RAD, wrapLon(λ2 / RAD)];
}

/** Longitude normalised to [-180, 180). */
export function wrapLon(lon: number): number {
  return ((((lon + 180) % 360) + 360) % 360) - 180;
}
