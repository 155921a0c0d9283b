// The admin API's behaviour, independent of the transport: each RPC validates its whole input,
// then touches the datastore, then writes one audit record. server.ts puts it on a Unix socket.
import { randomBytes } from 'node:crypto';
import { status as GrpcStatus } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import {
  ADMIN_API_MAX_BATCH,
  ADMIN_API_MAX_PAGE,
  type AdminMethod,
  type AdminMethods,
  type Agent,
  type Bundle as ApiBundle,
  type Entry as ApiEntry,
} from '../../api/admin-api.js';
import { Bundle, TrustDomain } from '../../spiffe/index.js';
import { pinoAuditor, type Auditor } from '../audit.js';
import {
  DataStoreError,
  type AttestedNode,
  type BatchResult,
  type DataStore,
  type DataStoreErrorCode,
  type EntryFilter,
  type RegistrationEntry,
} from '../datastore/types.js';
import {
  InvalidInputError,
  checkEntryId,
  joinTokenTtl,
  parseMatch,
  parseOwnId,
  parseSelectors,
  parseTrustDomain,
  toApiEntry,
  toEntryUpdate,
  toNewEntry,
} from './validate.js';

export interface AdminServiceDeps {
  store: DataStore;
  trustDomain: TrustDomain;
  logger: Logger;
  /** Where audit records go (the server's auditor: log, metrics, evidence log); default: the logger. */
  auditor?: Auditor;
  /** The server's own trust bundle, as the CA currently publishes it. */
  bundleProvider: () => Bundle;
  /** Called after any entry change (so caches/sync notice at once). */
  onEntriesChanged?: () => void;
  /** Called after an agent is evicted or banned (so its connections and SVIDs can be dropped). */
  onNodeEvicted?: (spiffeId: string) => void;
  /** Called after a federated bundle is set or deleted. */
  onFederatedBundlesChanged?: () => void;
  /**
   * Whether this server evaluates location policies (Unified Identity on). When false, an entry saved
   * with a locationPolicy is stored but answered with a warning: it is never signed until the flag is on.
   */
  locationPoliciesEnforced?: boolean;
}

/** A refusal the transport turns into a gRPC status with this message. */
export class AdminRpcError extends Error {
  override readonly name = 'AdminRpcError';
  constructor(readonly grpcCode: GrpcStatus, message: string) {
    super(message);
  }
}

const STORE_TO_GRPC: Record<DataStoreErrorCode, GrpcStatus> = {
  not_found: GrpcStatus.NOT_FOUND,
  already_exists: GrpcStatus.ALREADY_EXISTS,
  invalid_argument: GrpcStatus.INVALID_ARGUMENT,
  aborted: GrpcStatus.ABORTED,
  schema_too_new: GrpcStatus.FAILED_PRECONDITION,
  unavailable: GrpcStatus.UNAVAILABLE,
};

function toRpcError(err: unknown): AdminRpcError {
  if (err instanceof AdminRpcError) return err;
  if (err instanceof InvalidInputError) return new AdminRpcError(GrpcStatus.INVALID_ARGUMENT, err.message);
  if (err instanceof DataStoreError) return new AdminRpcError(STORE_TO_GRPC[err.code], err.message);
  return new AdminRpcError(GrpcStatus.INTERNAL, `internal error: ${(err as Error)?.message ?? String(err)}`);
}

function toApiAgent(n: AttestedNode): Agent {
  return {
    spiffeId: n.spiffeId,
    attestationType: n.attestationType,
    selectors: n.selectors,
    serialNumber: n.serialNumber,
    expiresAt: Math.floor(n.expiresAt.getTime() / 1000),
    banned: n.banned,
    attestationDataJson: JSON.stringify(n.attestationData),
    claimsJson: n.claims === undefined ? '' : JSON.stringify(n.claims),
    createdAt: Math.floor(n.createdAt.getTime() / 1000),
    updatedAt: Math.floor(n.updatedAt.getTime() / 1000),
  };
}

function toApiBundle(b: Bundle): ApiBundle {
  return {
    trustDomain: b.trustDomain.name,
    spiffeJson: b.toJSON(),
    x509Authorities: b.x509Authorities(),
    sequence: Number(b.sequenceNumber),
  };
}

