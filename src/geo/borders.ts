import * as cc from '@rapideditor/country-coder';
import { EdgeIndex } from './edge-index.js';
import { assertLatLon } from './reading.js';

/** Index of a territory in the border map, or NO_TERRITORY for the high seas and unclaimed land. */
export type TerritoryIndex = number;
export const NO_TERRITORY: TerritoryIndex = -1;

export interface Territory {
  /** country-coder feature id (an ISO code or a Wikidata id such as Q21 for England). */
  id: string;
  /** ISO 3166-1 alpha-2 code of the territory or the nearest enclosing feature that has one. */
  code: string | null;
  name: string;
}

export type CircleVerdict = 'inside' | 'outside' | 'undecided';

interface LeafFeature {
  properties: { id: string; nameEn: string };
  geometry?: { type: string; coordinates: number[][][] | number[][][][] } | null;
}

// Edge tags: the territory on the far side of an edge stored once, or SHARED for inner borders.
const SHARED = -2;
const SEAM_LON = 179.98;
const CELL_DEG = 0.25;

/**
 * The offline border map: country-coder's leaf territories (the smallest features that carry a
 * geometry — countries, and territories such as Gibraltar or Ceuta that have their own ISO code or
 * belong to one) with every boundary edge in an EdgeIndex.
 *
 * Circle classification is exact with respect to the dataset: the error circle is wholly inside
 * the allowed area when every territory it touches is allowed; wholly outside when none is; and
 * undecided otherwise. The territories a circle touches are the one at its centre plus, for every
 * boundary edge within the radius, the territories on both sides of that edge. An inner border
 * edge is stored twice (once per neighbour), so both sides are its owners. An edge stored once
 * has, on its far side, either the high seas (beyond the territorial waters country-coder models)
 * or a larger territory the feature is drawn on top of (country-coder's enclaves, such as the
 * Baarle-Hertog exclaves over the Netherlands); that far side is found once, at build time, by a
 * lookup just outside the edge's midpoint.
 */
export class BorderMap {
  readonly territories: readonly Territory[];
  private readonly byId = new Map<string, TerritoryIndex>();
  private readonly index = new EdgeIndex(CELL_DEG);
  // Point-in-polygon answers for cells no border enters: exact for any point in the cell.
  private readonly emptyCellTerritory = new Map<number, TerritoryIndex>();

  constructor() {
    const territories: Territory[] = [];
    // Typed locally: country-coder's declarations lean on @types/geojson, which is not installed.
    const features = cc.borders.features as unknown as LeafFeature[];
    const leaves = features.filter((f) => f.geometry !== null && f.geometry !== undefined);
    for (const f of leaves) {
      this.byId.set(f.properties.id, territories.length);
      territories.push({ id: f.properties.id, code: isoCodeOf(f.properties.id), name: f.properties.nameEn });
    }
    this.territories = territories;

    // Count every edge (direction-free) to tell inner borders (shared) from outer ones.
    const edgeKey = (a: number[], b: number[]): string => {
      const ka = `${a[0]},${a[1]}`;
      const kb = `${b[0]},${b[1]}`;
      return ka < kb ? `${ka}|${kb}` : `${kb}|${ka}`;
    };
    const counts = new Map<string, number>();
    const forEachEdge = (fn: (a: number[], b: number[], owner: number) => void): void => {
      leaves.forEach((f, owner) => {
        const g = f.geometry!;
        const polys = (g.type === 'Polygon' ? [g.coordinates] : g.coordinates) as number[][][][];
        for (const poly of polys) {
          for (const ring of poly) {
            for (let i = 0; i + 1 < ring.length; i++) fn(ring[i]!, ring[i + 1]!, owner);
          }
        }
      });
    };
    forEachEdge((a, b) => {
      const k = edgeKey(a, b);
      counts.set(k, (counts.get(k) ?? 0) + 1);
    });
    forEachEdge((a, b, owner) => {
      const [aLon, aLat] = a as [number, number];
      const [bLon, bLat] = b as [number, number];
      // The antimeridian seam and the pole line are artefacts of the lon/lat projection, not borders.
      if (Math.abs(aLon) === 180 && Math.abs(bLon) === 180) return;
      if (Math.abs(aLat) === 90 && Math.abs(bLat) === 90) return;
      const external = counts.get(edgeKey(a, b)) === 1;
      // Along parts of the antimeridian the dataset's seam sits up to ~0.016° short of ±180°,
      // leaving an unassigned sliver; an outer edge that close to the seam is the seam too.
      if (external && Math.abs(aLon) >= SEAM_LON && Math.abs(bLon) >= SEAM_LON) return;
      const tag = external ? this.farSide(aLat, aLon, bLat, bLon, owner) : SHARED;
      this.index.add(aLat, aLon, bLat, bLon, owner, tag);
    });
  }

