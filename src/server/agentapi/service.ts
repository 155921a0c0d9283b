// The agent API handlers (proto/agent.proto): node attestation, agent SVID renewal, entry sync,
// bundles, X.509-SVID and JWT-SVID signing, and the watch stream. Every refusal is a gRPC status
// with a message; a refused request writes nothing but its audit record.
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type * as api from '../../api/agent-api.js';
import { AGENT_API_MAX_BATCH } from '../../api/agent-api.js';
import { verifyCsr, type CsrPublicKey } from '../../spiffe/csr.js';
import { SpiffeId, type TrustDomain } from '../../spiffe/id.js';
import { DataStoreError, type DataStore, type RegistrationEntry } from '../datastore/types.js';
import type { CaManager } from '../ca/manager.js';
import type { SvidIssuer, IssuedX509 } from '../ca/issuer.js';
import type { Auditor } from '../audit.js';
import { RateLimiter, sourceAddress } from '../ratelimit.js';
import { AttestationError } from '../attestation/errors.js';
import { attestJoinToken } from '../attestation/join-token.js';
import type { TpmAttestor, PendingTpmAttestation } from '../attestation/tpm.js';
import type { KeylimeGate } from '../attestation/keylime.js';
import { claimsOfNode, type UnifiedIdentityPipeline } from '../attestation/unified.js';
import { canonicalUnifiedIdentity, unifiedIdentityExtension, unifiedIdentityJwtClaim, UNIFIED_IDENTITY_JWT_CLAIM, type UnifiedIdentityClaims } from '../../spiffe/unified-identity.js';
import type { ExtraExtension } from '../../spiffe/x509svid.js';
import type { AttestationOutcome } from '../attestation/types.js';
import { AgentAuthenticator, type AuthenticatedAgent } from './auth.js';
import { AuthorizedEntriesCache, syncResponseBytes } from './entries.js';
import { csrRequestedNames } from './csr-names.js';
import { rpcError, toRpcError, RpcError } from './status.js';
import { WatchHub } from './watch.js';

export interface AgentServiceOptions {
  trustDomain: TrustDomain;
  store: DataStore;
  ca: CaManager;
  issuer: SvidIssuer;
  joinTokens: boolean;
  tpm?: TpmAttestor;
  /** Keylime continuous attestation: TPM nodes are enrolled before issuance and gated afterwards. */
  keylime?: KeylimeGate;
  /** Unified Identity (flag on): the attestation pipeline and the claims-based signing rules. */
  unifiedIdentity?: UnifiedIdentityPipeline;
  rateLimiter: RateLimiter;
  auditor: Auditor;
  logger: Logger;
  x509SvidTtl: number;
  jwtSvidTtl: number;
  /** How long an agent has to send its first message. */
  firstMessageTimeoutMs?: number;
  watchIntervalMs: number;
  now?: () => Date;
}

const MAX_AUDIENCES = 16;
const MAX_AUDIENCE_LENGTH = 512;

export interface AgentService {
  handlers: grpc.UntypedServiceImplementation;
  watchHub: WatchHub;
  entries: AuthorizedEntriesCache;
  close(): void;
}

