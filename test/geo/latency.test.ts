// The latency witness (issue 15): the geometry of speed-of-light bounds and how a location policy uses
// them. Pure and fast: no probes here, only the disks a server would have accepted from its landmarks.
import { describe, expect, it } from 'vitest';
import {
  boundFromDisks,
  distanceM,
  estimateRadiusM,
  evaluatePolicy,
  GeoError,
  parsePolicies,
  PolicyError,
  radiusForRttM,
  SPEED_OF_LIGHT_M_S,
  surfaceRadiusM,
  type LandmarkDisk,
  type LocationReading,
  type ProbeStrength,
} from '../../src/geo/index.js';
import { canonicalUnifiedIdentity, UnifiedIdentityError } from '../../src/spiffe/unified-identity.js';

const now = new Date('2026-11-22T12:00:00Z');
const TD = 'spiffe://example.org/landmark';
const PARIS = { lat: 48.8566, lon: 2.3522 };
const REIMS = { lat: 49.2583, lon: 4.0317 }; // 130 km east-north-east of Paris
const LYON = { lat: 45.76, lon: 4.84 }; // Geneva is ~112 km away, the Swiss border nearer still
const MADRID = { lat: 40.4168, lon: -3.7038 };

const disk = (name: string, at: { lat: number; lon: number }, rttMs: number, over: Partial<LandmarkDisk> = {}): LandmarkDisk => ({
  landmark: `${TD}/${name}`, ...at, rttS: rttMs / 1000, radiusM: radiusForRttM(rttMs / 1000), strength: 'agent-key',
  measuredAt: new Date(now.getTime() - 10_000), ...over,
});
const gnss = (at: { lat: number; lon: number }, over: Partial<LocationReading> = {}): LocationReading => ({
  kind: 'gnss', sensorId: 'gps0', time: new Date(now.getTime() - 5000), ...at, horizontalErrorM: 10, attested: true, ...over,
});
const latency = (...disks: LandmarkDisk[]): { now: Date; latency: { disks: LandmarkDisk[] } } => ({ now, latency: { disks } });

const set = parsePolicies(`
policies:
  eu:
    area: { regions: [EU] }
  fr:
    area: { countries: [FR] }
  eu-bounded:
    area: { regions: [EU] }
    minAssurance: latency-bounded
  eu-latency:
    area: { regions: [EU] }
    requireWitnesses: [latency]
  fr-ch:
    area: { countries: [CH], regions: [EU] }
  fr-ch-latency:
    area: { countries: [CH], regions: [EU] }
    requireWitnesses: [latency]
  eu-tpm:
    area: { regions: [EU] }
    requireWitnesses: [latency]
    latency: { strength: tpm }
  eu-two:
    area: { regions: [EU] }
    requireWitnesses: [latency]
    latency: { minLandmarks: 2 }
  eu-narrow:
    area: { regions: [EU] }
    requireWitnesses: [latency]
    latency: { maxRadiusKm: 100 }
  eu-all-three:
    area: { regions: [EU] }
    requireWitnesses: [node, operator, latency]
`);

describe('radius per round-trip time', () => {
  it('is c·rtt/2: 0.1 ms → 14.99 km, 1 ms → 149.9 km, 10 ms → 1499 km', () => {
    expect(SPEED_OF_LIGHT_M_S).toBe(299_792_458);
    expect(radiusForRttM(0.0001) / 1000).toBeCloseTo(14.99, 2);
    expect(radiusForRttM(0.001) / 1000).toBeCloseTo(149.9, 1);
    expect(radiusForRttM(0.01) / 1000).toBeCloseTo(1499, 0);
    expect(radiusForRttM(0)).toBe(0);
  });

  it('refuses negative and non-finite times', () => {
    for (const bad of [-1e-6, Number.NaN, Number.POSITIVE_INFINITY, '1' as unknown as number]) {
      expect(() => radiusForRttM(bad)).toThrow(GeoError);
    }
    expect(() => radiusForRttM(-1)).toThrow(/round-trip time must be a finite number of seconds ≥ 0/);
  });

  it('estimates at a calibrated speed, which is never more than c allows', () => {
    expect(estimateRadiusM(0.001, 2 / 3) / 1000).toBeCloseTo(99.93, 2);
    expect(estimateRadiusM(0.001, 1)).toBe(radiusForRttM(0.001));
    expect(() => estimateRadiusM(0.001, 0)).toThrow(/speed fraction/);
    expect(() => estimateRadiusM(0.001, 1.5)).toThrow(/speed fraction/);
  });
});

