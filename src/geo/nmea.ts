import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import tty from 'node:tty';
import { promisify } from 'node:util';
import { parseNmeaSentence, type GGAPacket, type RMCPacket } from 'nmea-simple';
import { SensorError } from './errors.js';
import type { LocationReading } from './reading.js';
import { JumpGuard, offerGnssFix, ReadWaiters, type ReadOptions, type SensorPlugin } from './sensor.js';

const execFileP = promisify(execFile);

export interface NmeaSensorOptions {
  id?: string;
  /** A serial device (/dev/ttyUSB0, a pty), a FIFO, or a regular file of sentences. */
  device: string;
  baudRate: number;
  /**
   * User-equivalent range error in metres: the horizontal error is HDOP × uereM, the usual
   * estimate when the receiver reports no error ellipse (gpsd uses the same model).
   */
  uereM?: number;
  maxSpeedMps?: number;
  settleFixes?: number;
  /** A fix whose error (HDOP × uereM) is larger (metres) is not trusted (default 1000). */
  maxErrorM?: number;
  /** A fix stamped further ahead of this host's clock (ms) is not trusted (default 30 s). */
  maxFutureSkewMs?: number;
  /** This host's clock, for tests (default Date.now). */
  now?: () => number;
  timeoutMs?: number;
}

/** NMEA 0183 caps a sentence at 82 characters; anything much longer is line noise. */
const MAX_SENTENCE = 200;
const CHECKSUM = /\*[0-9A-Fa-f]{2}$/;
export const BAUD_RATES = [4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600] as const;

interface Epoch {
  time: string;
  gga?: { packet: GGAPacket; raw: string };
  rmc?: { packet: RMCPacket; raw: string };
}

/**
 * A GNSS receiver speaking NMEA 0183 on a serial line, parsed by nmea-simple with checksums
 * enforced: sentences without a checksum or with a wrong one are counted and dropped. A fix is a
 * GGA (fix quality, HDOP) and a valid RMC (full date) for the same UTC time.
 */
export class NmeaSensor implements SensorPlugin {
  readonly kind = 'gnss' as const;
  readonly id: string;
  private readonly device: string;
  private readonly baudRate: number;
  private readonly uereM: number;
  private readonly guard: JumpGuard;
  private readonly waiters: ReadWaiters;
  private stream: NodeJS.ReadableStream & { destroy(): void } | undefined;
  private opening: Promise<void> | undefined;
  private buf = '';
  private epoch: Epoch | undefined;
  private rejected = 0;
  private lastRejection = '';
  private lastNoFix = '';
  private pendingJump: SensorError | undefined;
  private ended = false;
  private closed = false;

  constructor(opts: NmeaSensorOptions) {
    this.device = opts.device;
    this.baudRate = opts.baudRate;
    this.id = opts.id ?? `nmea:${opts.device}`;
    if (!(BAUD_RATES as readonly number[]).includes(opts.baudRate)) {
      throw new SensorError('GEO_SENSOR_CONFIG', this.id, `baudRate must be one of ${BAUD_RATES.join(', ')}, got ${opts.baudRate}`);
    }
    this.uereM = opts.uereM ?? 5;
    try {
      this.guard = new JumpGuard(opts.maxSpeedMps ?? 100, opts.settleFixes ?? 3, { maxErrorM: opts.maxErrorM, maxFutureSkewMs: opts.maxFutureSkewMs, now: opts.now });
    } catch (err) {
      throw new SensorError('GEO_SENSOR_CONFIG', this.id, (err as Error).message);
    }
    this.waiters = new ReadWaiters(this.id, opts.timeoutMs ?? 10_000, () => this.describeWait());
  }

  async read(opts: ReadOptions = {}): Promise<LocationReading> {
    if (this.closed) throw new SensorError('GEO_SENSOR_CLOSED', this.id, 'sensor is closed');
    if (this.pendingJump !== undefined) {
      const err = this.pendingJump;
      this.pendingJump = undefined;
      throw err;
    }
    if (this.ended) throw new SensorError('GEO_SENSOR_CLOSED', this.id, `end of input on ${this.device}`);
    const p = this.waiters.wait(opts);
    this.opening ??= this.open().catch((err: unknown) => {
      this.opening = undefined;
      this.waiters.failAll(err instanceof SensorError ? err : new SensorError('GEO_SENSOR_IO', this.id, `cannot open ${this.device}: ${(err as Error).message}`, { cause: err }));
    });
    return p;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.waiters.failAll(new SensorError('GEO_SENSOR_CLOSED', this.id, 'sensor closed while a read was pending'));
    await this.opening;
    this.stream?.destroy();
    this.stream = undefined;
  }

  private describeWait(): string {
    const parts: string[] = [];
    if (this.lastNoFix) parts.push(this.lastNoFix);
    if (this.rejected > 0) parts.push(`${this.rejected} sentence(s) rejected, last: ${this.lastRejection}`);
    return parts.length ? parts.join('; ') : `no complete GGA+RMC fix from ${this.device}`;
  }