/** The CSR's verified key, kept as its SPKI bytes: minting copies them, so no KeyObject is decoded. */
function parseCsr(csr: Buffer, field: string): CsrPublicKey {
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

function x509ToWire(s: IssuedX509): api.X509Svid {
  return { spiffeId: s.spiffeId, certChain: s.certChain, expiresAt: Math.floor(s.notAfter.getTime() / 1000) };
}

export function createAgentService(o: AgentServiceOptions): AgentService {
  const now = o.now ?? (() => new Date());
  const log = o.logger.child({ component: 'agentapi' });
  const auth = new AgentAuthenticator(o.ca, o.store, now);
  const entries = new AuthorizedEntriesCache(o.store);
  const watchHub = new WatchHub(o.store, entries, o.watchIntervalMs, log);
  const unsubscribe = o.ca.onBundleChange((b) => watchHub.bundleChanged(b.sequence));
  watchHub.start();
  // Unified Identity: when a node's claims expire, tell its agent to drop its SVIDs and attest again.
  const claimTimers = new Map<string, NodeJS.Timeout>();
  const scheduleClaimExpiry = (agentId: string): void => {
    clearTimeout(claimTimers.get(agentId));
    const ui = o.unifiedIdentity;
    if (!ui) return;
    const timer = setTimeout(() => {
      claimTimers.delete(agentId);
      watchHub.dropNode(agentId, `Unified Identity claims expired (unifiedIdentity.reattestInterval ${ui.reattestIntervalS} s); attest again`);
    }, Math.min(ui.reattestIntervalS * 1000, 2 ** 31 - 1));
    timer.unref();
    claimTimers.set(agentId, timer);
  };

  function fail(callback: grpc.sendUnaryData<unknown>, err: unknown, what: string): void {
    const e = toRpcError(err);
    if (e.code === grpc.status.INTERNAL) log.error({ err, rpc: what }, 'agent API internal error');
    callback({ code: e.code, details: e.message } as grpc.ServiceError, null);
  }

  /** Wraps a unary handler that needs an authenticated agent. */
  function authed<Req, Res>(name: string, fn: (agent: AuthenticatedAgent, req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      auth.authenticate(call)
        .then((agent) => fn(agent, call.request))
        .then((res) => callback(null, res), (err: unknown) => fail(callback as grpc.sendUnaryData<unknown>, err, name));
    };
  }

  // ---------------------------------------------------------------- AttestAgent

  async function finalizeAttestation(out: AttestationOutcome, csrKey: CsrPublicKey, claims?: UnifiedIdentityClaims): Promise<api.AttestationResult> {
    const agentId = out.agentId.toString();
    const existing = await o.store.getNode(agentId);
    if (existing?.banned) {
      throw new AttestationError('permission_denied', `node ${agentId} is banned; an operator must evict it (agent evict) before it can attest again`);
    }
    const svid = o.issuer.mintX509(out.agentId, csrKey, o.x509SvidTtl, [], claims ? [unifiedIdentityExtension(claims)] : undefined);
    const fields = {
      attestationType: out.attestationType,
      selectors: out.selectors,
      serialNumber: svid.serialHex,
      expiresAt: svid.notAfter,
      attestationData: out.attestationData,
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
    if (claims) scheduleClaimExpiry(agentId);
    return {
      spiffeId: agentId,
      svidChain: svid.certChain,
      selectors: out.selectors,
      bundle: Buffer.from(o.ca.bundle().bundleJson),
      canRenew: out.canRenew,
      unifiedIdentityClaims: claims ? canonicalUnifiedIdentity(claims) : Buffer.alloc(0),
    };
  }

  const attestAgent: grpc.handleBidiStreamingCall<api.AttestAgentRequest, api.AttestAgentResponse> = (call) => {
    const source = sourceAddress(call.getPeer());
    let state: 'params' | 'busy' | 'challenge' | 'done' = 'params';
    let pending: { tpm: PendingTpmAttestation; csrKey: CsrPublicKey; params: api.TpmAttestation } | undefined;
    let method = 'unknown';
    let timer: NodeJS.Timeout | undefined;
    let clientEnded = false;

    const finish = (err: unknown, subject?: string): void => {
      if (state === 'done') return;
      state = 'done';
      clearTimeout(timer);
      const e = toRpcError(err);
      if (e.code === grpc.status.INTERNAL) log.error({ err, source }, 'attestation failed with an internal error');
      o.auditor.record({ action: 'attest_agent', caller: source, subject, result: e.code === grpc.status.INTERNAL ? 'error' : 'denied', reason: e.message, details: { method, code: grpc.status[e.code] } });
      call.emit('error', { code: e.code, details: e.message });
    };
    const arm = (ms: number, what: string): void => {
      clearTimeout(timer);
      timer = setTimeout(() => finish(rpcError(grpc.status.DEADLINE_EXCEEDED, `${what} did not arrive within ${Math.round(ms / 1000)} s; attest again`)), ms);
      timer.unref();
    };
    const succeed = async (out: AttestationOutcome, csrKey: CsrPublicKey, unified?: { claims: UnifiedIdentityClaims; audit: Record<string, unknown> }): Promise<void> => {
      const result = await finalizeAttestation(out, csrKey, unified?.claims);
      if (state === 'done') return;
      state = 'done';
      clearTimeout(timer);
      // The precise readings live here (the audit log) and nowhere else.
      o.auditor.record({
        action: 'attest_agent', caller: source, subject: result.spiffeId, result: 'ok',
        details: { method, selectors: out.selectors.map((s) => `${s.type}:${s.value}`), ...(unified ? { unifiedIdentity: { claims: unified.claims, ...unified.audit } } : {}) },
      });
      log.info({ agent: result.spiffeId, method, source }, 'agent attested');
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
            if (!o.joinTokens) throw rpcError(grpc.status.FAILED_PRECONDITION, 'join token attestation is disabled on this server (nodeAttestation.joinToken.enabled)');
            const out = await attestJoinToken(o.store, o.trustDomain, p.joinToken.token, now());
            await succeed(out, csrKey);
          } else if (p.data === 'tpm' && p.tpm) {
            method = 'tpm';
            if (!o.tpm) throw rpcError(grpc.status.FAILED_PRECONDITION, 'TPM attestation is disabled on this server (nodeAttestation.tpm.enabled)');
            if (o.keylime && !p.tpm.keylimeQuoteEndpoint) {
              throw rpcError(grpc.status.FAILED_PRECONDITION, 'this server requires Keylime continuous attestation for TPM nodes: configure keylime.quoteEndpoint on the agent');
            }
            // Flag on without a verifier no node can be vouched for: refuse before any TPM work.
            o.unifiedIdentity?.assertReady();
            const tpm = o.tpm.begin(p.tpm);
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
        void (async () => {
          // Secret, PCR-selector quote (when asked for), then the nonce.
          const out = await o.tpm!.finish(tpm, msg.challengeResponse!.activatedSecret, msg.challengeResponse!.pcrQuote);
          // Secret and nonce are settled; now quote, claims, Keylime one-shot and location policy.
          const unified = o.unifiedIdentity
            ? await o.unifiedIdentity.verify({
              agentId: out.agentId.toString(), ekHash: tpm.ekHash, nonce: tpm.challenge.nonce, ak: tpm.ak, akPublic: params.akPublic,
              evidence: msg.challengeResponse!.unifiedIdentity,
            }).catch((err: unknown) => withdrawOnFailure(out.agentId.toString(), err))
            : undefined;
          // Keylime must have verified a quote from this TPM before anything is issued.
          if (o.keylime) {
            const existing = await o.store.getNode(out.agentId.toString());
            if (existing?.banned) throw rpcError(grpc.status.PERMISSION_DENIED, `node ${out.agentId.toString()} is banned; an operator must evict it (agent evict) before it can attest again`);
            await o.keylime.admit({
              agentId: out.agentId.toString(), ekHash: tpm.ekHash, akPublic: params.akPublic, selectors: out.selectors,
              endpoint: params.keylimeQuoteEndpoint, sourceAddress: source,
            });
          }
          await succeed(out, csrKey, unified);
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
    call.on('cancelled', () => { state = 'done'; clearTimeout(timer); });
    call.on('error', () => { clearTimeout(timer); });
  };

  // ---------------------------------------------------------------- authenticated RPCs

  /** Why nothing may be signed for this node now, and by which gate; undefined when it is in good standing. */
  function standing(agent: AuthenticatedAgent): { gate: 'keylime' | 'unified_identity'; error: RpcError } | undefined {
    const keylime = o.keylime?.check(agent.id.toString(), agent.node.attestationType);
    if (keylime !== undefined) return { gate: 'keylime', error: keylime };
    const why = o.unifiedIdentity?.signingRefusal(agent.node, undefined);
    return why === undefined ? undefined : { gate: 'unified_identity', error: rpcError(grpc.status.PERMISSION_DENIED, why) };
  }

  /** The signing gate: refuses (and audits) any signing for a node Keylime or Unified Identity does not allow now. */
  function gate(agent: AuthenticatedAgent, action: 'renew_agent' | 'sign_x509_svid' | 'sign_jwt_svid'): void {
    const refusal = standing(agent);
    if (refusal === undefined) return;
    o.auditor.record({ action, caller: agent.id.toString(), result: 'denied', reason: refusal.error.message, details: { gate: refusal.gate } });
    // Unified Identity: a node without current claims gets nothing, and its agent is told to re-attest.
    if (refusal.gate === 'unified_identity') watchHub.dropNode(agent.id.toString(), refusal.error.message);
    throw refusal.error;
  }

  /**
   * A node that proved its TPM (secret, nonce) but whose evidence is now refused (PCR changed, Keylime
   * refusal, location out of policy, quote not bound to its claims) loses its earlier claims at once:
   * nothing more is signed for it and its agent drops its SVIDs. An unreachable verifier withdraws
   * nothing (the node's claims still expire on schedule). Always rethrows.
   */
  async function withdrawOnFailure(agentId: string, err: unknown): Promise<never> {
    if (err instanceof AttestationError && err.code === 'permission_denied') {
      const node = await o.store.getNode(agentId);
      if (node?.claims !== undefined && node.claims !== null) {
        await o.store.updateNode(agentId, { claims: null });
        const reason = `Unified Identity withdrawn: ${err.message}`;
        o.auditor.record({ action: 'attest_agent', caller: 'server', subject: agentId, result: 'denied', reason, details: { withdrawn: true } });
        watchHub.dropNode(agentId, reason);
      }
    }
    throw err;
  }

  /** The node's claims for the SVIDs signed through it (flag on and the node has claims). */
  function nodeClaims(agent: AuthenticatedAgent): UnifiedIdentityClaims | undefined {
    return o.unifiedIdentity ? claimsOfNode(agent.node) : undefined;
  }

  /** Refuses an entry naming a location policy the node does not satisfy (flag on). */
  function checkEntryPolicy(agent: AuthenticatedAgent, entry: RegistrationEntry): void {
    if (!o.unifiedIdentity || entry.locationPolicy === undefined) return;
    const why = o.unifiedIdentity.signingRefusal(agent.node, entry.locationPolicy);
    if (why !== undefined) throw rpcError(grpc.status.PERMISSION_DENIED, `entry ${entry.id}: ${why}`);
  }

  const renewAgent = authed<api.RenewAgentRequest, api.RenewAgentResponse>('RenewAgent', async (agent, req) => {
    const agentId = agent.id.toString();
    gate(agent, 'renew_agent');
    if (agent.node.attestationType === 'tpm') {
      o.auditor.record({ action: 'renew_agent', caller: agentId, result: 'denied', reason: 'tpm node must re-attest' });
      throw rpcError(grpc.status.FAILED_PRECONDITION, 'TPM nodes renew by attesting again through AttestAgent (proof of TPM possession each time)');
    }
    const key = parseCsr(req.csr, 'csr');
    const svid = o.issuer.mintX509(agent.id, key, o.x509SvidTtl);
    await o.store.updateNode(agentId, { newSerialNumber: svid.serialHex, expiresAt: svid.notAfter });
    o.auditor.record({ action: 'renew_agent', caller: agentId, subject: agentId, result: 'ok', details: { serial: svid.serialHex } });
    return { svid: x509ToWire(svid) };
  });

  // A full answer is sent pre-encoded (a Buffer; see preEncodedDefinition in server.ts).
  const syncEntries = authed<api.SyncEntriesRequest, api.SyncEntriesResponse | Buffer>('SyncEntries', async (agent, req) => {
    const set = await entries.get(agent.id.toString(), agent.node.selectors);
    if (req.knownRevision !== '' && req.knownRevision === set.revision) return { revision: set.revision, unchanged: true, entries: [] };
    return syncResponseBytes(set);
  });

  const fetchBundles = authed<api.FetchBundlesRequest, api.FetchBundlesResponse>('FetchBundles', async () => {
    const own = o.ca.bundle();
    const federatedBundles: Record<string, Buffer> = {};
    for (const b of await o.store.listBundles()) {
      if (b.trustDomain !== own.trustDomain) federatedBundles[b.trustDomain] = Buffer.from(b.bundleJson);
    }
    return { trustDomain: own.trustDomain, sequence: Number(own.sequence), bundle: Buffer.from(own.bundleJson), federatedBundles };
  });

  const batchNewX509Svid = authed<api.BatchNewX509SvidRequest, api.BatchNewX509SvidResponse>('BatchNewX509Svid', async (agent, req) => {
    const agentId = agent.id.toString();
    const params = req.params ?? [];
    gate(agent, 'sign_x509_svid');
    if (params.length === 0) throw rpcError(grpc.status.INVALID_ARGUMENT, 'params is empty: send at least one {entry_id, csr}');
    if (params.length > AGENT_API_MAX_BATCH) throw rpcError(grpc.status.INVALID_ARGUMENT, `at most ${AGENT_API_MAX_BATCH} CSRs per call, got ${params.length}`);
    const set = await entries.get(agentId, agent.node.selectors);
    const results: api.BatchNewX509SvidResult[] = [];
    let ok = 0;
    const denied: string[] = [];
    // A batch usually asks many times for the same few entries: parse each SPIFFE ID once.
    const ids = new Map<string, SpiffeId>();
    // Every SVID of this batch carries the claims of the node it is issued through.
    const claims = nodeClaims(agent);
    const extensions: ExtraExtension[] | undefined = claims ? [unifiedIdentityExtension(claims)] : undefined;
    for (const p of params) {
      try {
        const entry = set.byId.get(p.entryId);
        // Unknown and unauthorized look the same, so the API is no oracle for other agents' entries.
        if (!entry) throw rpcError(grpc.status.PERMISSION_DENIED, `entry "${p.entryId}" is not authorized for ${agentId}`);
        if (!p.csr || p.csr.length === 0) throw rpcError(grpc.status.INVALID_ARGUMENT, 'csr is missing: send a DER PKCS#10 CSR');
        let key: CsrPublicKey;
        try {
          // The key's SPKI goes into the SVID as the CSR carries it, without a KeyObject round trip.
          key = verifyCsr(p.csr);
        } catch (err) {
          throw rpcError(grpc.status.INVALID_ARGUMENT, `csr: ${(err as Error).message}`);
        }
        checkCsrNames(p.csr, entry);
        checkEntryPolicy(agent, entry);
        let id = ids.get(entry.spiffeId);
        if (id === undefined) {
          try {
            id = SpiffeId.parse(entry.spiffeId);
          } catch (err) {
            throw rpcError(grpc.status.FAILED_PRECONDITION, `entry ${entry.id} has an invalid SPIFFE ID: ${(err as Error).message}`);
          }
          ids.set(entry.spiffeId, id);
        }
        const svid = o.issuer.mintX509(id, key, entry.x509SvidTtl ?? o.x509SvidTtl, entry.dnsNames ?? [], extensions);
        results.push({ entryId: p.entryId, svid: x509ToWire(svid), errorCode: 0, errorMessage: '' });
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
      details: { requested: params.length, issued: ok, failed: params.length - ok, entries: params.map((p) => p.entryId), ...(denied.length ? { denied } : {}) },
    });
    return { results };
  });

  const newJwtSvid = authed<api.NewJwtSvidRequest, api.NewJwtSvidResponse>('NewJwtSvid', async (agent, req) => {
    const agentId = agent.id.toString();
    gate(agent, 'sign_jwt_svid');
    const aud = req.audience ?? [];
    if (aud.length === 0 || aud.length > MAX_AUDIENCES || aud.some((a) => a === '' || a.length > MAX_AUDIENCE_LENGTH)) {
      throw rpcError(grpc.status.INVALID_ARGUMENT, `audience must hold 1..${MAX_AUDIENCES} non-empty strings of at most ${MAX_AUDIENCE_LENGTH} characters`);
    }
    const set = await entries.get(agentId, agent.node.selectors);
    const entry = set.byId.get(req.entryId);
    if (!entry) {
      o.auditor.record({ action: 'sign_jwt_svid', caller: agentId, subject: req.entryId, result: 'denied', reason: 'entry not authorized' });
      throw rpcError(grpc.status.PERMISSION_DENIED, `entry "${req.entryId}" is not authorized for ${agentId}`);
    }
    try {
      checkEntryPolicy(agent, entry);
    } catch (err) {
      o.auditor.record({ action: 'sign_jwt_svid', caller: agentId, subject: entry.spiffeId, result: 'denied', reason: (err as Error).message });
      throw err;
    }
    const id = SpiffeId.parse(entry.spiffeId);
    const claims = nodeClaims(agent);
    const jwt = await o.issuer.mintJwt(id, aud, entry.jwtSvidTtl ?? o.jwtSvidTtl, claims ? { [UNIFIED_IDENTITY_JWT_CLAIM]: unifiedIdentityJwtClaim(claims) } : undefined);
    o.auditor.record({ action: 'sign_jwt_svid', caller: agentId, subject: entry.spiffeId, result: 'ok', details: { entry: entry.id, audience: aud } });
    return { spiffeId: entry.spiffeId, token: jwt.token, expiresAt: Math.floor(jwt.expiresAt.getTime() / 1000) };
  });

  const watchAgent: grpc.handleServerStreamingCall<api.WatchAgentRequest, api.AgentEvent> = (call) => {
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
      // A node that lost its standing while its agent had no watch open (reconnecting, re-keying)
      // missed the push: tell it now, so withdrawn SVIDs never outlive a reconnect.
      const refusal = standing(agent)?.error;
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

  return {
    handlers: {
      AttestAgent: attestAgent as grpc.UntypedHandleCall,
      RenewAgent: renewAgent as grpc.UntypedHandleCall,
      SyncEntries: syncEntries as grpc.UntypedHandleCall,
      FetchBundles: fetchBundles as grpc.UntypedHandleCall,
      BatchNewX509Svid: batchNewX509Svid as grpc.UntypedHandleCall,
      NewJwtSvid: newJwtSvid as grpc.UntypedHandleCall,
      WatchAgent: watchAgent as grpc.UntypedHandleCall,
    },
    watchHub,
    entries,
    close() {
      for (const t of claimTimers.values()) clearTimeout(t);
      claimTimers.clear();
      unsubscribe();
      watchHub.stop();
    },
  };
}
