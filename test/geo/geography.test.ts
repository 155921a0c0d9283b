import { describe, expect, it } from 'vitest';
import { countryAt, distanceM, evaluatePolicy, parsePolicies, type LocationReading } from '../../src/geo/index.js';
import { destination } from '../../src/geo/spherical.js';

const now = new Date('2026-11-22T12:00:00Z');
const gnss = (lat: number, lon: number, horizontalErrorM: number, sensorId = 'gps0'): LocationReading => ({
  kind: 'gnss', sensorId, time: new Date(now.getTime() - 5000), lat, lon, horizontalErrorM, attested: true,
});

// Generous accuracy limits here: these tests are about where the error circle lies.
const areas: Record<string, string> = {
  de: 'countries: [DE]', ch: 'countries: [CH]', eu: 'regions: [EU]', nl: 'countries: [NL]', be: 'countries: [BE]',
  es: 'countries: [ES]', gb: 'countries: [GB]', gi: 'countries: [GI]', fj: 'countries: [FJ]', ru: 'countries: [RU]',
  aq: 'countries: [AQ]', pt: 'countries: [PT]', world: 'regions: ["001"]',
};
const policies = parsePolicies(
  `policies:\n${Object.entries(areas).map(([name, area]) => `  ${name}: { area: { ${area} }, maxHorizontalErrorM: 100000 }`).join('\n')}\n`,
);
const decide = (policy: string, r: LocationReading) => evaluatePolicy(policies.get(policy), [r], { now });

