import { borderMap, NO_TERRITORY, type CircleVerdict, type TerritoryIndex } from './borders.js';
import { GeoError } from './errors.js';
import { assertLandmarkDisk, boundFromDisks, MAX_LANDMARK_DISKS, surfaceRadiusM, type LandmarkDisk, type ProbeStrength } from './latency.js';
import type { LocationPolicy } from './policy.js';
import { assertLatLon, assertValidReading, type LocationReading } from './reading.js';
import { distanceM } from './spherical.js';
import { assuranceAtLeast, type LocationAssurance } from '../spiffe/unified-identity.js';

/** What the mobile operator said about the node's SIM (see CamaraLocationVerifier). */
export interface OperatorVerification {
  result: 'TRUE' | 'FALSE' | 'PARTIAL';
  matchRate?: number;
  lastLocationTime?: Date;
  /**
   * The circle the operator was asked about. TRUE proves only that the device is within `radiusM`
   * of the centre, so the policy counts the answer only when that whole disk lies inside the allowed
   * area. Without it the answer places the device nowhere and confirms nothing.
   */
  area?: { lat: number; lon: number; radiusM: number };
}

// The levels belong to the claims codec, which relying parties read too.
export { assuranceAtLeast, LOCATION_ASSURANCE_LEVELS, type LocationAssurance } from '../spiffe/unified-identity.js';

/** The coarse facts an SVID may carry about where its node is: never raw coordinates. */
export interface CoarseLocationClaims {
  country: string;
  region?: string;
  policy: string;
  sensorKinds: string[];
  /** ISO 8601 time of the oldest reading the decision rests on. */
  readingTime: string;
  /** How the place was established (the strongest witness that placed the node inside the area and its country). */
  assurance: LocationAssurance;
  /**
   * The witnesses that agreed, sorted: `node:<kind>` for the node's own sensors (`node:gnss-remote`
   * when read over the network), `operator` for the mobile operator, `latency` for landmarks that
   * bounded the node's distance by the speed of light.
   */
  witnesses: string[];
  /** The landmark disks the latency witness rests on, sorted by landmark (radius rounded up to 0.1 km). */
  latency?: { landmark: string; radiusKm: number; strength: ProbeStrength }[];
}

export interface PolicyDecision {
  allowed: boolean;
  decision: 'allow' | 'deny' | 'undecided';
  /** Every finding, in order; mentions sensors, countries and distances, never coordinates. */
  reasons: string[];
  claims?: CoarseLocationClaims;
}

export interface EvaluationContext {
  now: Date;
  operatorResult?: OperatorVerification;
  /** The landmarks' bounds on the node's distance (the server's accepted measurements; see latency.ts). */
  latency?: { disks: LandmarkDisk[] };
}

/** Readings may be at most this far ahead of `now` (clock skew between sensor and server). */
export const MAX_FUTURE_SKEW_S = 30;
const MAX_READINGS = 64;

interface Placed {
  reading: LocationReading;
  verdict: CircleVerdict;
  territory: TerritoryIndex;
}

/** The sensor id an operator witness is reported under. */
export const OPERATOR_WITNESS_ID = 'operator';
/** The witness name of the landmarks' speed-of-light bound. */
export const LATENCY_WITNESS_ID = 'latency';
/** At most this many landmarks are used (and named in the claims) per decision: the tightest ones. */
export const MAX_LATENCY_LANDMARKS = 16;

/** The latency bound that placed the node inside the allowed area (latencyEvidence). */
interface LatencyWitness {
  area: { lat: number; lon: number; radiusM: number };
  territory: TerritoryIndex;
  /** One disk per landmark, the tightest usable one. */
  disks: LandmarkDisk[];
}

/**
 * Decides whether the readings put the node inside the policy's area, under its sensor, age,
 * accuracy, agreement and operator rules. 'deny' means evidence places the node outside (or the
 * sensors contradict each other); 'undecided' means the evidence is insufficient or touches a
 * border; only 'allow' is allowed. Malformed readings or context throw; they are not "denied".
 */
