import { describe, expect, it } from 'vitest';
import {
  evaluatePolicy,
  InvalidReadingError,
  MAX_GEOFENCE_VERTICES,
  parsePolicies,
  PolicyError,
  UnknownPolicyError,
  type LocationReading,
} from '../../src/geo/index.js';

const now = new Date('2026-11-22T12:00:00Z');
const FRA = { lat: 50.1109, lon: 8.6821 };
const reading = (over: Partial<LocationReading> = {}): LocationReading => ({
  kind: 'gnss', sensorId: 'gps0', time: new Date(now.getTime() - 10_000), ...FRA, horizontalErrorM: 20, attested: true, ...over,
});

const set = parsePolicies(`
policies:
  eu-strict:
    description: EU only, GNSS and operator agree
    area: { regions: [EU] }
    sensors: { required: [gnss, mobile], minAgreeing: 2 }
    maxReadingAgeS: 60
    maxHorizontalErrorM: 100
    maxSensorDistanceM: 2000
    operator: { required: true, minMatchRate: 80 }
  frankfurt-dc:
    area:
      countries: [DE]
      geofences:
        - name: fra-campus
          circle: { lat: 50.1109, lon: 8.6821, radiusM: 1000 }
        - name: fra-north
          geojson:
            type: Feature
            properties: {}
            geometry:
              type: Polygon
              coordinates: [[[8.60, 50.20], [8.70, 50.20], [8.70, 50.25], [8.60, 50.25], [8.60, 50.20]]]
  dev:
    area: { countries: [DE, FR] }
    sensors: { allowUnattested: true }
`);

