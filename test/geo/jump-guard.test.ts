// The jump guard of the streaming GNSS plugins (gpsd, nmea): no single fix may switch it off, whatever
// error estimate or time it carries (issue 13). The gpsd tests replay the same attacks through a real gpsd.
import { describe, expect, it } from 'vitest';
import { JumpGuard } from '../../src/geo/sensor.js';

const NEW_YORK = { lat: 40.7128, lon: -74.006 };
const PARIS = { lat: 48.8566, lon: 2.3522 };
const t0 = Date.parse('2026-11-22T12:00:00Z');
const HOUR = 3600_000;

/** A guard whose clock reads t0 + 30 s, after New York fixes at t0 .. t0 + 4 s. */
function guardInNewYork(opts: ConstructorParameters<typeof JumpGuard>[2] = {}): JumpGuard {
  const g = new JumpGuard(100, 3, { now: () => t0 + 30_000, ...opts });
  for (let i = 0; i < 5; i++) expect(g.observe(NEW_YORK.lat, NEW_YORK.lon, t0 + i * 1000, 5)).toEqual({ jump: null, ready: true });
  return g;
}

describe('JumpGuard', () => {
  it('a Paris fix with eph = 6,000,000 m is refused and leaves New York the reference: the next Paris fix is a jump', () => {
    const g = guardInNewYork();
    const wide = g.observe(PARIS.lat, PARIS.lon, t0 + 5000, 6_000_000);
    expect(wide).toMatchObject({ jump: null, ready: false, refused: expect.stringMatching(/horizontal error 6000000 m is beyond the 1000 m/) });
    expect(g.observe(PARIS.lat, PARIS.lon, t0 + 6000, 5)).toMatchObject({ jump: expect.stringMatching(/jumped 5837\.\d km in 2 s/), ready: false });
  });

  it('a Paris fix stamped 17 h ahead of the clock is refused and does not move the reference', () => {
    const g = guardInNewYork();
    expect(g.observe(PARIS.lat, PARIS.lon, t0 + 17 * HOUR, 5)).toMatchObject({ ready: false, jump: null, refused: expect.stringMatching(/61170 s ahead of this host's clock \(at most 30 s allowed\)/) });
    expect(g.observe(PARIS.lat, PARIS.lon, t0 + 6000, 5).jump).toMatch(/jumped 5837\.\d km/);
  });

  it('a Paris fix stamped 17 h before the last trusted fix is refused too (time may not run backwards)', () => {
    const g = guardInNewYork();
    expect(g.observe(PARIS.lat, PARIS.lon, t0 - 17 * HOUR, 5)).toMatchObject({ ready: false, jump: null, refused: expect.stringMatching(/61204 s before the last trusted fix/) });
    expect(g.observe(PARIS.lat, PARIS.lon, t0 + 6000, 5).jump).toMatch(/jumped 5837\.\d km/);
  });

  it('a refused fix neither starts a hold nor breaks the stream: the next plausible fix is delivered', () => {
    const g = guardInNewYork();
    expect(g.observe(NEW_YORK.lat, NEW_YORK.lon, t0 + 5000, 5000).refused).toMatch(/beyond/);
    expect(g.observe(NEW_YORK.lat, NEW_YORK.lon, t0 + 6000, 5)).toEqual({ jump: null, ready: true });
  });

  it('takes small clock skew, a repeated time, and a configured error bound', () => {
    const g = guardInNewYork({ maxErrorM: 2000 });
    expect(g.observe(NEW_YORK.lat, NEW_YORK.lon, t0 + 55_000, 1500)).toEqual({ jump: null, ready: true });
    expect(g.observe(NEW_YORK.lat, NEW_YORK.lon, t0 + 55_000, 5)).toEqual({ jump: null, ready: true });
    expect(g.observe(NEW_YORK.lat, NEW_YORK.lon, t0 + 56_000, 2001).refused).toMatch(/beyond the 2000 m/);
    expect(() => new JumpGuard(100, 3, { maxErrorM: 0 })).toThrow(/maxErrorM/);
  });

  it('a real jump still moves the reference once it has been reported, and the new place settles', () => {
    const g = guardInNewYork({ now: () => t0 + 20 * HOUR });
    expect(g.observe(PARIS.lat, PARIS.lon, t0 + 5000, 5).jump).toMatch(/jumped/);
    for (let i = 6; i < 9; i++) expect(g.observe(PARIS.lat, PARIS.lon, t0 + i * 1000, 5)).toEqual({ jump: null, ready: false });
    expect(g.observe(PARIS.lat, PARIS.lon, t0 + 9000, 5)).toEqual({ jump: null, ready: true });
  });
});
