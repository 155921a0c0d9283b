/**
 * A short run of every fuzz target (fuzz/targets): a few hundred mutated inputs each must give only
 * the module's own errors. The volume runs (1,000,000 inputs per target) are `npm run fuzz`, outside
 * the test suite; see docs/fuzzing.md.
 */
import { describe, expect, it } from 'vitest';
import { runTarget, type FuzzTarget } from '../../fuzz/engine.js';
import { TARGETS } from '../../fuzz/targets/index.js';

/** Fewer inputs where one costs milliseconds (YAML, signatures), so the whole file stays within seconds. */
const INPUTS: Record<string, number> = { policy: 30, 'landmark-config': 100, 'latency-measurement': 80, 'keylime-response': 150, camara: 150, 'spiffe-bundle': 150, 'x509-certificate': 200 };
const DEFAULT_INPUTS = 200;

async function smoke(target: FuzzTarget): Promise<void> {
  const inst = await target.setup();
  try {
    // Hangs are the volume run's business: on a loaded CI machine only a stuck input (seconds) fails here.
    const r = await runTarget(target, inst, { n: INPUTS[target.name] ?? DEFAULT_INPUTS, seed: 1, hangMs: 5000 });
    const found = r.findings.map((f) => `${f.kind} at input #${f.index}: ${f.error.split('\n')[0]}`);
    expect(found).toEqual([]);
    expect(r.inputs).toBe(INPUTS[target.name] ?? DEFAULT_INPUTS);
  } finally {
    await inst.close?.();
  }
}

describe('fuzz smoke run', () => {
  for (const t of TARGETS) {
    it(`${t.name}: mutated inputs give the module's own errors only`, () => smoke(t), 30_000);
  }
});