  // The territory just across the midpoint of an edge that only `owner` has.
  private farSide(aLat: number, aLon: number, bLat: number, bLon: number, owner: TerritoryIndex): TerritoryIndex {
    const mLat = (aLat + bLat) / 2;
    const mLon = (aLon + bLon) / 2;
    const len = Math.hypot(bLat - aLat, bLon - aLon) || 1;
    const eps = 1e-6;
    const nLat = (-(bLon - aLon) / len) * eps;
    const nLon = ((bLat - aLat) / len) * eps;
    const left = this.lookup(mLat + nLat, mLon + nLon);
    const right = this.lookup(mLat - nLat, mLon - nLon);
    return left !== owner ? left : right !== owner ? right : NO_TERRITORY;
  }

  get edgeCount(): number {
    return this.index.edgeCount;
  }

  /** Index of the territory a feature id names (e.g. "DE", "GI", "Q21"), or undefined. */
  territoryById(id: string): TerritoryIndex | undefined {
    return this.byId.get(id);
  }

  /** The territory containing the point, or NO_TERRITORY at sea / on unclaimed land. */
  territoryAt(lat: number, lon: number): TerritoryIndex {
    const key = this.index.cellKey(lat, lon);
    // Cells on the antimeridian or at the poles may hide skipped seam edges, so are never cached.
    if (this.index.cellIsEmpty(key) && Math.abs(lon) < 180 - CELL_DEG && Math.abs(lat) < 90 - CELL_DEG) {
      const cached = this.emptyCellTerritory.get(key);
      if (cached !== undefined) return cached;
      const t = this.lookup(lat, lon);
      this.emptyCellTerritory.set(key, t);
      return t;
    }
    return this.lookup(lat, lon);
  }

  /**
   * Where the circle of radiusM around (lat, lon) lies relative to the area made of the
   * territories for which allowed[t] is true (the high seas are never allowed).
   */
  classifyCircle(lat: number, lon: number, radiusM: number, allowed: Uint8Array): { verdict: CircleVerdict; territory: TerritoryIndex } {
    assertLatLon(lat, lon);
    const territory = this.territoryAt(lat, lon);
    let touchesAllowed = false;
    let touchesOther = false;
    const touch = (t: TerritoryIndex): void => {
      if (t !== NO_TERRITORY && allowed[t] === 1) touchesAllowed = true;
      else touchesOther = true;
    };
    touch(territory);
    if (radiusM > 0) {
      this.index.near(lat, lon, radiusM, (owner, tag) => {
        touch(owner);
        if (tag !== SHARED) touch(tag);
      });
    }
    const verdict: CircleVerdict = !touchesAllowed ? 'outside' : touchesOther ? 'undecided' : 'inside';
    return { verdict, territory };
  }

  private lookup(lat: number, lon: number): TerritoryIndex {
    const f = cc.feature([lon, lat], { level: 'subterritory' });
    if (f === null) return NO_TERRITORY;
    return this.byId.get(f.properties.id) ?? NO_TERRITORY;
  }
}

// ISO 3166-1 statuses that name a country or territory a policy can list. Exceptionally reserved
// codes (FX metropolitan France, EA Ceuta & Melilla, IC, EU, UN…) are not, so a point in
// metropolitan France is "FR" and one in Ceuta is "ES"; XK (Kosovo) is user-assigned but in use.
const COUNTRY_STATUSES = new Set(['official', 'usrAssn']);

function isCountryFeature(f: { properties: { iso1A2?: string; isoStatus?: string } } | null): boolean {
  return f !== null && f.properties.iso1A2 !== undefined && COUNTRY_STATUSES.has(f.properties.isoStatus ?? '');
}

function isoCodeOf(id: string): string | null {
  const self = cc.feature(id);
  if (isCountryFeature(self)) return self!.properties.iso1A2!;
  for (const f of cc.featuresContaining(id)) {
    if (isCountryFeature(f)) return f.properties.iso1A2!;
  }
  return null;
}

let shared: BorderMap | undefined;

/** The process-wide border map, built on first use (~110k edge pieces, 0.2-0.5 s); servers should warm it at start. */
export function borderMap(): BorderMap {
  shared ??= new BorderMap();
  return shared;
}

/** ISO 3166-1 alpha-2 code of the territory at a point (e.g. "GI" in Gibraltar), or null at sea. */
export function countryAt(lat: number, lon: number): string | null {
  assertLatLon(lat, lon);
  const m = borderMap();
  const t = m.territoryAt(lat, lon);
  return t === NO_TERRITORY ? null : m.territories[t]!.code;
}

const GROUP_LEVELS = new Set(['sharedLandform', 'intermediateRegion', 'subregion', 'region', 'subunion', 'union', 'unitedNations', 'world']);

/** True when `code` is an ISO 3166-1 alpha-2 country or territory code the border dataset maps. */
export function isKnownCountryCode(code: string): boolean {
  const f = cc.feature(code);
  return isCountryFeature(f) && f!.properties.iso1A2 === code;
}

/** True when country-coder knows `code` as a grouping (e.g. "EU", "150" for Europe, "UN"). */
export function isKnownRegionCode(code: string): boolean {
  const f = cc.feature(code);
  return f !== null && f.properties.id === code && GROUP_LEVELS.has(f.properties.level);
}

/** True when the territory belongs to the country-coder grouping `region`. */
export function territoryInRegion(t: Territory, region: string): boolean {
  return cc.isIn(t.id, region) === true;
}
