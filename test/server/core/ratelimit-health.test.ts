import { afterEach, describe, expect, it } from 'vitest';
import { RateLimiter, sourceAddress } from '../../../src/server/ratelimit.js';
import { startHealthServer, type HealthServer } from '../../../src/server/health.js';

describe('RateLimiter', () => {
  it('allows a burst, refuses the next, refills over time, per source', () => {
    let t = 0;
    const rl = new RateLimiter({ perSecond: 2, burst: 3, now: () => t });
    expect([rl.tryTake('a'), rl.tryTake('a'), rl.tryTake('a')]).toEqual([true, true, true]);
    expect(rl.tryTake('a')).toBe(false);
    expect(rl.retryAfterSeconds('a')).toBe(1);
    expect(rl.tryTake('b')).toBe(true);
    t += 500;
    expect(rl.tryTake('a')).toBe(true);
    expect(rl.tryTake('a')).toBe(false);
    t += 10_000;
    expect([rl.tryTake('a'), rl.tryTake('a'), rl.tryTake('a'), rl.tryTake('a')]).toEqual([true, true, true, false]);
  });

  it('forgets the stalest sources beyond its bound', () => {
    const rl = new RateLimiter({ perSecond: 1, burst: 1, now: () => 0, maxSources: 2 });
    rl.tryTake('a');
    rl.tryTake('b');
    rl.tryTake('c'); // evicts a
    expect(rl.tryTake('a')).toBe(true);
    expect(rl.tryTake('c')).toBe(false);
  });

  it('extracts the host of gRPC peer strings', () => {
    expect(sourceAddress('ipv4:10.1.2.3:5555')).toBe('10.1.2.3');
    expect(sourceAddress('ipv6:[::1]:5555')).toBe('::1');
    expect(sourceAddress('127.0.0.1:1')).toBe('127.0.0.1');
  });
});

describe('health server', () => {
  let hs: HealthServer | undefined;
  afterEach(async () => { await hs?.close(); hs = undefined; });

  it('answers /live, and /ready only when every check passes', async () => {
    let dbUp = true;
    hs = await startHealthServer('127.0.0.1', 0, {
      datastore: async () => { if (!dbUp) throw new Error('connection refused'); },
      ca: async () => undefined,
    });
    const base = `http://127.0.0.1:${hs.port}`;
    const live = await fetch(`${base}/live`);
    expect(live.status).toBe(200);
    expect(await live.json()).toEqual({ live: true });
    let ready = await fetch(`${base}/ready`);
    expect(ready.status).toBe(200);
    dbUp = false;
    ready = await fetch(`${base}/ready`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toEqual({ ready: false, failures: { datastore: 'connection refused' } });
    expect((await fetch(`${base}/other`)).status).toBe(404);
    expect((await fetch(`${base}/live`, { method: 'POST' })).status).toBe(405);
  });
});
