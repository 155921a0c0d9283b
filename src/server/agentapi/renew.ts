// RenewAgent: a join-token node's agent trades a CSR for a fresh agent SVID, behind the signing gate.
// TPM nodes never renew here: they attest again (AttestAgent) to prove TPM possession each time.
import * as grpc from '@grpc/grpc-js';
import type * as api from '../../api/agent-api.js';
import { authed, gate, spend, type AgentApiContext } from './context.js';
import { parseCsr, x509ToWire } from './sign.js';
import { rpcError } from './status.js';
import { nodeEvidenceRef } from '../evidence/attestation.js';
import { evidenceRefExtension } from '../../spiffe/evidence-ref.js';

export function renewAgent(ctx: AgentApiContext): grpc.handleUnaryCall<api.RenewAgentRequest, api.RenewAgentResponse> {
  const { o } = ctx;
  return authed<api.RenewAgentRequest, api.RenewAgentResponse>(ctx, 'RenewAgent', async (agent, req) => {
    const agentId = agent.id.toString();
    gate(ctx, agent, 'renew_agent');
    if (agent.node.attestationType === 'tpm') {
      o.auditor.record({ action: 'renew_agent', caller: agentId, result: 'denied', reason: 'tpm node must re-attest' });
      throw rpcError(grpc.status.FAILED_PRECONDITION, 'TPM nodes renew by attesting again through AttestAgent (proof of TPM possession each time)');
    }
    spend(ctx, 'signing', agentId);
    const key = parseCsr(req.csr, 'csr');
    // The renewed SVID still rests on the node's attestation: it keeps naming that record.
    const evidence = nodeEvidenceRef(agent.node);
    const svid = o.issuer.mintX509(agent.id, key, o.x509SvidTtl, [], evidence ? [evidenceRefExtension(evidence)] : undefined);
    await o.store.updateNode(agentId, { newSerialNumber: svid.serialHex, expiresAt: svid.notAfter });
    o.auditor.record({ action: 'renew_agent', caller: agentId, subject: agentId, result: 'ok', details: { serial: svid.serialHex, ...(evidence ? { attestation: evidence.index } : {}) } });
    return { svid: x509ToWire(svid) };
  });
}
