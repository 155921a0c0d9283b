// Claims and audit summaries must never carry a node's coordinates. A plain regex over the JSON is
// not enough: ISO timestamps ("…T20:54:52.580Z") contain digit runs like "52.5", so they are masked
// before looking for the position.
import { expect } from 'vitest';

const ISO_TIME = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})/g;

/** Fails if `doc` has a lat/lon-like key or the position's degrees to two decimals anywhere. */
export function expectNoCoordinates(doc: unknown, position: { lat: number; lon: number }): void {
  const text = JSON.stringify(doc).replace(ISO_TIME, '<time>');
  expect(text).not.toMatch(/"(?:lat|lon|latitude|longitude)"/i);
  for (const deg of [position.lat, position.lon]) {
    const two = (Math.trunc(Math.abs(deg) * 100) / 100).toFixed(2);
    expect(text, `${two} (a coordinate) appears in ${text}`).not.toContain(two);
  }
}