export function evaluatePolicy(policy: LocationPolicy, readings: LocationReading[], ctx: EvaluationContext): PolicyDecision {
  if (!(ctx?.now instanceof Date) || Number.isNaN(ctx.now.getTime())) {
    throw new GeoError('GEO_INVALID_CONTEXT', 'evaluation context needs `now` as a valid Date');
  }
  if (!Array.isArray(readings)) throw new GeoError('GEO_INVALID_CONTEXT', 'readings must be an array');
  if (readings.length > MAX_READINGS) {
    throw new GeoError('GEO_INVALID_CONTEXT', `at most ${MAX_READINGS} readings per evaluation, got ${readings.length}`);
  }
  for (const r of readings) assertValidReading(r);

  const map = borderMap();
  const reasons: string[] = [];
  let deny = false;
  let undecided = false;
  const nowMs = ctx.now.getTime();
  const accepted: Placed[] = [];

  for (const r of readings) {
    const tag = `${r.kind} sensor ${r.sensorId}`;
    if (!r.attested && !policy.allowUnattested) {
      reasons.push(`${tag}: unattested reading ignored; policy ${policy.name} needs attested sensors`);
      continue;
    }
    if (r.link === 'remote' && !policy.allowRemoteSensors) {
      reasons.push(`${tag}: read from a sensor service over the network, ignored; policy ${policy.name} does not allow remote sensors (sensors.allowRemote)`);
      continue;
    }
    const ageS = (nowMs - r.time.getTime()) / 1000;
    if (ageS < -MAX_FUTURE_SKEW_S) {
      reasons.push(`${tag}: reading is ${Math.round(-ageS)} s in the future; check the sensor's clock`);
      continue;
    }
    if (ageS > policy.maxReadingAgeS) {
      reasons.push(`${tag}: reading is ${Math.round(ageS)} s old; policy allows ${policy.maxReadingAgeS} s`);
      continue;
    }
    if (r.horizontalErrorM > policy.maxHorizontalErrorM) {
      reasons.push(`${tag}: horizontal error ${round(r.horizontalErrorM)} m exceeds the policy's ${policy.maxHorizontalErrorM} m`);
      continue;
    }
    const placed = place(policy, r);
    accepted.push(placed);
    const where = placed.territory === NO_TERRITORY ? 'outside any country' : `in ${map.territories[placed.territory]!.code ?? map.territories[placed.territory]!.name}`;
    if (placed.verdict === 'outside') {
      deny = true;
      reasons.push(`${tag}: position is outside the allowed area (${where})`);
    } else if (placed.verdict === 'undecided') {
      undecided = true;
      reasons.push(`${tag}: error circle of ${round(r.horizontalErrorM)} m crosses the border of the allowed area (${where})`);
    } else {
      reasons.push(`${tag}: inside the allowed area (${where})`);
    }
  }

  // The operator's answer, as a witness of its own: TRUE (or PARTIAL at the policy's match rate) says
  // the device is somewhere in the disk asked about, so it counts only where that whole disk is inside.
  const op = ctx.operatorResult;
  let operatorWitness: Placed | undefined;
  if (op !== undefined) {
    const opAgeS = op.lastLocationTime !== undefined ? (nowMs - op.lastLocationTime.getTime()) / 1000 : 0;
    if (op.result !== 'TRUE' && op.result !== 'FALSE' && op.result !== 'PARTIAL') {
      throw new GeoError('GEO_INVALID_CONTEXT', `operatorResult.result must be TRUE, FALSE or PARTIAL, got ${JSON.stringify(op.result)}`);
    }
    if (op.lastLocationTime !== undefined && (Number.isNaN(op.lastLocationTime.getTime()) || opAgeS < -MAX_FUTURE_SKEW_S)) {
      throw new GeoError('GEO_INVALID_CONTEXT', 'operatorResult.lastLocationTime must be a valid time, not in the future');
    }
    if (opAgeS > policy.maxReadingAgeS) {
      reasons.push(`mobile operator's location is ${Math.round(opAgeS)} s old; policy allows ${policy.maxReadingAgeS} s`);
    } else if (op.result === 'FALSE') {
      deny = true;
      reasons.push('mobile operator reports the device outside the area');
    } else {
      const min = policy.operatorMinMatchRate;
      const partialOk = op.result === 'PARTIAL' && min !== undefined && op.matchRate !== undefined && op.matchRate >= min;
      if (op.result === 'PARTIAL' && !partialOk) {
        reasons.push(`mobile operator reports only a partial match${op.matchRate !== undefined ? ` of ${op.matchRate} %` : ''}; policy ${min === undefined ? 'needs TRUE' : `needs ≥ ${min} %`}`);
      } else if (op.area === undefined) {
        reasons.push('mobile operator answer names no area, so it places the device nowhere');
      } else {
        assertLatLon(op.area.lat, op.area.lon, 'operatorResult.area');
        if (!Number.isFinite(op.area.radiusM) || op.area.radiusM <= 0) throw new GeoError('GEO_INVALID_CONTEXT', 'operatorResult.area.radiusM must be a positive number');
        const witness: LocationReading = {
          kind: 'mobile', sensorId: OPERATOR_WITNESS_ID, time: op.lastLocationTime ?? ctx.now,
          lat: op.area.lat, lon: op.area.lon, horizontalErrorM: op.area.radiusM, attested: true,
        };
        const placed = place(policy, witness);
        const what = op.result === 'TRUE' ? 'confirms the device' : `reports a partial match of ${op.matchRate} % (policy accepts ≥ ${min} %) for the device`;
        if (placed.verdict === 'inside') {
          operatorWitness = placed;
          accepted.push(placed);
          reasons.push(`mobile operator ${what} within ${round(op.area.radiusM)} m of the node's fix, a disk inside the allowed area`);
        } else if (placed.verdict === 'outside') {
          deny = true;
          reasons.push(`mobile operator ${what} within ${round(op.area.radiusM)} m of the node's fix, a disk outside the allowed area`);
        } else {
          reasons.push(`mobile operator ${what} within ${round(op.area.radiusM)} m of the node's fix, but that disk crosses the border of the allowed area: it does not place the device inside`);
        }
      }
    }
  }
  if (policy.operatorRequired && operatorWitness === undefined) {
    undecided = true;
    reasons.push(op === undefined
      ? `policy ${policy.name} requires mobile-operator verification; none was performed`
      : `policy ${policy.name} requires the mobile operator to place the device inside the area; its answer does not`);
  }

  // The landmarks' bound, a witness of its own like the operator: light puts the node somewhere in the
  // area, so it counts only where that whole disk is inside. Every usable disk is also a fact the node's
  // readings must agree with: a reading no landmark's disk can reach is a spoofed (or mislabelled) fix.
  const latency = latencyEvidence(policy, ctx, nowMs, reasons);
  if (latency.deny) deny = true;
  const latencyWitness = latency.witness;
  for (const p of accepted) {
    const r = p.reading;
    for (const d of latency.disks) {
      const apart = distanceM(r.lat, r.lon, d.lat, d.lon);
      if (apart - r.horizontalErrorM > surfaceRadiusM(d.radiusM)) {
        deny = true;
        reasons.push(`${r.kind} sensor ${r.sensorId}: the reading is ${Math.round(apart / 1000)} km from landmark ${d.landmark}, which bounds the node to ${kmUp(d.radiusM)} km: the node's sensors contradict the speed of light`);
      }
    }
  }
  if (policy.latencyRequired && latencyWitness === undefined) {
    undecided = true;
    reasons.push((ctx.latency?.disks.length ?? 0) === 0
      ? `policy ${policy.name} requires a latency witness (landmarks bounding the node by the speed of light); none was measured`
      : `policy ${policy.name} requires the latency witness to place the node inside the area; it does not`);
  }

  if (policy.maxSensorDistanceM !== undefined) {
    for (let i = 0; i < accepted.length; i++) {
      for (let j = i + 1; j < accepted.length; j++) {
        const a = accepted[i]!.reading;
        const b = accepted[j]!.reading;
        const d = distanceM(a.lat, a.lon, b.lat, b.lon);
        if (d > policy.maxSensorDistanceM) {
          deny = true;
          reasons.push(`sensors ${a.sensorId} and ${b.sensorId} disagree by ${round(d)} m; policy allows ${policy.maxSensorDistanceM} m`);
        }
      }
    }
  }

  const inside = accepted.filter((p) => p.verdict === 'inside');
  if (readings.length === 0) {
    // Without a word from the node, a witness that placed it inside is still enough.
    if (inside.length === 0 && latencyWitness === undefined) {
      undecided = true;
      reasons.push('no location readings');
    } else {
      reasons.push('no location readings from the node; the place rests on its witnesses');
    }
  }
  for (const kind of policy.requiredSensorKinds) {
    if (!inside.some((p) => p.reading.kind === kind && p.reading.attested)) {
      undecided = true;
      reasons.push(kind === 'mobile'
        ? `policy ${policy.name} requires the mobile operator to place the device inside the area; none did`
        : `policy ${policy.name} requires an attested ${kind} reading inside the area; none qualifies`);
    }
  }
  // Agreement counts sensors, not readings: one receiver reporting twice is still one witness.
  const witnesses = new Set(inside.map((p) => p.reading.sensorId)).size + (latencyWitness !== undefined ? 1 : 0);
  if (witnesses < policy.minAgreeingSensors) {
    undecided = true;
    reasons.push(`${witnesses} sensor(s) with a usable reading inside the area; policy ${policy.name} needs ${policy.minAgreeingSensors}`);
  }

  let claims: CoarseLocationClaims | undefined;
  if (!deny && !undecided) {
    const codes = new Set(inside.map((p) => (p.territory === NO_TERRITORY ? null : map.territories[p.territory]!.code)));
    // The latency disk names a country only when it lies wholly in one.
    const latencyCountry = latencyWitness !== undefined ? wholeCountry(latencyWitness) : undefined;
    if (latencyCountry !== undefined) codes.add(latencyCountry);
    const [code] = codes;
    if (codes.size === 0) {
      undecided = true;
      reasons.push('latency: the disk is inside the allowed area but crosses a national border, and no other witness names the country');
    } else if (codes.size > 1) {
      undecided = true;
      reasons.push(`sensors place the node in different countries (${[...codes].map((c) => c ?? 'none').join(', ')})`);
    } else if (code === null || code === undefined) {
      undecided = true;
      reasons.push('the readings are not in any country, so no country claim can be made');
    } else {
      const times = [...inside.map((p) => p.reading.time), ...(latencyWitness?.disks.map((d) => d.measuredAt) ?? [])];
      let oldest = times[0]!;
      for (const t of times) if (t < oldest) oldest = t;
      const assurance = assuranceOf(operatorWitness, latencyWitness !== undefined ? latencyCountry === code : undefined, code, reasons);
      const names = inside.map((p) => witnessName(p.reading));
      if (latencyWitness !== undefined) names.push(LATENCY_WITNESS_ID);
      claims = {
        country: code,
        policy: policy.name,
        sensorKinds: [...new Set(inside.map((p) => p.reading.kind))].sort(),
        readingTime: oldest.toISOString(),
        assurance,
        witnesses: [...new Set(names)].sort(),
      };
      if (latencyWitness !== undefined) {
        claims.latency = latencyWitness.disks
          .map((d) => ({ landmark: d.landmark, radiusKm: kmUp(d.radiusM), strength: d.strength }))
          .sort((a, b) => (a.landmark < b.landmark ? -1 : a.landmark > b.landmark ? 1 : 0));
      }
      const region = policy.territoryRegion[inside[0]?.territory ?? latencyWitness!.territory];
      if (region !== undefined) claims.region = region;
      if (!assuranceAtLeast(assurance, policy.minAssurance)) {
        undecided = true;
        reasons.push(`the location is ${assurance}; policy ${policy.name} needs at least ${policy.minAssurance}`);
        claims = undefined;
      }
      const named = claims?.witnesses ?? [];
      const missing = policy.requiredWitnesses.filter((w) => !named.some((n) => (w === 'operator' ? n === OPERATOR_WITNESS_ID : w === 'latency' ? n === LATENCY_WITNESS_ID : n.startsWith('node:'))));
      if (claims !== undefined && missing.length > 0) {
        undecided = true;
        reasons.push(`policy ${policy.name} requires witness(es) ${missing.join(', ')}; the location rests on ${claims.witnesses.join(', ')}`);
        claims = undefined;
      }
    }
  }
  const decision = deny ? 'deny' : undecided ? 'undecided' : 'allow';
  return decision === 'allow' ? { allowed: true, decision, reasons, claims } : { allowed: false, decision, reasons };
}

