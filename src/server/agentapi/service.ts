// The agent API handlers (proto/agent.proto): node attestation, agent SVID renewal, entry sync,
// bundles, X.509-SVID and JWT-SVID signing, and the watch stream. Every refusal is a gRPC status
// with a message; a refused request writes nothing but its audit record. Each RPC family has its own
// module (attest, renew, sync, sign, watch-rpc) over a shared context (context.ts); this file builds
// the context and assembles the handlers.
import type * as grpc from '@grpc/grpc-js';
import { AGENT_RPC_RATE_DEFAULT, AGENT_SIGNING_RATE_DEFAULT, RateLimiter } from '../ratelimit.js';
import { AgentAuthenticator } from './auth.js';
import { ClaimExpiry, type AgentApiContext, type AgentServiceOptions } from './context.js';
import { AuthorizedEntriesCache } from './entries.js';
import { WatchHub } from './watch.js';
import { attestAgent } from './attest.js';
import { renewAgent } from './renew.js';
import { syncEntries, fetchBundles } from './sync.js';
import { batchNewX509Svid, newJwtSvid } from './sign.js';
import { watchAgent } from './watch-rpc.js';

export type { AgentServiceOptions } from './context.js';

export interface AgentService {
  handlers: grpc.UntypedServiceImplementation;
  watchHub: WatchHub;
  entries: AuthorizedEntriesCache;
  close(): void;
}

export function createAgentService(o: AgentServiceOptions): AgentService {
  const now = o.now ?? (() => new Date());
  const log = o.logger.child({ component: 'agentapi' });
  const auth = new AgentAuthenticator(o.ca, o.store, now);
  const entries = new AuthorizedEntriesCache(o.store);
  const watchHub = new WatchHub(o.store, entries, o.watchIntervalMs, log);
  const unsubscribe = o.ca.onBundleChange((b) => watchHub.bundleChanged(b.sequence));
  watchHub.start();
  const claimExpiry = new ClaimExpiry(o, watchHub);
  const budgets = {
    rpc: o.rpcRateLimiter ?? new RateLimiter({ ...AGENT_RPC_RATE_DEFAULT }),
    signing: o.signingRateLimiter ?? new RateLimiter({ ...AGENT_SIGNING_RATE_DEFAULT }),
  };
  const ctx: AgentApiContext = { o, now, log, auth, entries, watchHub, claimExpiry, budgets };

  return {
    handlers: {
      AttestAgent: attestAgent(ctx) as grpc.UntypedHandleCall,
      RenewAgent: renewAgent(ctx) as grpc.UntypedHandleCall,
      SyncEntries: syncEntries(ctx) as grpc.UntypedHandleCall,
      FetchBundles: fetchBundles(ctx) as grpc.UntypedHandleCall,
      BatchNewX509Svid: batchNewX509Svid(ctx) as grpc.UntypedHandleCall,
      NewJwtSvid: newJwtSvid(ctx) as grpc.UntypedHandleCall,
      WatchAgent: watchAgent(ctx) as grpc.UntypedHandleCall,
    },
    watchHub,
    entries,
    close() {
      claimExpiry.clear();
      unsubscribe();
      watchHub.stop();
    },
  };
}
