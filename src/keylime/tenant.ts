/**
 * Tenant operations for continuous (pull-mode) attestation: enroll a node with the verifier, read
 * its attestation status, remove it. The verifier then pulls quotes from the node's quote endpoint.
 */
import net from 'node:net';
import { z } from 'zod';
import type { KeylimeVerifierClient } from './client.js';
import { KeylimeError } from './errors.js';
import { tpmPolicyJson, type TpmPolicy } from './policy.js';
import { checkTpm2bPublic } from './tpm-public.js';

export interface EnrollAgentRequest {
  /** The node's AK, TPM2B_PUBLIC (verified by the caller: credential activation against the EK). */
  akPublic: Uint8Array;
  /** PCR allowlist; PCR 16 (the quote endpoint's key binding) is always added to the mask. */
  tpmPolicy: TpmPolicy | string;
  /** Where the verifier reaches the node's quote endpoint. */
  quoteEndpoint: { ip: string; port: number };
  /** The quote endpoint's TLS certificate (PEM); the verifier pins it. */
  quoteEndpointCert: string;
  /** Agent API version the quote endpoint speaks. Default '2.2'. */
  agentApiVersion?: string;
  acceptHashAlgs?: string[];
  acceptEncryptionAlgs?: string[];
  acceptSigningAlgs?: string[];
  /** Free-form metadata Keylime stores (serialized as JSON). */
  metadata?: Record<string, unknown>;
  /** Measured-boot policy JSON and its name, or null for none. */
  mbPolicy?: string | null;
  mbPolicyName?: string | null;
  /** Runtime policy, already base64 as Keylime wants it; '' for none. */
  runtimePolicy?: string;
  imaSignVerificationKeys?: string;
  revocationKey?: string;
}

/** Keylime operational states. */
export const OperationalState = {
  Registered: 0,
  Start: 1,
  Saved: 2,
  GetQuote: 3,
  GetQuoteRetry: 4,
  ProvideV: 5,
  ProvideVRetry: 6,
  Failed: 7,
  Terminated: 8,
  InvalidQuote: 9,
  TenantFailed: 10,
} as const;

export interface AgentStatus {
  operationalState: number;
  attestationStatus: string | undefined;
  attestationCount: number;
  /** Seconds since the epoch of the last quote that verified, or undefined if none yet. */
  lastSuccessfulAttestation: number | undefined;
  lastEventId: string | undefined;
  severityLevel: number | undefined;
  /** The metadata given at enrollment (parsed JSON object), or undefined if absent or unreadable. */
  metadata?: Record<string, unknown> | undefined;
}

const statusResults = z.looseObject({
  operational_state: z.number().int().min(0).max(10),
  attestation_status: z.string().max(32).nullish(),
  attestation_count: z.number().int().min(0).default(0),
  last_successful_attestation: z.number().int().min(0).nullish(),
  last_event_id: z.string().max(1024).nullish(),
  severity_level: z.number().int().nullish(),
  meta_data: z.string().max(64 * 1024).nullish(),
});
/**
 * GET /agents/ lists the verifier's agent ids as `uuids`: Keylime serializes its database rows, so
 * each id may come as a one-element list (7.x) or as a bare string; both are read.
 */
const listResults = z.looseObject({
  uuids: z.array(z.union([z.string(), z.tuple([z.string()]).rest(z.unknown())])).max(1_000_000),
});
const MAX_LISTED = 1_000_000;
const anyResults = z.unknown();

const AGENT_ID = /^[A-Za-z0-9._-]{1,255}$/;
const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

export type DeleteOutcome = 'deleted' | 'deleting' | 'not_found';

export class KeylimeTenant {
  constructor(private readonly client: KeylimeVerifierClient) {}

