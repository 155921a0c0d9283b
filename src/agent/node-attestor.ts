// Node attestation client: the AttestAgent exchange with the server, by join token or by TPM
// (EK + AK, then TPM2_ActivateCredential to prove the AK lives in the same TPM as the EK). When the
// challenge lists selector_pcrs, the agent also quotes those PCRs with the same AK (PCR-digest selectors).
import * as grpc from '@grpc/grpc-js';
import {
  pcrSelectorsQualifyingData,
  type AttestAgentRequest, type AttestAgentResponse, type AttestationResult, type KeylimeQuoteEndpoint, type LatencyProbeEndpoint, type TpmAttestation,
  type TpmQuote, type UnifiedIdentityEvidence,
} from '../api/agent-api.js';
import type { NodeQuoter } from '../keylime/index.js';
import { context } from '@opentelemetry/api';
import { injectIntoMetadata, inSpan, SpanKind } from '../api/tracing.js';
import type { AgentClient } from './server-conn.js';

export class NodeAttestationError extends Error {
  constructor(readonly code: 'refused' | 'unavailable' | 'protocol' | 'tpm', message: string, readonly grpcCode?: grpc.status) {
    super(message);
    this.name = 'NodeAttestationError';
  }
}

/** What the agent's TPM contributes to attestation (implemented over src/tpm by tpm-session.ts). */
export interface TpmCredentialSource {
  /** EK certificate/public and AK public for the first message. */
  attestationData(): Promise<TpmAttestation>;
  /** TPM2_ActivateCredential on the server's challenge: the recovered secret. */
  activateCredential(credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer>;
  /** Quotes with the attestation AK, for the Keylime quote endpoint (keeps that AK for the session). */
  quoter?(): NodeQuoter;
  /** TPM2_Quote of sha256 PCRs with the attestation AK (Unified Identity, PCR-digest selectors). */
  quote?(pcrs: number[], qualifyingData: Buffer): Promise<{ attest: Buffer; signature: Buffer; pcrs: Map<number, Buffer> }>;
  /** Latency probe: TPM2_Quote by the attested AK with `digest` as qualifyingData, attest and signature only. */
  probeQuote?(digest: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
}

/** Builds the Unified Identity evidence for a challenge (see unified-identity.ts). */
export interface UnifiedIdentityProvider {
  evidence(nonce: Buffer, pcrs: number[]): Promise<UnifiedIdentityEvidence>;
}

export interface AttestOptions {
  /** PKCS#10 DER for the agent SVID key. */
  csr: Buffer;
  joinToken?: string;
  tpm?: TpmCredentialSource;
  /** TPM only: where this node serves its Keylime quote endpoint. */
  keylimeQuoteEndpoint?: KeylimeQuoteEndpoint;
  /** TPM only: where this node answers latency probes. */
  latencyProbeEndpoint?: LatencyProbeEndpoint;
  /** TPM only, flag on: answers a challenge that asks for a quote. Without it such a challenge is answered without evidence (the server refuses). */
  unifiedIdentity?: UnifiedIdentityProvider;
  timeoutMs?: number;
}

const MAX_CHALLENGE_FIELD_BYTES = 4096;
const NONCE_BYTES = 32;

/** Checks the server's selector_pcrs (0..23, each once) before any TPM work: why they are refused, or undefined. */
function checkSelectorPcrs(pcrs: number[]): string | undefined {
  if (pcrs.length > 24) return `the challenge lists ${pcrs.length} selector PCRs; a TPM bank has 24`;
  const bad = pcrs.find((n) => !Number.isInteger(n) || n < 0 || n > 23);
  if (bad !== undefined) return `the challenge asks to quote PCR ${String(bad)}, outside 0..23`;
  if (new Set(pcrs).size !== pcrs.length) return 'the challenge lists a selector PCR twice';
  return undefined;
}

/** The PCR-selector quote for a challenge: same AK, the requested sha256 PCRs, bound to the nonce. */
async function pcrSelectorQuote(tpm: TpmCredentialSource, nonce: Buffer, pcrs: number[]): Promise<TpmQuote> {
  if (!tpm.quote) throw new Error('this TPM source cannot quote, but the server asks for a PCR quote (selector_pcrs)');
  const q = await tpm.quote([...pcrs].sort((a, b) => a - b), pcrSelectorsQualifyingData(nonce));
  const wire: Record<string, Buffer> = {};
  for (const [i, v] of q.pcrs) wire[String(i)] = v;
  return { attest: q.attest, signature: q.signature, pcrs: wire };
}

/** One node attestation, traced: the span's context travels to the server in the gRPC metadata. */
export function attestNode(client: AgentClient, opts: AttestOptions): Promise<AttestationResult> {
  return inSpan('terroir.agent.attest', () => attestExchange(client, opts), { 'terroir.attestation.method': opts.joinToken !== undefined ? 'join_token' : 'tpm' }, SpanKind.CLIENT);
}

async function attestExchange(client: AgentClient, opts: AttestOptions): Promise<AttestationResult> {
  if ((opts.joinToken === undefined) === (opts.tpm === undefined)) {
    throw new NodeAttestationError('protocol', 'attestation needs exactly one of a join token or a TPM');
  }
  const first: AttestAgentRequest = opts.joinToken !== undefined
    ? { params: { joinToken: { token: opts.joinToken }, csr: opts.csr } }
    : { params: { tpm: { ...await tpmData(opts.tpm as TpmCredentialSource), keylimeQuoteEndpoint: opts.keylimeQuoteEndpoint ?? null, latencyProbeEndpoint: opts.latencyProbeEndpoint ?? null }, csr: opts.csr } };

  const fn = client['AttestAgent'];
  if (!fn) throw new NodeAttestationError('protocol', 'agent API has no AttestAgent method');
  const call = fn.call(client, injectIntoMetadata(new grpc.Metadata()), { deadline: Date.now() + (opts.timeoutMs ?? 60_000) }) as grpc.ClientDuplexStream<AttestAgentRequest, AttestAgentResponse>;
  // Stream callbacks run outside this async context: the TPM and sensor spans are children of this one.
  const traced = context.active();

  return new Promise<AttestationResult>((resolve, reject) => {
    let done = false;
    let challenged = false;
    const fail = (e: NodeAttestationError) => {
      if (done) return;
      done = true;
      call.cancel();
      reject(e);
    };
    call.on('data', (msg: AttestAgentResponse) => {
      if (done) return;
      if (msg.result) {
        done = true;
        call.end();
        resolve(msg.result);
        return;
      }
      if (msg.challenge) {
        if (!opts.tpm || challenged) return fail(new NodeAttestationError('protocol', 'server sent an unexpected attestation challenge'));
        challenged = true;
        const c = msg.challenge;
        if (c.credentialBlob.length === 0 || c.credentialBlob.length > MAX_CHALLENGE_FIELD_BYTES
          || c.encryptedSecret.length === 0 || c.encryptedSecret.length > MAX_CHALLENGE_FIELD_BYTES) {
          return fail(new NodeAttestationError('protocol', 'server challenge has a missing or oversized credential blob or secret'));
        }
        const quotePcrs = c.quotePcrs ?? [];
        const selectorPcrs = c.selectorPcrs ?? [];
        if (selectorPcrs.length > 0) {
          const why = c.nonce.length !== NONCE_BYTES ? `the challenge nonce must be ${NONCE_BYTES} bytes, got ${c.nonce.length}` : checkSelectorPcrs(selectorPcrs);
          if (why !== undefined) return fail(new NodeAttestationError('protocol', `server challenge refused: ${why}`));
        }
        const tpm = opts.tpm;
        context.with(traced, () => inSpan('terroir.agent.tpm.activate_credential', () => tpm.activateCredential(c.credentialBlob, c.encryptedSecret))).then(
          async (secret) => {
            if (done) return;
            // The server asks for a quote only with Unified Identity on; read the sensors and quote after activation.
            let unifiedIdentity: UnifiedIdentityEvidence | null = null;
            if (quotePcrs.length > 0 && opts.unifiedIdentity) {
              try {
                const provider = opts.unifiedIdentity;
                unifiedIdentity = await context.with(traced, () => inSpan('terroir.agent.unified_identity.evidence', () => provider.evidence(c.nonce, quotePcrs)));
              } catch (e) {
                return fail(new NodeAttestationError('tpm', `Unified Identity evidence failed: ${(e as Error).message}`));
              }
            }
            // PCR-digest selectors: older servers send no selector_pcrs, and then nothing is quoted.
            let pcrQuote: TpmQuote | null = null;
            if (selectorPcrs.length > 0 && !done) {
              try {
                pcrQuote = await pcrSelectorQuote(tpm, c.nonce, selectorPcrs);
              } catch (e) {
                return fail(new NodeAttestationError('tpm', `quoting PCR(s) ${selectorPcrs.join(', ')} for the server's PCR selectors failed: ${(e as Error).message}`));
              }
            }
            if (!done) call.write({ challengeResponse: { activatedSecret: secret, unifiedIdentity, pcrQuote } });
          },
          (e: unknown) => fail(new NodeAttestationError('tpm', `TPM2_ActivateCredential failed: ${(e as Error).message}`)),
        );
        return;
      }
      fail(new NodeAttestationError('protocol', 'server sent an empty attestation response'));
    });
    call.on('error', (e: grpc.ServiceError) => {
      const code = e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED ? 'unavailable' : 'refused';
      fail(new NodeAttestationError(code, `node attestation ${code === 'refused' ? 'refused' : 'failed'}: ${e.details || e.message}`, e.code));
    });
    call.on('end', () => fail(new NodeAttestationError('protocol', 'server closed the attestation stream without a result')));
    call.write(first);
  });
}

async function tpmData(tpm: TpmCredentialSource): Promise<TpmAttestation> {
  try {
    return await tpm.attestationData();
  } catch (e) {
    throw new NodeAttestationError('tpm', `reading the TPM's EK/AK failed: ${(e as Error).message}`);
  }
}