  private async open(): Promise<void> {
    const st = await fs.promises.stat(this.device);
    let stream: NodeJS.ReadableStream & { destroy(): void };
    if (st.isCharacterDevice()) {
      // Configure the line before reading: speed, no echo, no line editing of binary-safe data.
      try {
        await execFileP('stty', ['-F', this.device, String(this.baudRate), 'raw', '-echo'], { timeout: 5000 });
      } catch (err) {
        throw new SensorError('GEO_SENSOR_CONFIG', this.id, `stty could not configure ${this.device} at ${this.baudRate} baud: ${(err as Error).message}`, { cause: err });
      }
      const fd = fs.openSync(this.device, fs.constants.O_RDONLY | fs.constants.O_NOCTTY | fs.constants.O_NONBLOCK);
      if (!tty.isatty(fd)) {
        fs.closeSync(fd);
        throw new SensorError('GEO_SENSOR_CONFIG', this.id, `${this.device} is a character device but not a terminal`);
      }
      stream = new tty.ReadStream(fd);
    } else if (st.isFIFO()) {
      const fd = fs.openSync(this.device, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      stream = new net.Socket({ fd, readable: true, writable: false });
    } else if (st.isFile()) {
      stream = fs.createReadStream(this.device);
    } else {
      throw new SensorError('GEO_SENSOR_CONFIG', this.id, `${this.device} is not a serial device, FIFO or file`);
    }
    if (this.closed) {
      stream.destroy();
      return;
    }
    this.stream = stream;
    stream.setEncoding?.('latin1');
    stream.on('data', (chunk: string | Buffer) => this.onData(typeof chunk === 'string' ? chunk : chunk.toString('latin1')));
    stream.on('error', (err: Error) => {
      // Forget the broken stream so the next read() reopens the device.
      if (this.stream === stream) {
        this.stream = undefined;
        this.opening = undefined;
        this.buf = '';
      }
      stream.destroy();
      this.waiters.failAll(new SensorError('GEO_SENSOR_IO', this.id, `reading ${this.device}: ${err.message}`, { cause: err }));
    });
    stream.on('end', () => {
      this.ended = true;
      this.waiters.failAll(new SensorError('GEO_SENSOR_CLOSED', this.id, `end of input on ${this.device} (${this.describeWait()})`));
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '');
      this.buf = this.buf.slice(nl + 1);
      this.onLine(line);
    }
    if (this.buf.length > MAX_SENTENCE) {
      this.reject(`line longer than ${MAX_SENTENCE} characters`);
      this.buf = '';
    }
  }

  private reject(why: string): void {
    this.rejected++;
    this.lastRejection = why;
  }

  private onLine(line: string): void {
    if (line === '') return;
    if (line.length > MAX_SENTENCE) return this.reject(`line longer than ${MAX_SENTENCE} characters`);
    if (line[0] !== '$') return this.reject('line does not start with $');
    if (!CHECKSUM.test(line)) return this.reject('sentence has no *HH checksum');
    let packet;
    try {
      packet = parseNmeaSentence(line);
    } catch (err) {
      return this.reject((err as Error).message.slice(0, 120));
    }
    if (packet.sentenceId !== 'GGA' && packet.sentenceId !== 'RMC') return;
    const time = line.split(',')[1] ?? '';
    if (this.epoch === undefined || this.epoch.time !== time) this.epoch = { time };
    if (packet.sentenceId === 'GGA') this.epoch.gga = { packet, raw: line };
    else this.epoch.rmc = { packet, raw: line };
    const { gga, rmc } = this.epoch;
    if (gga === undefined || rmc === undefined) return;
    this.epoch = undefined;
    this.onFix(gga, rmc);
  }

  private onFix(gga: NonNullable<Epoch['gga']>, rmc: NonNullable<Epoch['rmc']>): void {
    if (gga.packet.fixType === 'none' || rmc.packet.status !== 'valid') {
      this.lastNoFix = `receiver reports no fix (GGA quality ${gga.packet.fixType}, RMC status ${rmc.packet.status})`;
      return;
    }
    const { latitude: lat, longitude: lon, horizontalDilution: hdop } = gga.packet;
    const time = rmc.packet.datetime;
    if (!Number.isFinite(lat) || !Number.isFinite(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) {
      return this.reject('GGA position out of range');
    }
    if (!Number.isFinite(hdop) || hdop <= 0) return this.reject('GGA has no HDOP, so no error estimate');
    if (!(time instanceof Date) || Number.isNaN(time.getTime())) return this.reject('RMC has no valid date/time');
    this.lastNoFix = '';
    const errM = hdop * this.uereM;
    const { jump, refused } = offerGnssFix(this.id, this.guard, this.waiters, {
      time, lat, lon, horizontalErrorM: errM,
      evidence: { source: 'nmea', sentences: [gga.raw, rmc.raw], fixType: gga.packet.fixType, satellites: gga.packet.satellitesInView, hdop },
    });
    if (refused !== undefined) this.lastNoFix = refused;
    if (jump !== undefined) this.pendingJump = jump;
  }
}
