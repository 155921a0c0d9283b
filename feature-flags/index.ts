export { FEATURE_FLAGS, type FeatureFlagDefinition, type FeatureFlagName } from './registry.js';
export {
  loadFeatureFlags, describeFeatureFlags, FeatureFlagError,
  type FeatureFlags, type FeatureFlagSources,
} from './load.js';
