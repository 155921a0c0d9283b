// Workload SVID signing for an authenticated agent: BatchNewX509Svid and NewJwtSvid, each for an
// entry the agent is authorized for, behind the signing gate (Keylime, Unified Identity). Also the
// CSR helpers the other families share (attestation and renewal take a CSR too).
//
// Cost bounds: each CSR's key is checked from its SPKI before its signature (verifyCsr); each CSR
// verified and each SVID signed spends one unit of the agent's signing budget; and a batch gives the
// event loop back every SLICE_MS, so one agent's 500 CSRs never stall the server for others.
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import type * as api from '../../api/agent-api.js';
import { AGENT_API_MAX_BATCH } from '../../api/agent-api.js';
import { verifyCsr, type CsrPublicKey } from '../../spiffe/csr.js';
import { SpiffeId } from '../../spiffe/id.js';
import { unifiedIdentityExtension, unifiedIdentityJwtClaim, UNIFIED_IDENTITY_JWT_CLAIM, type UnifiedIdentityClaims } from '../../spiffe/unified-identity.js';
import type { ExtraExtension } from '../../spiffe/x509svid.js';
import type { RegistrationEntry } from '../datastore/types.js';
import type { IssuedX509 } from '../ca/issuer.js';
import { claimsOfNode } from '../attestation/unified.js';
import { nodeEvidenceRef } from '../evidence/attestation.js';
import { EVIDENCE_REF_JWT_CLAIM, evidenceRefExtension } from '../../spiffe/evidence-ref.js';
import type { AuthenticatedAgent } from './auth.js';
import { authed, budgetExhausted, gate, spend, type AgentApiContext } from './context.js';
import { csrRequestedNames } from './csr-names.js';
import { rpcError, toRpcError, RpcError } from './status.js';

/** Longest stretch of batch work (CSR verification and signing) between two turns of the event loop. */
const SLICE_MS = 5;

const MAX_AUDIENCES = 16;
const MAX_AUDIENCE_LENGTH = 512;

/** The CSR's verified key, kept as its SPKI bytes: minting copies them, so no KeyObject is decoded. */
export function parseCsr(csr: Buffer, field: string): CsrPublicKey {
  if (!csr || csr.length === 0) throw rpcError(grpc.status.INVALID_ARGUMENT, `${field} is missing: send a DER PKCS#10 CSR`);
  try {
    return verifyCsr(csr);
  } catch (err) {
    throw rpcError(grpc.status.INVALID_ARGUMENT, `${field}: ${(err as Error).message}`);
  }
}

/** Refuses a CSR that asks for names the entry does not grant (it would not get them anyway). */
function checkCsrNames(csr: Buffer, entry: RegistrationEntry): void {
  let names;
  try {
    names = csrRequestedNames(csr);
  } catch (err) {
    throw rpcError(grpc.status.INVALID_ARGUMENT, `csr: cannot read its requested names: ${(err as Error).message}`);
  }
  if (names.others.length > 0) {
    throw rpcError(grpc.status.INVALID_ARGUMENT, `csr asks for ${names.others.join(', ')} SANs; X.509-SVIDs carry only the entry's SPIFFE ID and DNS names`);
  }
  const extraUris = names.uris.filter((u) => u !== entry.spiffeId);
  if (extraUris.length > 0 || names.uris.length > 1) {
    throw rpcError(grpc.status.INVALID_ARGUMENT, `csr asks for URI SAN(s) ${names.uris.join(', ')}; entry ${entry.id} grants only ${entry.spiffeId}`);
  }
  const allowed = new Set(entry.dnsNames ?? []);
  const extraDns = names.dnsNames.filter((d) => !allowed.has(d));
  if (extraDns.length > 0) {
    throw rpcError(grpc.status.INVALID_ARGUMENT, `csr asks for DNS name(s) ${extraDns.join(', ')} that entry ${entry.id} does not grant`);
  }
}

export function x509ToWire(s: IssuedX509): api.X509Svid {
  return { spiffeId: s.spiffeId, certChain: s.certChain, expiresAt: Math.floor(s.notAfter.getTime() / 1000) };
}

/** The node's claims for the SVIDs signed through it (flag on and the node has claims). */
function nodeClaims(ctx: AgentApiContext, agent: AuthenticatedAgent): UnifiedIdentityClaims | undefined {
  return ctx.o.unifiedIdentity ? claimsOfNode(agent.node) : undefined;
}

