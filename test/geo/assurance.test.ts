// How a place was established, and what a lying node or a border-straddling operator answer can get.
// Attacks from issue 13: an operator TRUE for a 2 km circle around a French fix 1.2 km from the Swiss
// border (the SIM may be in Switzerland) must not make the node French; readings the node sends are its
// word (self-reported) and a policy can demand more; network-fed GNSS does not count unless allowed.
import { describe, expect, it } from 'vitest';
import { evaluatePolicy, parsePolicies, type LocationReading } from '../../src/geo/index.js';

const now = new Date('2026-11-22T12:00:00Z');
// In France, 1.2 km west of the Swiss border near Geneva (checked with countryAt: FR; 46.2044, 5.9697 is CH).
const NEAR_CH = { lat: 46.2044, lon: 5.9541 };
// Lyon: more than 2 km from any border.
const LYON = { lat: 45.764, lon: 4.8357 };

const gnss = (at: { lat: number; lon: number }, over: Partial<LocationReading> = {}): LocationReading => ({
  kind: 'gnss', sensorId: 'gps0', time: new Date(now.getTime() - 5000), ...at, horizontalErrorM: 10, attested: true, ...over,
});

const set = parsePolicies(`
policies:
  eu:
    area: { regions: [EU] }
  eu-operator:
    area: { regions: [EU] }
    operator: { required: true, minMatchRate: 70 }
  eu-witnessed:
    area: { regions: [EU] }
    minAssurance: operator-witnessed
  eu-both:
    area: { regions: [EU] }
    requireWitnesses: [node, operator]
  eu-latency:
    area: { regions: [EU] }
    minAssurance: latency-bounded
  eu-remote-ok:
    area: { regions: [EU] }
    sensors: { allowRemote: true }
`);

describe('operator answers: the whole disk must be inside', () => {
  it('TRUE for a 2 km disk around a French fix 1.2 km from Switzerland does not place the node in France', () => {
    const area = { ...NEAR_CH, radiusM: 2000 };
    const d = evaluatePolicy(set.get('eu-operator'), [gnss(NEAR_CH)], { now, operatorResult: { result: 'TRUE', lastLocationTime: now, area } });
    expect(d.decision).toBe('undecided');
    expect(d.claims).toBeUndefined();
    expect(d.reasons).toContain("mobile operator confirms the device within 2000 m of the node's fix, but that disk crosses the border of the allowed area: it does not place the device inside");
    // With a circle small enough to stay in France, the same answer does place it there.
    const small = evaluatePolicy(set.get('eu-operator'), [gnss(NEAR_CH)], { now, operatorResult: { result: 'TRUE', lastLocationTime: now, area: { ...NEAR_CH, radiusM: 500 } } });
    expect(small).toMatchObject({ decision: 'allow', claims: { country: 'FR', region: 'EU', assurance: 'operator-witnessed', witnesses: ['node:gnss', 'operator'] } });
  });

  it('PARTIAL counts only at the policy\'s match rate and with the disk inside', () => {
    const inside = { ...LYON, radiusM: 2000 };
    expect(evaluatePolicy(set.get('eu-operator'), [gnss(LYON)], { now, operatorResult: { result: 'PARTIAL', matchRate: 75, area: inside } }))
      .toMatchObject({ decision: 'allow', claims: { assurance: 'operator-witnessed' } });
    expect(evaluatePolicy(set.get('eu-operator'), [gnss(LYON)], { now, operatorResult: { result: 'PARTIAL', matchRate: 65, area: inside } }).decision).toBe('undecided');
    expect(evaluatePolicy(set.get('eu-operator'), [gnss(NEAR_CH)], { now, operatorResult: { result: 'PARTIAL', matchRate: 90, area: { ...NEAR_CH, radiusM: 2000 } } }).decision).toBe('undecided');
  });

  it('a disk inside the area but across a national border witnesses the region, not the country', () => {
    // Strasbourg/Kehl: FR and DE are both EU. A 5 km disk around a French fix near the Rhine is in the EU but not only in France.
    const strasbourg = { lat: 48.5734, lon: 7.7521 };
    const d = evaluatePolicy(set.get('eu'), [gnss(strasbourg)], { now, operatorResult: { result: 'TRUE', lastLocationTime: now, area: { ...strasbourg, radiusM: 5000 } } });
    expect(d).toMatchObject({ decision: 'allow', claims: { country: 'FR', assurance: 'self-reported', witnesses: ['node:gnss', 'operator'] } });
    expect(d.reasons).toContain("the operator's disk is inside the allowed area but crosses a national border: the country rests on the node's own sensors");
    expect(evaluatePolicy(set.get('eu-witnessed'), [gnss(strasbourg)], { now, operatorResult: { result: 'TRUE', lastLocationTime: now, area: { ...strasbourg, radiusM: 5000 } } }).decision).toBe('undecided');
  });
});

