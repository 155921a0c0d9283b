import { borderMap, NO_TERRITORY, type CircleVerdict, type TerritoryIndex } from './borders.js';
import { GeoError } from './errors.js';
import type { LocationPolicy } from './policy.js';
import { assertValidReading, type LocationReading } from './reading.js';
import { distanceM } from './spherical.js';

/** What the mobile operator said about the node's SIM (see CamaraLocationVerifier). */
export interface OperatorVerification {
  result: 'TRUE' | 'FALSE' | 'PARTIAL';
  matchRate?: number;
  lastLocationTime?: Date;
}

/** The coarse facts an SVID may carry about where its node is: never raw coordinates. */
export interface CoarseLocationClaims {
  country: string;
  region?: string;
  policy: string;
  sensorKinds: string[];
  /** ISO 8601 time of the oldest reading the decision rests on. */
  readingTime: string;
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
}

/** Readings may be at most this far ahead of `now` (clock skew between sensor and server). */
export const MAX_FUTURE_SKEW_S = 30;
const MAX_READINGS = 64;

interface Placed {
  reading: LocationReading;
  verdict: CircleVerdict;
  territory: TerritoryIndex;
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
    undecided = true;
    reasons.push('no location readings');
  }
  for (const kind of policy.requiredSensorKinds) {
    if (!inside.some((p) => p.reading.kind === kind && p.reading.attested)) {
      undecided = true;
      reasons.push(`policy ${policy.name} requires an attested ${kind} reading inside the area; none qualifies`);
    }
  }
  // Agreement counts sensors, not readings: one receiver reporting twice is still one witness.
  const witnesses = new Set(inside.map((p) => p.reading.sensorId)).size;
  if (witnesses < policy.minAgreeingSensors) {
    undecided = true;
    reasons.push(`${witnesses} sensor(s) with a usable reading inside the area; policy ${policy.name} needs ${policy.minAgreeingSensors}`);
  }

  if (policy.operatorRequired) {
    const op = ctx.operatorResult;
    if (op === undefined) {
      undecided = true;
      reasons.push(`policy ${policy.name} requires mobile-operator verification; none was performed`);
    } else if (op.lastLocationTime !== undefined && (nowMs - op.lastLocationTime.getTime()) / 1000 > policy.maxReadingAgeS) {
      undecided = true;
      reasons.push(`mobile operator's location is ${Math.round((nowMs - op.lastLocationTime.getTime()) / 1000)} s old; policy allows ${policy.maxReadingAgeS} s`);
    } else if (op.result === 'FALSE') {
      deny = true;
      reasons.push('mobile operator reports the device outside the area');
    } else if (op.result === 'PARTIAL') {
      const min = policy.operatorMinMatchRate;
      if (min !== undefined && op.matchRate !== undefined && op.matchRate >= min) {
        reasons.push(`mobile operator reports a partial match of ${op.matchRate} % (policy accepts ≥ ${min} %)`);
      } else {
        undecided = true;
        reasons.push(`mobile operator reports only a partial match${op.matchRate !== undefined ? ` of ${op.matchRate} %` : ''}; policy ${min === undefined ? 'needs TRUE' : `needs ≥ ${min} %`}`);
      }
    } else if (op.result === 'TRUE') {
      reasons.push('mobile operator confirms the device is in the area');
    } else {
      throw new GeoError('GEO_INVALID_CONTEXT', `operatorResult.result must be TRUE, FALSE or PARTIAL, got ${JSON.stringify(op.result)}`);
    }
  }

  let claims: CoarseLocationClaims | undefined;
  if (!deny && !undecided) {
    const codes = new Set(inside.map((p) => (p.territory === NO_TERRITORY ? null : map.territories[p.territory]!.code)));
    const [code] = codes;
    if (codes.size > 1) {
      undecided = true;
      reasons.push(`sensors place the node in different countries (${[...codes].map((c) => c ?? 'none').join(', ')})`);
    } else if (code === null || code === undefined) {
      undecided = true;
      reasons.push('the readings are not in any country, so no country claim can be made');
    } else {
      let oldest = inside[0]!.reading.time;
      for (const p of inside) if (p.reading.time < oldest) oldest = p.reading.time;
      claims = {
        country: code,
        policy: policy.name,
        sensorKinds: [...new Set(inside.map((p) => p.reading.kind))].sort(),
        readingTime: oldest.toISOString(),
      };
      const region = policy.territoryRegion[inside[0]!.territory];
      if (region !== undefined) claims.region = region;
    }
  }
  const decision = deny ? 'deny' : undecided ? 'undecided' : 'allow';
  return decision === 'allow' ? { allowed: true, decision, reasons, claims } : { allowed: false, decision, reasons };
}

function place(policy: LocationPolicy, r: LocationReading): Placed {
  const map = borderMap();
  let verdict: CircleVerdict = 'inside';
  let territory: TerritoryIndex;
  if (policy.allowedTerritories !== null) {
    const c = map.classifyCircle(r.lat, r.lon, r.horizontalErrorM, policy.allowedTerritories);
    verdict = c.verdict;
    territory = c.territory;
  } else {
    territory = map.territoryAt(r.lat, r.lon);
  }
  if (policy.geofences.length > 0 && verdict !== 'outside') {
    let fence: CircleVerdict = 'outside';
    for (const g of policy.geofences) {
      const v = g.classify(r.lat, r.lon, r.horizontalErrorM);
      if (v === 'inside') {
        fence = 'inside';
        break;
      }
      if (v === 'undecided') fence = 'undecided';
    }
    if (fence === 'outside') verdict = 'outside';
    else if (fence === 'undecided') verdict = 'undecided';
  }
  return { reading: r, verdict, territory };
}

function round(m: number): number {
  return m >= 100 ? Math.round(m) : Math.round(m * 10) / 10;
}