describe('country and region policies on real borders', () => {
  it('Büsingen am Hochrhein: a German enclave inside Switzerland', () => {
    const busingen = gnss(47.697, 8.69, 50);
    expect(countryAt(busingen.lat, busingen.lon)).toBe('DE');
    expect(decide('de', busingen)).toMatchObject({ decision: 'allow', claims: { country: 'DE' } });
    expect(decide('eu', busingen)).toMatchObject({ decision: 'allow', claims: { country: 'DE', region: 'EU' } });
    expect(decide('ch', busingen)).toMatchObject({ decision: 'deny', allowed: false });
    // Schaffhausen, 4 km west, is Swiss.
    const schaffhausen = gnss(47.6959, 8.635, 50);
    expect(decide('ch', schaffhausen).decision).toBe('allow');
    expect(decide('eu', schaffhausen).decision).toBe('deny');
    // A 3 km error circle around Büsingen reaches Switzerland: neither policy may decide.
    const vague = gnss(47.697, 8.69, 3000);
    expect(decide('de', vague).decision).toBe('undecided');
    expect(decide('ch', vague).decision).toBe('undecided');
    expect(decide('de', vague).reasons.join(' ')).toMatch(/crosses the border/);
  });

  it('Baarle-Hertog / Baarle-Nassau: a Belgian exclave inside the Netherlands', () => {
    const hertog = gnss(51.4375, 4.9306, 50);
    expect(countryAt(hertog.lat, hertog.lon)).toBe('BE');
    expect(decide('be', hertog)).toMatchObject({ decision: 'allow', claims: { country: 'BE', policy: 'be' } });
    expect(decide('nl', hertog).decision).toBe('deny');
    const nassau = gnss(51.47, 4.9, 50);
    expect(countryAt(nassau.lat, nassau.lon)).toBe('NL');
    expect(decide('nl', nassau).decision).toBe('allow');
    // Both are EU members: a circle spanning the exclave border is still wholly inside the EU.
    expect(decide('eu', gnss(51.4375, 4.9306, 1500))).toMatchObject({ decision: 'allow' });
    expect(decide('be', gnss(51.4375, 4.9306, 1500)).decision).toBe('undecided');
    expect(decide('nl', gnss(51.4375, 4.9306, 1500)).decision).toBe('undecided');
  });

  it('Gibraltar has its own ISO code, is not Spain, not "GB" and not in the EU', () => {
    const gib = gnss(36.14, -5.35, 30);
    expect(countryAt(gib.lat, gib.lon)).toBe('GI');
    expect(decide('gi', gib)).toMatchObject({ decision: 'allow', claims: { country: 'GI' } });
    expect(decide('es', gib).decision).toBe('deny');
    expect(decide('gb', gib).decision).toBe('deny');
    expect(decide('eu', gib).decision).toBe('deny');
    // La Línea de la Concepción, across the border (at ~36.1545° N on this meridian).
    const laLinea = gnss(36.165, -5.35, 30);
    expect(decide('es', laLinea)).toMatchObject({ decision: 'allow', claims: { country: 'ES', policy: 'es' } });
    expect(decide('eu', laLinea).decision).toBe('allow');
    // A 500 m circle on the runway spans the border.
    expect(decide('gi', gnss(36.151, -5.35, 500)).decision).toBe('undecided');
    expect(decide('es', gnss(36.151, -5.35, 500)).decision).toBe('undecided');
  });

  it('territories with exceptionally reserved codes count as their country (FX → FR, EA → ES, IC → ES)', () => {
    expect(countryAt(48.8566, 2.3522)).toBe('FR');
    expect(countryAt(35.889, -5.316)).toBe('ES');
    expect(countryAt(28.1, -15.43)).toBe('ES');
    expect(() => parsePolicies('policies:\n  p: { area: { countries: [FX] } }')).toThrow(/"FX" is not an ISO 3166-1 alpha-2 code/);
  });

  it('the antimeridian is a seam, not a border (Fiji, Chukotka)', () => {
    const east = gnss(-16.8, 179.999, 80);
    const west = gnss(-16.8, -179.999, 80);
    expect(distanceM(east.lat, east.lon, west.lat, west.lon)).toBeLessThan(250);
    expect(countryAt(east.lat, east.lon)).toBe('FJ');
    expect(countryAt(west.lat, west.lon)).toBe('FJ');
    // Each 80 m circle reaches across ±180°, and is still wholly Fijian.
    expect(decide('fj', east).decision).toBe('allow');
    expect(decide('fj', west).decision).toBe('allow');
    expect(decide('ru', gnss(66.5, 179.99, 800)).decision).toBe('allow');
    expect(decide('ru', gnss(66.5, -179.99, 800)).decision).toBe('allow');
  });

  it('the poles: the North Pole is high sea, the South Pole is Antarctica from every longitude', () => {
    expect(countryAt(90, 0)).toBeNull();
    expect(decide('world', gnss(90, 0, 10))).toMatchObject({ decision: 'deny' });
    expect(decide('world', gnss(90, 0, 10)).reasons.join(' ')).toMatch(/outside any country/);
    for (const lon of [-180, -90, 0, 45, 179.5]) {
      expect(countryAt(-90, lon)).toBe('AQ');
      expect(decide('aq', gnss(-90, lon, 20_000))).toMatchObject({ decision: 'allow', claims: { country: 'AQ' } });
    }
    expect(decide('aq', gnss(-89.9, 45, 50_000)).decision).toBe('allow');
  });

  it('at sea: territorial waters count, the high seas do not, and a circle across their limit is undecided', () => {
    expect(decide('pt', gnss(38.7, -9.6, 100))).toMatchObject({ decision: 'allow', claims: { country: 'PT' } });
    const atlantic = gnss(40, -40, 100);
    expect(countryAt(atlantic.lat, atlantic.lon)).toBeNull();
    expect(decide('world', atlantic).decision).toBe('deny');
    // Walk west from Lisbon to where the modelled waters end, then straddle that line.
    let lon = -9.6;
    while (countryAt(38.7, lon) === 'PT') lon -= 0.01;
    const edge = gnss(38.7, lon + 0.005, 3000);
    expect(decide('pt', edge).decision).toBe('undecided');
  });

  it('a circle is decided by its whole area, not just its centre (precision check near a border)', () => {
    // Step outward from Büsingen's centre until the country changes, then place readings
    // 200 m inside that border with 150 m and 250 m error circles.
    let d = 0;
    while (countryAt(...destination(47.697, 8.69, 0, d)) === 'DE') d += 10;
    const [lat, lon] = destination(47.697, 8.69, 0, d - 200);
    expect(decide('de', gnss(lat, lon, 150)).decision).toBe('allow');
    expect(decide('de', gnss(lat, lon, 250)).decision).toBe('undecided');
  });
});
