// What an authenticated agent reads: its authorized entries (SyncEntries, answered "unchanged" when
// it already holds the current revision) and the trust bundles (FetchBundles, own and federated).
// Reads sign nothing, so they are not behind the signing gate.
import type * as grpc from '@grpc/grpc-js';
import type * as api from '../../api/agent-api.js';
import { authed, type AgentApiContext } from './context.js';
import { syncResponseBytes } from './entries.js';

// A full answer is sent pre-encoded (a Buffer; see preEncodedDefinition in server.ts).
export function syncEntries(ctx: AgentApiContext): grpc.handleUnaryCall<api.SyncEntriesRequest, api.SyncEntriesResponse | Buffer> {
  const { entries } = ctx;
  return authed<api.SyncEntriesRequest, api.SyncEntriesResponse | Buffer>(ctx, 'SyncEntries', async (agent, req) => {
    const set = await entries.get(agent.id.toString(), agent.node.selectors);
    if (req.knownRevision !== '' && req.knownRevision === set.revision) return { revision: set.revision, unchanged: true, entries: [] };
    return syncResponseBytes(set);
  });
}

export function fetchBundles(ctx: AgentApiContext): grpc.handleUnaryCall<api.FetchBundlesRequest, api.FetchBundlesResponse> {
  const { o } = ctx;
  return authed<api.FetchBundlesRequest, api.FetchBundlesResponse>(ctx, 'FetchBundles', async () => {
    const own = o.ca.bundle();
    const federatedBundles: Record<string, Buffer> = {};
    for (const b of await o.store.listBundles()) {
      if (b.trustDomain !== own.trustDomain) federatedBundles[b.trustDomain] = Buffer.from(b.bundleJson);
    }
    return { trustDomain: own.trustDomain, sequence: Number(own.sequence), bundle: Buffer.from(own.bundleJson), federatedBundles };
  });
}