/** How a reading witnessed the location, as the claims name it. */
function witnessName(r: LocationReading): string {
  if (r.kind === 'mobile') return OPERATOR_WITNESS_ID;
  return `node:${r.kind}${r.link === 'remote' ? '-remote' : ''}`;
}

/**
 * `latency-bounded` when the landmarks' disk lies inside the allowed area and inside the claimed country
 * (`latencyInCountry`; undefined when there is no latency witness); else `operator-witnessed` when the
 * operator's disk does; otherwise the place rests on the node's own sensors.
 */
function assuranceOf(operator: Placed | undefined, latencyInCountry: boolean | undefined, country: string, reasons: string[]): LocationAssurance {
  if (latencyInCountry === true) return 'latency-bounded';
  let level: LocationAssurance = 'self-reported';
  if (operator !== undefined) {
    const r = operator.reading;
    if (borderMap().classifyCircle(r.lat, r.lon, r.horizontalErrorM, countryMask(country)).verdict === 'inside') level = 'operator-witnessed';
    else reasons.push('the operator\'s disk is inside the allowed area but crosses a national border: the country rests on the node\'s own sensors');
  }
  if (latencyInCountry === false) {
    reasons.push(`the latency disk is inside the allowed area but crosses a national border: the country rests on ${level === 'operator-witnessed' ? 'the mobile operator' : 'the node\'s own sensors'}`);
  }
  return level;
}