// WGS-84 geodetic → Earth-centred Cartesian (metres).
function ecef(lat: number, lon: number, h: number): [number, number, number] {
  const a = 6_378_137;
  const f = 1 / 298.257223563;
  const e2 = f * (2 - f);
  const φ = (lat * Math.PI) / 180;
  const λ = (lon * Math.PI) / 180;
  const n = a / Math.sqrt(1 - e2 * Math.sin(φ) ** 2);
  return [(n + h) * Math.cos(φ) * Math.cos(λ), (n + h) * Math.cos(φ) * Math.sin(λ), (n * (1 - e2) + h) * Math.sin(φ)];
}
function rng(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 16807) % 2147483647;
    return s / 2147483647;
  };
}

describe('from a physical distance to a disk on the map', () => {
  it('contains every place within the straight-line distance, on the real (ellipsoidal) Earth', () => {
    const r = rng(42);
    let worst = 0;
    for (let i = 0; i < 20_000; i++) {
      const lat = r() * 180 - 90;
      const lon = r() * 360 - 180;
      // Mostly nearby pairs (the useful radii), north-south at any latitude where the sphere is worst.
      const span = i % 4 === 0 ? r() * 90 : r() * 5;
      const lat2 = Math.max(-90, Math.min(90, lat + (r() - 0.5) * span));
      const lon2 = lon + (i % 3 === 0 ? 0 : (r() - 0.5) * span);
      const h1 = i % 5 === 0 ? -500 : r() * 9000;
      const h2 = i % 7 === 0 ? -500 : r() * 9000;
      const [x1, y1, z1] = ecef(lat, lon, h1);
      const [x2, y2, z2] = ecef(lat2, lon2, h2);
      const chord = Math.hypot(x2 - x1, y2 - y1, z2 - z1);
      const onMap = distanceM(lat, lon, lat2, lon2);
      expect(onMap).toBeLessThanOrEqual(surfaceRadiusM(chord));
      if (chord > 10_000) worst = Math.max(worst, onMap / chord);
    }
    expect(worst).toBeGreaterThan(1.003); // the slack is needed: the sphere is longer than the chord here
  });

  it('only grows, and covers the whole Earth past 10,000 km', () => {
    for (const m of [0, 1, 1000, 150_000, 1_500_000, 9_000_000]) expect(surfaceRadiusM(m)).toBeGreaterThanOrEqual(m);
    expect(surfaceRadiusM(150_000) / 1000).toBeCloseTo(151.5, 0);
    expect(surfaceRadiusM(12_000_000)).toBeCloseTo(Math.PI * 6_371_008.8, 0);
    expect(() => surfaceRadiusM(-1)).toThrow(GeoError);
  });
});

