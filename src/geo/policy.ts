import YAML from 'yaml';
import { z } from 'zod';
import { borderMap, isKnownCountryCode, isKnownRegionCode, territoryInRegion } from './borders.js';
import { GeoError, PolicyError, UnknownPolicyError } from './errors.js';
import { CircleFence, PolygonFence, type Geofence } from './geofence.js';
import type { ProbeStrength } from './latency.js';
import type { SensorKind } from './reading.js';

/** A policy file larger than this is refused before parsing. */
export const MAX_POLICY_BYTES = 1024 * 1024;

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

const countryCode = z
  .string()
  .regex(/^[A-Z]{2}$/, { error: 'must be an ISO 3166-1 alpha-2 code in upper case, e.g. "DE"' })
  .refine(isKnownCountryCode, { error: (iss) => `${JSON.stringify(iss.input)} is not an ISO 3166-1 alpha-2 code known to the border dataset` });

const regionCode = z
  .string()
  .refine(isKnownRegionCode, { error: (iss) => `${JSON.stringify(iss.input)} is not a region known to the border dataset (e.g. "EU", "150" for Europe, "UN")` });

const circleSchema = z.strictObject({
  lat: z.number().min(-90).max(90),
  lon: z.number().min(-180).max(180),
  radiusM: z.number().positive().max(20_000_000),
});

const geofenceSchema = z
  .strictObject({
    name: z.string().regex(NAME, { error: 'must be 1-64 letters, digits, ".", "_" or "-"' }),
    circle: circleSchema.optional(),
    geojson: z.unknown().optional(),
  })
  .refine((g) => (g.circle === undefined) !== (g.geojson === undefined), { error: 'give exactly one of "circle" or "geojson"' });

const policySchema = z
  .strictObject({
    description: z.string().max(1024).optional(),
    area: z
      .strictObject({
        countries: z.array(countryCode).max(300).optional(),
        regions: z.array(regionCode).max(50).optional(),
        geofences: z.array(geofenceSchema).max(100).optional(),
      })
      .refine((a) => (a.countries?.length ?? 0) + (a.regions?.length ?? 0) + (a.geofences?.length ?? 0) > 0, {
        error: 'name at least one of countries, regions or geofences',
      }),
    sensors: z
      .strictObject({
        required: z.array(z.enum(['gnss', 'mobile'])).max(2).default([]),
        minAgreeing: z.int().min(1).max(16).default(1),
        allowUnattested: z.boolean().default(false),
        /** Readings a node took from a sensor service over the network (link: remote) count only when true. */
        allowRemote: z.boolean().default(false),
      })
      .refine((s) => !(s.allowUnattested && s.required.length > 0), {
        error: 'allowUnattested cannot be combined with required sensor kinds: a required sensor must be attested',
      })
      .default({ required: [], minAgreeing: 1, allowUnattested: false, allowRemote: false }),
    /** The weakest way of establishing the place this policy accepts (docs/unified-identity.md "Assurance"). */
    minAssurance: z.enum(['self-reported', 'operator-witnessed', 'latency-bounded']).default('self-reported'),
    /**
     * Witnesses that must each have placed the node inside the area: `node` (its own sensors), `operator`,
     * `latency` (landmarks bounding it by the speed of light).
     */
    requireWitnesses: z.array(z.enum(['node', 'operator', 'latency'])).max(3).default([]),
    maxReadingAgeS: z.number().positive().max(7 * 86400).default(300),
    maxHorizontalErrorM: z.number().positive().max(1_000_000).default(1000),
    maxSensorDistanceM: z.number().positive().max(20_000_000).optional(),
    operator: z
      .strictObject({
        required: z.boolean().default(false),
        minMatchRate: z.int().min(1).max(99).optional(),
      })
      .default({ required: false }),
    /** How the latency witness counts (docs/latency-witness.md "Policy"). */
    latency: z
      .strictObject({
        /** Distinct landmarks whose disks the bound must rest on. */
        minLandmarks: z.int().min(1).max(16).default(1),
        /** The witness counts only when its area (a disk on the map) is at most this wide. */
        maxRadiusKm: z.number().positive().max(20_000).optional(),
        /** `tpm`: only probes answered by TPM quotes count; `agent-key` accepts both. */
        strength: z.enum(['agent-key', 'tpm']).default('agent-key'),
      })
      .default({ minLandmarks: 1, strength: 'agent-key' }),
  });

const fileSchema = z.strictObject({
  policies: z.record(z.string(), policySchema),
});

/** A validated, compiled sovereign-location policy. */
export interface LocationPolicy {
  readonly name: string;
  readonly description?: string;
  readonly countries: readonly string[];
  readonly regions: readonly string[];
  readonly geofences: readonly Geofence[];
  readonly requiredSensorKinds: readonly Exclude<SensorKind, 'static'>[];
  readonly minAgreeingSensors: number;
  readonly allowUnattested: boolean;
  readonly maxReadingAgeS: number;
  readonly maxHorizontalErrorM: number;
  readonly maxSensorDistanceM?: number;
  readonly operatorRequired: boolean;
  readonly operatorMinMatchRate?: number;
  readonly allowRemoteSensors: boolean;
  readonly minAssurance: 'self-reported' | 'operator-witnessed' | 'latency-bounded';
  readonly requiredWitnesses: readonly ('node' | 'operator' | 'latency')[];
  /** True when the policy needs the latency witness (requireWitnesses has it, or minAssurance is latency-bounded). */
  readonly latencyRequired: boolean;
  /** Distinct landmarks the latency bound must rest on. */
  readonly latencyMinLandmarks: number;
  /** The latency witness counts only when its area's radius (map metres) is at most this. */
  readonly latencyMaxRadiusM?: number;
  /** `tpm`: agent-key probes are ignored; `agent-key`: both count. */
  readonly latencyStrength: ProbeStrength;
  /** allowedTerritories[t] === 1 when border-map territory t is in the allowed countries/regions; null when the policy names none. */
  readonly allowedTerritories: Uint8Array | null;
  /** For each border-map territory, the first of `regions` it belongs to (for the claims). */
  readonly territoryRegion: readonly (string | undefined)[];
}

