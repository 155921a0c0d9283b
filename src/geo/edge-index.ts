import { distanceToSegmentM, EARTH_RADIUS_M, METRES_PER_DEGREE } from './spherical.js';

/**
 * A uniform lon/lat grid of boundary edges, so a "which boundaries come within r metres of this
 * point" query only measures the edges of the few cells the circle's bounding box covers. Cells
 * that no edge enters are "empty": everything inside one lies in the same area, which is what lets
 * the border map cache one point-in-polygon answer per empty cell.
 *
 * Edges are GeoJSON edges, i.e. straight lines in lon/lat (RFC 7946 §3.1.1). Distances are measured
 * to great-circle arcs, so long edges are split into pieces of at most MAX_PIECE_DEG first; the two
 * interpretations then differ by well under a metre.
 */
const MAX_PIECE_DEG = 0.1;

export class EdgeIndex {
  readonly cellDeg: number;
  private readonly nLat: number;
  private readonly nLon: number;
  private readonly cells = new Map<number, number[]>();
  // Per edge: aLat, aLon, bLat, bLon in `coords`; owner and a caller-defined tag alongside.
  private readonly coords: number[] = [];
  private readonly owners: number[] = [];
  private readonly tags: number[] = [];
  // Per edge: its lon/lat bounding box (padded), for a cheap reject before the spherical maths.
  private readonly boxes: number[] = [];

  constructor(cellDeg: number) {
    this.cellDeg = cellDeg;
    this.nLat = Math.ceil(180 / cellDeg);
    this.nLon = Math.ceil(360 / cellDeg);
  }

  get edgeCount(): number {
    return this.owners.length;
  }

  /** Adds the lon/lat-straight edge A–B (not crossing the antimeridian) for `owner`. */
  add(aLat: number, aLon: number, bLat: number, bLon: number, owner: number, tag = 0): void {
    const pieces = Math.max(1, Math.ceil(Math.max(Math.abs(bLat - aLat), Math.abs(bLon - aLon)) / MAX_PIECE_DEG));
    let pLat = aLat;
    let pLon = aLon;
    for (let i = 1; i <= pieces; i++) {
      const qLat = i === pieces ? bLat : aLat + ((bLat - aLat) * i) / pieces;
      const qLon = i === pieces ? bLon : aLon + ((bLon - aLon) * i) / pieces;
      this.addPiece(pLat, pLon, qLat, qLon, owner, tag);
      pLat = qLat;
      pLon = qLon;
    }
  }

  private addPiece(aLat: number, aLon: number, bLat: number, bLon: number, owner: number, tag: number): void {
    const id = this.owners.length;
    this.coords.push(aLat, aLon, bLat, bLon);
    this.owners.push(owner);
    this.tags.push(tag);
    // Pad by ~1 m: a ≤0.1° great-circle piece bulges far less than that beyond its end points.
    const bpad = 1e-5;
    this.boxes.push(Math.min(aLat, bLat) - bpad, Math.max(aLat, bLat) + bpad, Math.min(aLon, bLon) - bpad, Math.max(aLon, bLon) + bpad);
    // A tiny pad keeps an edge lying exactly on a cell line in both neighbouring cells.
    const pad = 1e-9;
    const la0 = this.latCell(Math.min(aLat, bLat) - pad);
    const la1 = this.latCell(Math.max(aLat, bLat) + pad);
    const lo0 = this.lonCellUnwrapped(Math.min(aLon, bLon) - pad);
    const lo1 = this.lonCellUnwrapped(Math.max(aLon, bLon) + pad);
    for (let i = la0; i <= la1; i++) {
      for (let j = lo0; j <= lo1; j++) {
        const key = i * this.nLon + (((j % this.nLon) + this.nLon) % this.nLon);
        let list = this.cells.get(key);
        if (list === undefined) {
          list = [];
          this.cells.set(key, list);
        }
        list.push(id);
      }
    }
  }

  /** The key of the cell containing (lat, lon). */
  cellKey(lat: number, lon: number): number {
    return this.latCell(lat) * this.nLon + this.lonCell(lon);
  }

  /** True when no edge enters the cell containing (lat, lon). */
  cellIsEmpty(key: number): boolean {
    return !this.cells.has(key);
  }

  /**
   * Calls visit(owner, tag, distanceM) for every edge within radiusM of (lat, lon); an edge that
   * spans several cells may be visited more than once. Returns the number of visits.
   */
  near(lat: number, lon: number, radiusM: number, visit: (owner: number, tag: number, distM: number) => void): number {
    // The exact lon/lat bounding box of a spherical cap (cf. J. P. Matuschek, "Finding Points
    // Within a Distance of a Latitude/Longitude Using Bounding Coordinates").
    const dLat = radiusM / METRES_PER_DEGREE;
    const latMin = lat - dLat;
    const latMax = lat + dLat;
    const i0 = this.latCell(Math.max(-90, latMin));
    const i1 = this.latCell(Math.min(90, latMax));
    const sinDelta = Math.sin(Math.min(Math.PI, radiusM / EARTH_RADIUS_M));
    const cosLat = Math.cos((lat * Math.PI) / 180);
    let allLon = latMin <= -90 || latMax >= 90 || sinDelta >= cosLat;
    let lonMin = -180;
    let lonMax = 180;
    if (!allLon) {
      const dLon = (Math.asin(sinDelta / cosLat) * 180) / Math.PI;
      lonMin = lon - dLon;
      lonMax = lon + dLon;
      if (dLon >= 180) allLon = true;
    }
    const j0 = allLon ? 0 : this.lonCellUnwrapped(lonMin);
    const j1 = allLon ? this.nLon - 1 : this.lonCellUnwrapped(lonMax);
    // Longitude rejects only when the window does not wrap around ±180°.
    const lonFilter = !allLon && lonMin >= -180 && lonMax <= 180;
    let visits = 0;
    const c = this.coords;
    const b = this.boxes;
    for (let i = i0; i <= i1; i++) {
      for (let j = j0; j <= j1; j++) {
        const list = this.cells.get(i * this.nLon + (((j % this.nLon) + this.nLon) % this.nLon));
        if (list === undefined) continue;
        for (const e of list) {
          const k = e * 4;
          if (b[k]! > latMax || b[k + 1]! < latMin) continue;
          if (lonFilter && (b[k + 2]! > lonMax || b[k + 3]! < lonMin)) continue;
          const d = distanceToSegmentM(lat, lon, c[k]!, c[k + 1]!, c[k + 2]!, c[k + 3]!);
          if (d <= radiusM) {
            visits++;
            visit(this.owners[e]!, this.tags[e]!, d);
          }
        }
      }
    }
    return visits;
  }

  private latCell(lat: number): number {
    const i = Math.floor((lat + 90) / this.cellDeg);
    return i < 0 ? 0 : i >= this.nLat ? this.nLat - 1 : i;
  }

  private lonCellUnwrapped(lon: number): number {
    return Math.floor((lon + 180) / this.cellDeg);
  }

  private lonCell(lon: number): number {
    const j = this.lonCellUnwrapped(lon);
    return ((j % this.nLon) + this.nLon) % this.nLon;
  }
}