describe('boundFromDisks', () => {
  it('one disk: the area is that disk, on the map', () => {
    const d = disk('paris', PARIS, 1);
    const b = boundFromDisks([d]);
    expect(b).toEqual({ ok: true, area: { ...PARIS, radiusM: surfaceRadiusM(d.radiusM) }, disks: [d] });
  });

  it('two landmarks that contradict each other: refused, both named', () => {
    const b = boundFromDisks([disk('paris', PARIS, 1), disk('lyon', LYON, 0.1), disk('madrid', MADRID, 1)]);
    expect(b.ok).toBe(false);
    if (b.ok) return;
    // Paris–Lyon is 392 km: 151.5 + 15.2 km do not reach.
    expect(b.landmarks).toEqual([`${TD}/paris`, `${TD}/lyon`]);
    expect(b.reason).toMatch(new RegExp(`landmarks ${TD}/paris and ${TD}/lyon are 39\\d\\.\\d km apart, but their bounds \\(149\\.9 km and 15\\.0 km\\) leave no place for the node: one of them is declared at the wrong place, or its clock is broken`));
    // Disks that touch are not a contradiction.
    expect(boundFromDisks([disk('paris', PARIS, 2), disk('lyon', LYON, 0.7)]).ok).toBe(true);
  });

  it('a pair\'s lens is covered by a smaller disk, and every point of the lens lies in it', () => {
    // Two 1000 km disks 1500 km apart: the lens is ~1360 km long, ~520 km thick; its cover ≈ 680 km, not 1010.
    const [bLat, bLon] = destinationOf(10, 0, 90, 1_500_000);
    const a = disk('a', { lat: 10, lon: 0 }, 0, { radiusM: 1_000_000 });
    const b = disk('b', { lat: bLat, lon: bLon }, 0, { radiusM: 1_000_000 });
    const bound = boundFromDisks([a, b]);
    expect(bound.ok).toBe(true);
    if (!bound.ok) return;
    expect(bound.area.radiusM / 1000).toBeGreaterThan(660);
    expect(bound.area.radiusM / 1000).toBeLessThan(700);
    expect(distanceM(bound.area.lat, bound.area.lon, 10, 0) / 1000).toBeCloseTo(750, -1);
  });

  it('random pairs and triples: the area always contains the intersection and is never wider than the smallest disk', () => {
    const r = rng(7);
    let smaller = 0;
    for (let t = 0; t < 400; t++) {
      const lat = r() * 160 - 80;
      const lon = r() * 360 - 180;
      const n = 2 + (t % 2);
      const scaleM = [20_000, 300_000, 3_000_000][t % 3]!;
      const disks = Array.from({ length: n }, (_, i) => {
        const [dLat, dLon] = destinationOf(lat, lon, r() * 360, r() * scaleM * 1.5);
        return disk(`l${i}`, { lat: dLat, lon: dLon }, 0, { radiusM: scaleM * (0.3 + r()) });
      });
      const bound = boundFromDisks(disks);
      if (!bound.ok) continue;
      const minR = Math.min(...disks.map((d) => surfaceRadiusM(d.radiusM)));
      expect(bound.area.radiusM).toBeLessThanOrEqual(minR);
      if (bound.area.radiusM < minR * 0.99) smaller++;
      // Sample the intersection (points of the first disk inside all the others), including its rim.
      for (let k = 0; k < 400; k++) {
        const d0 = disks[0]!;
        const r0 = surfaceRadiusM(d0.radiusM) * (k % 4 === 0 ? 1 : Math.sqrt(r()));
        const [pLat, pLon] = destinationOf(d0.lat, d0.lon, r() * 360, r0);
        if (!disks.every((d) => distanceM(d.lat, d.lon, pLat, pLon) <= surfaceRadiusM(d.radiusM))) continue;
        expect(distanceM(bound.area.lat, bound.area.lon, pLat, pLon)).toBeLessThanOrEqual(bound.area.radiusM);
      }
    }
    expect(smaller).toBeGreaterThan(20);
  });

  it('refuses empty or malformed input, and a radius below c·rtt/2', () => {
    expect(() => boundFromDisks([])).toThrow(/at least one landmark disk/);
    expect(() => boundFromDisks([disk('paris', PARIS, 1, { radiusM: 100_000 })])).toThrow(/radiusM 100000 m is less than c·rtt\/2 = 149896\.229 m/);
    expect(() => boundFromDisks([disk('paris', { lat: 91, lon: 0 }, 1)])).toThrow(/latitude/);
    expect(() => boundFromDisks([disk('paris', PARIS, 1, { strength: 'gps' as ProbeStrength })])).toThrow(/strength must be one of agent-key, tpm/);
    expect(() => boundFromDisks([disk('paris', PARIS, 1, { measuredAt: new Date('x') })])).toThrow(/measuredAt/);
    expect(() => boundFromDisks([disk('paris', PARIS, 1, { landmark: '' })])).toThrow(/landmark must be a non-empty SPIFFE ID/);
    expect(() => boundFromDisks([disk('paris', PARIS, -1)])).toThrow(/round-trip time/);
    // A larger radius than c·rtt/2 is allowed (e.g. a landmark's own position uncertainty added).
    expect(boundFromDisks([disk('paris', PARIS, 1, { radiusM: 200_000 })]).ok).toBe(true);
  });
});

