// The bundles the agent trusts and hands to workloads: its own trust domain's (from attestation, the
// store, then FetchBundles) and federated ones, published to the cache only when they change.
import crypto from 'node:crypto';
import type { FetchBundlesResponse } from '../api/agent-api.js';
import { Bundle, BundleSet, TrustDomain } from '../spiffe/index.js';
import type { Logger } from 'pino';
import type { IdentityCache, TrustBundle } from './cache.js';
import { AgentStartError } from './context.js';

export class TrustBundles {
  private set = new BundleSet();
  private seq = 0;
  private digest = '';

  constructor(private readonly trustDomain: TrustDomain, private readonly cache: IdentityCache) {}

  /** Every bundle held (own and federated), for verifying SVIDs and JWT-SVIDs. */
  get all(): BundleSet {
    return this.set;
  }

  /** The sequence number of the last bundle set adopted (sent to FetchBundles as known). */
  get sequence(): number {
    return this.seq;
  }

  own(): Bundle | undefined {
    return this.set.get(this.trustDomain);
  }

  ownRoots(): Buffer[] {
    return this.own()?.x509Authorities() ?? [];
  }

  parseOwn(json: Buffer, what: string): Bundle {
    try {
      return Bundle.parse(this.trustDomain, json);
    } catch (e) {
      throw new AgentStartError(`${what} is not a valid SPIFFE bundle for ${this.trustDomain.name}: ${(e as Error).message}`);
    }
  }

  /** The own bundle from an attestation or the store: taken unless older than the one held. */
  adopt(bundle: Bundle): void {
    if (!this.own() || bundle.sequenceNumber >= BigInt(this.seq)) {
      this.set.set(bundle);
      this.seq = Number(bundle.sequenceNumber);
      this.publish();
    }
  }

  /**
   * FetchBundles' answer: undefined when nothing changed, else the new own bundle and whether its
   * roots changed (the server connection must then be rebuilt).
   */
  apply(res: FetchBundlesResponse, log: Logger): { own: Bundle; rootsChanged: boolean } | undefined {
    if (res.bundle.length === 0) return undefined;
    // Nothing changed: nothing to parse or publish (workloads are only told about real changes).
    const digest = crypto.createHash('sha256').update(res.bundle);
    for (const name of Object.keys(res.federatedBundles ?? {}).sort()) digest.update(`\n${name}\n`).update(res.federatedBundles[name] as Buffer);
    const d = digest.digest('hex');
    if (d === this.digest) return undefined;
    const own = this.parseOwn(res.bundle, 'bundle from FetchBundles');
    const set = new BundleSet(own);
    for (const [name, json] of Object.entries(res.federatedBundles ?? {})) {
      try {
        const td = TrustDomain.parse(name);
        if (td.equals(this.trustDomain)) continue;
        set.set(Bundle.parse(td, json));
      } catch (e) {
        log.warn({ trustDomain: name, err: (e as Error).message }, 'ignoring an invalid federated bundle');
      }
    }
    const rootsChanged = !sameDers(own.x509Authorities(), this.ownRoots());
    this.set = set;
    this.seq = res.sequence;
    this.digest = d;
    this.publish();
    return { own, rootsChanged };
  }

  private publish(): void {
    const own = this.own();
    if (!own) return;
    const fed = this.set.all().filter((b) => !b.trustDomain.equals(this.trustDomain));
    this.cache.setBundles(toTrustBundle(own), fed.map(toTrustBundle));
  }
}

function sameDers(a: Buffer[], b: Buffer[]): boolean {
  return a.length === b.length && a.every((d, i) => d.equals(b[i] as Buffer));
}

/** A spiffe Bundle in the forms the Workload API sends: DER CAs, and a JWK Set of the JWT authorities only. */
export function toTrustBundle(b: Bundle): TrustBundle {
  const doc = JSON.parse(b.toJSON()) as { keys: Array<{ use?: string }> } & Record<string, unknown>;
  const jwks = { ...doc, keys: doc.keys.filter((k) => k.use === 'jwt-svid') };
  return {
    trustDomain: b.trustDomain.name,
    x509Authorities: b.x509Authorities(),
    jwks: Buffer.from(JSON.stringify(jwks)),
    sequence: Number(b.sequenceNumber),
  };
}
