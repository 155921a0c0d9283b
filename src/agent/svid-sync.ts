// Keeping the cache in step with the server: the sync loop (bundles, entries, workload SVIDs due for
// signing, the agent SVID due for renewal), its backoff while the server is out of reach, and
// JWT-SVIDs on demand. SPIRE keeps this in pkg/agent/manager (sync.go) and its cache.
import * as grpc from '@grpc/grpc-js';
import {
  AGENT_API_MAX_BATCH,
  type BatchNewX509SvidResponse, type FetchBundlesResponse, type NewJwtSvidResponse, type RegistrationEntry, type SyncEntriesResponse,
} from '../api/agent-api.js';
import { JwtSvidError, validateJwtSvid, type JwtBundleSource } from '../spiffe/index.js';
import type { CacheEntry, CachedSvid } from './cache.js';
import { MAX_BACKOFF_MS, MIN_BACKOFF_MS, type AgentContext } from './context.js';
import { createCsr, generateKeyPair, pkcs8Der } from './csr.js';
import type { NodeIdentity } from './node-identity.js';
import { unaryCall } from './server-conn.js';
import { checkIssuedSvid, rotationTime } from './svid-check.js';
import type { JwtProvider } from './workloadapi/server.js';

const MAX_JWT_CACHE = 1000;
/**
 * CSRs per BatchNewX509Svid call: well under the API's limit, so the keys, requests and
 * verification garbage of one batch stay small and the agent's peak memory stays low.
 */
const SIGN_BATCH = Math.min(100, AGENT_API_MAX_BATCH);

export class SvidSync {
  private revision = '';
  private readonly rotateAt = new Map<string, number>();
  private readonly jwtCache = new Map<string, { token: string; refreshAt: number; expiresAt: number }>();
  private timer: NodeJS.Timeout | undefined;
  private syncing: Promise<void> | undefined;
  private again = false;
  private backoffMs = MIN_BACKOFF_MS;
  /** Set between a drop and the re-attestation after it: nothing is signed with the old agent SVID. */
  private suspended = false;

  constructor(private readonly ctx: AgentContext, private readonly identity: NodeIdentity) {}

  /**
   * Stops signing until resume(): after a drop (revocation, DROP_SVIDS) the agent SVID still
   * authenticates, and the server may not know yet what the verifier told the node; only a new
   * attestation may bring SVIDs back.
   */
  suspend(): void {
    this.suspended = true;
  }

  resume(): void {
    this.suspended = false;
  }