/** The TTL for an SVID carrying `claims`: never past their expiry (the verdict behind them). */
function ttlFor(ctx: AgentApiContext, claims: UnifiedIdentityClaims | undefined, ttlS: number): number {
  return claims && ctx.o.unifiedIdentity ? ctx.o.unifiedIdentity.clampTtl(claims, ttlS) : ttlS;
}

/**
 * Refuses an entry naming a location policy the node does not satisfy. With the flag off there is no
 * location evidence at all, so such an entry is never signed (one server of an HA pair still on the
 * old setting, or a rollback, must not hand out an identity the entry restricts to a place).
 */
function checkEntryPolicy(ctx: AgentApiContext, agent: AuthenticatedAgent, entry: RegistrationEntry): void {
  const { o } = ctx;
  if (entry.locationPolicy === undefined) return;
  if (!o.unifiedIdentity) {
    throw rpcError(grpc.status.PERMISSION_DENIED, `entry ${entry.id} names location policy ${entry.locationPolicy} but Unified Identity is off on this server `
      + '(UNIFIED_IDENTITY_ENABLED): no node has location evidence here, so the entry is not signed; turn the flag on, or remove the entry\'s locationPolicy');
  }
  const why = o.unifiedIdentity.signingRefusal(agent.node, entry.locationPolicy);
  if (why !== undefined) throw rpcError(grpc.status.PERMISSION_DENIED, `entry ${entry.id}: ${why}`);
}

export function batchNewX509Svid(ctx: AgentApiContext): grpc.handleUnaryCall<api.BatchNewX509SvidRequest, api.BatchNewX509SvidResponse> {
  const { o, log, entries } = ctx;
  return authed<api.BatchNewX509SvidRequest, api.BatchNewX509SvidResponse>(ctx, 'BatchNewX509Svid', async (agent, req) => {
    const agentId = agent.id.toString();
    const params = req.params ?? [];
    gate(ctx, agent, 'sign_x509_svid');
    if (params.length === 0) throw rpcError(grpc.status.INVALID_ARGUMENT, 'params is empty: send at least one {entry_id, csr}');
    if (params.length > AGENT_API_MAX_BATCH) throw rpcError(grpc.status.INVALID_ARGUMENT, `at most ${AGENT_API_MAX_BATCH} CSRs per call, got ${params.length}`);
    // An agent with no signing budget left is refused whole, before any CSR is read.
    if (ctx.budgets.signing.retryAfterSeconds(agentId) > 0) throw budgetExhausted(ctx, 'signing', agentId);
    const set = await entries.get(agentId, agent.node.selectors);
    const results: api.BatchNewX509SvidResult[] = [];
    let ok = 0;
    const denied: string[] = [];
    // A batch usually asks many times for the same few entries: parse each SPIFFE ID once.
    const ids = new Map<string, SpiffeId>();
    // Every SVID of this batch carries the claims of the node it is issued through.
    const claims = nodeClaims(ctx, agent);
    // ... and the reference to the attestation record they rest on (docs/evidence-log.md).
    const evidence = nodeEvidenceRef(agent.node);
    const list: ExtraExtension[] = [];
    if (claims) list.push(unifiedIdentityExtension(claims));
    if (evidence) list.push(evidenceRefExtension(evidence));
    const extensions = list.length > 0 ? list : undefined;
    const serials: string[] = [];
    let sliceStart = performance.now();
    for (const p of params) {
      if (performance.now() - sliceStart >= SLICE_MS) {
        await yieldToLoop();
        sliceStart = performance.now();
      }
      try {
        const entry = set.byId.get(p.entryId);
        // Unknown and unauthorized look the same, so the API is no oracle for other agents' entries.
        if (!entry) throw rpcError(grpc.status.PERMISSION_DENIED, `entry "${p.entryId}" is not authorized for ${agentId}`);
        if (!p.csr || p.csr.length === 0) throw rpcError(grpc.status.INVALID_ARGUMENT, 'csr is missing: send a DER PKCS#10 CSR');
        // One unit per CSR verified and signed; the rest of the batch is refused item by item, so
        // the agent keeps what was signed and asks again for the others after the retry-after.
        spend(ctx, 'signing', agentId);
        let key: CsrPublicKey;
        try {
          // The key's SPKI goes into the SVID as the CSR carries it, without a KeyObject round trip.
          key = verifyCsr(p.csr);
        } catch (err) {
          throw rpcError(grpc.status.INVALID_ARGUMENT, `csr: ${(err as Error).message}`);
        }
        checkCsrNames(p.csr, entry);
        checkEntryPolicy(ctx, agent, entry);
        let id = ids.get(entry.spiffeId);
        if (id === undefined) {
          try {
            id = SpiffeId.parse(entry.spiffeId);
          } catch (err) {
            throw rpcError(grpc.status.FAILED_PRECONDITION, `entry ${entry.id} has an invalid SPIFFE ID: ${(err as Error).message}`);
          }
          ids.set(entry.spiffeId, id);
        }
        const svid = o.issuer.mintX509(id, key, ttlFor(ctx, claims, entry.x509SvidTtl ?? o.x509SvidTtl), entry.dnsNames ?? [], extensions);
        results.push({ entryId: p.entryId, svid: x509ToWire(svid), errorCode: 0, errorMessage: '' });
        serials.push(svid.serialHex);
        ok++;
      } catch (err) {
        const e = err instanceof RpcError ? err : toRpcError(err);
        if (e.code === grpc.status.INTERNAL) log.error({ err, entry: p.entryId }, 'X.509-SVID signing failed');
        if (e.code === grpc.status.PERMISSION_DENIED) denied.push(p.entryId);
        results.push({ entryId: p.entryId, svid: null, errorCode: e.code, errorMessage: e.message });
      }
    }
    o.auditor.record({
      action: 'sign_x509_svid', caller: agentId, result: ok === params.length ? 'ok' : ok === 0 ? 'denied' : 'ok',
      details: {
        requested: params.length, issued: ok, failed: params.length - ok, entries: params.map((p) => p.entryId), serials,
        ...(evidence ? { attestation: evidence.index } : {}), ...(denied.length ? { denied } : {}),
      },
    });
    return { results };
  });
}

