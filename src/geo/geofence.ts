import { EdgeIndex } from './edge-index.js';
import { GeofenceError } from './errors.js';
import { distanceM, METRES_PER_DEGREE } from './spherical.js';
import type { CircleVerdict } from './borders.js';

/** Limits that keep a hostile or mistaken policy file from exhausting memory or CPU. */
export const MAX_GEOFENCE_VERTICES = 10_000;

export interface CircleFenceSpec {
  lat: number;
  lon: number;
  radiusM: number;
}

/** A named area a reading's error circle must lie in: a circle, or GeoJSON (Multi)Polygons. */
export interface Geofence {
  readonly name: string;
  classify(lat: number, lon: number, radiusM: number): CircleVerdict;
}

export class CircleFence implements Geofence {
  constructor(readonly name: string, private readonly spec: CircleFenceSpec) {}

  // Exact on the sphere: the reading's circle is inside when its far edge is inside the fence.
  classify(lat: number, lon: number, radiusM: number): CircleVerdict {
    const d = distanceM(lat, lon, this.spec.lat, this.spec.lon);
    if (d + radiusM <= this.spec.radiusM) return 'inside';
    if (d >= this.spec.radiusM + radiusM) return 'outside';
    return 'undecided';
  }
}

type Ring = number[][]; // [lon, lat] positions, closed
type PolygonCoords = Ring[];

/**
 * GeoJSON Polygon/MultiPolygon geofence. Inside/outside of the centre is decided by even-odd ray
 * casting in lon/lat (GeoJSON's planar edges); whether the error circle reaches the boundary by
 * the distance to the nearest edge, so a circle touching the fence boundary is undecided.
 */
export class PolygonFence implements Geofence {
  private readonly polygons: PolygonCoords[];
  private readonly index = new EdgeIndex(0.25);
  private readonly bbox: [number, number, number, number]; // minLon, minLat, maxLon, maxLat

  constructor(readonly name: string, geojson: unknown) {
    this.polygons = extractPolygons(geojson, name);
    let minLon = 180;
    let minLat = 90;
    let maxLon = -180;
    let maxLat = -90;
    let vertices = 0;
    for (const poly of this.polygons) {
      for (const ring of poly) {
        vertices += ring.length;
        if (vertices > MAX_GEOFENCE_VERTICES) {
          throw new GeofenceError(`geofence ${name}: more than ${MAX_GEOFENCE_VERTICES} vertices; simplify the shape`);
        }
        for (const [lon, lat] of ring as [number, number][]) {
          minLon = Math.min(minLon, lon);
          maxLon = Math.max(maxLon, lon);
          minLat = Math.min(minLat, lat);
          maxLat = Math.max(maxLat, lat);
        }
      }
    }
    this.bbox = [minLon, minLat, maxLon, maxLat];
    assertSimple(this.polygons, name);
    this.polygons.forEach((poly, p) =>
      poly.forEach((ring, r) => {
        if (Math.abs(signedArea(ring)) < 1e-14) throw new GeofenceError(`geofence ${name}: polygon ${p} ring ${r} encloses no area`);
      }),
    );
    for (const poly of this.polygons) {
      for (const ring of poly) {
        for (let i = 0; i + 1 < ring.length; i++) {
          const [aLon, aLat] = ring[i] as [number, number];
          const [bLon, bLat] = ring[i + 1] as [number, number];
          this.index.add(aLat, aLon, bLat, bLon, 0);
        }
      }
    }
  }

  classify(lat: number, lon: number, radiusM: number): CircleVerdict {
    const [minLon, minLat, maxLon, maxLat] = this.bbox;
    // Cheap reject: the circle's latitude band misses the fence entirely.
    const dLat = radiusM / METRES_PER_DEGREE;
    if (lat + dLat < minLat || lat - dLat > maxLat) return 'outside';
    const inside = lon >= minLon && lon <= maxLon && lat >= minLat && lat <= maxLat && this.contains(lat, lon);
    let touches = false;
    if (radiusM > 0) {
      this.index.near(lat, lon, radiusM, () => {
        touches = true;
      });
    }
    if (touches) return 'undecided';
    return inside ? 'inside' : 'outside';
  }

  private contains(lat: number, lon: number): boolean {
    for (const poly of this.polygons) {
      let inPoly = false;
      for (const ring of poly) {
        if (ringContains(ring, lat, lon)) inPoly = !inPoly;
      }
      if (inPoly) return true;
    }
    return false;
  }
}