describe('parsePolicies', () => {
  it('parses YAML, with defaults, and lists policy names', () => {
    expect(set.names()).toEqual(['dev', 'eu-strict', 'frankfurt-dc']);
    const p = set.get('eu-strict');
    expect(p).toMatchObject({ regions: ['EU'], requiredSensorKinds: ['gnss', 'mobile'], minAgreeingSensors: 2, maxReadingAgeS: 60, operatorRequired: true, operatorMinMatchRate: 80 });
    expect(set.get('dev')).toMatchObject({ maxReadingAgeS: 300, maxHorizontalErrorM: 1000, allowUnattested: true, operatorRequired: false });
  });

  it('parses the same document as JSON', () => {
    const j = parsePolicies(JSON.stringify({ policies: { x: { area: { countries: ['FR'] }, maxReadingAgeS: 30 } } }));
    expect(j.get('x')).toMatchObject({ countries: ['FR'], maxReadingAgeS: 30 });
  });

  it('names an unknown policy and the known ones', () => {
    expect(() => set.get('eu-lax')).toThrow(UnknownPolicyError);
    expect(() => set.get('eu-lax')).toThrow(/unknown location policy "eu-lax"; known policies: dev, eu-strict, frankfurt-dc/);
  });

  const bad: [string, string, RegExp][] = [
    ['unknown country code', 'policies:\n  p: { area: { countries: [XX] } }', /policies\.p\.area\.countries\[0\]: "XX" is not an ISO 3166-1 alpha-2 code/],
    ['lower-case country code', 'policies:\n  p: { area: { countries: [de] } }', /policies\.p\.area\.countries\[0\]: must be an ISO 3166-1 alpha-2 code in upper case/],
    ['unknown region', 'policies:\n  p: { area: { regions: [ATLANTIS] } }', /policies\.p\.area\.regions\[0\]: "ATLANTIS" is not a region/],
    ['empty area', 'policies:\n  p: { area: {} }', /policies\.p\.area: name at least one of countries, regions or geofences/],
    ['unknown field', 'policies:\n  p: { area: { countries: [DE] }, maxAgeS: 5 }', /policies\.p: .*maxAgeS/],
    ['NaN from YAML', 'policies:\n  p: { area: { countries: [DE] }, maxHorizontalErrorM: .nan }', /policies\.p\.maxHorizontalErrorM/],
    ['infinite age', 'policies:\n  p: { area: { countries: [DE] }, maxReadingAgeS: .inf }', /policies\.p\.maxReadingAgeS/],
    ['static as a required kind', 'policies:\n  p: { area: { countries: [DE] }, sensors: { required: [static] } }', /policies\.p\.sensors\.required\[0\]/],
    ['unattested + required', 'policies:\n  p: { area: { countries: [DE] }, sensors: { required: [gnss], allowUnattested: true } }', /allowUnattested cannot be combined/],
    ['bad policy name', 'policies:\n  "bad name!": { area: { countries: [DE] } }', /policy names are 1-64/],
    ['no policies', 'policies: {}', /define at least one policy/],
    ['not YAML', 'policies: [unclosed', /not valid YAML\/JSON/],
    ['duplicate keys', 'policies:\n  p: { area: { countries: [DE] } }\n  p: { area: { countries: [FR] } }', /not valid YAML\/JSON.*[Mm]ap keys must be unique/s],
    ['circle out of range', 'policies:\n  p: { area: { geofences: [{ name: c, circle: { lat: 91, lon: 0, radiusM: 5 } }] } }', /policies\.p\.area\.geofences\[0\]\.circle\.lat/],
    ['circle and geojson', 'policies:\n  p: { area: { geofences: [{ name: c, circle: { lat: 1, lon: 0, radiusM: 5 }, geojson: {} }] } }', /exactly one of "circle" or "geojson"/],
  ];
  it.each(bad)('refuses %s with a message naming the field', (_what, text, re) => {
    expect(() => parsePolicies(text)).toThrow(PolicyError);
    expect(() => parsePolicies(text)).toThrow(re);
  });

  const fence = (coords: unknown): string => JSON.stringify({ policies: { p: { area: { geofences: [{ name: 'f', geojson: { type: 'Polygon', coordinates: coords } }] } } } });
  it('refuses a self-intersecting (bow-tie) geofence', () => {
    expect(() => parsePolicies(fence([[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]))).toThrow(/policies\.p\.area\.geofences\[0\]: geofence f: self-intersecting/);
  });
  it('refuses a hole that crosses its outer ring', () => {
    expect(() => parsePolicies(fence([[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]], [[1, 1], [3, 1], [3, 1.5], [1, 1.5], [1, 1]]]))).toThrow(/self-intersecting/);
  });
  it('refuses rings that are open, too short, degenerate, out of range or across the antimeridian', () => {
    expect(() => parsePolicies(fence([[[0, 0], [1, 0], [1, 1], [0, 1]]]))).toThrow(/must end at its first position/);
    expect(() => parsePolicies(fence([[[0, 0], [1, 0], [0, 0]]]))).toThrow(/at least 4 positions/);
    expect(() => parsePolicies(fence([[[0, 0], [1, 0], [2, 0], [0, 0]]]))).toThrow(/self-intersecting|encloses no area/);
    expect(() => parsePolicies(fence([[[0, 0], [200, 0], [1, 1], [0, 0]]]))).toThrow(/longitude must be a finite number in \[-180, 180\], got 200/);
    expect(() => parsePolicies(fence([[[179, 0], [-179, 0], [-179, 1], [179, 0]]]))).toThrow(/crosses the antimeridian; split the shape/);
    expect(() => parsePolicies(fence([[[0, 0], ['x', 0], [1, 1], [0, 0]]]))).toThrow(/longitude must be a finite number/);
    expect(() => parsePolicies(JSON.stringify({ policies: { p: { area: { geofences: [{ name: 'f', geojson: { type: 'Point', coordinates: [0, 0] } }] } } } }))).toThrow(/type must be Polygon, MultiPolygon/);
  });
  it('refuses huge geofences and huge documents', () => {
    const n = MAX_GEOFENCE_VERTICES + 10;
    const ring = Array.from({ length: n }, (_, i) => [Math.cos((2 * Math.PI * i) / n), Math.sin((2 * Math.PI * i) / n)]);
    ring.push(ring[0]!);
    expect(() => parsePolicies(fence([ring]))).toThrow(/more than 10000 vertices; simplify the shape/);
    expect(() => parsePolicies(`# ${'x'.repeat(1024 * 1024)}\npolicies: {}`)).toThrow(/larger than 1048576 bytes/);
  });
  it('refuses YAML alias bombs', () => {
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
    for (let i = 1; i < 12; i++) bomb.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9).fill(`*${String.fromCharCode(96 + i)}`).join(',')}]`);
    expect(() => parsePolicies(bomb.join('\n'))).toThrow(PolicyError);
  });
});

describe('evaluatePolicy', () => {
  // The operator is asked about a 50 m circle around the node's fix; its TRUE is the mobile witness.
  const area = { ...FRA, radiusM: 50 };
  const op = { result: 'TRUE' as const, lastLocationTime: now, area };
  const mobile = reading({ kind: 'mobile', sensorId: 'operator', horizontalErrorM: 50 });

  it('allows when every rule holds, with coarse claims and every reason', () => {
    const d = evaluatePolicy(set.get('eu-strict'), [reading()], { now, operatorResult: op });
    expect(d).toEqual({
      allowed: true,
      decision: 'allow',
      reasons: expect.arrayContaining(['gnss sensor gps0: inside the allowed area (in DE)', "mobile operator confirms the device within 50 m of the node's fix, a disk inside the allowed area"]),
      claims: {
        country: 'DE', region: 'EU', policy: 'eu-strict', sensorKinds: ['gnss', 'mobile'], readingTime: '2026-11-22T11:59:50.000Z',
        assurance: 'operator-witnessed', witnesses: ['node:gnss', 'operator'],
      },
    });
    // Never raw coordinates: not in the claims, not in the reasons.
    expect(JSON.stringify(d)).not.toMatch(/50\.11|8\.68/);
  });

  it('is undecided when a required kind or the operator check is missing', () => {
    const noMobile = evaluatePolicy(set.get('eu-strict'), [reading()], { now });
    expect(noMobile).toMatchObject({ allowed: false, decision: 'undecided' });
    expect(noMobile.reasons).toContain('policy eu-strict requires the mobile operator to place the device inside the area; none did');
    expect(noMobile.reasons).toContain('1 sensor(s) with a usable reading inside the area; policy eu-strict needs 2');
    expect(noMobile.reasons).toContain('policy eu-strict requires mobile-operator verification; none was performed');
    expect(noMobile.claims).toBeUndefined();
    // Two readings from the same receiver are one witness, not two agreeing sensors.
    const twice = evaluatePolicy(set.get('eu-strict'), [reading(), reading()], { now, operatorResult: op });
    expect(twice.decision).toBe('allow');
    // An operator answer that names no area places the device nowhere.
    const noArea = evaluatePolicy(set.get('eu-strict'), [reading()], { now, operatorResult: { result: 'TRUE', lastLocationTime: now } });
    expect(noArea).toMatchObject({ decision: 'undecided', reasons: expect.arrayContaining(['mobile operator answer names no area, so it places the device nowhere']) });
    // A library caller's own mobile reading still counts (the server never accepts one from a node).
    expect(evaluatePolicy(set.get('eu-strict'), [reading(), mobile], { now, operatorResult: op }).decision).toBe('allow');
  });

  it('handles operator FALSE (deny) and PARTIAL against minMatchRate', () => {
    expect(evaluatePolicy(set.get('eu-strict'), [reading()], { now, operatorResult: { result: 'FALSE', area } }).decision).toBe('deny');
    expect(evaluatePolicy(set.get('eu-strict'), [reading()], { now, operatorResult: { result: 'PARTIAL', matchRate: 85, area } }).decision).toBe('allow');
    const low = evaluatePolicy(set.get('eu-strict'), [reading()], { now, operatorResult: { result: 'PARTIAL', matchRate: 60, area } });
    expect(low.decision).toBe('undecided');
    expect(low.reasons).toContain('mobile operator reports only a partial match of 60 %; policy needs ≥ 80 %');
    // FALSE is evidence against the node even where the policy does not require the operator.
    expect(evaluatePolicy(set.get('dev'), [reading()], { now, operatorResult: { result: 'FALSE', area } }).decision).toBe('deny');
    const stale = evaluatePolicy(set.get('eu-strict'), [reading()], { now, operatorResult: { result: 'TRUE', lastLocationTime: new Date(now.getTime() - 600_000), area } });
    expect(stale).toMatchObject({ decision: 'undecided', reasons: expect.arrayContaining(["mobile operator's location is 600 s old; policy allows 60 s"]) });
  });

  it('ignores stale, future, imprecise and unattested readings, saying why', () => {
    const d = evaluatePolicy(set.get('eu-strict'), [
      reading({ sensorId: 'old', time: new Date(now.getTime() - 120_000) }),
      reading({ sensorId: 'future', time: new Date(now.getTime() + 120_000) }),
      reading({ sensorId: 'vague', horizontalErrorM: 500 }),
      reading({ sensorId: 'cfg', kind: 'static', attested: false }),
    ], { now, operatorResult: op });
    expect(d.decision).toBe('undecided');
    expect(d.reasons).toEqual(expect.arrayContaining([
      'gnss sensor old: reading is 120 s old; policy allows 60 s',
      "gnss sensor future: reading is 120 s in the future; check the sensor's clock",
      "gnss sensor vague: horizontal error 500 m exceeds the policy's 100 m",
      'static sensor cfg: unattested reading ignored; policy eu-strict needs attested sensors',
    ]));
  });

  it('never lets a static reading satisfy a sensor requirement, even inside the area', () => {
    const stat = reading({ kind: 'static', sensorId: 'static', attested: false });
    expect(evaluatePolicy(set.get('eu-strict'), [stat, stat], { now, operatorResult: op }).decision).toBe('undecided');
    // A development policy that allows unattested readings accepts it, and says so in the claims.
    expect(evaluatePolicy(set.get('dev'), [stat], { now })).toMatchObject({ decision: 'allow', claims: { sensorKinds: ['static'], country: 'DE' } });
  });

  it('denies when sensors disagree by more than maxSensorDistanceM (spoofing signal)', () => {
    const d = evaluatePolicy(set.get('eu-strict'), [reading(), reading({ kind: 'mobile', sensorId: 'operator', lat: 50.2, lon: 8.68 })], { now, operatorResult: op });
    expect(d.decision).toBe('deny');
    expect(d.reasons.join('\n')).toMatch(/sensors gps0 and operator disagree by \d+ m; policy allows 2000 m/);
  });

  it('denies a reading outside the area even when another is inside', () => {
    const paris = reading({ sensorId: 'gps1', lat: 48.8566, lon: 2.3522 });
    const d = evaluatePolicy(set.get('frankfurt-dc'), [reading(), paris], { now });
    expect(d.decision).toBe('deny');
    expect(d.reasons).toContain('gnss sensor gps1: position is outside the allowed area (in FR)');
    expect(d.reasons).not.toContain('FX');
  });

  it('evaluates circle and GeoJSON geofences: inside, outside, and error circles across the fence', () => {
    const p = set.get('frankfurt-dc');
    expect(evaluatePolicy(p, [reading()], { now }).decision).toBe('allow');
    expect(evaluatePolicy(p, [reading({ lat: 50.22, lon: 8.65 })], { now }).decision).toBe('allow');
    // Offenbach: in Germany, outside both fences.
    expect(evaluatePolicy(p, [reading({ lat: 50.0956, lon: 8.7761 })], { now }).decision).toBe('deny');
    // 800 m east of the campus centre with ±300 m: the circle pokes out of the 1 km fence.
    expect(evaluatePolicy(p, [reading({ lat: 50.1109, lon: 8.6933, horizontalErrorM: 300 })], { now }).decision).toBe('undecided');
    // 100 m inside the polygon's north edge (50.25°) with ±200 m.
    expect(evaluatePolicy(p, [reading({ lat: 50.2491, lon: 8.65, horizontalErrorM: 200 })], { now }).decision).toBe('undecided');
    expect(evaluatePolicy(p, [reading({ lat: 50.2491, lon: 8.65, horizontalErrorM: 50 })], { now }).decision).toBe('allow');
  });

  it('is undecided without readings, and when sensors place the node in two countries', () => {
    expect(evaluatePolicy(set.get('dev'), [], { now })).toMatchObject({ decision: 'undecided', reasons: ['no location readings', '0 sensor(s) with a usable reading inside the area; policy dev needs 1'] });
    const d = evaluatePolicy(set.get('dev'), [reading(), reading({ sensorId: 'gps1', lat: 48.8566, lon: 2.3522 })], { now });
    expect(d).toMatchObject({ decision: 'undecided', reasons: expect.arrayContaining(['sensors place the node in different countries (DE, FR)']) });
  });

  it('throws clear errors for malformed readings and context', () => {
    const p = set.get('dev');
    expect(() => evaluatePolicy(p, [reading({ lat: Number.NaN })], { now })).toThrow(InvalidReadingError);
    expect(() => evaluatePolicy(p, [reading({ lat: Number.NaN })], { now })).toThrow(/gps0: latitude must be a finite number in \[-90, 90\], got NaN/);
    expect(() => evaluatePolicy(p, [reading({ lon: 181 })], { now })).toThrow(/longitude must be a finite number in \[-180, 180\], got 181/);
    expect(() => evaluatePolicy(p, [reading({ horizontalErrorM: -1 })], { now })).toThrow(/horizontalErrorM must be a finite number ≥ 0/);
    expect(() => evaluatePolicy(p, [reading({ horizontalErrorM: Number.POSITIVE_INFINITY })], { now })).toThrow(/horizontalErrorM/);
    expect(() => evaluatePolicy(p, [reading({ time: new Date('nope') })], { now })).toThrow(/time must be a valid Date/);
    expect(() => evaluatePolicy(p, [reading({ kind: 'wifi' as never })], { now })).toThrow(/kind must be one of gnss, mobile, static/);
    expect(() => evaluatePolicy(p, [reading()], { now: new Date('x') })).toThrow(/valid Date/);
    expect(() => evaluatePolicy(p, Array.from({ length: 65 }, () => reading()), { now })).toThrow(/at most 64 readings/);
  });
});
