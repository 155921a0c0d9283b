// Keeps one Workload API server stream open: every message goes to `onMessage`, and when the stream
// ends or fails it is reopened after an exponential backoff with jitter (reset by the next message),
// until close(). The sources build on it; it knows nothing about SVIDs.
import * as grpc from '@grpc/grpc-js';

export interface Backoff {
  /** First retry delay in ms (default 100). */
  initialMs?: number;
  /** Longest retry delay in ms (default 10 000). */
  maxMs?: number;
}

export interface StreamWatcherOptions<T> {
  open(): grpc.ClientReadableStream<T>;
  onMessage(message: T): void;
  /** A stream error (never called after close()). */
  onError(err: grpc.ServiceError): void;
  backoff?: Backoff;
}

export class StreamWatcher<T> {
  private call: grpc.ClientReadableStream<T> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private closed = false;

  constructor(private readonly opts: StreamWatcherOptions<T>) {}

  start(): void {
    if (this.closed || this.call !== undefined) return;
    const call = this.opts.open();
    this.call = call;
    let finished = false;
    const retry = (err: grpc.ServiceError | undefined): void => {
      if (finished) return;
      finished = true;
      if (this.call === call) this.call = undefined;
      if (this.closed) return;
      if (err !== undefined) this.opts.onError(err);
      this.scheduleRetry();
    };
    call.on('data', (m: T) => {
      if (this.closed || finished) return;
      this.attempt = 0;
      this.opts.onMessage(m);
    });
    call.on('error', (e: grpc.ServiceError) => retry(e));
    call.on('end', () => retry(undefined));
  }

  private scheduleRetry(): void {
    const initial = this.opts.backoff?.initialMs ?? 100;
    const max = this.opts.backoff?.maxMs ?? 10_000;
    const base = Math.min(max, initial * 2 ** Math.min(this.attempt, 20));
    this.attempt++;
    // Full jitter in [base/2, base], so many workloads restarting together do not retry in lockstep.
    const delay = base / 2 + Math.random() * (base / 2);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.start();
    }, delay);
    this.timer.unref();
  }

  close(): void {
    this.closed = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    const c = this.call;
    this.call = undefined;
    if (c !== undefined) {
      c.removeAllListeners('data');
      c.on('error', () => undefined); // the CANCELLED status that cancel() produces
      c.cancel();
    }
  }
}
