/**
 * Keylime integration: a strict-mTLS verifier client, one-shot evidence verification, tenant
 * (continuous) operations with a monitor, the node-side quote endpoint, and the quote string codec.
 * See docs/keylime.md.
 */
export * from './errors.js';
export { KeylimeVerifierClient, CLIENT_API_VERSIONS, type KeylimeClientOptions, type KeylimeClientCounters, type CallOptions, type CallResult } from './client.js';
export { verifyEvidence, keylimeNonce, KEYLIME_NONCE, type EvidenceInput, type EvidenceVerdict } from './evidence.js';
export { KeylimeTenant, OperationalState, type EnrollAgentRequest, type AgentStatus, type DeleteOutcome } from './tenant.js';
export {
  ContinuousAttestationMonitor, MonitorFailureError,
  type MonitorOptions, type MonitorEvents, type MonitorFailure, type MonitorFailureKind, type MonitorCounters, type Verdict,
} from './monitor.js';
export { startQuoteEndpoint, createQuoteHandler, type NodeQuoter, type QuoteEndpoint, type QuoteEndpointOptions } from './quote-endpoint.js';
export { tpmDeviceQuoter, type QuotingDevice } from './tpm-quoter.js';
export { tpmPolicyJson, parseTpmPolicyJson, pcrMask, pcrIndicesFromMask, type TpmPolicy, type ParsedTpmPolicy } from './policy.js';
export {
  encodeQuoteString, decodeQuoteString, encodePcrBlob, decodePcrBlob, pcrHashAlgId, pcrHashAlgFromId, digestSize,
  DEFAULT_MAX_QUOTE_STRING, type KeylimeQuote, type PcrBank, type PcrHashAlg,
} from './quote-string.js';
