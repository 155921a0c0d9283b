// Fleet simulation, short (issue 18): 150 agent protocol clients in 2 worker processes against a
// real terroir-server process on SQLite. Every agent attests (join token), syncs over its own mTLS
// connection, gets its workload SVID; one admin change reaches every agent through WatchAgent; the
// server's memory stays sane. bench/fleet.ts runs the same scenario with thousands of agents.
import { describe, expect, it } from 'vitest';
import { freePort } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';
import { percentile, runFleet } from './fleet-sim.js';

describe('fleet simulator', () => {
  it('150 agents on SQLite: all attest, sync, hold an SVID, and see an admin change within 5 s', async () => {
    const { dir, cleanup } = tempDir('terroir-fleet-');
    try {
      const r = await runFleet({
        dir, dataStore: { type: 'sqlite', path: `${dir}/ds.sqlite3` },
        agents: 150, workers: 2, bringUpConcurrency: 16, steadyMs: 6000,
        entryTtlS: 120, agentSvidTtlS: 3600, stormAttestations: 0, propagationTimeoutMs: 15_000,
      }, await freePort());
      expect(r.bringUp.errors).toEqual([]);
      expect(r.bringUp.ok).toBe(150);
      expect(r.bringUp.withSvid).toBe(150);
      // Every agent synced during the steady window (5 s interval), without errors.
      expect(r.steady.stats.syncErrors).toBe(0);
      expect(r.steady.stats.syncMs.length).toBeGreaterThanOrEqual(150);
      expect(percentile(r.steady.stats.syncMs, 0.99)).toBeLessThan(1000);
      // Pushed over WatchAgent (the server looks every 500 ms), not waiting for the 5 s sync.
      expect(r.propagation.reached).toBe(150);
      expect(r.propagation.lastAgentMs).toBeLessThan(5000);
      expect(r.serverHwmBytes).toBeLessThan(512 * 1024 * 1024);
    } finally {
      cleanup();
    }
  }, 90_000);
});
