// After a Unified Identity attestation: the latency witness round for the node (landmarks probe it),
// then its claims updated with how the speed of light placed it — or withdrawn when the landmarks put
// it outside the area or against its own sensors (a lying node). Runs in the background: the
// attestation has answered already; entries needing a latency policy are signed once the round lands.
import type { LatencyProbeEndpoint } from '../../api/agent-api.js';
import { claimsOfNode } from '../attestation/unified.js';
import type { AgentApiContext } from './context.js';

/** Where the round for one node is under way (a second attestation meanwhile makes the first stale). */
const running = new WeakMap<AgentApiContext, Set<string>>();

export async function witnessLatency(ctx: AgentApiContext, agentId: string, endpoint: LatencyProbeEndpoint, akPublic: Buffer): Promise<void> {
  const { o, log } = ctx;
  const witness = o.latencyWitness;
  const pipeline = o.unifiedIdentity;
  if (!witness || !pipeline) return;
  let set = running.get(ctx);
  if (!set) running.set(ctx, (set = new Set()));
  if (set.has(agentId)) return;
  set.add(agentId);
  try {
    const round = await witness.measure({ nodeId: agentId, host: endpoint.host, port: endpoint.port, ...(witness.strength === 'tpm' ? { akPublic } : {}) });
    const details = {
      disks: round.disks.map((d) => ({ landmark: d.landmark, rttUs: Math.round(d.rttS * 1e6), radiusKm: Math.ceil(d.radiusM / 100) / 10, strength: d.strength })),
      failures: round.failures,
      measurements: round.measurements,
    };
    if (round.disks.length === 0) {
      o.auditor.record({ action: 'latency_witness', caller: 'server', subject: agentId, result: 'denied', reason: 'no landmark measured the node', details });
      log.warn({ agent: agentId, failures: round.failures }, 'latency witness: no landmark measured the node; its place rests on its other witnesses');
      return;
    }
    const node = await o.store.getNode(agentId);
    const current = node ? claimsOfNode(node) : undefined;
    if (!node || node.banned || current === undefined) return;
    const r = pipeline.relocate(agentId, current, round.disks);
    switch (r.kind) {
      case 'updated':
        await o.store.updateNode(agentId, { claims: r.claims });
        o.auditor.record({ action: 'latency_witness', caller: 'server', subject: agentId, result: 'ok', details: { ...details, assurance: r.claims.assurance, satisfiedPolicies: r.claims['satisfiedPolicies'], reasons: r.reasons } });
        log.info({ agent: agentId, assurance: r.claims.assurance, landmarks: details.disks }, 'latency witness placed the node');
        ctx.watchHub.claimsChanged(agentId);
        break;
      case 'contradicted': {
        const reason = `Unified Identity withdrawn: the latency witness contradicts the node's location: ${r.reasons.join('; ')}`;
        await o.store.updateNode(agentId, { claims: null });
        o.auditor.record({ action: 'latency_witness', caller: 'server', subject: agentId, result: 'denied', reason, details: { ...details, withdrawn: true } });
        log.warn({ agent: agentId, reasons: r.reasons }, 'latency witness contradicts the node: claims withdrawn');
        ctx.watchHub.dropNode(agentId, reason);
        break;
      }
      default:
        o.auditor.record({ action: 'latency_witness', caller: 'server', subject: agentId, result: 'denied', reason: r.reasons.join('; '), details });
        log.info({ agent: agentId, outcome: r.kind, reasons: r.reasons }, 'latency witness did not change the node\'s claims');
    }
  } catch (e) {
    log.error({ agent: agentId, err: (e as Error).message }, 'latency witness round failed');
  } finally {
    set.delete(agentId);
  }
}
