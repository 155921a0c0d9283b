// The geometry of the latency witness (issue 15): a landmark at a known place that timed a signed
// challenge-response with a node knows the node is no farther than light travels in half the round
// trip. Several landmarks bound the node to the intersection of their disks. Everything here is pure:
// no clocks, no I/O; the probe and its signatures are checked elsewhere before a disk gets here.
//
// What the numbers mean (docs/latency-witness.md):
//   - `LandmarkDisk.radiusM` is a physical, straight-line distance (c·RTT/2 or more).
//   - The area boundFromDisks returns is a disk on terroir's spherical map (spherical.ts: great-circle
//     distances on a sphere of the mean Earth radius), the model the border map classifies circles on.
//     surfaceRadiusM converts the first into the second soundly (it only ever grows the disk).
import { GeoError } from './errors.js';
import { assertLatLon } from './reading.js';
import { distanceM, EARTH_RADIUS_M } from './spherical.js';

/** The speed of light in vacuum, m/s (exact by the SI definition of the metre). */
export const SPEED_OF_LIGHT_M_S = 299_792_458;

/**
 * What signed the node's replies: `agent-key` the agent SVID's key (fast; sound while the node's
 * runtime is intact), `tpm` a quote by the node's attested AK (slower; sound even against root on the
 * node, since the AK cannot leave the TPM).
 */
export type ProbeStrength = 'agent-key' | 'tpm';
export const PROBE_STRENGTHS: readonly ProbeStrength[] = ['agent-key', 'tpm'];

/** At most this many disks per bound (the policy's minLandmarks is at most 16; a few repeats allowed). */
export const MAX_LANDMARK_DISKS = 64;

/**
 * WGS-84's smallest radius of curvature (b²/a = 6,335,439 m, meridian at the equator), rounded down.
 * Rounding down only makes surfaceRadiusM larger.
 */
const MIN_CURVATURE_RADIUS_M = 6_335_000;
/**
 * Relative slack for the map being a sphere: a great-circle distance computed from geodetic lat/lon on
 * the mean-radius sphere exceeds the ellipsoidal surface distance by at most ~0.57 % (6,371.0 km over
 * the 6,335.4 km meridian radius at the equator); 1 % leaves room for points below the ellipsoid
 * (the Dead Sea shore is ~0.43 km below: 0.007 %).
 */
const SPHERE_SLACK = 0.01;
/** Absolute slack, metres, for floating-point rounding in the conversions below. */
const ABS_SLACK_M = 1;
/** Physical bounds beyond this say nothing useful; they map to the whole Earth. */
const WHOLE_EARTH_BEYOND_M = 10_000_000;
/** Half the sphere's circumference: a map disk of this radius covers every point. */
const WHOLE_EARTH_M = Math.PI * EARTH_RADIUS_M;

/** Radius (m) a round-trip time (s) allows: c·rtt/2. Throws GeoError on negative/non-finite. */
export function radiusForRttM(rttS: number): number {
  if (typeof rttS !== 'number' || !Number.isFinite(rttS) || rttS < 0) {
    throw new GeoError('GEO_LATENCY_INVALID', `round-trip time must be a finite number of seconds ≥ 0, got ${String(rttS)}`);
  }
  return (SPEED_OF_LIGHT_M_S * rttS) / 2;
}

/** Optional estimate at a calibrated speed (e.g. fibre 2/3 c): shown, never used for assurance. */
export function estimateRadiusM(rttS: number, speedFraction: number): number {
  if (typeof speedFraction !== 'number' || !Number.isFinite(speedFraction) || speedFraction <= 0 || speedFraction > 1) {
    throw new GeoError('GEO_LATENCY_INVALID', `speed fraction must be in (0, 1] of c, got ${String(speedFraction)}`);
  }
  return radiusForRttM(rttS) * speedFraction;
}

