import { execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { captureOutput, ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { createSensor, NmeaSensor, SensorError } from '../../src/geo/index.js';

const logs = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'data', 'nmea');

// A pseudo-terminal standing in for a serial GNSS receiver: python opens a pty pair, prints the
// slave's path, and replays the log into the master in a loop, one sentence every 10 ms.
const PTY_RECEIVER = `
import os, pty, sys, time, tty
m, s = pty.openpty()
tty.setraw(s)
print(os.ttyname(s), flush=True)
lines = [l for l in open(sys.argv[1], 'rb').read().split(b'\\n') if l.strip()]
while True:
    for l in lines:
        os.write(m, l + b'\\n')
        time.sleep(0.01)
`;

describe('nmea plugin', () => {
  const procs = new ProcessGroup();
  const sensors: NmeaSensor[] = [];
  const tmp = tempDir('terroir-nmea-');
  afterEach(async () => {
    await Promise.all(sensors.splice(0).map((s) => s.close()));
    await procs.stopAll();
  });
  afterAll(() => tmp.cleanup());

  const ptyReceiver = async (log: string): Promise<{ device: string; child: ChildProcess }> => {
    const child = procs.start('python3', ['-c', PTY_RECEIVER, path.join(logs, log)]);
    const out = captureOutput(child);
    const rl = readline.createInterface({ input: child.stdout! });
    const device = await new Promise<string>((resolve, reject) => {
      rl.once('line', resolve);
      child.once('exit', () => reject(new Error(`pty receiver exited: ${out()}`)));
    });
    rl.close();
    return { device, child };
  };
  const sensor = (opts: ConstructorParameters<typeof NmeaSensor>[0]): NmeaSensor => {
    const s = new NmeaSensor(opts);
    sensors.push(s);
    return s;
  };

  it('reads a fix from a serial device (pty), configuring its baud rate with stty', async () => {
    const { device } = await ptyReceiver('fix.nmea');
    const s = createSensor({ type: 'nmea', device, baudRate: 9600, id: 'gnss-serial' }) as NmeaSensor;
    sensors.push(s);
    const r = await s.read({ timeoutMs: 5000 });
    expect(r).toMatchObject({ kind: 'gnss', sensorId: 'gnss-serial', attested: true, horizontalErrorM: 4.5 });
    expect(r.lat).toBeCloseTo(52.52, 6);
    expect(r.lon).toBeCloseTo(13.405, 6);
    expect(r.time.toISOString()).toMatch(/^2026-11-22T12:00:\d\d\.000Z$/);
    expect((r.evidence as { sentences: string[] }).sentences[0]).toMatch(/^\$GPGGA,.*\*[0-9A-F]{2}$/);
    expect(execFileSync('stty', ['-F', device], { encoding: 'utf8' })).toMatch(/speed 9600 baud/);
  });

  it('enforces checksums: corrupted sentences are dropped, valid ones used', async () => {
    const { device } = await ptyReceiver('bad-checksums.nmea');
    const s = sensor({ device, baudRate: 4800 });
    const r = await s.read({ timeoutMs: 5000 });
    // The corrupted sentences place the receiver in Paris; only Berlin's are valid.
    expect(r.lat).toBeCloseTo(52.52, 6);
  });

  it('reports a stream of only bad sentences, saying what was wrong', async () => {
    const file = path.join(tmp.dir, 'bad.nmea');
    const corrupted = fs.readFileSync(path.join(logs, 'bad-checksums.nmea'), 'latin1').split('\r\n').slice(0, 6);
    fs.writeFileSync(file, [...corrupted, '$GPGGA,120000.00,5231.2000,N,01324.3000,E,1,08,0.9,34.0,M,39.0,M,,', 'x'.repeat(500), ''].join('\r\n'));
    const err = await sensor({ device: file, baudRate: 4800 }).read({ timeoutMs: 3000 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SensorError);
    expect(err).toMatchObject({ code: 'GEO_SENSOR_CLOSED' });
    expect((err as Error).message).toMatch(/8 sentence\(s\) rejected, last: line longer than 200 characters/);
  });

  it('says "no fix" for a receiver without one', async () => {
    const err = await sensor({ device: path.join(logs, 'nofix.nmea'), baudRate: 4800 }).read({ timeoutMs: 3000 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'GEO_SENSOR_CLOSED', message: expect.stringMatching(/receiver reports no fix \(GGA quality none, RMC status warning\)/) });
  });

  it('flags the Berlin → Paris jump to the next read', async () => {
    const s = sensor({ device: path.join(logs, 'jump.nmea'), baudRate: 4800 });
    const first = await s.read({ timeoutMs: 3000 });
    expect(first.lat).toBeCloseTo(52.52, 6);
    // The rest of the file was parsed meanwhile; the jump is reported to the next reader.
    await new Promise((r) => setTimeout(r, 100));
    await expect(s.read()).rejects.toMatchObject({ code: 'GEO_SENSOR_JUMP', message: expect.stringMatching(/jumped 877\.\d km/) });
  });

  it('reads from a FIFO', async () => {
    const fifo = path.join(tmp.dir, 'gnss.fifo');
    execFileSync('mkfifo', [fifo]);
    // Hold a write end open first, as a receiver daemon would.
    const w = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      const s = sensor({ device: fifo, baudRate: 4800 });
      const pending = s.read({ timeoutMs: 3000 });
      await new Promise((r) => setTimeout(r, 50));
      fs.writeSync(w, fs.readFileSync(path.join(logs, 'fix.nmea')).subarray(0, 400));
      const r = await pending;
      expect(r.lat).toBeCloseTo(52.52, 6);
    } finally {
      fs.closeSync(w);
    }
  });

  it('gives clear errors for a missing device and a bad configuration', async () => {
    await expect(sensor({ device: path.join(tmp.dir, 'nope'), baudRate: 9600 }).read()).rejects.toMatchObject({ code: 'GEO_SENSOR_IO', message: expect.stringMatching(/cannot open/) });
    expect(() => new NmeaSensor({ device: '/dev/null', baudRate: 1234 })).toThrow(/baudRate must be one of 4800, 9600/);
    await expect(sensor({ device: tmp.dir, baudRate: 9600 }).read()).rejects.toMatchObject({ code: 'GEO_SENSOR_CONFIG' });
  });
});

describe('static plugin', () => {
  it('returns the configured position, unattested', async () => {
    const s = createSensor({ type: 'static', lat: 50.1, lon: 8.6, id: 'dev-box' });
    const r = await s.read();
    expect(r).toMatchObject({ kind: 'static', sensorId: 'dev-box', lat: 50.1, lon: 8.6, attested: false, horizontalErrorM: 10 });
    await s.close();
    await expect(s.read()).rejects.toMatchObject({ code: 'GEO_SENSOR_CLOSED' });
  });
});