describe('the latency witness in a policy', () => {
  it('a Paris landmark bounds the node to ~150 km: FR / EU, latency-bounded, with no reading from the node', () => {
    const d = evaluatePolicy(set.get('eu-bounded'), [], latency(disk('paris', PARIS, 1)));
    expect(d).toMatchObject({
      decision: 'allow',
      claims: {
        country: 'FR', region: 'EU', policy: 'eu-bounded', sensorKinds: [], assurance: 'latency-bounded', witnesses: ['latency'],
        readingTime: '2026-11-22T11:59:50.000Z', latency: [{ landmark: `${TD}/paris`, radiusKm: 149.9, strength: 'agent-key' }],
      },
    });
    expect(d.reasons).toContain(`latency: landmark ${TD}/paris bounds the node to 149.9 km (agent-key)`);
    expect(d.reasons).toContain('latency: the speed of light puts the node within 151.4 km of a point in FR, a disk inside the allowed area');
    expect(d.reasons).toContain('no location readings from the node; the place rests on its witnesses');
    // Never coordinates, not even the landmark's.
    expect(JSON.stringify(d)).not.toMatch(/48\.85|2\.35/);
    // A policy asking less gets the same strong claim.
    expect(evaluatePolicy(set.get('eu'), [], latency(disk('paris', PARIS, 1))).claims?.assurance).toBe('latency-bounded');
  });

  it('radius is rounded up in the claims, never down', () => {
    const d = evaluatePolicy(set.get('eu'), [], latency(disk('paris', PARIS, 0.1)));
    expect(d.claims?.latency).toEqual([{ landmark: `${TD}/paris`, radiusKm: 15, strength: 'agent-key' }]);
    const exact = evaluatePolicy(set.get('eu'), [], latency(disk('paris', PARIS, 0, { radiusM: 12_000.001 })));
    expect(exact.claims?.latency?.[0]?.radiusKm).toBe(12.1);
  });

  it('a Lyon landmark whose disk reaches into Switzerland does not place the node in France', () => {
    const lyon = disk('lyon', LYON, 0.8); // 119.9 km: Geneva is inside
    const fr = evaluatePolicy(set.get('eu-latency'), [], latency(lyon));
    expect(fr.decision).toBe('undecided');
    expect(fr.claims).toBeUndefined();
    expect(fr.reasons).toContain('latency: the speed of light puts the node within 121.2 km of a point in FR, but that disk crosses the border of the allowed area: it does not place the node inside');
    expect(fr.reasons).toContain('policy eu-latency requires the latency witness to place the node inside the area; it does not');
    // With the node's GNSS in Lyon and no latency requirement, the node's word still stands, self-reported.
    const self = evaluatePolicy(set.get('fr'), [gnss(LYON)], latency(lyon));
    expect(self).toMatchObject({ decision: 'allow', claims: { country: 'FR', assurance: 'self-reported', witnesses: ['node:gnss'] } });
    expect(self.claims?.latency).toBeUndefined();
  });

  it('a policy allowing France and Switzerland: the disk is inside the area, but it cannot name the country', () => {
    const lyon = disk('lyon', LYON, 0.8);
    // Alone, the witness places the node inside the area, yet no country claim can rest on it.
    const alone = evaluatePolicy(set.get('fr-ch-latency'), [], latency(lyon));
    expect(alone.decision).toBe('undecided');
    expect(alone.reasons).toContain('latency: the disk is inside the allowed area but crosses a national border, and no other witness names the country');
    // With the node's GNSS in Lyon the area is witnessed by physics, the country by the node only.
    const both = evaluatePolicy(set.get('fr-ch-latency'), [gnss(LYON)], latency(lyon));
    expect(both).toMatchObject({ decision: 'allow', claims: { country: 'FR', assurance: 'self-reported', witnesses: ['latency', 'node:gnss'] } });
    expect(both.reasons).toContain("the latency disk is inside the allowed area but crosses a national border: the country rests on the node's own sensors");
    expect(evaluatePolicy(set.get('eu-bounded'), [gnss(LYON)], latency(lyon)).decision).toBe('undecided');
  });

  it('strength: a policy requiring tpm ignores agent-key probes, and says so', () => {
    const weak = evaluatePolicy(set.get('eu-tpm'), [gnss(PARIS)], latency(disk('paris', PARIS, 1)));
    expect(weak.decision).toBe('undecided');
    expect(weak.reasons).toContain(`latency: landmark ${TD}/paris probed with the agent key, ignored; policy eu-tpm needs TPM-signed probes (latency.strength: tpm)`);
    const strong = evaluatePolicy(set.get('eu-tpm'), [gnss(PARIS)], latency(disk('paris', PARIS, 1, { strength: 'tpm' })));
    expect(strong).toMatchObject({ decision: 'allow', claims: { assurance: 'latency-bounded', latency: [{ strength: 'tpm' }] } });
    // A policy content with the agent key accepts TPM probes too.
    expect(evaluatePolicy(set.get('eu-latency'), [], latency(disk('paris', PARIS, 1, { strength: 'tpm' }))).decision).toBe('allow');
  });

  it('maxRadiusKm: a wider bound is not a witness', () => {
    const wide = evaluatePolicy(set.get('eu-narrow'), [gnss(PARIS)], latency(disk('paris', PARIS, 1)));
    expect(wide.decision).toBe('undecided');
    expect(wide.reasons).toContain("latency: the bound's radius is 151.4 km; policy eu-narrow accepts at most 100 km (latency.maxRadiusKm)");
    expect(evaluatePolicy(set.get('eu-narrow'), [gnss(PARIS)], latency(disk('paris', PARIS, 0.5))).decision).toBe('allow');
  });

  it('minLandmarks: one landmark measured twice is still one landmark; two landmarks are two', () => {
    const one = evaluatePolicy(set.get('eu-two'), [], latency(disk('paris', PARIS, 1), disk('paris', PARIS, 0.9)));
    expect(one.decision).toBe('undecided');
    expect(one.reasons).toContain('latency: 1 landmark(s) bound the node; policy eu-two needs 2 (latency.minLandmarks)');
    const two = evaluatePolicy(set.get('eu-two'), [], latency(disk('reims', REIMS, 0.9), disk('paris', PARIS, 0.5), disk('paris', PARIS, 0.6)));
    expect(two).toMatchObject({ decision: 'allow', claims: { country: 'FR', assurance: 'latency-bounded', witnesses: ['latency'] } });
    // Sorted by landmark, one entry per landmark (its tightest disk).
    expect(two.claims?.latency).toEqual([
      { landmark: `${TD}/paris`, radiusKm: 75, strength: 'agent-key' },
      { landmark: `${TD}/reims`, radiusKm: 135, strength: 'agent-key' },
    ]);
  });

  it('two landmarks narrow the area below either disk', () => {
    const d = evaluatePolicy(set.get('eu'), [], latency(disk('reims', REIMS, 0.9), disk('paris', PARIS, 0.9)));
    expect(d.decision).toBe('allow');
    const m = d.reasons.join('\n').match(/the speed of light puts the node within (\d+\.\d) km/);
    expect(Number(m?.[1])).toBeLessThan(surfaceRadiusM(radiusForRttM(0.0009)) / 1000 - 5);
  });

  it('stale and future measurements are ignored, saying why', () => {
    const old = disk('paris', PARIS, 1, { measuredAt: new Date(now.getTime() - 600_000) });
    const d = evaluatePolicy(set.get('eu-latency'), [gnss(PARIS)], latency(old));
    expect(d.decision).toBe('undecided');
    expect(d.reasons).toContain(`latency: landmark ${TD}/paris measured 600 s ago; policy allows 300 s`);
    const future = disk('paris', PARIS, 1, { measuredAt: new Date(now.getTime() + 120_000) });
    expect(evaluatePolicy(set.get('eu-latency'), [gnss(PARIS)], latency(future)).reasons)
      .toContain(`latency: landmark ${TD}/paris measured 120 s in the future; check the server's clock`);
    // A fresh disk next to the stale one is used alone.
    const fresh = evaluatePolicy(set.get('eu-latency'), [gnss(PARIS)], latency(old, disk('reims', REIMS, 1)));
    expect(fresh.claims?.latency?.map((l) => l.landmark)).toEqual([`${TD}/reims`]);
  });

  it('the node\'s GNSS in France and a latency disk in France: both witnesses, latency-bounded', () => {
    const d = evaluatePolicy(set.get('eu-bounded'), [gnss(PARIS)], latency(disk('paris', PARIS, 0.1)));
    expect(d).toMatchObject({ decision: 'allow', claims: { country: 'FR', sensorKinds: ['gnss'], assurance: 'latency-bounded', witnesses: ['latency', 'node:gnss'] } });
    // The oldest evidence dates the claims: here the landmark's measurement.
    expect(d.claims?.readingTime).toBe('2026-11-22T11:59:50.000Z');
  });

  it('the node\'s GNSS in France but the speed of light puts it in Spain: denied', () => {
    const madrid = disk('madrid', MADRID, 1);
    // Inside the EU either way, so only the disagreement between the node's word and physics can deny.
    const eu = evaluatePolicy(set.get('eu'), [gnss(PARIS)], latency(madrid));
    expect(eu.decision).toBe('deny');
    expect(eu.reasons.join('\n')).toMatch(new RegExp(`gnss sensor gps0: the reading is 10\\d\\d km from landmark ${TD}/madrid, which bounds the node to 149\\.9 km: the node's sensors contradict the speed of light`));
    // A French-only policy: the disk is outside the area.
    const fr = evaluatePolicy(set.get('fr'), [gnss(PARIS)], latency(madrid));
    expect(fr.decision).toBe('deny');
    expect(fr.reasons).toContain('latency: the speed of light puts the node within 151.4 km of a point in ES, outside the allowed area');
    expect(fr.claims).toBeUndefined();
  });

  it('a disk outside the area denies even without readings, and a node reading outside still denies', () => {
    expect(evaluatePolicy(set.get('fr'), [], latency(disk('madrid', MADRID, 1))).decision).toBe('deny');
    const outside = evaluatePolicy(set.get('fr'), [gnss(MADRID)], latency(disk('paris', PARIS, 10)));
    expect(outside.decision).toBe('deny');
    expect(outside.reasons).toContain('gnss sensor gps0: position is outside the allowed area (in ES)');
  });

  it('landmarks contradicting each other deny, naming both', () => {
    const d = evaluatePolicy(set.get('eu'), [gnss(PARIS)], latency(disk('paris', PARIS, 1), disk('madrid', MADRID, 1)));
    expect(d.decision).toBe('deny');
    expect(d.reasons.join('\n')).toMatch(new RegExp(`latency: landmarks ${TD}/paris and ${TD}/madrid are 1052\\.\\d km apart`));
  });

  it('a required latency witness that was never measured leaves the policy undecided', () => {
    const d = evaluatePolicy(set.get('eu-bounded'), [gnss(PARIS)], { now });
    expect(d.decision).toBe('undecided');
    expect(d.reasons).toContain('policy eu-bounded requires a latency witness (landmarks bounding the node by the speed of light); none was measured');
    const none = evaluatePolicy(set.get('eu-latency'), [gnss(PARIS)], latency());
    expect(none.decision).toBe('undecided');
    // All three witnesses, each placing the node inside.
    const op = { result: 'TRUE' as const, lastLocationTime: now, area: { ...PARIS, radiusM: 2000 } };
    expect(evaluatePolicy(set.get('eu-all-three'), [gnss(PARIS)], { now, operatorResult: op, latency: { disks: [disk('paris', PARIS, 0.1)] } }))
      .toMatchObject({ decision: 'allow', claims: { assurance: 'latency-bounded', witnesses: ['latency', 'node:gnss', 'operator'] } });
    expect(evaluatePolicy(set.get('eu-all-three'), [gnss(PARIS)], { now, operatorResult: op }).decision).toBe('undecided');
  });

  it('throws on a malformed latency context', () => {
    const p = set.get('eu');
    expect(() => evaluatePolicy(p, [], { now, latency: { disks: 'x' as never } })).toThrow(/latency\.disks must be an array/);
    expect(() => evaluatePolicy(p, [], latency(disk('paris', PARIS, 1, { radiusM: 1 })))).toThrow(/less than c·rtt\/2/);
    expect(() => evaluatePolicy(p, [], latency(disk('paris', PARIS, 1), disk('paris', REIMS, 1)))).toThrow(/landmark spiffe:\/\/example\.org\/landmark\/paris appears at two positions/);
  });
});

