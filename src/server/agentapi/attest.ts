// AttestAgent: how a node proves its identity and gets its agent SVID. A bidi stream: params (join
// token, or TPM with a credential-activation challenge and its response), then the Unified Identity
// and Keylime checks, then finalizeAttestation records the node and issues the SVID. Every outcome,
// refusal or success, writes one attest_agent audit record.
import * as grpc from '@grpc/grpc-js';
import { context, trace } from '@opentelemetry/api';
import { contextFromMetadata, endSpan, inSpan, SpanKind, tracer } from '../../api/tracing.js';
import type * as api from '../../api/agent-api.js';
import type { CsrPublicKey } from '../../spiffe/csr.js';
import { canonicalUnifiedIdentity, unifiedIdentityExtension, type UnifiedIdentityClaims } from '../../spiffe/unified-identity.js';
import { DataStoreError } from '../datastore/types.js';
import { sourceAddress } from '../ratelimit.js';
import { AttestationError } from '../attestation/errors.js';
import { attestJoinToken } from '../attestation/join-token.js';
import type { PendingTpmAttestation } from '../attestation/tpm.js';
import type { AttestationOutcome } from '../attestation/types.js';
import type { AgentApiContext } from './context.js';
import { witnessLatency } from './latency.js';
import { AttestationRecorder } from '../evidence/attestation.js';
import { evidenceRefExtension, type EvidenceRef } from '../../spiffe/evidence-ref.js';
import type { ExtraExtension } from '../../spiffe/x509svid.js';
import type { AttestationRecord } from '../../evidence/record.js';
import { parseCsr } from './sign.js';
import { rpcError, toRpcError } from './status.js';

async function finalizeAttestation(ctx: AgentApiContext, out: AttestationOutcome, csrKey: CsrPublicKey, claims?: UnifiedIdentityClaims, evidence?: EvidenceRef): Promise<{ result: api.AttestationResult; serial: string; notAfter: Date }> {
  const { o, entries } = ctx;
  const agentId = out.agentId.toString();
  const existing = await o.store.getNode(agentId);
  if (existing?.banned) {
    throw new AttestationError('permission_denied', `node ${agentId} is banned; an operator must evict it (agent evict) before it can attest again`);
  }
  // An agent SVID carrying claims ends when they do: the agent re-attests (TPM nodes renew by attesting) before that.
  const ttl = claims && o.unifiedIdentity ? o.unifiedIdentity.clampTtl(claims, o.x509SvidTtl) : o.x509SvidTtl;
  const extensions: ExtraExtension[] = [];
  if (claims) extensions.push(unifiedIdentityExtension(claims));
  if (evidence) extensions.push(evidenceRefExtension(evidence));
  const svid = o.issuer.mintX509(out.agentId, csrKey, ttl, [], extensions.length > 0 ? extensions : undefined);
  const fields = {
    attestationType: out.attestationType,
    selectors: out.selectors,
    serialNumber: svid.serialHex,
    expiresAt: svid.notAfter,
    // The workload SVIDs signed through this node carry the same evidence reference.
    attestationData: evidence ? { ...out.attestationData, evidence } : out.attestationData,
  };
  // Flag on: the claims of this attestation replace any earlier ones (none for join-token nodes).
  const claimsUpdate = o.unifiedIdentity ? { claims: claims ?? null } : {};
  if (existing) {
    await o.store.updateNode(agentId, { ...fields, ...claimsUpdate, newSerialNumber: null });
  } else {
    try {
      await o.store.createNode({ spiffeId: agentId, ...fields, ...(claims ? { claims } : {}) });
    } catch (err) {
      // Another server attested the same node a moment ago: this attestation is just as valid.
      if (!(err instanceof DataStoreError && err.code === 'already_exists')) throw err;
      await o.store.updateNode(agentId, { ...fields, ...claimsUpdate, newSerialNumber: null });
    }
  }
  entries.forget(agentId);
  if (claims) ctx.claimExpiry.schedule(agentId, claims);
  return {
    result: {
      spiffeId: agentId,
      svidChain: svid.certChain,
      selectors: out.selectors,
      bundle: Buffer.from(o.ca.bundle().bundleJson),
      canRenew: out.canRenew,
      unifiedIdentityClaims: claims ? canonicalUnifiedIdentity(claims) : Buffer.alloc(0),
    },
    serial: svid.serialHex,
    notAfter: svid.notAfter,
  };
}