export function newJwtSvid(ctx: AgentApiContext): grpc.handleUnaryCall<api.NewJwtSvidRequest, api.NewJwtSvidResponse> {
  const { o, entries } = ctx;
  return authed<api.NewJwtSvidRequest, api.NewJwtSvidResponse>(ctx, 'NewJwtSvid', async (agent, req) => {
    const agentId = agent.id.toString();
    gate(ctx, agent, 'sign_jwt_svid');
    const aud = req.audience ?? [];
    if (aud.length === 0 || aud.length > MAX_AUDIENCES || aud.some((a) => a === '' || a.length > MAX_AUDIENCE_LENGTH)) {
      throw rpcError(grpc.status.INVALID_ARGUMENT, `audience must hold 1..${MAX_AUDIENCES} non-empty strings of at most ${MAX_AUDIENCE_LENGTH} characters`);
    }
    spend(ctx, 'signing', agentId);
    const set = await entries.get(agentId, agent.node.selectors);
    const entry = set.byId.get(req.entryId);
    if (!entry) {
      o.auditor.record({ action: 'sign_jwt_svid', caller: agentId, subject: req.entryId, result: 'denied', reason: 'entry not authorized' });
      throw rpcError(grpc.status.PERMISSION_DENIED, `entry "${req.entryId}" is not authorized for ${agentId}`);
    }
    try {
      checkEntryPolicy(ctx, agent, entry);
    } catch (err) {
      o.auditor.record({ action: 'sign_jwt_svid', caller: agentId, subject: entry.spiffeId, result: 'denied', reason: (err as Error).message });
      throw err;
    }
    const id = SpiffeId.parse(entry.spiffeId);
    const claims = nodeClaims(ctx, agent);
    const evidence = nodeEvidenceRef(agent.node);
    const extra = {
      ...(claims ? { [UNIFIED_IDENTITY_JWT_CLAIM]: unifiedIdentityJwtClaim(claims) } : {}),
      ...(evidence ? { [EVIDENCE_REF_JWT_CLAIM]: evidence } : {}),
    };
    const jwt = await o.issuer.mintJwt(id, aud, ttlFor(ctx, claims, entry.jwtSvidTtl ?? o.jwtSvidTtl), Object.keys(extra).length > 0 ? extra : undefined);
    o.auditor.record({ action: 'sign_jwt_svid', caller: agentId, subject: entry.spiffeId, result: 'ok', details: { entry: entry.id, audience: aud, expiresAt: jwt.expiresAt.toISOString(), ...(evidence ? { attestation: evidence.index } : {}) } });
    return { spiffeId: entry.spiffeId, token: jwt.token, expiresAt: Math.floor(jwt.expiresAt.getTime() / 1000) };
  });
}