/**
 * The radius (m) of a disk on terroir's spherical map that contains every place whose straight-line
 * distance from the centre is at most `physicalM`.
 *
 * Light goes through the chord, the map measures along the surface: on the WGS-84 ellipsoid a shortest
 * path (a geodesic, whose curvature in space is at most 1/ρ with ρ the smallest radius of curvature)
 * between points a chord d apart is at most 2ρ·asin(d/2ρ) long (Schur's comparison with the circle of
 * radius ρ). Heights above the ellipsoid only lengthen the chord (the surface is convex). Then the
 * sphere's own error against the ellipsoid (SPHERE_SLACK), and a metre for rounding.
 */
export function surfaceRadiusM(physicalM: number): number {
  if (typeof physicalM !== 'number' || !Number.isFinite(physicalM) || physicalM < 0) {
    throw new GeoError('GEO_LATENCY_INVALID', `distance must be a finite number of metres ≥ 0, got ${String(physicalM)}`);
  }
  if (physicalM > WHOLE_EARTH_BEYOND_M) return WHOLE_EARTH_M;
  const arc = 2 * MIN_CURVATURE_RADIUS_M * Math.asin(physicalM / (2 * MIN_CURVATURE_RADIUS_M));
  return Math.min(WHOLE_EARTH_M, arc * (1 + SPHERE_SLACK) + ABS_SLACK_M);
}

/** One landmark's bound, as the server accepted it (position from the SERVER's config, never from the landmark or node). */
export interface LandmarkDisk {
  /** The landmark's SPIFFE ID. */
  landmark: string;
  lat: number;
  lon: number;
  /** Straight-line bound on the node's distance, metres: at least c·rttS/2 (never less). */
  radiusM: number;
  /** The minimum round-trip time the landmark measured, seconds. */
  rttS: number;
  strength: ProbeStrength;
  measuredAt: Date;
}

export type LatencyBound =
  | { ok: true; area: { lat: number; lon: number; radiusM: number }; disks: LandmarkDisk[] }
  | { ok: false; reason: string; landmarks: [string, string] };

/** Throws GeoError unless `d` is a well-formed LandmarkDisk whose radius is at least c·rtt/2. */
export function assertLandmarkDisk(d: LandmarkDisk, where = 'landmark disk'): void {
  if (d === null || typeof d !== 'object') throw new GeoError('GEO_LATENCY_INVALID', `${where} must be an object`);
  if (typeof d.landmark !== 'string' || d.landmark === '' || d.landmark.length > 2048) {
    throw new GeoError('GEO_LATENCY_INVALID', `${where}: landmark must be a non-empty SPIFFE ID`);
  }
  const tag = `${where} of ${d.landmark}`;
  try {
    assertLatLon(d.lat, d.lon, tag);
  } catch (err) {
    throw new GeoError('GEO_LATENCY_INVALID', (err as Error).message, { cause: err });
  }
  if (!PROBE_STRENGTHS.includes(d.strength)) {
    throw new GeoError('GEO_LATENCY_INVALID', `${tag}: strength must be one of ${PROBE_STRENGTHS.join(', ')}, got ${JSON.stringify(d.strength)}`);
  }
  if (!(d.measuredAt instanceof Date) || Number.isNaN(d.measuredAt.getTime())) {
    throw new GeoError('GEO_LATENCY_INVALID', `${tag}: measuredAt must be a valid Date`);
  }
  if (typeof d.radiusM !== 'number' || !Number.isFinite(d.radiusM) || d.radiusM < 0) {
    throw new GeoError('GEO_LATENCY_INVALID', `${tag}: radiusM must be a finite number ≥ 0`);
  }
  const floor = radiusForRttM(d.rttS);
  // A radius below c·rtt/2 would claim the node is nearer than light allows: unsound, never a rounding.
  if (d.radiusM < floor * (1 - 1e-12)) {
    throw new GeoError('GEO_LATENCY_INVALID', `${tag}: radiusM ${d.radiusM} m is less than c·rtt/2 = ${floor} m`);
  }
}

