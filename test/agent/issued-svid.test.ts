// What the agent checks on every SVID the server hands it, before use: chain to the bundle, the
// expected SPIFFE ID, and our own key.
import crypto from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { checkIssuedSvid } from '../../src/agent/agent.js';
import { Bundle, BundleSet, TrustDomain } from '../../src/spiffe/index.js';
import { makeCa, makeSvid } from './fixtures.js';

const ca = makeCa('issued.test');
const rogue = makeCa('issued.test');
afterAll(() => {
  ca.cleanup();
  rogue.cleanup();
});

function bundles(): BundleSet {
  const b = new Bundle(TrustDomain.parse('issued.test'));
  b.addX509Authority(ca.der);
  return new BundleSet(b);
}

describe('checkIssuedSvid', () => {
  const id = 'spiffe://issued.test/workload';
  it('accepts an SVID for the expected ID that certifies our key', () => {
    const s = makeSvid(ca, id);
    const key = crypto.createPrivateKey({ key: s.key, format: 'der', type: 'pkcs8' });
    const t = checkIssuedSvid(s.chain, bundles(), id, key);
    expect(t.notAfter).toBeGreaterThan(Date.now());
  });

  it("refuses a chain from another CA, another SPIFFE ID, or someone else's key", () => {
    const bad = makeSvid(rogue, id);
    const badKey = crypto.createPrivateKey({ key: bad.key, format: 'der', type: 'pkcs8' });
    expect(() => checkIssuedSvid(bad.chain, bundles(), id, badKey)).toThrow(/does not verify/);
    const other = makeSvid(ca, 'spiffe://issued.test/other');
    const otherKey = crypto.createPrivateKey({ key: other.key, format: 'der', type: 'pkcs8' });
    expect(() => checkIssuedSvid(other.chain, bundles(), id, otherKey)).toThrow(/expected spiffe:\/\/issued.test\/workload/);
    const good = makeSvid(ca, id);
    expect(() => checkIssuedSvid(good.chain, bundles(), id, otherKey)).toThrow(/does not certify our key/);
  });
});
