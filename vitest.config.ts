import { defineConfig } from 'vitest/config';

// Integration tests start real processes (swtpm, PostgreSQL, gpsd): generous timeouts,
// and test files run in separate forked processes so a native library crash stays contained.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 20_000,
  },
});
