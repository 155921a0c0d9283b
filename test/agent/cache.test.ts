// The identity cache's rules: SPIRE's selector matching, default order and unique hints, expiry,
// withdrawal on entry removal, and one notification per burst of changes.
import { afterAll, describe, expect, it } from 'vitest';
import { IdentityCache, type CacheEntry } from '../../src/agent/cache.js';
import { SelectorSet, parseSelector } from '../../src/agent/selectors.js';
import { makeCa, makeSvid } from './fixtures.js';

const ca = makeCa('cache.test');
afterAll(() => ca.cleanup());

const entry = (id: string, spiffeId: string, selectors: string[], hint = ''): CacheEntry => ({
  id, spiffeId, selectors: selectors.map(parseSelector), federatesWith: [], hint, jwtSvidTtl: 300,
});
const caller = (...s: string[]) => new SelectorSet(s.map(parseSelector));

describe('identity cache', () => {
  it('an entry applies when all its selectors are the caller\'s; an entry without selectors applies to nobody', () => {
    const c = new IdentityCache('cache.test');
    c.setEntries([
      entry('a', 'spiffe://cache.test/a', ['unix:uid:1', 'unix:gid:2']),
      entry('b', 'spiffe://cache.test/b', ['unix:uid:1']),
      entry('none', 'spiffe://cache.test/none', []),
    ]);
    expect(c.entriesFor(caller('unix:uid:1')).map((e) => e.id)).toEqual(['b']);
    expect(c.entriesFor(caller('unix:uid:1', 'unix:gid:2', 'unix:user:x')).map((e) => e.id).sort()).toEqual(['a', 'b']);
    expect(c.entriesFor(caller()).map((e) => e.id)).toEqual([]);
    expect(() => parseSelector('nocolon')).toThrow(/type:value/);
  });

  it('orders identities stably, keeps hints unique, and never serves an expired SVID', () => {
    const c = new IdentityCache('cache.test');
    c.setEntries([
      entry('z', 'spiffe://cache.test/z', ['unix:uid:1'], 'internal'),
      entry('y', 'spiffe://cache.test/y', ['unix:uid:1'], 'internal'),
      entry('x', 'spiffe://cache.test/x', ['unix:uid:1']),
      entry('old', 'spiffe://cache.test/old', ['unix:uid:1']),
    ]);
    c.putSvids(new Map([
      ['z', makeSvid(ca, 'spiffe://cache.test/z')],
      ['y', makeSvid(ca, 'spiffe://cache.test/y')],
      ['x', makeSvid(ca, 'spiffe://cache.test/x')],
      ['old', { ...makeSvid(ca, 'spiffe://cache.test/old'), notAfter: Date.now() - 1 }],
    ]));
    expect(c.identitiesFor(caller('unix:uid:1')).map((i) => i.entry.id)).toEqual(['x', 'y']);
    c.pruneExpired();
    expect(c.svid('old')).toBeUndefined();
  });

  it('removing an entry withdraws its SVID; an SVID for a changed SPIFFE ID is not kept', () => {
    const c = new IdentityCache('cache.test');
    c.setEntries([entry('a', 'spiffe://cache.test/a', ['unix:uid:1'])]);
    c.putSvids(new Map([['a', makeSvid(ca, 'spiffe://cache.test/a')]]));
    c.setEntries([entry('a', 'spiffe://cache.test/renamed', ['unix:uid:1'])]);
    expect(c.svid('a')).toBeUndefined();
    c.putSvids(new Map([['gone', makeSvid(ca, 'spiffe://cache.test/gone')]]));
    expect(c.svidCount()).toBe(0);
  });

  it('notifies once per burst of changes', async () => {
    const c = new IdentityCache('cache.test');
    const seen: number[] = [];
    const unsubscribe = c.subscribe((g) => seen.push(g));
    c.setBundles(ca.bundle(1), []);
    c.setEntries([entry('a', 'spiffe://cache.test/a', ['unix:uid:1'])]);
    c.putSvids(new Map([['a', makeSvid(ca, 'spiffe://cache.test/a')]]));
    await Promise.resolve();
    expect(seen).toEqual([3]);
    unsubscribe();
    c.dropSvids();
    await Promise.resolve();
    expect(seen).toEqual([3]);
  });
});