  schedule(delayMs: number): void {
    if (this.ctx.halt.aborted) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), Math.max(0, delayMs));
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private async tick(): Promise<void> {
    try {
      await this.syncOnce();
      this.backoffMs = MIN_BACKOFF_MS;
      this.schedule(Math.min(this.ctx.config.syncIntervalMs, this.nextRotationIn()));
    } catch (e) {
      this.ctx.cache.pruneExpired();
      this.ctx.log.warn({ err: (e as Error).message, retryInMs: this.backoffMs }, 'sync with the server failed; serving cached SVIDs');
      this.schedule(this.backoffMs);
      this.backoffMs = Math.min(this.backoffMs * 2, MAX_BACKOFF_MS);
    }
  }

  private nextRotationIn(): number {
    let next = this.identity.rotateAt;
    for (const t of this.rotateAt.values()) next = Math.min(next, t);
    return Math.max(50, next - Date.now());
  }

  /** One sync; concurrent requests (timer, server push) are folded into one extra pass. */
  syncOnce(): Promise<void> {
    if (this.syncing) {
      this.again = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      try {
        do {
          this.again = false;
          try {
            await this.pass();
          } catch (e) {
            // A pass asked for meanwhile (after a fresh attestation, say) still runs: it may well succeed.
            if (!this.again || this.ctx.halt.aborted) throw e;
          }
        } while (this.again && !this.ctx.halt.aborted);
      } finally {
        this.syncing = undefined;
      }
    })();
    return this.syncing;
  }

  private async pass(): Promise<void> {
    const ctx = this.ctx;
    if (ctx.halt.aborted || !ctx.state || this.suspended) return;
    ctx.stats.syncs++;
    const svid = ctx.state.chain[0];
    if (Date.now() >= ctx.state.notAfter) {
      // The server was out of reach for longer than the SVID lived: only a new attestation helps.
      ctx.log.warn('the agent SVID has expired: attesting again');
      await this.identity.attest(ctx.bundles.ownRoots());
    } else if (Date.now() >= this.identity.rotateAt) {
      try {
        await this.identity.renew();
      } catch (e) {
        await this.handleAuthFailure(e, svid);
        throw e;
      }
    }
    try {
      await this.syncBundles();
      await this.syncEntries();
      await this.signDue();
    } catch (e) {
      await this.handleAuthFailure(e, svid);
      throw e;
    }
    ctx.cache.pruneExpired();
  }

  /**
   * The server no longer knows our SVID (evicted, replaced): re-attest, unless `svid` (the agent SVID
   * the failed pass started with) was replaced meanwhile; banned: drop everything.
   */
  private async handleAuthFailure(e: unknown, svid: Buffer | undefined): Promise<void> {
    const code = (e as grpc.ServiceError).code;
    if (code === grpc.status.PERMISSION_DENIED && /banned/i.test((e as grpc.ServiceError).details ?? '')) {
      this.ctx.log.error({ err: (e as Error).message }, 'this node is banned: dropping every SVID');
      this.dropAll();
      return;
    }
    if (code === grpc.status.UNAUTHENTICATED) {
      // A re-attestation finished since this pass began: the next pass uses its SVID.
      if (this.ctx.state?.chain[0] !== svid && this.identity.inFlight === undefined) return;
      this.ctx.log.warn({ err: (e as Error).message }, 'the server no longer accepts the agent SVID: re-attesting');
      await this.identity.attest(this.ctx.bundles.ownRoots());
    }
  }

  /** Drops every workload SVID (and cached JWT-SVID); streams see it at once. */
  dropAll(): void {
    this.ctx.cache.dropSvids();
    this.rotateAt.clear();
    this.jwtCache.clear();
  }

  private async syncBundles(): Promise<void> {
    const ctx = this.ctx;
    const res = await unaryCall<{ knownSequence: number }, FetchBundlesResponse>(ctx.serverClient(), 'FetchBundles', { knownSequence: ctx.bundles.sequence });
    const changed = ctx.bundles.apply(res, ctx.log);
    if (changed?.rootsChanged) {
      // Keep the stored bundle current, so a restart trusts the server's current CAs.
      if (ctx.state) {
        ctx.state = { ...ctx.state, bundle: Buffer.from(changed.own.toJSON()) };
        ctx.store.save(ctx.state);
      }
      ctx.resetClient();
    }
  }

  private async syncEntries(): Promise<void> {
    const res = await unaryCall<{ knownRevision: string }, SyncEntriesResponse>(this.ctx.serverClient(), 'SyncEntries', { knownRevision: this.revision });
    if (res.unchanged) return;
    this.revision = res.revision;
    const entries = res.entries.map(toCacheEntry);
    const ids = new Set(entries.map((e) => e.id));
    for (const id of [...this.rotateAt.keys()]) if (!ids.has(id)) this.rotateAt.delete(id);
    for (const k of [...this.jwtCache.keys()]) if (!ids.has(k.slice(0, k.indexOf('\n')))) this.jwtCache.delete(k);
    this.ctx.cache.setEntries(entries);
  }

  /** Signs SVIDs for entries that have none, whose SVID is at half-life, or whose ID changed. */
  private async signDue(): Promise<void> {
    const { cache, log, bundles } = this.ctx;
    const now = Date.now();
    const due = cache.entryList().filter((e) => {
      const s = cache.svid(e.id);
      return !s || s.spiffeId !== e.spiffeId || now >= (this.rotateAt.get(e.id) ?? 0);
    });
    for (let i = 0; i < due.length; i += SIGN_BATCH) {
      const batch = due.slice(i, i + SIGN_BATCH);
      const keys = new Map(batch.map((e) => [e.id, generateKeyPair()]));
      const res = await unaryCall<object, BatchNewX509SvidResponse>(this.ctx.serverClient(), 'BatchNewX509Svid', {
        params: batch.map((e) => ({ entryId: e.id, csr: createCsr(keys.get(e.id)!, e.spiffeId) })),
      });
      const fresh = new Map<string, CachedSvid>();
      for (const r of res.results) {
        const k = keys.get(r.entryId);
        if (!k) continue;
        if (r.errorCode !== 0 || !r.svid || r.svid.certChain.length === 0) {
          log.warn({ entryId: r.entryId, code: r.errorCode, err: r.errorMessage }, 'server refused to sign an SVID');
          continue;
        }
        const entry = cache.entry(r.entryId);
        if (!entry) continue;
        let times: { notBefore: number; notAfter: number };
        try {
          times = checkIssuedSvid(r.svid.certChain, bundles.all, entry.spiffeId, k.privateKey);
        } catch (e) {
          log.error({ entryId: r.entryId, err: (e as Error).message }, 'discarding an SVID from the server');
          continue;
        }
        const { notBefore, notAfter } = times;
        fresh.set(r.entryId, { spiffeId: entry.spiffeId, chain: r.svid.certChain, key: pkcs8Der(k.privateKey), notBefore, notAfter });
        this.rotateAt.set(r.entryId, rotationTime(notBefore, notAfter));
      }
      this.ctx.stats.svidsSigned += fresh.size;
      log.info({ count: fresh.size, requested: batch.length }, 'workload SVIDs signed');
      cache.putSvids(fresh);
    }
  }

  /** JWT-SVIDs for the Workload API: signed by the server on demand, cached until half their life. */
  jwtProvider(): JwtProvider {
    return {
      fetchJwtSvid: async (entry: CacheEntry, audience: string[]) => {
        if (this.suspended) throw Object.assign(new Error('this node\'s SVIDs were dropped; it is attesting again'), { code: grpc.status.UNAVAILABLE });
        const key = `${entry.id}\n${[...new Set(audience)].sort().join('\n')}`;
        const now = Date.now();
        const hit = this.jwtCache.get(key);
        if (hit && now < hit.refreshAt) return hit.token;
        const res = await unaryCall<object, NewJwtSvidResponse>(this.ctx.serverClient(), 'NewJwtSvid', { entryId: entry.id, audience });
        const expiresAt = res.expiresAt * 1000;
        if (this.jwtCache.size >= MAX_JWT_CACHE) this.jwtCache.delete(this.jwtCache.keys().next().value as string);
        this.jwtCache.set(key, { token: res.token, expiresAt, refreshAt: now + (expiresAt - now) / 2 });
        return res.token;
      },
      validateJwtSvid: async (token: string, audience: string, trustDomains: ReadonlySet<string>) => {
        // Only the bundles the caller is entitled to (its trust domain and those it federates with).
        const all = this.ctx.bundles.all;
        const scoped: JwtBundleSource = {
          getJwtBundleForTrustDomain: (td) => {
            if (trustDomains.has(td.name)) return all.getJwtBundleForTrustDomain(td);
            throw new JwtSvidError('no-bundle', `trust domain "${td.name}" is not trusted by this caller (none of its entries federates with it)`);
          },
        };
        const v = await validateJwtSvid(token, scoped, audience);
        return { spiffeId: v.id.toString(), claims: v.claims };
      },
    };
  }
}

function toCacheEntry(e: RegistrationEntry): CacheEntry {
  return {
    id: e.id,
    spiffeId: e.spiffeId,
    selectors: e.selectors.map((s) => ({ type: s.type, value: s.value })),
    federatesWith: e.federatesWith,
    hint: e.hint,
    jwtSvidTtl: e.jwtSvidTtl,
  };
}
