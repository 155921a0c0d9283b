import net from 'node:net';
import { SensorError } from './errors.js';
import type { LocationReading } from './reading.js';
import { JumpGuard, offerGnssFix, ReadWaiters, type ReadOptions, type SensorPlugin } from './sensor.js';

export interface GpsdSensorOptions {
  id?: string;
  /** Default 127.0.0.1. Only a loopback address (127.0.0.0/8, ::1, localhost) unless allowRemote. */
  host?: string;
  port?: number;
  /**
   * Read a gpsd on another host. Anyone on the network path can then answer as the GNSS receiver, so
   * it takes this explicit setting, and the readings carry `link: 'remote'`.
   */
  allowRemote?: boolean;
  /** Only accept TPV reports from this device path (gpsd may serve several receivers). */
  device?: string;
  /** 2 accepts 2D fixes, 3 demands 3D fixes. */
  minMode?: 2 | 3;
  maxSpeedMps?: number;
  settleFixes?: number;
  /** A fix claiming a larger horizontal error (metres) is not trusted (default 1000). */
  maxErrorM?: number;
  /** A fix stamped further ahead of this host's clock (ms) is not trusted (default 30 s). */
  maxFutureSkewMs?: number;
  /** This host's clock, for tests (default Date.now). */
  now?: () => number;
  /** Longest JSON line accepted from gpsd; longer means a broken or hostile peer. */
  maxLineBytes?: number;
  timeoutMs?: number;
}

/** gpsd's JSON lines are short (a SKY report with many satellites is a few KiB). */
const DEFAULT_MAX_LINE = 64 * 1024;

/**
 * GNSS through gpsd's JSON protocol over TCP: sends `?WATCH={"enable":true,"json":true};` and turns
 * TPV reports into readings. A TPV counts as a fix when its mode is at least minMode and it has
 * lat, lon, time and a horizontal error estimate (eph, else the epx/epy ellipse's bounding radius).
 * The connection is kept open between reads and reopened after a failure.
 *
 * gpsd serves its JSON protocol over TCP only (its Unix socket, -F, takes device commands), so the
 * sensor reads TCP: on loopback by default; a gpsd on another host only with `allowRemote`, and then
 * every reading says `link: 'remote'`. The check is made on the configured host and again on the
 * address actually connected to (a name such as localhost must resolve to loopback).
 */
export class GpsdSensor implements SensorPlugin {
  readonly kind = 'gnss' as const;
  readonly id: string;
  private readonly host: string;
  private readonly port: number;
  private readonly allowRemote: boolean;
  private remote = false;
  private readonly device: string | undefined;
  private readonly minMode: 2 | 3;
  private readonly maxLineBytes: number;
  private readonly guard: JumpGuard;
  private readonly waiters: ReadWaiters;
  private socket: net.Socket | undefined;
  private buf = '';
  private lastMode: number | undefined;
  private lastSkip = '';
  private pendingJump: SensorError | undefined;
  private closed = false;

  constructor(opts: GpsdSensorOptions = {}) {
    this.host = opts.host ?? '127.0.0.1';
    this.port = opts.port ?? 2947;
    this.id = opts.id ?? `gpsd:${this.host}:${this.port}`;
    this.allowRemote = opts.allowRemote ?? false;
    if (!this.allowRemote && !isLoopbackHost(this.host)) {
      throw new SensorError('GEO_SENSOR_CONFIG', this.id, notLoopback(this.host));
    }
    this.device = opts.device;
    this.minMode = opts.minMode ?? 2;
    this.maxLineBytes = opts.maxLineBytes ?? DEFAULT_MAX_LINE;
    try {
      this.guard = new JumpGuard(opts.maxSpeedMps ?? 100, opts.settleFixes ?? 3, { maxErrorM: opts.maxErrorM, maxFutureSkewMs: opts.maxFutureSkewMs, now: opts.now });
    } catch (err) {
      throw new SensorError('GEO_SENSOR_CONFIG', this.id, (err as Error).message);
    }
    this.waiters = new ReadWaiters(this.id, opts.timeoutMs ?? 10_000, () => this.describeWait());
  }

  read(opts: ReadOptions = {}): Promise<LocationReading> {
    if (this.closed) return Promise.reject(new SensorError('GEO_SENSOR_CLOSED', this.id, 'sensor is closed'));
    if (this.pendingJump !== undefined) {
      const err = this.pendingJump;
      this.pendingJump = undefined;
      return Promise.reject(err);
    }
    const p = this.waiters.wait(opts);
    this.connect();
    return p;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.waiters.failAll(new SensorError('GEO_SENSOR_CLOSED', this.id, 'sensor closed while a read was pending'));
    const s = this.socket;
    this.socket = undefined;
    if (s !== undefined && !s.destroyed) {
      await new Promise<void>((resolve) => {
        s.once('close', () => resolve());
        s.destroy();
      });
    }
  }

  private describeWait(): string {
    if (this.socket === undefined || this.socket.connecting) return `gpsd at ${this.host}:${this.port} not connected`;
    if (this.lastMode === undefined) return 'gpsd sent no TPV report';
    if (this.lastMode < this.minMode) return `gpsd reports mode ${this.lastMode} (${this.lastMode <= 1 ? 'no fix' : '2D fix'}), need mode ${this.minMode}`;
    return this.lastSkip || 'fixes are being held back after a position jump';
  }

