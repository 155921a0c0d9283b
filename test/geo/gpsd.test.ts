import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { startGpsfake, type Gpsfake } from '../support/gpsfake.js';
import { nmeaFixLog } from '../support/nmea.js';
import { freePort } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';
import { claimsDigest, createSensor, evaluatePolicy, GpsdSensor, parsePolicies, SensorError, type LocationReading } from '../../src/geo/index.js';

const logs = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'data', 'nmea');
const NEW_YORK = { lat: 40.7128, lon: -74.006 };
const PARIS = { lat: 48.8566, lon: 2.3522 };
const isParis = (r: LocationReading): boolean => Math.abs(r.lat - PARIS.lat) < 1e-6;
const isNewYork = (r: LocationReading): boolean => Math.abs(r.lat - NEW_YORK.lat) < 1e-6;

/** Reads until an error (a jump, or the replay running out) or a reading from Paris. */
async function readThroughJump(s: GpsdSensor): Promise<(LocationReading | SensorError)[]> {
  const events: (LocationReading | SensorError)[] = [];
  for (let i = 0; i < 60; i++) {
    const r = await s.read().catch((e: unknown) => e as SensorError);
    events.push(r);
    if (r instanceof SensorError || isParis(r)) break;
  }
  return events;
}

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
        const g = await startGpsfake(path.isAbsolute(log) ? log : path.join(logs, log));
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

  // Attack (issue 13): a receiver, or anyone who can speak to the agent as gpsd, reports New York, then
  // one Paris fix whose error estimate (eph ≈ 6,000,000 m, from an HDOP of 315789.5 through the real
  // gpsd) is wider than the distance: the speed check must not let that fix through nor make it the
  // reference, so the next, ordinary Paris fix is a jump.
  it('one Paris fix with eph = 6,000,000 m does not carry a New York → Paris jump past the guard', async ({ onTestFinished }) => {
    const { replay, sensor } = harness(onTestFinished);
    const g = await replay('eph-jump.nmea');
    const s = sensor(new GpsdSensor({ port: g.port, timeoutMs: 4000, settleFixes: 3 }));
    const events = await readThroughJump(s);
    const last = events.at(-1);
    expect(last, `events: ${events.map((e) => (e instanceof Error ? e.message : `${e.lat},${e.lon} eph ${e.horizontalErrorM}`)).join(' | ')}`).toBeInstanceOf(SensorError);
    expect(last).toMatchObject({ code: 'GEO_SENSOR_JUMP', message: expect.stringMatching(/jumped 58\d\d\.\d km/) });
    const readings = events.filter((e): e is LocationReading => !(e instanceof Error));
    expect(readings.length).toBeGreaterThan(0);
    expect(readings.every(isNewYork)).toBe(true);
  });

  // Attack (issue 13): one Paris fix stamped 17 h ahead of the agent's clock makes the "time since the last
  // fix" 17 h, enough for 6,120 km at 100 m/s. It is refused and leaves New York as the reference.
  it('one Paris fix stamped 17 h in the future does not carry a New York → Paris jump past the guard', async ({ onTestFinished }) => {
    const { replay, sensor } = harness(onTestFinished);
    const tmp = tempDir('terroir-gpsd-future-');
    onTestFinished(async () => tmp.cleanup());
    const t0 = Date.now() - 60_000;
    const at = (s: number): Date => new Date(t0 + s * 1000);
    const log = path.join(tmp.dir, 'future-jump.nmea');
    fs.writeFileSync(log, nmeaFixLog([
      ...Array.from({ length: 12 }, (_, i) => ({ ...NEW_YORK, time: at(i) })),
      { ...PARIS, time: new Date(Date.now() + 17 * 3600_000) },
      ...Array.from({ length: 8 }, (_, i) => ({ ...PARIS, time: at(13 + i) })),
    ]));
    const g = await replay(log);
    const s = sensor(new GpsdSensor({ port: g.port, timeoutMs: 4000, settleFixes: 3 }));
    const events = await readThroughJump(s);
    const last = events.at(-1);
    expect(last, `events: ${events.map((e) => (e instanceof Error ? e.message : `${e.lat},${e.lon} ${e.time.toISOString()}`)).join(' | ')}`).toBeInstanceOf(SensorError);
    expect(last).toMatchObject({ code: 'GEO_SENSOR_JUMP', message: expect.stringMatching(/jumped 58\d\d\.\d km/) });
    const readings = events.filter((e): e is LocationReading => !(e instanceof Error));
    expect(readings.length).toBeGreaterThan(0);
    expect(readings.every(isNewYork)).toBe(true);
  });

  // gpsd's Unix socket (-F, here gpsfake's) takes device commands (+/dev/ttyX, -/dev/ttyX), not the JSON
  // protocol: a sensor cannot WATCH through it, so the plugin reads gpsd over TCP only.
  it('gpsd\'s control socket does not speak the JSON watch protocol (why there is no socketPath)', async ({ onTestFinished }) => {
    const { replay } = harness(onTestFinished);
    const g = await replay('fix.nmea');
    const sock = g.controlSocket();
    expect(sock).toBeDefined();
    const answer = await new Promise<string>((resolve, reject) => {
      const c = net.connect(sock as string, () => c.write('?WATCH={"enable":true,"json":true};\n'));
      let buf = '';
      c.setEncoding('utf8');
      c.on('data', (d: string) => (buf += d));
      c.on('error', reject);
      c.on('close', () => resolve(buf));
      setTimeout(() => c.destroy(), 3000);
    });
    expect(answer.trim()).toBe('ERROR');
    expect(() => createSensor({ type: 'gpsd', socketPath: sock } as never)).toThrow(/control socket/);
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

describe('gpsd plugin: where gpsd may run, and fixes it refuses', () => {
  const servers: net.Server[] = [];
  const sensors: GpsdSensor[] = [];
  afterEach(async () => {
    await Promise.all(sensors.splice(0).map((s) => s.close()));
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });
  /** A fake gpsd on `host` answering a WATCH with these TPV lines, one every 20 ms, repeated. */
  const fakeGpsd = async (host: string, tpvs: () => object[]): Promise<number> => {
    const srv = net.createServer((sock) => {
      sock.on('error', () => undefined);
      sock.once('data', () => {
        const timer = setInterval(() => {
          for (const t of tpvs()) sock.write(`${JSON.stringify({ class: 'TPV', mode: 3, ...t })}\n`);
        }, 20);
        sock.on('close', () => clearInterval(timer));
      });
    });
    servers.push(srv);
    await new Promise<void>((r) => srv.listen(0, host, r));
    return (srv.address() as net.AddressInfo).port;
  };
  const nyNow = (offsetMs = 0, eph = 5): object => ({ time: new Date(Date.now() + offsetMs).toISOString(), ...NEW_YORK, eph });
  const track = <T extends GpsdSensor>(s: T): T => {
    sensors.push(s);
    return s;
  };
  // A non-loopback address of this machine, to stand for a gpsd on another host.
  const external = Object.values(os.networkInterfaces()).flat().find((a) => a !== undefined && a.family === 'IPv4' && !a.internal)?.address;

  it('takes gpsd on loopback only: another host needs allowRemote, said in the config error', () => {
    for (const host of ['127.0.0.1', '127.9.8.7', '::1', 'localhost']) {
      expect(() => createSensor({ type: 'gpsd', host }), host).not.toThrow();
    }
    for (const host of ['192.0.2.10', 'gpsd', 'gps.example.net', '10.0.0.5', '::ffff:10.0.0.5', 'fd00::5']) {
      expect(() => createSensor({ type: 'gpsd', host }), host).toThrow(/host: .*not a loopback address.*allowRemote: true/);
      expect(() => createSensor({ type: 'gpsd', host, allowRemote: true }), host).not.toThrow();
      expect(() => new GpsdSensor({ host }), host).toThrow(expect.objectContaining({ code: 'GEO_SENSOR_CONFIG' }));
    }
    expect(() => createSensor({ type: 'gpsd', host: '127.0.0.1', allowRemote: 'yes' } as never)).toThrow(/allowRemote/);
  });

  it.skipIf(external === undefined)('marks readings from a gpsd on another host link: remote; a loopback gpsd\'s carry no link', async () => {
    const remotePort = await fakeGpsd(external as string, () => [nyNow()]);
    const remote = track(createSensor({ type: 'gpsd', host: external, port: remotePort, allowRemote: true, timeoutMs: 3000 }) as GpsdSensor);
    const r = await remote.read();
    expect(r).toMatchObject({ kind: 'gnss', attested: true, link: 'remote' });
    const localPort = await fakeGpsd('127.0.0.1', () => [nyNow()]);
    const local = track(createSensor({ type: 'gpsd', port: localPort, allowRemote: true, timeoutMs: 3000 }) as GpsdSensor);
    const l = await local.read();
    expect(l.link).toBeUndefined();
    expect('link' in l).toBe(false);
  });

  it('refuses fixes stamped more than the allowed skew ahead of this host\'s clock, saying so on timeout', async () => {
    const port = await fakeGpsd('127.0.0.1', () => [nyNow(17 * 3600_000)]);
    const s = track(new GpsdSensor({ port, timeoutMs: 800 }));
    await expect(s.read()).rejects.toMatchObject({ code: 'GEO_SENSOR_TIMEOUT', message: expect.stringMatching(/ahead of this host's clock/) });
    // A few seconds ahead is clock skew, not an attack.
    const okPort = await fakeGpsd('127.0.0.1', () => [nyNow(5000)]);
    const ok = track(new GpsdSensor({ port: okPort, timeoutMs: 3000 }));
    await expect(ok.read()).resolves.toMatchObject({ kind: 'gnss' });
  });

  it('refuses fixes whose error estimate is beyond the bound (default 1000 m), saying so on timeout', async () => {
    const port = await fakeGpsd('127.0.0.1', () => [nyNow(0, 6_000_000)]);
    const s = track(new GpsdSensor({ port, timeoutMs: 800 }));
    await expect(s.read()).rejects.toMatchObject({ code: 'GEO_SENSOR_TIMEOUT', message: expect.stringMatching(/error .*6000000 m.*beyond.*1000 m/) });
    const widePort = await fakeGpsd('127.0.0.1', () => [nyNow(0, 1500)]);
    const wide = track(createSensor({ type: 'gpsd', port: widePort, maxErrorM: 2000, timeoutMs: 3000 }) as GpsdSensor);
    await expect(wide.read()).resolves.toMatchObject({ horizontalErrorM: 1500 });
  });
});
