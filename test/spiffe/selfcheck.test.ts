// The self-check demo (src/cli/selfcheck.ts) passes, prints the summary, and shows its refusals.
import { describe, expect, it } from 'vitest';
import { runSelfCheck } from '../../src/cli/selfcheck.js';

describe('self-check demo', () => {
  it('passes and prints IDs, serials, expiry, extensions and the refused negatives', async () => {
    const lines: string[] = [];
    expect(await runSelfCheck((l) => lines.push(l))).toBe(true);
    const out = lines.join('\n');
    expect(out).toContain('X.509-SVID        spiffe://demo.terroir.example/ns/demo/sa/frontend');
    expect(out).toMatch(/serial [0-9a-f]{32}, valid \S+ \.\. \S+/);
    expect(out).toMatch(/KeyUsage digitalSignature \(critical\); BasicConstraints not-CA \(critical\); ExtendedKeyUsage serverAuth\+clientAuth/);
    expect(out).toContain('"kid":');
    expect(out).toMatch(/X\.509-SVID of a foreign trust domain: refused \(no-bundle\)/);
    expect(out).toMatch(/JWT-SVID for another audience: refused \(audience-mismatch\)/);
    expect(out).not.toContain('FAIL');
    expect(lines.at(-1)).toBe('Self-check passed.');
  });
});
