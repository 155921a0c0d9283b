// The agent API protocol (proto/agent.proto) as loaded by grpc-js, with TypeScript shapes for
// its messages. Shared by the server (which implements it) and the agent (which calls it).
import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type * as protoLoader from '@grpc/proto-loader';
import { loadServiceClient, TERROIR_PROTO_OPTIONS } from './proto-file.js';

/** Largest message either side accepts (a batch of 500 CSRs plus overhead fits easily). */
export const AGENT_API_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** Most items one BatchNewX509Svid call may carry. */
export const AGENT_API_MAX_BATCH = 500;

/** Fully-qualified service name, for logs and errors. */
export const AGENT_SERVICE_NAME = 'terroir.agent.v1.Agent';

/** Loader options both sides use: camelCase fields, int64 as JS numbers, bytes as Buffer, enums as names. */
export const AGENT_PROTO_OPTIONS: protoLoader.Options = TERROIR_PROTO_OPTIONS;

let cached: grpc.ServiceClientConstructor | undefined;

/** The grpc-js service definition and client constructor for `terroir.agent.v1.Agent`. */
export function agentServiceClient(): grpc.ServiceClientConstructor {
  cached ??= loadServiceClient('agent.proto', ['terroir', 'agent', 'v1', 'Agent']);
  return cached;
}

export function agentServiceDefinition(): grpc.ServiceDefinition {
  return agentServiceClient().service;
}

// ---------------------------------------------------------------- message shapes
// Decoded messages always have every field (defaults: true); when sending, omitted fields take
// their proto3 defaults.

export interface Selector {
  type: string;
  value: string;
}

export interface JoinTokenAttestation {
  token: string;
}

export interface TpmAttestation {
  ekCertificate: Buffer;
  ekIntermediates: Buffer[];
  ekPublic: Buffer;
  akPublic: Buffer;
  /** Where the node serves its Keylime quote endpoint; absent (null on decode) without one. */
  keylimeQuoteEndpoint?: KeylimeQuoteEndpoint | null;
  /** Where the node answers latency probes; absent (null on decode) without one. */
  latencyProbeEndpoint?: LatencyProbeEndpoint | null;
}

export interface LatencyProbeEndpoint {
  host: string;
  port: number;
}

export interface KeylimeQuoteEndpoint {
  host: string;
  port: number;
  /** PEM of the endpoint's TLS certificate (the verifier pins it). */
  tlsCertificatePem: string;
  apiVersion: string;
}

export interface AttestationParams {
  joinToken?: JoinTokenAttestation | null;
  tpm?: TpmAttestation | null;
  csr: Buffer;
  /** Set on decode: which of joinToken/tpm is present. */
  data?: 'joinToken' | 'tpm';
}

export interface ChallengeResponse {
  activatedSecret: Buffer;
  /** Unified Identity evidence; null on decode when absent. */
  unifiedIdentity?: UnifiedIdentityEvidence | null;
  /** PCR-digest selectors: the quote over the challenge's selectorPcrs; null on decode when absent. */
  pcrQuote?: TpmQuote | null;
}

export interface TpmQuote {
  attest: Buffer;
  signature: Buffer;
  /** sha256 bank: PCR index (as a string key on decode) -> value. */
  pcrs: Record<string, Buffer>;
}

export interface UnifiedIdentityEvidence {
  quote: TpmQuote | null;
  claimsDocument: Buffer;
  sensorEvidence?: Buffer;
}

export interface AttestAgentRequest {
  params?: AttestationParams | null;
  challengeResponse?: ChallengeResponse | null;
  step?: 'params' | 'challengeResponse';
}

export interface AttestationChallenge {
  credentialBlob: Buffer;
  encryptedSecret: Buffer;
  nonce: Buffer;
  expiresAt: number;
  /** Unified Identity: sha256 PCRs to quote; empty (or absent) for plain attestation. */
  quotePcrs?: number[];
  /** PCR-digest selectors: sha256 PCRs to quote into ChallengeResponse.pcrQuote; empty (or absent) for none. */
  selectorPcrs?: number[];
}

export interface AttestationResult {
  spiffeId: string;
  svidChain: Buffer[];
  selectors: Selector[];
  bundle: Buffer;
  canRenew: boolean;
  /** Unified Identity: canonical JSON claims; empty for plain attestation. */
  unifiedIdentityClaims?: Buffer;
}