  /** Enrolls a node for continuous attestation. Throws KeylimeRequestError (status 409) if already enrolled. */
  async enrollAgent(agentId: string, req: EnrollAgentRequest): Promise<void> {
    checkAgentId(agentId);
    const { ip, port } = req.quoteEndpoint;
    checkTpm2bPublic(req.akPublic, 'akPublic');
    if (net.isIP(ip) === 0 && !HOSTNAME.test(ip)) throw new KeylimeError('KEYLIME_BAD_REQUEST', `quote endpoint address ${JSON.stringify(ip.slice(0, 64))} is neither an IP address nor a host name`);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new KeylimeError('KEYLIME_BAD_REQUEST', `quote endpoint port ${port} is not a TCP port`);
    if (!req.quoteEndpointCert.includes('-----BEGIN CERTIFICATE-----')) throw new KeylimeError('KEYLIME_BAD_REQUEST', 'quoteEndpointCert must be a PEM certificate');
    const tpmPolicy = typeof req.tpmPolicy === 'string' ? req.tpmPolicy : tpmPolicyJson(req.tpmPolicy, [16]);
    // Every key Keylime requires must be present (missing ones are a 400), even when null or empty.
    const body = {
      v: null,
      cloudagent_ip: ip,
      cloudagent_port: port,
      tpm_policy: tpmPolicy,
      runtime_policy: req.runtimePolicy ?? '',
      runtime_policy_name: null,
      runtime_policy_key: null,
      mb_policy: req.mbPolicy ?? null,
      mb_policy_name: req.mbPolicyName ?? null,
      ima_sign_verification_keys: req.imaSignVerificationKeys ?? '',
      metadata: JSON.stringify(req.metadata ?? {}),
      revocation_key: req.revocationKey ?? '',
      accept_tpm_hash_algs: req.acceptHashAlgs ?? ['sha256'],
      accept_tpm_encryption_algs: req.acceptEncryptionAlgs ?? ['ecc', 'rsa'],
      accept_tpm_signing_algs: req.acceptSigningAlgs ?? ['ecdsa', 'rsassa'],
      ak_tpm: Buffer.from(req.akPublic).toString('base64'),
      mtls_cert: req.quoteEndpointCert,
      supported_version: req.agentApiVersion ?? '2.2',
    };
    await this.client.call({ method: 'POST', path: `/agents/${agentId}`, body, results: anyResults, idempotent: false });
  }

  async getAgentStatus(agentId: string): Promise<AgentStatus> {
    checkAgentId(agentId);
    const { results } = await this.client.call({ method: 'GET', path: `/agents/${agentId}`, results: statusResults, idempotent: true });
    return {
      operationalState: results.operational_state,
      attestationStatus: results.attestation_status ?? undefined,
      attestationCount: results.attestation_count,
      lastSuccessfulAttestation: results.last_successful_attestation || undefined,
      lastEventId: results.last_event_id ?? undefined,
      severityLevel: results.severity_level ?? undefined,
      metadata: parseMetadata(results.meta_data),
    };
  }

  /** The ids of every agent the verifier holds (enrolled by anyone: filter before acting on them). */
  async listAgents(): Promise<string[]> {
    const { results } = await this.client.call({ method: 'GET', path: '/agents/', results: listResults, idempotent: true });
    const ids = results.uuids.slice(0, MAX_LISTED).map((u) => (typeof u === 'string' ? u : u[0]));
    return ids.filter((id) => AGENT_ID.test(id));
  }

  /** Removes a node: 'deleted' (200), 'deleting' (202, a poll was in flight), 'not_found' (404). */
  async deleteAgent(agentId: string): Promise<DeleteOutcome> {
    checkAgentId(agentId);
    const { status } = await this.client.call({ method: 'DELETE', path: `/agents/${agentId}`, results: anyResults, expect: [200, 202, 404], idempotent: true });
    return status === 200 ? 'deleted' : status === 202 ? 'deleting' : 'not_found';
  }
}

function parseMetadata(text: string | null | undefined): Record<string, unknown> | undefined {
  if (typeof text !== 'string' || text === '') return undefined;
  try {
    const v = JSON.parse(text) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? v as Record<string, unknown> : undefined;
  } catch {
    return undefined;
  }
}

function checkAgentId(id: string): void {
  if (!AGENT_ID.test(id)) throw new KeylimeError('KEYLIME_BAD_REQUEST', `agent id ${JSON.stringify(id.slice(0, 64))} must be 1..255 of [A-Za-z0-9._-]`);
}