/**
 * Records what was issued on an attestation (and the EAR for relying parties). Not awaited: the
 * SVID already names its attestation record, which was committed before it was minted.
 */
function recordIssuance(ctx: AgentApiContext, attestation: { index: number; record: AttestationRecord }, agentId: string, serial: string, notAfter: Date): void {
  const ev = ctx.o.evidence;
  if (!ev) return;
  void (async () => {
    let ear: string | undefined;
    if (ev.ear) {
      try {
        ear = await ev.ear(attestation.record, attestation.index);
      } catch (err) {
        ctx.log.error({ err, agentId }, 'the EAR for an attestation could not be signed');
      }
    }
    ev.log.appendLater({ kind: 'issuance', attestation: attestation.index, agentId, svid: { serial, notAfter: notAfter.toISOString() }, ...(ear !== undefined ? { ear } : {}) }, agentId);
  })();
}

/**
 * A node that proved its TPM (secret, nonce) but whose evidence is now refused (PCR changed, Keylime
 * refusal, location out of policy, quote not bound to its claims) loses its earlier claims at once:
 * nothing more is signed for it and its agent drops its SVIDs. An unreachable verifier withdraws
 * nothing (the node's claims still expire on schedule). Always rethrows.
 */
async function withdrawOnFailure(ctx: AgentApiContext, agentId: string, err: unknown): Promise<never> {
  const { o } = ctx;
  if (err instanceof AttestationError && err.code === 'permission_denied') {
    const node = await o.store.getNode(agentId);
    if (node?.claims !== undefined && node.claims !== null) {
      await o.store.updateNode(agentId, { claims: null });
      const reason = `Unified Identity withdrawn: ${err.message}`;
      o.auditor.record({ action: 'attest_agent', caller: 'server', subject: agentId, result: 'denied', reason, details: { withdrawn: true } });
      ctx.watchHub.dropNode(agentId, reason);
    }
  }
  throw err;
}