describe('assurance and required witnesses', () => {
  it('the node\'s own readings are self-reported, and a policy demanding more is not satisfied by them', () => {
    expect(evaluatePolicy(set.get('eu'), [gnss(LYON)], { now })).toMatchObject({ decision: 'allow', claims: { assurance: 'self-reported', witnesses: ['node:gnss'] } });
    const d = evaluatePolicy(set.get('eu-witnessed'), [gnss(LYON)], { now });
    expect(d.decision).toBe('undecided');
    // minAssurance operator-witnessed makes the operator check required.
    expect(set.get('eu-witnessed').operatorRequired).toBe(true);
    expect(d.reasons).toContain('policy eu-witnessed requires mobile-operator verification; none was performed');
    // An operator answer that does not witness the country leaves it self-reported: still not enough.
    const wide = evaluatePolicy(set.get('eu-witnessed'), [gnss(NEAR_CH)], { now, operatorResult: { result: 'TRUE', lastLocationTime: now, area: { ...NEAR_CH, radiusM: 2000 } } });
    expect(wide.decision).toBe('undecided');
    expect(evaluatePolicy(set.get('eu-witnessed'), [gnss(LYON)], { now, operatorResult: { result: 'TRUE', lastLocationTime: now, area: { ...LYON, radiusM: 2000 } } }).decision).toBe('allow');
    // Only landmarks reach latency-bounded (test/geo/latency.test.ts); the operator and the node do not.
    expect(evaluatePolicy(set.get('eu-latency'), [gnss(LYON)], { now, operatorResult: { result: 'TRUE', lastLocationTime: now, area: { ...LYON, radiusM: 2000 } } }).decision).toBe('undecided');
  });

  it('requireWitnesses: both the node and the operator must have placed it inside', () => {
    const op = { result: 'TRUE' as const, lastLocationTime: now, area: { ...LYON, radiusM: 2000 } };
    expect(evaluatePolicy(set.get('eu-both'), [gnss(LYON)], { now, operatorResult: op }).decision).toBe('allow');
    expect(evaluatePolicy(set.get('eu-both'), [gnss(LYON)], { now }).decision).toBe('undecided');
    // The operator alone (the node's readings unusable) is not enough either.
    const stale = gnss(LYON, { time: new Date(now.getTime() - 3_600_000) });
    const d = evaluatePolicy(set.get('eu-both'), [stale], { now, operatorResult: op });
    expect(d.decision).toBe('undecided');
    expect(d.reasons).toContain('policy eu-both requires witness(es) node; the location rests on operator');
  });

  it('a reading the node took from a gpsd over the network counts only where the policy allows it, and says so', () => {
    const remote = gnss(LYON, { link: 'remote' });
    const d = evaluatePolicy(set.get('eu'), [remote], { now });
    expect(d.decision).toBe('undecided');
    expect(d.reasons).toContain('gnss sensor gps0: read from a sensor service over the network, ignored; policy eu does not allow remote sensors (sensors.allowRemote)');
    expect(evaluatePolicy(set.get('eu-remote-ok'), [remote], { now })).toMatchObject({ decision: 'allow', claims: { witnesses: ['node:gnss-remote'] } });
  });
});