/** Per-item results; a failed item echoes what identifies it (id, SPIFFE ID, parent) so callers can say which. */
function batchResults(results: BatchResult<RegistrationEntry>[], echo: Partial<ApiEntry>[], warn?: (e: RegistrationEntry) => string | undefined): AdminMethods['BatchCreateEntry'][1] {
  return {
    results: results.map((r, i) => r.ok
      ? { status: { code: GrpcStatus.OK, message: warn?.(r.value) ?? 'OK' }, entry: toApiEntry(r.value) }
      : { status: { code: STORE_TO_GRPC[r.code], message: r.message }, entry: { ...EMPTY_ENTRY, ...echo[i] } }),
  };
}

const EMPTY_ENTRY: ApiEntry = {
  id: '', spiffeId: '', parentId: '', selectors: [], x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], federatesWith: [],
  admin: false, downstream: false, hint: '', storeSvid: false, locationPolicy: '', revision: 0, createdAt: 0,
};

type Handler<M extends AdminMethod> = (req: AdminMethods[M][0], caller: string) => Promise<AdminMethods[M][1]>;
export type AdminHandlers = { [M in AdminMethod]: Handler<M> };

/** Methods that change state and so get an audit record. */
const CHANGES: ReadonlySet<AdminMethod> = new Set<AdminMethod>([
  'BatchCreateEntry', 'BatchUpdateEntry', 'BatchDeleteEntry', 'BanAgent', 'EvictAgent', 'GenerateJoinToken',
  'SetFederatedBundle', 'DeleteFederatedBundle',
]);

export interface AdminService {
  /** Runs one RPC for `caller` (e.g. "uid:1000"); rejects with AdminRpcError. */
  invoke<M extends AdminMethod>(method: M, req: AdminMethods[M][0], caller: string): Promise<AdminMethods[M][1]>;
}

