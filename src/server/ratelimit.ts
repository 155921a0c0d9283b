// Per-source token buckets: each source may spend `burst` tokens at once and regains `perSecond`
// tokens each second. Used to slow down attestation floods from one address, and to give each
// authenticated agent a budget of calls and of CSR verifications / signings.

/** Authenticated agent API calls per agent (agentApi.rpcRateLimit): far above what an agent makes. */
export const AGENT_RPC_RATE_DEFAULT = { perSecond: 100, burst: 500 } as const;
/**
 * CSR verifications and SVID signings per agent (agentApi.signingRateLimit). An agent signs a few
 * dozen SVIDs per sync and up to its whole entry set at start; 1000 at once, then 100 a second.
 */
export const AGENT_SIGNING_RATE_DEFAULT = { perSecond: 100, burst: 1000 } as const;

export interface RateLimitOptions {
  perSecond: number;
  burst: number;
  /** Injectable clock (ms), for tests. */
  now?: () => number;
  /** Most sources tracked at once; the stalest are forgotten first (bounded memory under a flood). */
  maxSources?: number;
}

interface Bucket {
  tokens: number;
  updatedMs: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly now: () => number;
  private readonly maxSources: number;

  constructor(readonly opts: RateLimitOptions) {
    if (!(opts.perSecond > 0) || !(opts.burst >= 1)) throw new RangeError('rate limit needs perSecond > 0 and burst >= 1');
    this.now = opts.now ?? Date.now;
    this.maxSources = opts.maxSources ?? 100_000;
  }

  /** Takes one token for `source`; false when the source has none left (refuse the request). */
  tryTake(source: string): boolean {
    const now = this.now();
    let b = this.buckets.get(source);
    if (b) {
      b.tokens = Math.min(this.opts.burst, b.tokens + ((now - b.updatedMs) / 1000) * this.opts.perSecond);
      b.updatedMs = now;
      // Re-insert so Map order is least-recently-used first.
      this.buckets.delete(source);
    } else {
      b = { tokens: this.opts.burst, updatedMs: now };
    }
    this.buckets.set(source, b);
    if (this.buckets.size > this.maxSources) {
      const oldest = this.buckets.keys().next().value;
      if (oldest !== undefined) this.buckets.delete(oldest);
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Seconds until `source` has a token again (0 if it has one now). */
  retryAfterSeconds(source: string): number {
    const b = this.buckets.get(source);
    if (!b) return 0;
    const tokens = Math.min(this.opts.burst, b.tokens + ((this.now() - b.updatedMs) / 1000) * this.opts.perSecond);
    return tokens >= 1 ? 0 : Math.ceil((1 - tokens) / this.opts.perSecond);
  }
}

/**
 * The source address of a gRPC peer string ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678", "1.2.3.4:5678"),
 * without the port, so every connection from one host shares a bucket.
 */
export function sourceAddress(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  const v6 = /^\[([^\]]+)\](?::\d+)?$/.exec(p);
  if (v6) return v6[1] as string;
  const idx = p.lastIndexOf(':');
  return idx > 0 && p.indexOf(':') === idx ? p.slice(0, idx) : p;
}