/** The country the latency witness's whole disk lies in, or undefined when it crosses a national border. */
function wholeCountry(w: LatencyWitness): string | undefined {
  const map = borderMap();
  const code = w.territory === NO_TERRITORY ? null : map.territories[w.territory]!.code;
  if (code === null) return undefined;
  return map.classifyCircle(w.area.lat, w.area.lon, w.area.radiusM, countryMask(code)).verdict === 'inside' ? code : undefined;
}

/**
 * The landmarks' evidence (docs/latency-witness.md): the disks the policy accepts (strength, age; one
 * per landmark, its tightest), bounded together by boundFromDisks and placed like any other disk.
 * `deny` when landmarks contradict each other or the bound lies outside the area; `witness` only when
 * the whole bound is inside, from enough landmarks and narrow enough; `disks` are the bounds the
 * node's readings must agree with.
 */
function latencyEvidence(
  policy: LocationPolicy, ctx: EvaluationContext, nowMs: number, reasons: string[],
): { deny: boolean; disks: LandmarkDisk[]; witness?: LatencyWitness } {
  const lat = ctx.latency;
  if (lat === undefined) return { deny: false, disks: [] };
  if (lat === null || typeof lat !== 'object' || !Array.isArray(lat.disks)) {
    throw new GeoError('GEO_INVALID_CONTEXT', 'latency.disks must be an array of landmark disks');
  }
  if (lat.disks.length > MAX_LANDMARK_DISKS) {
    throw new GeoError('GEO_INVALID_CONTEXT', `at most ${MAX_LANDMARK_DISKS} latency disks per evaluation, got ${lat.disks.length}`);
  }
  const positions = new Map<string, LandmarkDisk>();
  lat.disks.forEach((d, i) => {
    assertLandmarkDisk(d, `latency.disks[${i}]`);
    const seen = positions.get(d.landmark);
    if (seen !== undefined && (seen.lat !== d.lat || seen.lon !== d.lon)) {
      throw new GeoError('GEO_INVALID_CONTEXT', `latency: landmark ${d.landmark} appears at two positions; a landmark's position comes from the server's configuration`);
    }
    positions.set(d.landmark, d);
  });

  // Two disks of one landmark share a centre, so the tighter one is all the other says.
  const tightest = new Map<string, LandmarkDisk>();
  for (const d of lat.disks) {
    const tag = `latency: landmark ${d.landmark}`;
    if (policy.latencyStrength === 'tpm' && d.strength !== 'tpm') {
      reasons.push(`${tag} probed with the agent key, ignored; policy ${policy.name} needs TPM-signed probes (latency.strength: tpm)`);
      continue;
    }
    const ageS = (nowMs - d.measuredAt.getTime()) / 1000;
    if (ageS < -MAX_FUTURE_SKEW_S) {
      reasons.push(`${tag} measured ${Math.round(-ageS)} s in the future; check the server's clock`);
      continue;
    }
    if (ageS > policy.maxReadingAgeS) {
      reasons.push(`${tag} measured ${Math.round(ageS)} s ago; policy allows ${policy.maxReadingAgeS} s`);
      continue;
    }
    const prev = tightest.get(d.landmark);
    if (prev === undefined || d.radiusM < prev.radiusM) tightest.set(d.landmark, d);
  }
  let used = [...tightest.values()].sort((a, b) => a.radiusM - b.radiusM);
  if (used.length === 0) {
    if (lat.disks.length > 0) reasons.push('latency: no usable landmark measurement');
    return { deny: false, disks: [] };
  }
  if (used.length > MAX_LATENCY_LANDMARKS) {
    reasons.push(`latency: ${used.length} landmarks measured the node; the ${MAX_LATENCY_LANDMARKS} with the tightest bounds are used`);
    used = used.slice(0, MAX_LATENCY_LANDMARKS);
  }
  for (const d of used) reasons.push(`latency: landmark ${d.landmark} bounds the node to ${kmUp(d.radiusM)} km (${d.strength})`);

  const bound = boundFromDisks(used);
  if (!bound.ok) {
    reasons.push(`latency: ${bound.reason}`);
    return { deny: true, disks: [] };
  }
  const { area } = bound;
  const placed = placeCircle(policy, area.lat, area.lon, area.radiusM);
  const map = borderMap();
  const where = placed.territory === NO_TERRITORY ? 'outside any country' : `in ${map.territories[placed.territory]!.code ?? map.territories[placed.territory]!.name}`;
  const within = `latency: the speed of light puts the node within ${kmUp(area.radiusM)} km of a point ${where}`;
  if (placed.verdict === 'outside') {
    // Physics places the node outside, however few landmarks or wide the disk.
    reasons.push(`${within}, outside the allowed area`);
    return { deny: true, disks: used };
  }
  if (placed.verdict === 'undecided') {
    reasons.push(`${within}, but that disk crosses the border of the allowed area: it does not place the node inside`);
    return { deny: false, disks: used };
  }
  reasons.push(`${within}, a disk inside the allowed area`);
  if (used.length < policy.latencyMinLandmarks) {
    reasons.push(`latency: ${used.length} landmark(s) bound the node; policy ${policy.name} needs ${policy.latencyMinLandmarks} (latency.minLandmarks)`);
    return { deny: false, disks: used };
  }
  if (policy.latencyMaxRadiusM !== undefined && area.radiusM > policy.latencyMaxRadiusM) {
    reasons.push(`latency: the bound's radius is ${kmUp(area.radiusM)} km; policy ${policy.name} accepts at most ${policy.latencyMaxRadiusM / 1000} km (latency.maxRadiusKm)`);
    return { deny: false, disks: used };
  }
  return { deny: false, disks: used, witness: { area, territory: placed.territory, disks: used } };
}