function ringContains(ring: Ring, lat: number, lon: number): boolean {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const xi = ring[i]![0]!;
    const yi = ring[i]![1]!;
    const xj = ring[j]![0]!;
    const yj = ring[j]![1]!;
    if (yi > lat !== yj > lat && lon < ((xj - xi) * (lat - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function extractPolygons(g: unknown, name: string, parent: 'root' | 'Feature' | 'FeatureCollection' = 'root'): PolygonCoords[] {
  const fail = (what: string): never => {
    throw new GeofenceError(`geofence ${name}: ${what}`);
  };
  if (g === null || typeof g !== 'object') fail('GeoJSON must be an object');
  const obj = g as { type?: unknown; coordinates?: unknown; geometry?: unknown; features?: unknown };
  // GeoJSON nests at most FeatureCollection → Feature → geometry; deeper would recurse without bound.
  if ((obj.type === 'Feature' && parent === 'Feature') || (obj.type === 'FeatureCollection' && parent !== 'root')) {
    fail(`a ${obj.type} inside a ${parent} is nested too deep; GeoJSON nests at most FeatureCollection → Feature → Polygon/MultiPolygon`);
  }
  switch (obj.type) {
    case 'Feature':
      return extractPolygons(obj.geometry, name, 'Feature');
    case 'FeatureCollection': {
      if (!Array.isArray(obj.features) || obj.features.length === 0) fail('FeatureCollection needs a non-empty "features" array');
      return (obj.features as unknown[]).flatMap((f) => extractPolygons(f, name, 'FeatureCollection'));
    }
    case 'Polygon':
      return [checkPolygon(obj.coordinates, name, 'coordinates')];
    case 'MultiPolygon': {
      if (!Array.isArray(obj.coordinates) || obj.coordinates.length === 0) fail('MultiPolygon needs a non-empty coordinates array');
      return (obj.coordinates as unknown[]).map((p, i) => checkPolygon(p, name, `coordinates[${i}]`));
    }
    default:
      return fail(`GeoJSON type must be Polygon, MultiPolygon, Feature or FeatureCollection, got ${shown(obj.type)}`);
  }
}

function checkPolygon(p: unknown, name: string, where: string): PolygonCoords {
  const fail = (what: string): never => {
    throw new GeofenceError(`geofence ${name}: ${where}${what}`);
  };
  if (!Array.isArray(p) || p.length === 0) fail(': a polygon is a non-empty array of linear rings');
  return (p as unknown[]).map((ring, r) => {
    if (!Array.isArray(ring) || ring.length < 4) fail(`[${r}]: a linear ring needs at least 4 positions`);
    if ((ring as unknown[]).length > MAX_GEOFENCE_VERTICES) fail(`[${r}]: more than ${MAX_GEOFENCE_VERTICES} vertices; simplify the shape`);
    const out: Ring = (ring as unknown[]).map((pos, i) => {
      if (!Array.isArray(pos) || pos.length < 2) fail(`[${r}][${i}]: a position is [longitude, latitude]`);
      const [lon, lat] = pos as unknown[];
      if (typeof lon !== 'number' || !Number.isFinite(lon) || lon < -180 || lon > 180) {
        fail(`[${r}][${i}]: longitude must be a finite number in [-180, 180], got ${shown(lon)}`);
      }
      if (typeof lat !== 'number' || !Number.isFinite(lat) || lat < -90 || lat > 90) {
        fail(`[${r}][${i}]: latitude must be a finite number in [-90, 90], got ${shown(lat)}`);
      }
      return [lon as number, lat as number];
    });
    const first = out[0]!;
    const last = out[out.length - 1]!;
    if (first[0] !== last[0] || first[1] !== last[1]) fail(`[${r}]: a linear ring must end at its first position`);
    for (let i = 0; i + 1 < out.length; i++) {
      if (Math.abs(out[i + 1]![0]! - out[i]![0]!) > 180) {
        fail(`[${r}][${i}]: edge crosses the antimeridian; split the shape at ±180° (RFC 7946 §3.1.9)`);
      }
    }
    return out;
  });
}

/**
 * A value of the document for an error message. Never JSON.stringify or String() of a container: an
 * array nested thousands deep overflows the stack in either.
 */
function shown(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (v === null || typeof v === 'number' || typeof v === 'boolean' || v === undefined) return String(v);
  return Array.isArray(v) ? 'an array' : typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

function signedArea(ring: Ring): number {
  let a = 0;
  for (let i = 0; i + 1 < ring.length; i++) a += ring[i]![0]! * ring[i + 1]![1]! - ring[i + 1]![0]! * ring[i]![1]!;
  return a / 2;
}

interface Seg {
  ax: number;
  ay: number;
  bx: number;
  by: number;
  minX: number;
  maxX: number;
  ring: number;
  idx: number;
  ringLen: number;
}

/**
 * Rejects rings that cross themselves or each other (a bow-tie's "inside" is ambiguous). A sweep
 * over edges sorted by west end keeps this near-linear for real shapes.
 */
function assertSimple(polygons: PolygonCoords[], name: string): void {
  const segs: Seg[] = [];
  let ringNo = 0;
  for (const poly of polygons) {
    for (const ring of poly) {
      const n = ring.length - 1;
      for (let i = 0; i < n; i++) {
        const [ax, ay] = ring[i] as [number, number];
        const [bx, by] = ring[i + 1] as [number, number];
        segs.push({ ax, ay, bx, by, minX: Math.min(ax, bx), maxX: Math.max(ax, bx), ring: ringNo, idx: i, ringLen: n });
      }
      ringNo++;
    }
  }
  segs.sort((s, t) => s.minX - t.minX);
  for (let i = 0; i < segs.length; i++) {
    const s = segs[i]!;
    for (let j = i + 1; j < segs.length && segs[j]!.minX <= s.maxX; j++) {
      const t = segs[j]!;
      if (s.ring === t.ring) {
        const d = Math.abs(s.idx - t.idx);
        if (d === 1 || d === s.ringLen - 1) {
          // Neighbours share a vertex; they are only bad if they fold back onto each other.
          if (collinearOverlap(s, t)) throw selfIntersection(name, s, t);
          continue;
        }
      }
      if (segmentsIntersect(s, t)) throw selfIntersection(name, s, t);
    }
  }
}

function selfIntersection(name: string, s: Seg, t: Seg): GeofenceError {
  return new GeofenceError(
    `geofence ${name}: self-intersecting — edge ${s.idx} of ring ${s.ring} crosses edge ${t.idx} of ring ${t.ring}; ` +
      'fix the shape so no edges cross (e.g. with a GIS "make valid" tool)',
  );
}

function orient(ax: number, ay: number, bx: number, by: number, cx: number, cy: number): number {
  const v = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax);
  return v > 0 ? 1 : v < 0 ? -1 : 0;
}

function onSegment(ax: number, ay: number, bx: number, by: number, cx: number, cy: number): boolean {
  return Math.min(ax, bx) <= cx && cx <= Math.max(ax, bx) && Math.min(ay, by) <= cy && cy <= Math.max(ay, by);
}

function segmentsIntersect(s: Seg, t: Seg): boolean {
  const o1 = orient(s.ax, s.ay, s.bx, s.by, t.ax, t.ay);
  const o2 = orient(s.ax, s.ay, s.bx, s.by, t.bx, t.by);
  const o3 = orient(t.ax, t.ay, t.bx, t.by, s.ax, s.ay);
  const o4 = orient(t.ax, t.ay, t.bx, t.by, s.bx, s.by);
  if (o1 !== o2 && o3 !== o4) return true;
  if (o1 === 0 && onSegment(s.ax, s.ay, s.bx, s.by, t.ax, t.ay)) return true;
  if (o2 === 0 && onSegment(s.ax, s.ay, s.bx, s.by, t.bx, t.by)) return true;
  if (o3 === 0 && onSegment(t.ax, t.ay, t.bx, t.by, s.ax, s.ay)) return true;
  if (o4 === 0 && onSegment(t.ax, t.ay, t.bx, t.by, s.bx, s.by)) return true;
  return false;
}

function collinearOverlap(s: Seg, t: Seg): boolean {
  if (orient(s.ax, s.ay, s.bx, s.by, t.ax, t.ay) !== 0 || orient(s.ax, s.ay, s.bx, s.by, t.bx, t.by) !== 0) return false;
  // Collinear neighbours overlap when they point in opposite directions (a spike).
  const dot = (s.bx - s.ax) * (t.bx - t.ax) + (s.by - s.ay) * (t.by - t.ay);
  return dot < 0;
}