  private connect(): void {
    if (this.socket !== undefined) return;
    const s = net.connect({ host: this.host, port: this.port });
    this.socket = s;
    // The jump guard survives reconnects: dropping the connection must not launder a jump.
    this.buf = '';
    s.setEncoding('utf8');
    s.setNoDelay(true);
    s.on('connect', () => {
      const peer = s.remoteAddress ?? '';
      const remote = !isLoopbackHost(peer);
      if (remote && !this.allowRemote) {
        return this.fail(s, new SensorError('GEO_SENSOR_CONFIG', this.id, `${this.host} resolved to ${peer}, which is not a loopback address; set allowRemote: true to read a gpsd on another host`));
      }
      this.remote = remote;
      s.write('?WATCH={"enable":true,"json":true};\n');
    });
    s.on('data', (chunk: string) => this.onData(s, chunk));
    s.on('error', (err) => this.fail(s, new SensorError('GEO_SENSOR_IO', this.id, `gpsd at ${this.host}:${this.port}: ${err.message}`, { cause: err })));
    s.on('close', () => this.fail(s, new SensorError('GEO_SENSOR_CLOSED', this.id, `gpsd at ${this.host}:${this.port} closed the connection`)));
  }

  private fail(s: net.Socket, err: SensorError): void {
    if (this.socket !== s) return;
    this.socket = undefined;
    s.destroy();
    this.waiters.failAll(err);
  }

  private onData(s: net.Socket, chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line.length > this.maxLineBytes) return this.tooLong(s);
      if (line !== '') this.onLine(s, line);
      if (this.socket !== s) return;
    }
    if (this.buf.length > this.maxLineBytes) this.tooLong(s);
  }

  private tooLong(s: net.Socket): void {
    this.fail(s, new SensorError('GEO_SENSOR_PROTOCOL', this.id, `gpsd sent a line longer than ${this.maxLineBytes} bytes; dropped the connection`));
  }

  private onLine(s: net.Socket, line: string): void {
    let msg: unknown;
    try {
      msg = JSON.parse(line);
    } catch {
      return this.fail(s, new SensorError('GEO_SENSOR_PROTOCOL', this.id, `gpsd sent a line that is not JSON: ${JSON.stringify(line.slice(0, 80))}`));
    }
    if (msg === null || typeof msg !== 'object') {
      return this.fail(s, new SensorError('GEO_SENSOR_PROTOCOL', this.id, 'gpsd sent a JSON value that is not an object'));
    }
    const m = msg as Record<string, unknown>;
    if (m.class === 'ERROR') {
      return this.fail(s, new SensorError('GEO_SENSOR_PROTOCOL', this.id, `gpsd error: ${String(m.message)}`));
    }
    if (m.class !== 'TPV') return;
    if (this.device !== undefined && m.device !== this.device) return;
    this.onTpv(m);
  }

  private onTpv(m: Record<string, unknown>): void {
    const mode = typeof m.mode === 'number' ? m.mode : 0;
    this.lastMode = mode;
    if (mode < this.minMode) return;
    const { lat, lon } = m;
    if (typeof lat !== 'number' || typeof lon !== 'number' || !(Math.abs(lat) <= 90) || !(Math.abs(lon) <= 180)) {
      this.lastSkip = 'TPV report without a valid lat/lon';
      return;
    }
    const time = typeof m.time === 'string' ? new Date(m.time) : undefined;
    if (time === undefined || Number.isNaN(time.getTime())) {
      this.lastSkip = 'TPV report without a valid time';
      return;
    }
    const errM = horizontalError(m);
    if (errM === undefined) {
      this.lastSkip = 'TPV report without a horizontal error estimate (eph or epx/epy)';
      return;
    }
    const { jump, refused } = offerGnssFix(this.id, this.guard, this.waiters, {
      time, lat, lon, horizontalErrorM: errM,
      ...(this.remote ? { link: 'remote' as const } : {}),
      evidence: { source: 'gpsd', device: m.device, mode, time: m.time, lat, lon, eph: m.eph, epx: m.epx, epy: m.epy },
    });
    if (refused !== undefined) this.lastSkip = refused;
    if (jump !== undefined) this.pendingJump = jump;
  }
}

/** 127.0.0.0/8, ::1 (also IPv4-mapped loopback) or the name localhost. Any other name is not: it may resolve anywhere. */
export function isLoopbackHost(host: string): boolean {
  const h = host.trim().toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost' || h === 'localhost.') return true;
  if (net.isIPv4(h)) return h.split('.')[0] === '127';
  if (net.isIPv6(h)) {
    // Normalised: 0:0:0:0:0:0:0:1 → ::1, 0:0:0:0:0:ffff:7f00:1 → ::ffff:127.0.0.1.
    const n = new net.SocketAddress({ address: h, family: 'ipv6' }).address;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(n)?.[1];
    return n === '::1' || (mapped !== undefined && mapped.split('.')[0] === '127');
  }
  return false;
}

/** The configuration error for a gpsd host off loopback without allowRemote. */
export function notLoopback(host: string): string {
  return `gpsd host "${host}" is not a loopback address: anyone on the network path to it could answer as this node's GNSS receiver. ` +
    'Run gpsd on this host (host 127.0.0.1, the default) or, to read a gpsd on another host anyway, set allowRemote: true (its readings then say link: remote)';
}

function horizontalError(m: Record<string, unknown>): number | undefined {
  const ok = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;
  if (ok(m.eph)) return m.eph;
  if (ok(m.epx) && ok(m.epy)) return Math.hypot(m.epx, m.epy);
  return undefined;
}