/** Named policies from one document. */
export class PolicySet {
  private readonly byName: ReadonlyMap<string, LocationPolicy>;

  constructor(policies: Iterable<LocationPolicy>) {
    this.byName = new Map([...policies].map((p) => [p.name, p]));
  }

  /** The policy called `name`; throws UnknownPolicyError (listing the known names) otherwise. */
  get(name: string): LocationPolicy {
    const p = this.byName.get(name);
    if (p === undefined) throw new UnknownPolicyError(name, this.names());
    return p;
  }

  has(name: string): boolean {
    return this.byName.has(name);
  }

  names(): string[] {
    return [...this.byName.keys()].sort();
  }
}

/**
 * Parses a YAML or JSON policy document:
 *
 *     policies:
 *       eu-gnss:
 *         area: { regions: [EU] }
 *         sensors: { required: [gnss] }
 *
 * Throws PolicyError naming the field (e.g. `policies.eu-gnss.area.countries[1]`) on any problem.
 */
export function parsePolicies(text: string): PolicySet {
  if (typeof text !== 'string') throw new PolicyError('policy document must be a string of YAML or JSON');
  if (Buffer.byteLength(text, 'utf8') > MAX_POLICY_BYTES) {
    throw new PolicyError(`policy document is larger than ${MAX_POLICY_BYTES} bytes; split it or simplify its geofences`);
  }
  let doc: unknown;
  try {
    // YAML 1.2 is a superset of JSON; the alias cap stops "billion laughs" expansion.
    doc = YAML.parse(text, { maxAliasCount: 100, uniqueKeys: true });
  } catch (err) {
    throw new PolicyError(`policy document is not valid YAML/JSON: ${(err as Error).message}`, { cause: err });
  }
  const named = (doc as { policies?: unknown } | null)?.policies;
  if (named !== null && typeof named === 'object') {
    for (const name of Object.keys(named)) {
      if (!NAME.test(name)) {
        throw new PolicyError(`invalid policy document: policies.${JSON.stringify(name)}: policy names are 1-64 letters, digits, ".", "_" or "-"`);
      }
    }
  }
  const parsed = fileSchema.safeParse(doc);
  if (!parsed.success) {
    const lines = parsed.error.issues.slice(0, 10).map((i) => `${formatPath(i.path)}: ${i.message}`);
    throw new PolicyError(`invalid policy document: ${lines.join('; ')}`, { cause: parsed.error });
  }
  const policies: LocationPolicy[] = [];
  for (const [name, p] of Object.entries(parsed.data.policies)) {
    const geofences = (p.area.geofences ?? []).map((g, i) => {
      try {
        return g.circle !== undefined ? new CircleFence(g.name, g.circle) : new PolygonFence(g.name, g.geojson);
      } catch (err) {
        if (err instanceof GeoError) {
          throw new PolicyError(`invalid policy document: policies.${name}.area.geofences[${i}]: ${err.message}`, { cause: err });
        }
        throw err;
      }
    });
    const countries = p.area.countries ?? [];
    const regions = p.area.regions ?? [];
    policies.push({
      name,
      description: p.description,
      countries,
      regions,
      geofences,
      requiredSensorKinds: p.sensors.required,
      minAgreeingSensors: p.sensors.minAgreeing,
      allowUnattested: p.sensors.allowUnattested,
      maxReadingAgeS: p.maxReadingAgeS,
      maxHorizontalErrorM: p.maxHorizontalErrorM,
      maxSensorDistanceM: p.maxSensorDistanceM,
      // Requiring the operator as a witness is requiring its check.
      operatorRequired: p.operator.required || p.requireWitnesses.includes('operator') || p.minAssurance === 'operator-witnessed',
      operatorMinMatchRate: p.operator.minMatchRate,
      allowRemoteSensors: p.sensors.allowRemote,
      minAssurance: p.minAssurance,
      requiredWitnesses: p.requireWitnesses,
      latencyRequired: p.requireWitnesses.includes('latency') || p.minAssurance === 'latency-bounded',
      latencyMinLandmarks: p.latency.minLandmarks,
      ...(p.latency.maxRadiusKm !== undefined ? { latencyMaxRadiusM: p.latency.maxRadiusKm * 1000 } : {}),
      latencyStrength: p.latency.strength,
      allowedTerritories: countries.length + regions.length > 0 ? compileTerritories(countries, regions) : null,
      territoryRegion: borderMap().territories.map((t) => regions.find((r) => territoryInRegion(t, r))),
    });
  }
  if (policies.length === 0) throw new PolicyError('invalid policy document: policies: define at least one policy');
  return new PolicySet(policies);
}

// Precomputed once per policy so evaluation is a typed-array lookup, not a region walk.
function compileTerritories(countries: readonly string[], regions: readonly string[]): Uint8Array {
  const map = borderMap();
  const out = new Uint8Array(map.territories.length);
  const wanted = new Set(countries);
  map.territories.forEach((t, i) => {
    if ((t.code !== null && wanted.has(t.code)) || regions.some((r) => territoryInRegion(t, r))) out[i] = 1;
  });
  return out;
}

function formatPath(path: readonly PropertyKey[]): string {
  let s = '';
  for (const k of path) s += typeof k === 'number' ? `[${k}]` : s === '' ? String(k) : `.${String(k)}`;
  return s === '' ? '(document)' : s;
}
