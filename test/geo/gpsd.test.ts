import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { startGpsfake, type Gpsfake } from '../support/gpsfake.js';
import { freePort } from '../support/ports.js';
import { claimsDigest, createSensor, evaluatePolicy, GpsdSensor, parsePolicies, SensorError, type LocationReading } from '../../src/geo/index.js';

const logs = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'data', 'nmea');

describe.concurrent('gpsd plugin against a real gpsd fed by gpsfake', () => {
  // Tests run concurrently (each replays its own log), so each cleans up only what it started.
  const harness = (onTestFinished: (fn: () => Promise<void>) => void) => {
    const started: Gpsfake[] = [];
    const sensors: { close(): Promise<void> }[] = [];
    onTestFinished(async () => {
      await Promise.all(sensors.map((s) => s.close()));
      await Promise.all(started.map((g) => g.stop()));
    });
    return {
      replay: async (log: string): Promise<Gpsfake> => {
        const g = await startGpsfake(path.join(logs, log));
        started.push(g);
        return g;
      },
      sensor: <T extends { close(): Promise<void> }>(s: T): T => {
        sensors.push(s);
        return s;
      },
    };
  };

  it('reads a 3D fix in Berlin with gpsd\'s error estimate, and a DE policy allows it', async ({ onTestFinished }) => {
    const { replay, sensor } = harness(onTestFinished);
    const g = await replay('fix.nmea');
    const s = sensor(createSensor({ type: 'gpsd', port: g.port, id: 'gps0', minMode: 3, timeoutMs: 8000 }));
    const r = await s.read();
    expect(r).toMatchObject({ kind: 'gnss', sensorId: 'gps0', attested: true });
    expect(r.lat).toBeCloseTo(52.52, 6);
    expect(r.lon).toBeCloseTo(13.405, 6);
    expect(r.horizontalErrorM).toBeGreaterThan(1);
    expect(r.horizontalErrorM).toBeLessThan(100);
    expect(r.time.toISOString()).toMatch(/^2026-11-22T12:00:\d\d\.000Z$/);
    expect(r.evidence).toMatchObject({ source: 'gpsd', mode: 3 });

    const policies = parsePolicies('policies:\n  de-gnss:\n    area: { countries: [DE] }\n    sensors: { required: [gnss] }\n    maxHorizontalErrorM: 100\n');
    const d = evaluatePolicy(policies.get('de-gnss'), [r], { now: new Date(r.time.getTime() + 5000) });
    expect(d).toMatchObject({ allowed: true, decision: 'allow', claims: { country: 'DE', policy: 'de-gnss', sensorKinds: ['gnss'] } });
    expect(claimsDigest(d.claims)).toHaveLength(32);
  });

  it('accepts a 2D fix by default, but a sensor demanding 3D times out naming the mode', async ({ onTestFinished }) => {
    const { replay, sensor } = harness(onTestFinished);
    const g = await replay('2d-fix.nmea');
    const twoD = sensor(new GpsdSensor({ port: g.port, timeoutMs: 8000 }));
    const threeD = sensor(new GpsdSensor({ port: g.port, minMode: 3, timeoutMs: 6000 }));
    const [r, err] = await Promise.all([twoD.read(), threeD.read().catch((e: unknown) => e)]);
    expect(r.evidence).toMatchObject({ mode: 2 });
    expect(r.lat).toBeCloseTo(47.697, 6);
    expect(err).toBeInstanceOf(SensorError);
    expect(err).toMatchObject({ code: 'GEO_SENSOR_TIMEOUT' });
    expect((err as Error).message).toMatch(/mode 2 \(2D fix\), need mode 3/);
  });

  it('times out on a receiver without a fix, saying so', async ({ onTestFinished }) => {
    const { replay, sensor } = harness(onTestFinished);
    const g = await replay('nofix.nmea');
    const s = sensor(new GpsdSensor({ port: g.port, timeoutMs: 4000 }));
    const err = await s.read().catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'GEO_SENSOR_TIMEOUT' });
    expect((err as Error).message).toMatch(/mode 1 \(no fix\)/);
  });

  it('flags an 877 km jump (Berlin → Paris in 1 s) and holds Paris back until it settles', async ({ onTestFinished }) => {
    const { replay, sensor } = harness(onTestFinished);
    const g = await replay('jump.nmea');
    const s = sensor(new GpsdSensor({ port: g.port, timeoutMs: 4000, settleFixes: 3 }));
    const events: (LocationReading | SensorError)[] = [];
    for (;;) {
      const r = await s.read().catch((e: unknown) => e as SensorError);
      events.push(r);
      if (r instanceof SensorError && r.code !== 'GEO_SENSOR_JUMP') break;
      // Enough seen once a reading arrives after the jump.
      if (!(r instanceof SensorError) && events.some((e) => e instanceof SensorError)) break;
    }
    const jumpAt = events.findIndex((e) => e instanceof SensorError && e.code === 'GEO_SENSOR_JUMP');
    expect(jumpAt).toBeGreaterThan(0);
    expect((events[jumpAt] as Error).message).toMatch(/jumped 877\.\d km in 1 s/);
    const readings = (xs: typeof events): LocationReading[] => xs.filter((e): e is LocationReading => !(e instanceof Error));
    const before = readings(events.slice(0, jumpAt));
    const after = readings(events.slice(jumpAt + 1));
    expect(before.length).toBeGreaterThan(0);
    expect(before.every((r) => Math.abs(r.lat - 52.52) < 1e-6)).toBe(true);
    expect(after.length).toBeGreaterThan(0);
    expect(after.every((r) => Math.abs(r.lat - 48.8566) < 1e-6)).toBe(true);
    // Paris fixes are at 12:00:12..19; the first one is the jump, the next three are held back.
    expect(after.every((r) => r.time.getUTCSeconds() >= 16)).toBe(true);
  });
});

