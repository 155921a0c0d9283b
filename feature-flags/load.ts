import { FEATURE_FLAGS, type FeatureFlagName } from './registry.js';

export type FeatureFlags = Readonly<Record<FeatureFlagName, boolean>>;

/** Where each flag's value came from, for the start-up log and /ready. */
export type FeatureFlagSources = Readonly<Record<FeatureFlagName, 'env' | 'config' | 'default'>>;

export class FeatureFlagError extends Error {
  readonly code = 'invalid-feature-flag';
  constructor(message: string) {
    super(message);
    this.name = 'FeatureFlagError';
  }
}

const TRUE = new Set(['true', '1', 'yes', 'on']);
const FALSE = new Set(['false', '0', 'no', 'off']);

function parseEnvBool(envName: string, raw: string): boolean {
  const v = raw.trim().toLowerCase();
  if (TRUE.has(v)) return true;
  if (FALSE.has(v)) return false;
  // A typo must not silently pick a default for a security switch.
  throw new FeatureFlagError(
    `environment variable ${envName}="${raw}" is not a boolean; use true or false (also accepted: 1/0, yes/no, on/off)`,
  );
}

/**
 * Resolves every registered flag: the environment beats the config file, which beats the default.
 * `fromConfig` is the `featureFlags` section of a config file (unknown keys are refused so a misspelt
 * flag name is reported instead of ignored).
 */
export function loadFeatureFlags(
  fromConfig: Record<string, unknown> | undefined = undefined,
  env: NodeJS.ProcessEnv = process.env,
): { flags: FeatureFlags; sources: FeatureFlagSources } {
  const known = new Set(Object.keys(FEATURE_FLAGS));
  for (const key of Object.keys(fromConfig ?? {})) {
    if (!known.has(key)) {
      throw new FeatureFlagError(
        `unknown feature flag "${key}" in config; known flags: ${[...known].join(', ')}`,
      );
    }
  }
  const flags: Partial<Record<FeatureFlagName, boolean>> = {};
  const sources: Partial<Record<FeatureFlagName, 'env' | 'config' | 'default'>> = {};
  for (const name of Object.keys(FEATURE_FLAGS) as FeatureFlagName[]) {
    const def = FEATURE_FLAGS[name];
    const envRaw = env[def.env];
    const cfg = fromConfig?.[name];
    if (envRaw !== undefined && envRaw !== '') {
      flags[name] = parseEnvBool(def.env, envRaw);
      sources[name] = 'env';
    } else if (cfg !== undefined) {
      if (typeof cfg !== 'boolean') {
        throw new FeatureFlagError(`config featureFlags.${name} must be true or false, got ${JSON.stringify(cfg)}`);
      }
      flags[name] = cfg;
      sources[name] = 'config';
    } else {
      flags[name] = def.default;
      sources[name] = 'default';
    }
  }
  return { flags: flags as FeatureFlags, sources: sources as FeatureFlagSources };
}

/** A flat description for logs and the /ready endpoint: `{ UNIFIED_IDENTITY_ENABLED: { value, source } }`. */
export function describeFeatureFlags(
  r: { flags: FeatureFlags; sources: FeatureFlagSources },
): Record<string, { value: boolean; source: string }> {
  const out: Record<string, { value: boolean; source: string }> = {};
  for (const name of Object.keys(FEATURE_FLAGS) as FeatureFlagName[]) {
    out[FEATURE_FLAGS[name].env] = { value: r.flags[name], source: r.sources[name] };
  }
  return out;
}
