import { describe, expect, it } from 'vitest';
import { destination, distanceM, distanceToSegmentM, wrapLon } from '../../src/geo/spherical.js';

// Brute force: the minimum distance to many points along the great-circle segment A→B.
function bruteForce(pLat: number, pLon: number, aLat: number, aLon: number, bLat: number, bLon: number): number {
  const rad = Math.PI / 180;
  const toVec = (lat: number, lon: number): number[] => [Math.cos(lat * rad) * Math.cos(lon * rad), Math.cos(lat * rad) * Math.sin(lon * rad), Math.sin(lat * rad)];
  const a = toVec(aLat, aLon);
  const b = toVec(bLat, bLon);
  const omega = Math.acos(Math.min(1, a[0]! * b[0]! + a[1]! * b[1]! + a[2]! * b[2]!));
  let best = Infinity;
  for (let i = 0; i <= 20_000; i++) {
    const t = i / 20_000;
    const s1 = omega === 0 ? 1 - t : Math.sin((1 - t) * omega) / Math.sin(omega);
    const s2 = omega === 0 ? t : Math.sin(t * omega) / Math.sin(omega);
    const v = [s1 * a[0]! + s2 * b[0]!, s1 * a[1]! + s2 * b[1]!, s1 * a[2]! + s2 * b[2]!];
    const lat = Math.asin(Math.max(-1, Math.min(1, v[2]!))) / rad;
    const lon = Math.atan2(v[1]!, v[0]!) / rad;
    best = Math.min(best, distanceM(pLat, pLon, lat, lon));
  }
  return best;
}

describe('spherical geometry', () => {
  it('measures known distances (Berlin–Paris ≈ 878 km, across the antimeridian, pole to pole)', () => {
    expect(distanceM(52.52, 13.405, 48.8566, 2.3522) / 1000).toBeCloseTo(877.5, 0);
    expect(distanceM(0, 179.9, 0, -179.9)).toBeCloseTo(22_239, -1);
    expect(distanceM(90, 0, -90, 0) / 1000).toBeCloseTo(20_015.1, 0);
    expect(distanceM(90, 0, 90, 123)).toBeLessThan(1e-6);
  });

  it('computes point-to-segment distance like a brute-force search, including poles and the antimeridian', () => {
    let seed = 7;
    const r = (): number => {
      seed = (seed * 16807) % 2147483647;
      return seed / 2147483647;
    };
    const cases: number[][] = [
      [0, 0, -1, -1, 1, -1], // perpendicular foot inside the segment
      [10, 0, 0, -1, 0, 1], // 10° north of a short equatorial segment
      [0, 5, 0, -1, 0, 1], // beyond endpoint B
      [89.99, 45, 89.9, -170, 89.9, 170], // near the pole
      [-16.8, 179.999, -16.9, -179.99, -16.7, -179.99], // across the antimeridian
    ];
    for (let i = 0; i < 40; i++) {
      const aLat = r() * 160 - 80;
      const aLon = r() * 360 - 180;
      const [bLat, bLon] = destination(aLat, aLon, r() * 360, r() * 50_000);
      const [pLat, pLon] = destination(aLat, aLon, r() * 360, r() * 80_000);
      cases.push([pLat, pLon, aLat, aLon, bLat, bLon]);
    }
    for (const [pLat, pLon, aLat, aLon, bLat, bLon] of cases) {
      const exact = distanceToSegmentM(pLat!, pLon!, aLat!, aLon!, bLat!, bLon!);
      const brute = bruteForce(pLat!, pLon!, aLat!, aLon!, bLat!, bLon!);
      expect(Math.abs(exact - brute)).toBeLessThan(Math.max(1, brute * 1e-4));
    }
  });

  it('walks a destination and back', () => {
    const [lat, lon] = destination(47.697, 8.69, 37, 12_345);
    expect(distanceM(47.697, 8.69, lat, lon)).toBeCloseTo(12_345, 3);
    expect(wrapLon(190)).toBe(-170);
    expect(wrapLon(-180)).toBe(-180);
  });
});