describe('gpsd plugin against broken peers', () => {
  const servers: net.Server[] = [];
  const sensors: GpsdSensor[] = [];
  afterEach(async () => {
    await Promise.all(sensors.splice(0).map((s) => s.close()));
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });
  const peer = async (send: (sock: net.Socket) => void): Promise<number> => {
    const srv = net.createServer((sock) => {
      sock.once('data', () => send(sock));
      sock.on('error', () => undefined);
    });
    servers.push(srv);
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    return (srv.address() as net.AddressInfo).port;
  };
  const readErr = async (port: number, extra: Partial<ConstructorParameters<typeof GpsdSensor>[0]> = {}): Promise<unknown> => {
    const s = new GpsdSensor({ port, timeoutMs: 3000, ...extra });
    sensors.push(s);
    return s.read().catch((e: unknown) => e);
  };

  it('drops a peer that sends an over-long line', async () => {
    const port = await peer((sock) => sock.write('{"class":"TPV",' + '"x":1,'.repeat(20_000)));
    expect(await readErr(port, { maxLineBytes: 4096 })).toMatchObject({ code: 'GEO_SENSOR_PROTOCOL', message: expect.stringMatching(/longer than 4096/) });
  });

  it('drops a peer that sends something other than JSON', async () => {
    const port = await peer((sock) => sock.write('HTTP/1.1 400 Bad Request\r\n\r\n'));
    expect(await readErr(port)).toMatchObject({ code: 'GEO_SENSOR_PROTOCOL', message: expect.stringMatching(/not JSON/) });
  });

  it('ignores TPVs with impossible coordinates or no error estimate', async () => {
    const port = await peer((sock) => {
      sock.write('{"class":"TPV","mode":3,"time":"2026-11-22T12:00:00.000Z","lat":123,"lon":8,"eph":5}\n');
      sock.write('{"class":"TPV","mode":3,"time":"2026-11-22T12:00:01.000Z","lat":47,"lon":8}\n');
    });
    const err = await readErr(port, { timeoutMs: 800 });
    expect(err).toMatchObject({ code: 'GEO_SENSOR_TIMEOUT', message: expect.stringMatching(/without a horizontal error estimate/) });
  });

  it('reports a refused connection as an I/O error, and honours abort signals', async () => {
    const port = await freePort();
    expect(await readErr(port)).toMatchObject({ code: 'GEO_SENSOR_IO' });
    const s = new GpsdSensor({ port, timeoutMs: 3000 });
    sensors.push(s);
    const ac = new AbortController();
    ac.abort();
    await expect(s.read({ signal: ac.signal })).rejects.toMatchObject({ code: 'GEO_SENSOR_ABORTED' });
  });

  it('rejects invalid sensor configs with the field named', () => {
    expect(() => createSensor({ type: 'gpsd', host: '127.0.0.1', port: 70000 })).toThrow(/port/);
    expect(() => createSensor({ type: 'static', lat: Number.NaN, lon: 0 })).toThrow(/lat/);
    expect(() => createSensor({ type: 'nmea', device: '/dev/ttyS0', baudRate: 1234 })).toThrow(/baudRate/);
    expect(() => createSensor({ type: 'bogus' } as never)).toThrow(/GEO|type|invalid/);
  });
});
