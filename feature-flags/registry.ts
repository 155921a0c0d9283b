// The registry of terroir's feature flags. One entry per flag: its name, the environment variable
// that sets it, its default, and what it changes. Server and agent load flags only through
// `loadFeatureFlags` (./load.ts) so both processes agree on names, defaults and precedence.

export interface FeatureFlagDefinition {
  /** Name used in config files (`featureFlags.<name>`) and in logs and /ready. */
  readonly name: string;
  /** Environment variable that overrides the config file. */
  readonly env: string;
  readonly default: boolean;
  /** What turning the flag on changes, for docs and `--help`. */
  readonly description: string;
}

export const FEATURE_FLAGS = {
  unifiedIdentity: {
    name: 'unifiedIdentity',
    env: 'UNIFIED_IDENTITY_ENABLED',
    default: false,
    description:
      'Node attestation additionally requires a TPM quote verified by a Keylime verifier and location readings that ' +
      'satisfy a sovereign-location policy; SVIDs then carry the node\'s Unified Identity claims (X.509 extension ' +
      'OID 2.25.250341728606082657925786220697128205103 and the JWT claim "unified_identity"). Off: a plain SPIFFE ' +
      'issuer with no Keylime, no sensors and no claims.',
  },
} as const satisfies Record<string, FeatureFlagDefinition>;

export type FeatureFlagName = keyof typeof FEATURE_FLAGS;