export interface AttestAgentResponse {
  challenge?: AttestationChallenge | null;
  result?: AttestationResult | null;
  step?: 'challenge' | 'result';
}

export interface X509Svid {
  spiffeId: string;
  certChain: Buffer[];
  expiresAt: number;
}

export interface RegistrationEntry {
  id: string;
  spiffeId: string;
  parentId: string;
  selectors: Selector[];
  x509SvidTtl: number;
  jwtSvidTtl: number;
  federatesWith: string[];
  dnsNames: string[];
  admin: boolean;
  downstream: boolean;
  expiresAt: number;
  hint: string;
  revisionNumber: number;
}

export interface RenewAgentRequest {
  csr: Buffer;
}

export interface RenewAgentResponse {
  svid: X509Svid | null;
}

export interface SyncEntriesRequest {
  knownRevision: string;
}

export interface SyncEntriesResponse {
  revision: string;
  unchanged: boolean;
  entries: RegistrationEntry[];
}

export interface FetchBundlesRequest {
  knownSequence: number;
}

export interface FetchBundlesResponse {
  trustDomain: string;
  sequence: number;
  bundle: Buffer;
  federatedBundles: Record<string, Buffer>;
}

export interface NewX509SvidParams {
  entryId: string;
  csr: Buffer;
}

export interface BatchNewX509SvidRequest {
  params: NewX509SvidParams[];
}

export interface BatchNewX509SvidResult {
  entryId: string;
  svid: X509Svid | null;
  errorCode: number;
  errorMessage: string;
}

export interface BatchNewX509SvidResponse {
  results: BatchNewX509SvidResult[];
}

export interface NewJwtSvidRequest {
  entryId: string;
  audience: string[];
}

export interface NewJwtSvidResponse {
  spiffeId: string;
  token: string;
  expiresAt: number;
}

export type WatchAgentRequest = Record<string, never>;

export type AgentEventKind = 'KIND_UNSPECIFIED' | 'READY' | 'ENTRIES_CHANGED' | 'BUNDLE_CHANGED' | 'DROP_SVIDS';

export interface AgentEvent {
  kind: AgentEventKind;
  revision: string;
  bundleSequence: number;
  reason: string;
}

/** Channel options both sides should use: bounded message sizes. */
export const AGENT_API_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': AGENT_API_MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': AGENT_API_MAX_MESSAGE_BYTES,
};

// ---------------------------------------------------------------- Unified Identity binding

/** Domain separation label of the Unified Identity quote binding. */
export const UNIFIED_IDENTITY_BINDING_LABEL = 'terroir-unified-identity-v1';

/** Largest claims document either side accepts (real ones are well under 2 KiB). */
export const MAX_CLAIMS_DOCUMENT_BYTES = 16 * 1024;

/**
 * The quote's qualifying data for a challenge nonce and a claims document: the ASCII lower-case hex
 * of SHA-256(label || nonce || SHA-256(claims)). Hex, not the raw digest, because Keylime compares
 * the quote's extraData with its nonce string's bytes (docs/unified-identity.md); 64 bytes is
 * exactly the TPM's qualifyingData limit.
 */
export function unifiedIdentityQualifyingData(nonce: Buffer, claimsDocument: Buffer): Buffer {
  const claimsHash = crypto.createHash('sha256').update(claimsDocument).digest();
  const digest = crypto.createHash('sha256').update(UNIFIED_IDENTITY_BINDING_LABEL, 'ascii').update(nonce).update(claimsHash).digest();
  return Buffer.from(digest.toString('hex'), 'ascii');
}

// ---------------------------------------------------------------- PCR-digest selectors binding

/** Domain separation label of the PCR-selector quote binding (distinct from Unified Identity's). */
export const PCR_SELECTORS_BINDING_LABEL = 'terroir-pcr-selectors-v1';

/**
 * The qualifying data of the PCR-selector quote for a challenge nonce: SHA-256(label || nonce), 32
 * raw bytes. The label keeps this quote from ever being accepted as a Unified Identity quote (or
 * the other way round) for the same nonce.
 */
export function pcrSelectorsQualifyingData(nonce: Buffer): Buffer {
  return crypto.createHash('sha256').update(PCR_SELECTORS_BINDING_LABEL, 'ascii').update(nonce).digest();
}