/**
 * Intersects the disks. Two disks that do not intersect (great-circle distance between centres > r1+r2,
 * both as map radii) reveal a wrongly declared landmark (or a broken clock): ok:false naming both.
 * Otherwise `area` is ONE map disk guaranteed to contain the whole intersection: the smallest of the
 * disks, or, where it is smaller, the disk around the lens of a pair (lensCover). Throws on empty or
 * malformed input.
 *
 * Three or more disks that meet pairwise but have no common point are not reported as a contradiction;
 * the area is then still a superset of the (empty) intersection, so nothing unsound follows from it.
 */
export function boundFromDisks(disks: readonly LandmarkDisk[]): LatencyBound {
  if (!Array.isArray(disks)) throw new GeoError('GEO_LATENCY_INVALID', 'disks must be an array');
  if (disks.length === 0) throw new GeoError('GEO_LATENCY_INVALID', 'at least one landmark disk is needed for a bound');
  if (disks.length > MAX_LANDMARK_DISKS) {
    throw new GeoError('GEO_LATENCY_INVALID', `at most ${MAX_LANDMARK_DISKS} landmark disks per bound, got ${disks.length}`);
  }
  disks.forEach((d, i) => assertLandmarkDisk(d, `disks[${i}]`));
  const caps = disks.map((d) => ({ d, lat: d.lat, lon: d.lon, r: surfaceRadiusM(d.radiusM) }));

  for (let i = 0; i < caps.length; i++) {
    for (let j = i + 1; j < caps.length; j++) {
      const a = caps[i]!;
      const b = caps[j]!;
      const apart = distanceM(a.lat, a.lon, b.lat, b.lon);
      if (apart > a.r + b.r) {
        const km = (m: number): string => (m / 1000).toFixed(1);
        return {
          ok: false,
          landmarks: [a.d.landmark, b.d.landmark],
          reason: `landmarks ${a.d.landmark} and ${b.d.landmark} are ${km(apart)} km apart, but their bounds (${km(a.d.radiusM)} km and ${km(b.d.radiusM)} km) leave no place for the node: one of them is declared at the wrong place, or its clock is broken`,
        };
      }
    }
  }

  let best = caps[0]!;
  for (const c of caps) if (c.r < best.r) best = c;
  let area = { lat: best.lat, lon: best.lon, radiusM: best.r };
  for (let i = 0; i < caps.length; i++) {
    for (let j = i + 1; j < caps.length; j++) {
      const lens = lensCover(caps[i]!, caps[j]!);
      if (lens !== undefined && lens.radiusM < area.radiusM) area = lens;
    }
  }
  return { ok: true, area, disks: [...disks] };
}

type Vec = [number, number, number];
const RAD = Math.PI / 180;

function toVec(lat: number, lon: number): Vec {
  const φ = lat * RAD;
  const λ = lon * RAD;
  return [Math.cos(φ) * Math.cos(λ), Math.cos(φ) * Math.sin(λ), Math.sin(φ)];
}

