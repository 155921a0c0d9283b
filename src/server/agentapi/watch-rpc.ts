// WatchAgent: the server-streaming channel an authenticated agent keeps open to hear about entry and
// bundle changes and "drop your SVIDs". This is the RPC handler; WatchHub (watch.ts) does the pushing.
import * as grpc from '@grpc/grpc-js';
import type * as api from '../../api/agent-api.js';
import { spend, standing, type AgentApiContext } from './context.js';
import { toRpcError } from './status.js';

export function watchAgent(ctx: AgentApiContext): grpc.handleServerStreamingCall<api.WatchAgentRequest, api.AgentEvent> {
  const { o, auth, entries, watchHub } = ctx;
  return (call) => {
    let remove: (() => void) | undefined;
    let closed = false;
    const close = (code: grpc.status, message: string): void => {
      if (closed) return;
      closed = true;
      remove?.();
      call.emit('error', { code, details: message });
    };
    call.on('cancelled', () => { closed = true; remove?.(); });
    auth.authenticate(call).then(async (agent) => {
      const agentId = agent.id.toString();
      spend(ctx, 'rpc', agentId);
      // A node that lost its standing while its agent had no watch open (reconnecting, re-keying)
      // missed the push: tell it now, so withdrawn SVIDs never outlive a reconnect.
      const refusal = standing(ctx, agent)?.error;
      if (refusal !== undefined) {
        // UNAVAILABLE: the verdict is still being read; the agent keeps its SVIDs and opens the watch again.
        if (!closed && refusal.code !== grpc.status.UNAVAILABLE) call.write({ kind: 'DROP_SVIDS', revision: '', bundleSequence: 0, reason: refusal.message });
        close(refusal.code, refusal.message);
        return;
      }
      const set = await entries.get(agentId, agent.node.selectors);
      if (closed) return;
      const watcher = {
        agentId,
        revision: set.revision,
        send: (ev: api.AgentEvent) => { if (!closed) call.write(ev); },
        close,
      };
      remove = watchHub.add(watcher);
      call.write({ kind: 'READY', revision: set.revision, bundleSequence: Number(o.ca.bundle().sequence), reason: '' });
    }).catch((err: unknown) => {
      const e = toRpcError(err);
      close(e.code, e.message);
    });
  };
}
