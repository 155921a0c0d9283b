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

export interface JumpGuardOptions {
  /**
   * The largest horizontal error (metres) a fix may claim and still be trusted (default 1000). A fix
   * claiming more is refused: in the speed check its error circle would excuse any jump (one fix with
   * eph = 6,000,000 m covers the planet).
   */
  maxErrorM?: number;
  /** How far ahead of this host's clock a fix may be stamped (ms, default 30 s). */
  maxFutureSkewMs?: number;
  /** This host's clock (default Date.now). */
  now?: () => number;
}

/** The default bound on a trusted fix's horizontal error, metres. */
export const DEFAULT_MAX_ERROR_M = 1000;
/** The default bound on how far ahead of the agent's clock a fix may be stamped, ms. */
export const DEFAULT_MAX_FUTURE_SKEW_MS = 30_000;

/** What the guard makes of one fix. */
export interface JumpVerdict {
  /** The fix is too far from the reference for the time between them; the reading stream should say so. */
  jump: string | null;
  /** The fix may be delivered as a reading. */
  ready: boolean;
  /** The fix is not trusted at all (why): it is neither delivered nor made the reference. */
  refused?: string;
}

/**
 * Flags a receiver whose position moves faster than physically plausible between consecutive
 * fixes (a classic sign of GNSS spoofing or a receiver glitch), then holds readings back until
 * `settleFixes` consecutive consistent fixes have been seen at the new place.
 *
 * No single fix can switch the check off: the reference is the last trusted fix, and a fix is not
 * trusted (refused: neither delivered nor made the reference) when its error estimate is beyond
 * `maxErrorM`, when it is stamped more than `maxFutureSkewMs` ahead of this host's clock, or when it
 * is stamped before the reference (time running backwards). Either of the latter two would otherwise
 * stretch the "time since the last fix", and with it the distance the check excuses.
 */
export class JumpGuard {
  private last: { lat: number; lon: number; tMs: number; errM: number } | undefined;
  private settling = 0;
  private readonly maxErrorM: number;
  private readonly maxFutureSkewMs: number;
  private readonly now: () => number;

  constructor(
    private readonly maxSpeedMps: number,
    private readonly settleFixes: number,
    opts: JumpGuardOptions = {},
  ) {
    this.maxErrorM = opts.maxErrorM ?? DEFAULT_MAX_ERROR_M;
    this.maxFutureSkewMs = opts.maxFutureSkewMs ?? DEFAULT_MAX_FUTURE_SKEW_MS;
    this.now = opts.now ?? Date.now;
    if (!(this.maxErrorM > 0) || !Number.isFinite(this.maxErrorM)) throw new RangeError(`maxErrorM must be a positive number of metres, got ${this.maxErrorM}`);
    if (!(this.maxFutureSkewMs >= 0) || !Number.isFinite(this.maxFutureSkewMs)) throw new RangeError(`maxFutureSkewMs must be ≥ 0, got ${this.maxFutureSkewMs}`);
  }

  /** Judges one fix: a refusal, a jump, or whether it may be delivered. */
  observe(lat: number, lon: number, tMs: number, errM: number): JumpVerdict {
    if (!(errM <= this.maxErrorM)) {
      return { jump: null, ready: false, refused: `fix refused: its horizontal error ${round(errM)} m is beyond the ${this.maxErrorM} m a trusted fix may have` };
    }
    const ahead = tMs - this.now();
    if (!Number.isFinite(tMs) || ahead > this.maxFutureSkewMs) {
      return { jump: null, ready: false, refused: `fix refused: stamped ${Math.round(ahead / 1000)} s ahead of this host's clock (at most ${this.maxFutureSkewMs / 1000} s allowed)` };
    }
    const prev = this.last;
    if (prev !== undefined && tMs < prev.tMs) {
      return { jump: null, ready: false, refused: `fix refused: stamped ${Math.round((prev.tMs - tMs) / 1000)} s before the last trusted fix (time may not run backwards)` };
    }
    this.last = { lat, lon, tMs, errM };
    if (prev !== undefined) {
      const d = distanceM(prev.lat, prev.lon, lat, lon);
      const dtS = Math.max(1, (tMs - prev.tMs) / 1000);
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

const round = (m: number): string => (Number.isFinite(m) ? String(Math.round(m)) : String(m));

/** A GNSS fix as a streaming sensor parsed it, before the jump guard has seen it. */
export interface GnssFix {
  time: Date;
  lat: number;
  lon: number;
  horizontalErrorM: number;
  /** `remote`: read from a sensor service on another host (see LocationReading.link). */
  link?: 'remote';
  evidence: unknown;
}

/** What became of a fix offered to the guard. */
export interface FixOutcome {
  /** A jump with no read() pending: the plugin reports it on the next read(), so it is never skipped. */
  jump?: SensorError;
  /** The fix was not trusted (why), for the plugin's timeout message. */
  refused?: string;
}

/**
 * The common last step of the streaming GNSS plugins: the fix goes through the jump guard and, when
 * trustworthy, to every pending read(). A jump fails the pending reads; with none pending it is
 * returned, for the plugin to report on the next read().
 */
export function offerGnssFix(sensorId: string, guard: JumpGuard, waiters: ReadWaiters, fix: GnssFix): FixOutcome {
  const { jump, ready, refused } = guard.observe(fix.lat, fix.lon, fix.time.getTime(), fix.horizontalErrorM);
  if (refused !== undefined) return { refused };
  if (jump !== null) {
    const err = new SensorError('GEO_SENSOR_JUMP', sensorId, jump);
    if (waiters.size > 0) {
      waiters.failAll(err);
      return {};
    }
    return { jump: err };
  }
  if (ready) {
    const { link, ...rest } = fix;
    waiters.deliver({ kind: 'gnss', sensorId, attested: true, ...rest, ...(link === undefined ? {} : { link }) });
  }
  return {};
}