const dot = (u: Vec, v: Vec): number => u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
const cross = (u: Vec, v: Vec): Vec => [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
const norm = (u: Vec): number => Math.hypot(u[0], u[1], u[2]);
const scale = (u: Vec, k: number): Vec => [u[0] * k, u[1] * k, u[2] * k];
const add = (u: Vec, v: Vec): Vec => [u[0] + v[0], u[1] + v[1], u[2] + v[2]];
/** Angle between unit vectors, accurate for tiny and for large angles alike. */
const angle = (u: Vec, v: Vec): number => Math.atan2(norm(cross(u, v)), dot(u, v));

/**
 * A map disk that contains the whole lens where caps A and B overlap, or undefined when the smaller cap
 * is as good (or the construction does not apply). Proof sketch, angles in radians on the unit sphere:
 *
 * Both caps (radii ρ1, ρ2 < π/2, so each is convex) are symmetric about the great circle AB, so their
 * two boundary circles cross at points P, Q mirrored across it, and the midpoint M of PQ lies on AB at
 * an angle x from A with tan x = (cos ρ2 − cos ρ1·cos δ) / (cos ρ1·sin δ) (δ = |AB|), and the right
 * triangle A-M-P gives cos ρ1 = cos x·cos h with h = |MP|. The lens is bounded by the arc of A's circle
 * that lies inside B's cap (the arc facing B, between P and Q) and the arc of B's circle facing A. For a
 * point X on A's circle at angle θ around A from the direction of M, cos|MX| = cos x·cos ρ1 +
 * sin x·sin ρ1·cos θ, which falls as |θ| grows when 0 ≤ x: when M is on A's side facing B (0 ≤ x),
 * the farthest point of that arc from M is P or Q, at h. The same holds for B's arc when x ≤ δ. The lens
 * is convex and lies in a hemisphere, so its farthest point from M is on its boundary: the disk (M, h)
 * contains it. When x < 0 or x > δ the arc is more than half its circle and the construction is not
 * used. The result is checked numerically (P must be ρ1 from A and ρ2 from B) and then grown by a metre
 * plus a millionth of its radius, for rounding.
 */
function lensCover(a: { lat: number; lon: number; r: number }, b: { lat: number; lon: number; r: number }): { lat: number; lon: number; radiusM: number } | undefined {
  const ρ1 = a.r / EARTH_RADIUS_M;
  const ρ2 = b.r / EARTH_RADIUS_M;
  if (!(ρ1 > 0 && ρ2 > 0 && ρ1 < Math.PI / 2 && ρ2 < Math.PI / 2)) return undefined;
  const ua = toVec(a.lat, a.lon);
  const ub = toVec(b.lat, b.lon);
  const δ = angle(ua, ub);
  // One cap inside the other (the smaller one is then the lens), or tangent / apart.
  if (δ + Math.min(ρ1, ρ2) <= Math.max(ρ1, ρ2) || δ >= ρ1 + ρ2) return undefined;
  const x = Math.atan2(Math.cos(ρ2) - Math.cos(ρ1) * Math.cos(δ), Math.cos(ρ1) * Math.sin(δ));
  if (!(x >= 0 && x <= δ)) return undefined;
  // sin²(h/2) = (sin²(ρ1/2) − sin²(x/2)) / cos x, as a product to keep small angles accurate.
  const s2 = (Math.sin((ρ1 + x) / 2) * Math.sin((ρ1 - x) / 2)) / Math.cos(x);
  if (!(s2 >= 0)) return undefined;
  const h = 2 * Math.asin(Math.min(1, Math.sqrt(s2)));
  // M = A turned by x towards B; P = M turned by h off the great circle AB.
  const towardsB = add(ub, scale(ua, -dot(ua, ub)));
  const nt = norm(towardsB);
  const n = cross(ua, ub);
  const nn = norm(n);
  if (nt === 0 || nn === 0) return undefined;
  const m = add(scale(ua, Math.cos(x)), scale(towardsB, Math.sin(x) / nt));
  const p = add(scale(m, Math.cos(h)), scale(n, Math.sin(h) / nn));
  const tol = 1e-9; // radians, ~6 mm: a check of the construction, far above rounding
  if (Math.abs(angle(p, ua) - ρ1) > tol || Math.abs(angle(p, ub) - ρ2) > tol) return undefined;
  const hM = h * EARTH_RADIUS_M;
  const radiusM = hM + 1 + hM * 1e-6;
  const lat = Math.atan2(m[2], Math.hypot(m[0], m[1])) / RAD;
  const lon = Math.atan2(m[1], m[0]) / RAD;
  return { lat, lon, radiusM };
}
