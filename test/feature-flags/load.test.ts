import { describe, expect, it } from 'vitest';
import { describeFeatureFlags, FeatureFlagError, loadFeatureFlags } from '../../feature-flags/index.js';

describe('feature flags', () => {
  it('UNIFIED_IDENTITY_ENABLED defaults to off', () => {
    const r = loadFeatureFlags(undefined, {});
    expect(r.flags.unifiedIdentity).toBe(false);
    expect(r.sources.unifiedIdentity).toBe('default');
  });

  it('config beats default, env beats config', () => {
    expect(loadFeatureFlags({ unifiedIdentity: true }, {}).flags.unifiedIdentity).toBe(true);
    const r = loadFeatureFlags({ unifiedIdentity: true }, { UNIFIED_IDENTITY_ENABLED: 'false' });
    expect(r.flags.unifiedIdentity).toBe(false);
    expect(r.sources.unifiedIdentity).toBe('env');
    expect(loadFeatureFlags({ unifiedIdentity: false }, { UNIFIED_IDENTITY_ENABLED: '1' }).flags.unifiedIdentity).toBe(true);
  });

  it('an empty env variable does not override the config', () => {
    expect(loadFeatureFlags({ unifiedIdentity: true }, { UNIFIED_IDENTITY_ENABLED: '' }).flags.unifiedIdentity).toBe(true);
  });

  it('refuses values that are not booleans instead of guessing', () => {
    expect(() => loadFeatureFlags(undefined, { UNIFIED_IDENTITY_ENABLED: 'ture' })).toThrow(FeatureFlagError);
    expect(() => loadFeatureFlags(undefined, { UNIFIED_IDENTITY_ENABLED: 'ture' })).toThrow(/UNIFIED_IDENTITY_ENABLED="ture"/);
    expect(() => loadFeatureFlags({ unifiedIdentity: 'yes' }, {})).toThrow(/featureFlags.unifiedIdentity must be true or false/);
  });

  it('refuses unknown flag names in config', () => {
    expect(() => loadFeatureFlags({ unifiedIdentityEnabled: true }, {})).toThrow(/unknown feature flag "unifiedIdentityEnabled"/);
  });

  it('describes flags by env name with their source', () => {
    const d = describeFeatureFlags(loadFeatureFlags(undefined, { UNIFIED_IDENTITY_ENABLED: 'on' }));
    expect(d).toEqual({ UNIFIED_IDENTITY_ENABLED: { value: true, source: 'env' } });
  });
});