export function attestAgent(ctx: AgentApiContext): grpc.handleBidiStreamingCall<api.AttestAgentRequest, api.AttestAgentResponse> {
  const { o, now, log } = ctx;
  return (call) => {
    const source = sourceAddress(call.getPeer());
    let state: 'params' | 'busy' | 'challenge' | 'done' = 'params';
    let pending: { tpm: PendingTpmAttestation; csrKey: CsrPublicKey; params: api.TpmAttestation } | undefined;
    let method = 'unknown';
    let timer: NodeJS.Timeout | undefined;
    let clientEnded = false;
    // For the metrics (attestation duration histogram), carried in the audit record.
    const started = performance.now();
    // One SERVER span per exchange, child of the agent's (traceparent in the metadata); the steps below
    // run in its context so the TPM, pipeline and Keylime spans hang under it.
    // What the evidence log keeps of this exchange (evidenceLog.enabled).
    const recorder = o.evidence ? new AttestationRecorder(source, o.evidence.policy) : undefined;
    const span = tracer().startSpan('terroir.server.attest', { kind: SpanKind.SERVER, attributes: { 'terroir.source': source } }, contextFromMetadata(call.metadata));
    const traced = trace.setSpan(contextFromMetadata(call.metadata), span);
    const step = <T>(name: string, fn: () => Promise<T>): Promise<T> => context.with(traced, () => inSpan(name, fn));

    const finish = (err: unknown, subject?: string): void => {
      if (state === 'done') return;
      state = 'done';
      clearTimeout(timer);
      const e = toRpcError(err);
      span.setAttribute('terroir.attestation.method', method);
      endSpan(span, e);
      if (e.code === grpc.status.INTERNAL) log.error({ err, source }, 'attestation failed with an internal error');
      // Only exchanges that got past their first message: rate-limited, timed-out or malformed openings
      // cost an outsider nothing, and must not buy it log records (the pino audit line has them).
      if (recorder && o.evidence && recorder.method !== 'unknown') o.evidence.log.appendLater(recorder.refused(e.message), recorder.agentId);
      o.auditor.record({ action: 'attest_agent', caller: source, subject, result: e.code === grpc.status.INTERNAL ? 'error' : 'denied', reason: e.message, details: { method, code: grpc.status[e.code], durationMs: performance.now() - started } });
      call.emit('error', { code: e.code, details: e.message });
    };
    const arm = (ms: number, what: string): void => {
      clearTimeout(timer);
      timer = setTimeout(() => finish(rpcError(grpc.status.DEADLINE_EXCEEDED, `${what} did not arrive within ${Math.round(ms / 1000)} s; attest again`)), ms);
      timer.unref();
    };
    const succeed = async (out: AttestationOutcome, csrKey: CsrPublicKey, unified?: { claims: UnifiedIdentityClaims; audit: Record<string, unknown> }): Promise<void> => {
      // Nothing is issued on evidence the log does not hold: the record is committed first, and the
      // SVID names its index.
      let attestation: { index: number; record: AttestationRecord } | undefined;
      if (recorder && o.evidence) {
        attestation = await o.evidence.log.appendRecord(recorder.accepted(out.agentId.toString()), out.agentId.toString());
      }
      const ref = attestation && o.evidence ? { log: o.evidence.log.origin, index: attestation.index } : undefined;
      const { result, serial, notAfter } = await finalizeAttestation(ctx, out, csrKey, unified?.claims, ref);
      if (attestation) recordIssuance(ctx, attestation, result.spiffeId, serial, notAfter);
      if (state === 'done') return;
      state = 'done';
      clearTimeout(timer);
      // The precise readings live here (the audit log) and nowhere else.
      o.auditor.record({
        action: 'attest_agent', caller: source, subject: result.spiffeId, result: 'ok',
        details: { method, durationMs: performance.now() - started, selectors: out.selectors.map((s) => `${s.type}:${s.value}`), ...(unified ? { unifiedIdentity: { claims: unified.claims, ...unified.audit } } : {}) },
      });
      log.info({ agent: result.spiffeId, method, source }, 'agent attested');
      span.setAttribute('terroir.attestation.method', method);
      endSpan(span);
      call.write({ result });
      call.end();
    };

    if (!o.rateLimiter.tryTake(source)) {
      finish(rpcError(grpc.status.RESOURCE_EXHAUSTED, `too many attestation attempts from ${source}; retry in ${o.rateLimiter.retryAfterSeconds(source)} s`));
      return;
    }
    arm(o.firstMessageTimeoutMs ?? 30_000, 'the attestation parameters');

    call.on('data', (msg: api.AttestAgentRequest) => {
      if (state === 'params' && msg.step === 'params' && msg.params) {
        state = 'busy';
        const p = msg.params;
        void (async () => {
          const csrKey = parseCsr(p.csr, 'params.csr');
          if (p.data === 'joinToken' && p.joinToken) {
            method = 'join_token';
            recorder?.joinToken(p.joinToken.token);
            if (!o.joinTokens) throw rpcError(grpc.status.FAILED_PRECONDITION, 'join token attestation is disabled on this server (nodeAttestation.joinToken.enabled)');
            const out = await attestJoinToken(o.store, o.trustDomain, p.joinToken.token, now());
            await succeed(out, csrKey);
          } else if (p.data === 'tpm' && p.tpm) {
            method = 'tpm';
            if (recorder) recorder.method = 'tpm';
            if (!o.tpm) throw rpcError(grpc.status.FAILED_PRECONDITION, 'TPM attestation is disabled on this server (nodeAttestation.tpm.enabled)');
            if (o.keylime && !p.tpm.keylimeQuoteEndpoint) {
              throw rpcError(grpc.status.FAILED_PRECONDITION, 'this server requires Keylime continuous attestation for TPM nodes: configure keylime.quoteEndpoint on the agent');
            }
            // Flag on without a verifier no node can be vouched for: refuse before any TPM work.
            o.unifiedIdentity?.assertReady();
            const tpm = o.tpm.begin(p.tpm);
            recorder?.tpmChallenge(p.tpm, tpm);
            pending = { tpm, csrKey, params: p.tpm };
            if (clientEnded) { endedEarly(); return; }
            state = 'challenge';
            arm(Math.max(0, tpm.challenge.expiresAt.getTime() - now().getTime()), 'the challenge response');
            call.write({
              challenge: {
                credentialBlob: tpm.challenge.credentialBlob,
                encryptedSecret: tpm.challenge.encryptedSecret,
                nonce: tpm.challenge.nonce,
                expiresAt: Math.floor(tpm.challenge.expiresAt.getTime() / 1000),
                quotePcrs: o.unifiedIdentity ? [...o.unifiedIdentity.pcrs] : [],
                selectorPcrs: tpm.challenge.selectorPcrs,
              },
            });
          } else {
            throw rpcError(grpc.status.INVALID_ARGUMENT, 'params must carry join_token or tpm attestation data');
          }
        })().catch((err: unknown) => finish(err));
        return;
      }
      if (state === 'challenge' && msg.step === 'challengeResponse' && msg.challengeResponse && pending) {
        state = 'busy';
        const { tpm, csrKey, params } = pending;
        pending = undefined;
        recorder?.response(msg.challengeResponse);
        void (async () => {
          // Secret, PCR-selector quote (when asked for), then the nonce.
          const out = await step('terroir.server.tpm.verify', () => o.tpm!.finish(tpm, msg.challengeResponse!.activatedSecret, msg.challengeResponse!.pcrQuote));
          // Secret and nonce are settled; now quote, claims, Keylime one-shot and location policy.
          const pipeline = o.unifiedIdentity;
          const unified = pipeline
            ? await step('terroir.server.unified_identity', () => pipeline.verify({
              agentId: out.agentId.toString(), ekHash: tpm.ekHash, nonce: tpm.challenge.nonce, ak: tpm.ak, akPublic: params.akPublic, ekPublic: params.ekPublic,
              evidence: msg.challengeResponse!.unifiedIdentity,
            })).catch((err: unknown) => withdrawOnFailure(ctx, out.agentId.toString(), err))
            : undefined;
          if (recorder) {
            recorder.agentId = out.agentId.toString();
            if (unified) recorder.verified(unified);
          }
          // Keylime must have verified a quote from this TPM before anything is issued.
          if (o.keylime) {
            const existing = await o.store.getNode(out.agentId.toString());
            if (existing?.banned) throw rpcError(grpc.status.PERMISSION_DENIED, `node ${out.agentId.toString()} is banned; an operator must evict it (agent evict) before it can attest again`);
            const gate = o.keylime;
            await step('terroir.server.keylime.admit', () => gate.admit({
              agentId: out.agentId.toString(), ekHash: tpm.ekHash, akPublic: params.akPublic, selectors: out.selectors,
              endpoint: params.keylimeQuoteEndpoint, sourceAddress: source,
            }));
          }
          await succeed(out, csrKey, unified);
          if (unified && o.latencyWitness && params.latencyProbeEndpoint) {
            void witnessLatency(ctx, out.agentId.toString(), params.latencyProbeEndpoint, params.akPublic);
          }
        })().catch((err: unknown) => finish(err, `ek_hash:${tpm.ekHash}`));
        return;
      }
      if (state === 'done') return;
      finish(rpcError(grpc.status.INVALID_ARGUMENT, state === 'params'
        ? 'the first AttestAgent message must be params'
        : 'unexpected AttestAgent message: send challenge_response once, after the challenge'));
    });
    // A client may half-close after its last message; only a half-close while we still wait for a
    // message from it ends the exchange.
    const endedEarly = (): void => finish(rpcError(grpc.status.CANCELLED, 'the agent closed the attestation stream before it finished'));
    call.on('end', () => {
      clientEnded = true;
      if (state === 'params' || state === 'challenge') endedEarly();
    });
    call.on('cancelled', () => { if (state !== 'done') endSpan(span, new Error('the agent cancelled the attestation')); state = 'done'; clearTimeout(timer); });
    call.on('error', () => { clearTimeout(timer); });
  };
}
