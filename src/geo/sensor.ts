import { SensorError } from './errors.js';
import type { LocationReading, SensorKind } from './reading.js';
import { distanceM } from './spherical.js';

export interface ReadOptions {
  /** Give up after this long (default: the plugin's configured timeout). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** A source of location readings. read() resolves with the next trustworthy fix. */
export interface SensorPlugin {
  readonly kind: SensorKind;
  readonly id: string;
  read(opts?: ReadOptions): Promise<LocationReading>;
  close(): Promise<void>;
}

interface Waiter {
  resolve: (r: LocationReading) => void;
  reject: (e: Error) => void;
  cleanup: () => void;
}

/**
 * Pending read() calls of a streaming sensor: each one gets the next reading delivered after it
 * was made, or a timeout / abort / failure error.
 */
export class ReadWaiters {
  private readonly waiters = new Set<Waiter>();

  constructor(
    private readonly sensorId: string,
    private readonly defaultTimeoutMs: number,
    private readonly describeWait: () => string,
  ) {}

  get size(): number {
    return this.waiters.size;
  }

  wait(opts: ReadOptions = {}): Promise<LocationReading> {
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      return Promise.reject(new SensorError('GEO_SENSOR_CONFIG', this.sensorId, `timeoutMs must be a positive number, got ${timeoutMs}`));
    }
    if (opts.signal?.aborted) {
      return Promise.reject(new SensorError('GEO_SENSOR_ABORTED', this.sensorId, 'read aborted by the caller'));
    }
    return new Promise<LocationReading>((resolve, reject) => {
      const onAbort = (): void => {
        w.cleanup();
        reject(new SensorError('GEO_SENSOR_ABORTED', this.sensorId, 'read aborted by the caller'));
      };
      const timer = setTimeout(() => {
        w.cleanup();
        reject(new SensorError('GEO_SENSOR_TIMEOUT', this.sensorId, `no usable fix within ${timeoutMs} ms (${this.describeWait()})`));
      }, timeoutMs);
      const w: Waiter = {
        resolve,
        reject,
        cleanup: () => {
          clearTimeout(timer);
          opts.signal?.removeEventListener('abort', onAbort);
          this.waiters.delete(w);
        },
      };
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.add(w);
    });
  }

  deliver(r: LocationReading): void {
    for (const w of [...this.waiters]) {
      w.cleanup();
      w.resolve(r);
    }
  }

  failAll(err: Error): void {
    for (const w of [...this.waiters]) {
      w.cleanup();
      w.reject(err);
    }
  }
}

/**
 * Flags a receiver whose position moves faster than physically plausible between consecutive
 * fixes (a classic sign of GNSS spoofing or a receiver glitch), then holds readings back until
 * `settleFixes` consecutive consistent fixes have been seen at the new place.
 */
export class JumpGuard {
  private last: { lat: number; lon: number; tMs: number; errM: number } | undefined;
  private settling = 0;

  constructor(
    private readonly maxSpeedMps: number,
    private readonly settleFixes: number,
  ) {}

  /** Returns a description of the jump, or null; `ready` tells whether this fix may be delivered. */
  observe(lat: number, lon: number, tMs: number, errM: number): { jump: string | null; ready: boolean } {
    const prev = this.last;
    this.last = { lat, lon, tMs, errM };
    if (prev !== undefined) {
      const d = distanceM(prev.lat, prev.lon, lat, lon);
      const dtS = Math.max(1, Math.abs(tMs - prev.tMs) / 1000);
      if (d > prev.errM + errM + this.maxSpeedMps * dtS) {
        this.settling = this.settleFixes;
        const km = Math.round(d / 100) / 10;
        return {
          jump: `position jumped ${km} km in ${dtS} s (more than ${this.maxSpeedMps} m/s); readings held back until ${this.settleFixes} consistent fixes`,
          ready: false,
        };
      }
    }
    if (this.settling > 0) {
      this.settling--;
      return { jump: null, ready: false };
    }
    return { jump: null, ready: true };
  }

  reset(): void {
    this.last = undefined;
    this.settling = 0;
  }
}

/** A GNSS fix as a streaming sensor parsed it, before the jump guard has seen it. */
export interface GnssFix {
  time: Date;
  lat: number;
  lon: number;
  horizontalErrorM: number;
  evidence: unknown;
}

/**
 * The common last step of the streaming GNSS plugins: the fix goes through the jump guard and, when
 * trustworthy, to every pending read(). A jump fails the pending reads; with none pending it is
 * returned, for the plugin to report on the next read() (so a jump is never silently skipped).
 */
export function offerGnssFix(sensorId: string, guard: JumpGuard, waiters: ReadWaiters, fix: GnssFix): SensorError | undefined {
  const { jump, ready } = guard.observe(fix.lat, fix.lon, fix.time.getTime(), fix.horizontalErrorM);
  if (jump !== null) {
    const err = new SensorError('GEO_SENSOR_JUMP', sensorId, jump);
    if (waiters.size > 0) {
      waiters.failAll(err);
      return undefined;
    }
    return err;
  }
  if (ready) waiters.deliver({ kind: 'gnss', sensorId, attested: true, ...fix });
  return undefined;
}