describe('policy schema', () => {
  it('compiles the latency section and what requires the witness', () => {
    expect(set.get('eu')).toMatchObject({ latencyRequired: false, latencyMinLandmarks: 1, latencyStrength: 'agent-key' });
    expect(set.get('eu').latencyMaxRadiusM).toBeUndefined();
    expect(set.get('eu-bounded').latencyRequired).toBe(true);
    expect(set.get('eu-latency')).toMatchObject({ latencyRequired: true, requiredWitnesses: ['latency'] });
    expect(set.get('eu-narrow').latencyMaxRadiusM).toBe(100_000);
    expect(set.get('eu-two').latencyMinLandmarks).toBe(2);
    expect(set.get('eu-tpm').latencyStrength).toBe('tpm');
  });

  const bad: [string, string, RegExp][] = [
    ['minLandmarks 0', 'latency: { minLandmarks: 0 }', /policies\.p\.latency\.minLandmarks/],
    ['minLandmarks 17', 'latency: { minLandmarks: 17 }', /policies\.p\.latency\.minLandmarks/],
    ['fractional minLandmarks', 'latency: { minLandmarks: 1.5 }', /policies\.p\.latency\.minLandmarks/],
    ['maxRadiusKm 0', 'latency: { maxRadiusKm: 0 }', /policies\.p\.latency\.maxRadiusKm/],
    ['maxRadiusKm too large', 'latency: { maxRadiusKm: 20001 }', /policies\.p\.latency\.maxRadiusKm/],
    ['unknown strength', 'latency: { strength: gps }', /policies\.p\.latency\.strength/],
    ['unknown latency field', 'latency: { landmarks: 2 }', /policies\.p\.latency: .*landmarks/],
    ['unknown witness', 'requireWitnesses: [satellite]', /policies\.p\.requireWitnesses\[0\]/],
  ];
  it.each(bad)('refuses %s', (_what, extra, re) => {
    const text = `policies:\n  p:\n    area: { regions: [EU] }\n    ${extra}\n`;
    expect(() => parsePolicies(text)).toThrow(PolicyError);
    expect(() => parsePolicies(text)).toThrow(re);
  });
});

