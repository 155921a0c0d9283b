/**
 * RequestLimiter: at most `maxConcurrent` verifier requests at once, at most `maxQueued` waiting for
 * one, and nothing beyond that. A slow or dead verifier must not let attestations pile up inside the
 * server without bound: a request that finds the queue full is refused at once (the caller answers
 * "verifier busy, retry"), and a queued one gives up when its own deadline passes.
 */

/** Why acquire() gave no slot: the queue was full, or the caller's deadline passed while waiting. */
export class LimiterRefusal extends Error {
  constructor(readonly reason: 'full' | 'deadline', message: string) {
    super(message);
    this.name = 'LimiterRefusal';
  }
}

/** Current and peak occupancy, for metrics and the load benchmark. */
export interface LimiterLoad {
  maxConcurrent: number;
  maxQueued: number;
  inFlight: number;
  queued: number;
  peakInFlight: number;
  peakQueued: number;
  /** Requests refused because the queue was full. */
  refusedFull: number;
  /** Requests whose deadline passed while they waited for a slot. */
  refusedDeadline: number;
}

interface Waiter {
  grant: () => void;
  settled: boolean;
}

export class RequestLimiter {
  private inFlight = 0;
  private readonly waiting: Waiter[] = [];
  private peakInFlight = 0;
  private peakQueued = 0;
  private refusedFull = 0;
  private refusedDeadline = 0;

  constructor(readonly maxConcurrent: number, readonly maxQueued: number) {
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) throw new RangeError(`maxConcurrent must be a positive integer, got ${maxConcurrent}`);
    if (!Number.isInteger(maxQueued) || maxQueued < 0) throw new RangeError(`maxQueued must be a non-negative integer, got ${maxQueued}`);
  }

  load(): LimiterLoad {
    return {
      maxConcurrent: this.maxConcurrent, maxQueued: this.maxQueued, inFlight: this.inFlight, queued: this.waiting.length,
      peakInFlight: this.peakInFlight, peakQueued: this.peakQueued, refusedFull: this.refusedFull, refusedDeadline: this.refusedDeadline,
    };
  }

  /** Forgets the peaks (the benchmark measures each fault separately). */
  resetPeaks(): void {
    this.peakInFlight = this.inFlight;
    this.peakQueued = this.waiting.length;
  }

  /**
   * A slot: resolves with its release function (call it exactly once, when the response is read or
   * abandoned). Throws LimiterRefusal `full` at once when the queue is full, `deadline` when `signal`
   * aborts before a slot is free.
   */
  async acquire(signal: AbortSignal): Promise<() => void> {
    if (signal.aborted) throw this.deadline();
    if (this.inFlight < this.maxConcurrent) return this.take();
    if (this.waiting.length >= this.maxQueued) {
      this.refusedFull++;
      throw new LimiterRefusal('full', `${this.inFlight} requests in flight (the most allowed) and ${this.waiting.length} waiting (the most allowed)`);
    }
    await new Promise<void>((resolve, reject) => {
      const w: Waiter = { settled: false, grant: () => { w.settled = true; signal.removeEventListener('abort', onAbort); resolve(); } };
      const onAbort = (): void => {
        if (w.settled) return;
        w.settled = true;
        const i = this.waiting.indexOf(w);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(this.deadline());
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(w);
      if (this.waiting.length > this.peakQueued) this.peakQueued = this.waiting.length;
    });
    // The releasing request handed its slot over (inFlight unchanged): see release().
    return this.releaser();
  }

  private take(): () => void {
    this.inFlight++;
    if (this.inFlight > this.peakInFlight) this.peakInFlight = this.inFlight;
    return this.releaser();
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // Hand the slot straight to the oldest waiter, so a newcomer cannot overtake the queue.
      const next = this.waiting.shift();
      if (next !== undefined) next.grant();
      else this.inFlight--;
    };
  }

  private deadline(): LimiterRefusal {
    this.refusedDeadline++;
    return new LimiterRefusal('deadline', `no request slot became free in time (${this.inFlight} in flight, ${this.waiting.length} waiting)`);
  }
}