/** Kilometres rounded up to 0.1 km: a bound is never shown tighter than it is. */
function kmUp(m: number): number {
  return Math.ceil(m / 100) / 10;
}

const countryMasks = new Map<string, Uint8Array>();

/** The border-map territories of one country (it can be several, e.g. its overseas parts), cached. */
function countryMask(country: string): Uint8Array {
  let mask = countryMasks.get(country);
  if (mask === undefined) {
    const map = borderMap();
    mask = new Uint8Array(map.territories.length);
    map.territories.forEach((t, i) => { if (t.code === country) mask![i] = 1; });
    countryMasks.set(country, mask);
  }
  return mask;
}

function place(policy: LocationPolicy, r: LocationReading): Placed {
  return { reading: r, ...placeCircle(policy, r.lat, r.lon, r.horizontalErrorM) };
}

/** Where the disk of radiusM around (lat, lon) lies against the policy's countries, regions and geofences. */
function placeCircle(policy: LocationPolicy, lat: number, lon: number, radiusM: number): { verdict: CircleVerdict; territory: TerritoryIndex } {
  const map = borderMap();
  let verdict: CircleVerdict = 'inside';
  let territory: TerritoryIndex;
  if (policy.allowedTerritories !== null) {
    const c = map.classifyCircle(lat, lon, radiusM, policy.allowedTerritories);
    verdict = c.verdict;
    territory = c.territory;
  } else {
    territory = map.territoryAt(lat, lon);
  }
  if (policy.geofences.length > 0 && verdict !== 'outside') {
    let fence: CircleVerdict = 'outside';
    for (const g of policy.geofences) {
      const v = g.classify(lat, lon, radiusM);
      if (v === 'inside') {
        fence = 'inside';
        break;
      }
      if (v === 'undecided') fence = 'undecided';
    }
    if (fence === 'outside') verdict = 'outside';
    else if (fence === 'undecided') verdict = 'undecided';
  }
  return { verdict, territory };
}

function round(m: number): number {
  return m >= 100 ? Math.round(m) : Math.round(m * 10) / 10;
}