export function createAdminService(deps: AdminServiceDeps): AdminService {
  const { store, trustDomain: td } = deps;
  const auditor: Auditor = deps.auditor ?? pinoAuditor(deps.logger);
  const maxBatch = (n: number, what: string): void => {
    if (n === 0) throw new InvalidInputError(`${what}: the batch is empty`);
    if (n > ADMIN_API_MAX_BATCH) throw new InvalidInputError(`${what}: at most ${ADMIN_API_MAX_BATCH} items per batch, got ${n}`);
  };
  const agentId = (s: string): string => parseOwnId('spiffeId', s, td).toString();
  const requireNode = async (id: string): Promise<AttestedNode> => {
    const n = await store.getNode(id);
    if (n === undefined) throw new AdminRpcError(GrpcStatus.NOT_FOUND, `no attested agent ${id}`);
    return n;
  };
  const entriesChanged = (results: BatchResult<unknown>[]): void => {
    if (results.some((r) => r.ok)) deps.onEntriesChanged?.();
  };
  // Saved, but never signed while the flag is off: say so to whoever saved it, and in the log.
  const policyWarning = (e: RegistrationEntry): string | undefined => {
    if (e.locationPolicy === undefined || deps.locationPoliciesEnforced !== false) return undefined;
    const warning = `OK, with a warning: entry ${e.id} names location policy ${e.locationPolicy} but Unified Identity is off on this server `
      + '(UNIFIED_IDENTITY_ENABLED): it will not be signed for any node until the flag is on';
    deps.logger.warn({ entry: e.id, locationPolicy: e.locationPolicy }, warning);
    return warning;
  };

  const handlers: AdminHandlers = {
    async BatchCreateEntry(req) {
      maxBatch(req.entries.length, 'entries');
      const entries = req.entries.map((e, i) => {
        try {
          return toNewEntry(e, td);
        } catch (err) {
          throw new InvalidInputError(`entries[${i}]: ${(err as Error).message}`);
        }
      });
      const results = await store.createEntries(entries, { allOrNothing: req.allOrNothing ?? false });
      entriesChanged(results);
      return batchResults(results, entries.map((e) => ({ id: e.id ?? '', spiffeId: e.spiffeId, parentId: e.parentId })), policyWarning);
    },

    async BatchUpdateEntry(req) {
      maxBatch(req.entries.length, 'entries');
      const updates = req.entries.map((e, i) => {
        try {
          return toEntryUpdate(e, req.mask ?? {}, td);
        } catch (err) {
          throw new InvalidInputError(`entries[${i}]: ${(err as Error).message}`);
        }
      });
      const results = await store.updateEntries(updates, { allOrNothing: req.allOrNothing ?? false });
      entriesChanged(results);
      return batchResults(results, updates.map((u) => ({ id: u.id })), policyWarning);
    },

    async BatchDeleteEntry(req) {
      maxBatch(req.ids.length, 'ids');
      const ids = req.ids.map((id) => checkEntryId(id));
      const results = await store.deleteEntries(ids, { allOrNothing: req.allOrNothing ?? false });
      entriesChanged(results);
      return batchResults(results, ids.map((id) => ({ id })));
    },

    async ListEntries(req) {
      const filter: EntryFilter = {};
      if (req.bySpiffeId) filter.spiffeId = parseOwnId('bySpiffeId', req.bySpiffeId, td).toString();
      if (req.byParentId) filter.parentId = parseOwnId('byParentId', req.byParentId, td).toString();
      if (req.byHint) filter.hint = req.byHint;
      if (req.byFederatesWith) filter.federatesWith = parseTrustDomain('byFederatesWith', req.byFederatesWith).name;
      const sel = req.bySelectors;
      if (sel && sel.selectors.length > 0) {
        filter.selectors = { selectors: parseSelectors('bySelectors', sel.selectors), match: parseMatch(sel.match) };
      }
      const size = req.pageSize ?? 0;
      if (!Number.isInteger(size) || size < 0 || size > ADMIN_API_MAX_PAGE) {
        throw new InvalidInputError(`pageSize must be 0 (= ${ADMIN_API_MAX_PAGE}) to ${ADMIN_API_MAX_PAGE}, got ${size}`);
      }
      const token = req.pageToken ?? '';
      if (token !== '') checkEntryId(token);
      // Entries come ordered by id; a page token is the last id of the previous page. One extra
      // entry is fetched to learn whether another page follows.
      const pageSize = size || ADMIN_API_MAX_PAGE;
      const got = await store.listEntries({ ...filter, ...(token ? { afterId: token } : {}), limit: pageSize + 1 });
      const page = got.slice(0, pageSize);
      const more = got.length > pageSize;
      return { entries: page.map(toApiEntry), nextPageToken: more ? page[page.length - 1]!.id : '' };
    },

    async GetEntry(req) {
      const e = await store.getEntry(checkEntryId(req.id));
      if (e === undefined) throw new AdminRpcError(GrpcStatus.NOT_FOUND, `no entry with id ${req.id}`);
      return toApiEntry(e);
    },

    async ListAgents(req) {
      const banned = req.byBanned ?? '';
      if (banned !== '' && banned !== 'true' && banned !== 'false') {
        throw new InvalidInputError(`byBanned must be "", "true" or "false", got "${banned}"`);
      }
      const type = req.byAttestationType ?? '';
      if (type !== '' && type !== 'join_token' && type !== 'tpm') {
        throw new InvalidInputError(`byAttestationType must be "join_token" or "tpm", got "${type}"`);
      }
      const nodes = await store.listNodes({
        ...(banned === '' ? {} : { banned: banned === 'true' }),
        ...(type === '' ? {} : { attestationType: type }),
      });
      return { agents: nodes.map(toApiAgent) };
    },

    async GetAgent(req) {
      return toApiAgent(await requireNode(agentId(req.spiffeId)));
    },

    async BanAgent(req) {
      const id = agentId(req.spiffeId);
      await requireNode(id);
      const n = await store.banNode(id);
      deps.onNodeEvicted?.(id);
      return toApiAgent(n);
    },

    async EvictAgent(req) {
      const id = agentId(req.spiffeId);
      const n = await store.deleteNode(id);
      if (n === undefined) throw new AdminRpcError(GrpcStatus.NOT_FOUND, `no attested agent ${id}`);
      deps.onNodeEvicted?.(id);
      return toApiAgent(n);
    },

    async GenerateJoinToken(req) {
      const ttl = joinTokenTtl(req.ttl ?? 0);
      const spiffeId = req.agentSpiffeId ? agentId(req.agentSpiffeId) : undefined;
      // 128 bits of randomness, hex: safe in a SPIFFE ID path segment.
      const value = randomBytes(16).toString('hex');
      const expiresAt = new Date(Date.now() + ttl * 1000);
      await store.createJoinToken({ token: value, expiresAt, ...(spiffeId ? { spiffeId } : {}) });
      return { value, expiresAt: Math.floor(expiresAt.getTime() / 1000), agentSpiffeId: spiffeId ?? '' };
    },

    async GetBundle() {
      return toApiBundle(deps.bundleProvider());
    },

    async ListFederatedBundles() {
      const stored = await store.listBundles();
      const bundles = stored
        .filter((b) => b.trustDomain !== td.name)
        .map((b) => toApiBundle(Bundle.parse(TrustDomain.parse(b.trustDomain), b.bundleJson)));
      return { bundles };
    },

    async SetFederatedBundle(req) {
      const fed = parseTrustDomain('trustDomain', req.trustDomain);
      if (fed.equals(td)) throw new InvalidInputError(`trustDomain: "${fed.name}" is the server's own trust domain; its bundle comes from the CA`);
      const json = req.spiffeJson ?? '';
      const certs = req.x509Authorities ?? [];
      if ((json === '') === (certs.length === 0)) {
        throw new InvalidInputError('give the bundle either as SPIFFE bundle JSON or as X.509 authorities, exactly one of them');
      }
      let bundle: Bundle;
      try {
        if (json !== '') {
          bundle = Bundle.parse(fed, json);
        } else {
          bundle = new Bundle(fed);
          for (const der of certs) bundle.addX509Authority(Buffer.from(der));
        }
      } catch (err) {
        throw new InvalidInputError(`bundle for ${fed.name}: ${(err as Error).message}`);
      }
      if (bundle.x509Authorities().length === 0 && bundle.jwtAuthorities().size === 0) {
        throw new InvalidInputError(`bundle for ${fed.name} has no X.509 or JWT authorities`);
      }
      await store.setBundle({ trustDomain: fed.name, bundleJson: bundle.toJSON(), sequence: bundle.sequenceNumber });
      deps.onFederatedBundlesChanged?.();
      return toApiBundle(bundle);
    },

    async DeleteFederatedBundle(req) {
      const fed = parseTrustDomain('trustDomain', req.trustDomain);
      if (fed.equals(td)) throw new InvalidInputError(`trustDomain: "${fed.name}" is the server's own trust domain; it cannot be deleted`);
      if (!(await store.deleteBundle(fed.name))) throw new AdminRpcError(GrpcStatus.NOT_FOUND, `no federated bundle for ${fed.name}`);
      deps.onFederatedBundlesChanged?.();
      return {};
    },

    async Healthcheck() {
      try {
        await store.entriesRevision();
      } catch (err) {
        throw new AdminRpcError(GrpcStatus.UNAVAILABLE, `datastore not answering: ${(err as Error).message}`);
      }
      return { status: 'SERVING', trustDomain: td.name };
    },
  };

  /** What the audit record says the change was about, without secrets (never the join token). */
  const subjectOf = (method: AdminMethod, req: Record<string, unknown>): string | undefined => {
    if ('spiffeId' in req && typeof req.spiffeId === 'string') return req.spiffeId;
    if ('trustDomain' in req && typeof req.trustDomain === 'string') return req.trustDomain;
    if (method === 'GenerateJoinToken') return typeof req.agentSpiffeId === 'string' && req.agentSpiffeId ? req.agentSpiffeId : 'join token';
    return undefined;
  };
  const detailsOf = (method: AdminMethod, res: unknown): Record<string, unknown> => {
    const d: Record<string, unknown> = { rpc: method };
    const results = (res as { results?: { status: { code: number; message: string }; entry: { id: string; spiffeId: string } | null }[] }).results;
    if (results) {
      d.items = results.map((r) => ({ id: r.entry?.id, spiffeId: r.entry?.spiffeId || undefined, code: r.status.code, message: r.status.code === 0 ? undefined : r.status.message }));
    }
    if (method === 'GenerateJoinToken') d.expiresAt = (res as { expiresAt?: number }).expiresAt;
    return d;
  };

  return {
    async invoke(method, req, caller) {
      const handler = handlers[method] as Handler<typeof method>;
      try {
        const res = await handler(req, caller);
        if (CHANGES.has(method)) {
          const subject = subjectOf(method, req as Record<string, unknown>);
          auditor.record({ action: 'admin', caller, ...(subject ? { subject } : {}), result: 'ok', details: detailsOf(method, res) });
        }
        return res;
      } catch (err) {
        const rpcErr = toRpcError(err);
        if (CHANGES.has(method)) {
          const subject = subjectOf(method, req as Record<string, unknown>);
          auditor.record({
            action: 'admin', caller, ...(subject ? { subject } : {}),
            result: rpcErr.grpcCode === GrpcStatus.INTERNAL || rpcErr.grpcCode === GrpcStatus.UNAVAILABLE ? 'error' : 'denied',
            reason: rpcErr.message, details: { rpc: method },
          });
        }
        if (rpcErr.grpcCode === GrpcStatus.INTERNAL) deps.logger.error({ err, rpc: method }, 'admin RPC failed');
        throw rpcErr;
      }
    },
  };
}