describe('the claims codec carries the latency witness', () => {
  const base = { country: 'FR', assurance: 'latency-bounded' as const, witnesses: ['latency'] };
  it('accepts the list the policy produces', () => {
    const latencyClaims = [{ landmark: `${TD}/paris`, radiusKm: 149.9, strength: 'tpm' }];
    expect(JSON.parse(canonicalUnifiedIdentity({ ...base, latency: latencyClaims }).toString('utf8'))).toMatchObject({ latency: latencyClaims });
  });
  it('refuses a list of the wrong shape', () => {
    const bad: unknown[] = [
      'paris',
      [{ landmark: 1, radiusKm: 1, strength: 'tpm' }],
      [{ landmark: 'x', radiusKm: '1', strength: 'tpm' }],
      [{ landmark: 'x', radiusKm: -1, strength: 'tpm' }],
      [{ landmark: 'x', radiusKm: 1 }],
      ['x'],
      Array.from({ length: 17 }, (_, i) => ({ landmark: `l${i}`, radiusKm: 1, strength: 'tpm' })),
    ];
    for (const b of bad) {
      expect(() => canonicalUnifiedIdentity({ ...base, latency: b as never })).toThrow(UnifiedIdentityError);
      expect(() => canonicalUnifiedIdentity({ ...base, latency: b as never })).toThrow(/claim "latency"/);
    }
  });
});

function destinationOf(lat: number, lon: number, bearingDeg: number, distM: number): [number, number] {
  const R = 6_371_008.8;
  const δ = distM / R;
  const θ = (bearingDeg * Math.PI) / 180;
  const φ1 = (lat * Math.PI) / 180;
  const λ1 = (lon * Math.PI) / 180;
  const φ2 = Math.asin(Math.sin(φ1) * Math.cos(δ) + Math.cos(φ1) * Math.sin(δ) * Math.cos(θ));
  const λ2 = λ1 + Math.atan2(Math.sin(θ) * Math.sin(δ) * Math.cos(φ1), Math.cos(δ) - Math.sin(φ1) * Math.sin(φ2));
  return [(φ2 * 180) / Math.PI, ((((λ2 * 180) / Math.PI + 540) % 360) + 360) % 360 - 180];
}
