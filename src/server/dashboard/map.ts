// The dashboard's world map, drawn from the border data terroir already ships (country-coder's
// leaf territories, as src/geo/borders.ts uses them) so the page needs no tile server: one SVG path
// per ISO country code, in an equirectangular projection rounded to a quarter of a degree (plenty for a
// screen, and ~10x smaller than the source). Built once per process.
import zlib from 'node:zlib';
import * as cc from '@rapideditor/country-coder';
import { borderMap } from '../../geo/borders.js';

/** Projection: SCALE units per degree; latitudes above NORTH and below SOUTH are cut (no nodes there to show). */
const SCALE = 4;
const NORTH = 84;
const SOUTH = -60;
export const MAP_WIDTH = 360 * SCALE;
export const MAP_HEIGHT = (NORTH - SOUTH) * SCALE;

export interface MapCountry {
  /** ISO 3166-1 alpha-2, as the claims' `country`. */
  code: string;
  name: string;
  /** SVG path data in the map's viewBox (0 0 MAP_WIDTH MAP_HEIGHT). */
  d: string;
}

export interface WorldMap {
  width: number;
  height: number;
  countries: MapCountry[];
}

interface LeafFeature {
  properties: { id: string; nameEn: string };
  geometry?: { type: string; coordinates: number[][][] | number[][][][] } | null;
}

const clampLat = (lat: number): number => Math.min(NORTH, Math.max(SOUTH, lat));

function ringPath(ring: number[][]): string {
  let out = '';
  let n = 0;
  let px = NaN;
  let py = NaN;
  for (const pt of ring) {
    const x = Math.round((pt[0]! + 180) * SCALE);
    const y = Math.round((NORTH - clampLat(pt[1]!)) * SCALE);
    if (x === px && y === py) continue;
    out += n === 0 ? `M${x},${y}` : ` ${x},${y}`;
    px = x;
    py = y;
    n++;
  }
  return n >= 3 ? `${out}Z` : '';
}

/** Builds the map (tens of milliseconds, plus the border map's build if nothing warmed it). */
export function buildWorldMap(): WorldMap {
  const borders = borderMap();
  const features = (cc.borders.features as unknown as LeafFeature[]).filter((f) => f.geometry !== null && f.geometry !== undefined);
  const byCode = new Map<string, { name: string; parts: string[] }>();
  for (const f of features) {
    const t = borders.territoryById(f.properties.id);
    const territory = t === undefined ? undefined : borders.territories[t];
    const code = territory?.code;
    if (code === null || code === undefined) continue;
    const g = f.geometry!;
    const polys = (g.type === 'Polygon' ? [g.coordinates] : g.coordinates) as number[][][][];
    let entry = byCode.get(code);
    if (entry === undefined) {
      // The country's own feature names it (Gibraltar's leaf is "Gibraltar", France's parts are "France").
      const own = cc.feature(code);
      entry = { name: own?.properties.nameEn ?? territory!.name, parts: [] };
      byCode.set(code, entry);
    }
    for (const poly of polys) {
      for (const ring of poly) {
        const p = ringPath(ring);
        if (p !== '') entry.parts.push(p);
      }
    }
  }
  const countries = [...byCode.entries()]
    .filter(([, v]) => v.parts.length > 0)
    .map(([code, v]) => ({ code, name: v.name, d: v.parts.join('') }))
    .sort((a, b) => a.code.localeCompare(b.code));
  return { width: MAP_WIDTH, height: MAP_HEIGHT, countries };
}

let cached: { json: Buffer; gzip: Buffer } | undefined;

/** The map as JSON bytes (and gzipped), built on first use and kept. */
export function worldMapBody(): { json: Buffer; gzip: Buffer } {
  if (cached === undefined) {
    const json = Buffer.from(JSON.stringify(buildWorldMap()));
    cached = { json, gzip: zlib.gzipSync(json) };
  }
  return cached;
}
