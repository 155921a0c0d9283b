// The SPIFFE Workload API on a Unix socket: caller identification by peer credentials, the header
// check, the five RPCs, and efficient fan-out of changes to open streams.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import {
  WORKLOAD_API_HEADER,
  encodeResponse,
  toProtoStruct,
  workloadServerDefinition,
  type JwtSvidRequest,
  type ValidateJwtSvidRequest,
} from '../../api/workload-api.js';
import { IdentityCache, trustDomainId, type CacheEntry, type Identity, type TrustBundle } from '../cache.js';
import { SelectorSet, type Selector } from '../selectors.js';
import { WorkloadAttestationError, type ProcessSnapshot } from '../attestor/unix.js';
import { PeerRegistry, type Peer } from './peers.js';

/** Turns a caller into selectors (the unix attestor, or several attestors combined). */
export interface WorkloadAttestor {
  /** Records the caller when its connection is accepted (start time, executable); throws when it cannot. */
  snapshot(pid: number): ProcessSnapshot;
  /** Selectors for a call, refused when the process no longer matches its snapshot. */
  attest(cred: Peer['cred'], snapshot: ProcessSnapshot): Promise<Selector[]>;
}

/** JWT-SVID issuance and validation, provided by the agent core. */
export interface JwtProvider {
  /** A JWT-SVID for an entry and audience (cached by the agent, signed by the server). */
  fetchJwtSvid(entry: CacheEntry, audience: string[]): Promise<string>;
  /**
   * Validates a JWT-SVID with the bundles of `trustDomains` only (the caller's own trust domain and
   * those its entries federate with); throws with a reason when invalid.
   */
  validateJwtSvid(token: string, audience: string, trustDomains: ReadonlySet<string>): Promise<{ spiffeId: string; claims: Record<string, unknown> }>;
}

export interface WorkloadApiServerOptions {
  /** Absolute path of the Unix socket. */
  socketPath: string;
  cache: IdentityCache;
  attestor: WorkloadAttestor;
  jwt: JwtProvider;
  logger: Logger;
  /** Serve bundles to callers with no identity (SPIRE's allow_unauthenticated_verifiers); default false. */
  allowUnauthenticatedVerifiers?: boolean;
  /**
   * Non-standard claims of a foreign trust domain's JWT-SVID that ValidateJWTSVID passes on (SPIRE's
   * allowed_foreign_jwt_claims); all others are removed. Default: none.
   */
  allowedForeignJwtClaims?: readonly string[];
  /** Counts calls by RPC and status (the agent's metrics); absent: handlers are registered as they are. */
  metrics?: { instrumentHandlers(h: grpc.UntypedServiceImplementation): grpc.UntypedServiceImplementation };
}

/** Registered JWT claims always returned by ValidateJWTSVID (SPIRE's list). */
const STANDARD_JWT_CLAIMS = new Set(['aud', 'exp', 'iat', 'iss', 'jti', 'nbf', 'sub']);

export class WorkloadApiError extends Error {
  constructor(readonly code: 'unsafe_socket_directory' | 'not_a_socket', message: string) {
    super(message);
    this.name = 'WorkloadApiError';
  }
}

/** Largest request accepted: requests are tiny; a JWT to validate is the largest. */
const MAX_REQUEST_BYTES = 64 * 1024;
const MAX_AUDIENCES = 16;

export type StreamKind = 'FetchX509SVID' | 'FetchX509Bundles' | 'FetchJWTBundles';

/**
 * The key of a stream group: the RPC and the caller's selectors as JSON of the sorted, distinct
 * [type, value] pairs. JSON quotes and escapes every string, so no selector value (a binary path may
 * hold newlines or colons) can make one set print like another; joining "type:value" texts with a
 * separator could, and the second caller would then be served the first one's SVIDs.
 */
export function streamGroupKey(kind: StreamKind, selectors: SelectorSet): string {
  const pairs = selectors.selectors.map((s): [string, string] => [s.type, s.value]);
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  const distinct = pairs.filter((p, i) => i === 0 || p[0] !== pairs[i - 1]![0] || p[1] !== pairs[i - 1]![1]);
  return JSON.stringify([kind, distinct]);
}

interface StreamState {
  call: grpc.ServerWritableStream<unknown, unknown>;
  /** The encoded message this stream last got (compared by reference). */
  sent: Buffer | null;
}

/** Streams of one kind whose callers have the same selectors: they get the very same messages. */
interface StreamGroup {
  key: string;
  kind: StreamKind;
  selectors: SelectorSet;
  streams: Set<StreamState>;
  generation: number;
  /** The current message for the group, or null when the callers have no identity. */
  encoded: Buffer | null;
}

type Status = { code: grpc.status; details: string };

function statusError(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

export class WorkloadApiServer {
  private readonly groups = new Map<string, StreamGroup>();
  private readonly peers: PeerRegistry;
  private readonly grpcServer: grpc.Server;
  private readonly netServer: net.Server;
  private readonly unsubscribe: () => void;
  private readonly concatCache = new WeakMap<TrustBundle, Buffer>();
  private readonly sockets = new Set<net.Socket>();
  private closed = false;

  private constructor(private readonly opts: WorkloadApiServerOptions) {
    this.peers = new PeerRegistry((pid) => opts.attestor.snapshot(pid));
    this.grpcServer = new grpc.Server({
      'grpc.max_receive_message_length': MAX_REQUEST_BYTES,
      'grpc.max_concurrent_streams': 10_000,
    });
    this.grpcServer.addService(workloadServerDefinition(), this.opts.metrics ? this.opts.metrics.instrumentHandlers(this.handlers()) : this.handlers());
    const injector = this.grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    this.netServer = net.createServer((socket) => {
      if (this.closed || !this.peers.register(socket)) {
        if (!this.closed) opts.logger.warn('workload connection refused: peer credentials unavailable');
        socket.destroy();
        return;
      }
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      // A workload resetting its connection must not take the agent down; the HTTP/2 session cleans up.
      socket.on('error', () => undefined);
      injector.injectConnection(socket);
    });
    this.netServer.on('error', (err) => opts.logger.error({ err: err.message }, 'Workload API listener error'));
    this.unsubscribe = opts.cache.subscribe(() => this.broadcast());
  }

  /** Creates the socket (refusing an unsafe directory) and starts serving. */
  static async start(opts: WorkloadApiServerOptions): Promise<WorkloadApiServer> {
    prepareSocketPath(opts.socketPath);
    const srv = new WorkloadApiServer(opts);
    await new Promise<void>((resolve, reject) => {
      srv.netServer.once('error', reject);
      srv.netServer.listen(opts.socketPath, () => {
        srv.netServer.off('error', reject);
        resolve();
      });
    });
    // The Workload API is meant for every local process: the socket is world-connectable, and
    // what a caller gets is decided by attestation, not by file permissions.
    fs.chmodSync(opts.socketPath, 0o777);
    opts.logger.info({ socket: opts.socketPath }, 'Workload API listening');
    return srv;
  }

  /** Number of open streams (all kinds). */
  streamCount(): number {
    let n = 0;
    for (const g of this.groups.values()) n += g.streams.size;
    return n;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
    for (const g of this.groups.values()) for (const s of g.streams) s.call.end();
    this.groups.clear();
    const closed = new Promise<void>((resolve) => this.netServer.close(() => resolve()));
    this.grpcServer.forceShutdown();
    // Workloads keep their connections open; the listener only finishes closing once they are gone.
    for (const s of this.sockets) s.destroy();
    await closed;
    try {
      fs.unlinkSync(this.opts.socketPath);
    } catch {
      // already gone
    }
  }

  private handlers(): grpc.UntypedServiceImplementation {
    return {
      FetchX509SVID: (call: grpc.ServerWritableStream<unknown, unknown>) => void this.openStream('FetchX509SVID', call),
      FetchX509Bundles: (call: grpc.ServerWritableStream<unknown, unknown>) => void this.openStream('FetchX509Bundles', call),
      FetchJWTBundles: (call: grpc.ServerWritableStream<unknown, unknown>) => void this.openStream('FetchJWTBundles', call),
      FetchJWTSVID: (call: grpc.ServerUnaryCall<JwtSvidRequest, unknown>, cb: grpc.sendUnaryData<unknown>) =>
        void this.fetchJwtSvid(call).then((r) => cb(null, r), (e: unknown) => cb(toServiceError(e))),
      ValidateJWTSVID: (call: grpc.ServerUnaryCall<ValidateJwtSvidRequest, unknown>, cb: grpc.sendUnaryData<unknown>) =>
        void this.validateJwtSvid(call).then((r) => cb(null, r), (e: unknown) => cb(toServiceError(e))),
      FetchWITSVID: (call: grpc.ServerWritableStream<unknown, unknown>) =>
        call.emit('error', statusError(grpc.status.UNIMPLEMENTED, 'the WIT-SVID profile is not supported by this agent')),
      FetchWITBundles: (call: grpc.ServerWritableStream<unknown, unknown>) =>
        call.emit('error', statusError(grpc.status.UNIMPLEMENTED, 'the WIT-SVID profile is not supported by this agent')),
    };
  }

  /** Header check and attestation, common to every RPC. */
  private async caller(call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerUnaryCall<unknown, unknown>): Promise<SelectorSet> {
    const values = call.metadata.get(WORKLOAD_API_HEADER);
    if (values.length !== 1 || values[0] !== 'true') {
      throw statusError(grpc.status.INVALID_ARGUMENT, `security header missing from request: "${WORKLOAD_API_HEADER}: true" is required (exactly once)`);
    }
    const peer = this.peers.lookup(call.getPeer());
    if (!peer) throw statusError(grpc.status.UNAUTHENTICATED, 'caller could not be identified from its connection');
    try {
      return new SelectorSet(await this.opts.attestor.attest(peer.cred, peer.snapshot));
    } catch (e) {
      const reason = e instanceof WorkloadAttestationError ? e.message : 'workload attestation failed';
      this.opts.logger.warn({ pid: peer.cred.pid, uid: peer.cred.uid, err: reason }, 'workload attestation failed');
      throw statusError(grpc.status.PERMISSION_DENIED, `workload attestation failed: ${reason}`);
    }
  }

  private async openStream(kind: StreamKind, call: grpc.ServerWritableStream<unknown, unknown>): Promise<void> {
    let selectors: SelectorSet;
    try {
      selectors = await this.caller(call);
    } catch (e) {
      call.emit('error', toServiceError(e));
      return;
    }
    if (call.cancelled || this.closed) return;
    const key = streamGroupKey(kind, selectors);
    let group = this.groups.get(key);
    if (!group) {
      group = { key, kind, selectors, streams: new Set(), generation: -1, encoded: null };
      this.groups.set(key, group);
    }
    this.refresh(group);
    if (group.encoded === null) {
      this.dropGroupIfEmpty(group);
      call.emit('error', statusError(grpc.status.PERMISSION_DENIED, noIdentityMessage(selectors)));
      return;
    }
    const state: StreamState = { call, sent: group.encoded };
    group.streams.add(state);
    const g = group;
    const remove = () => {
      g.streams.delete(state);
      this.dropGroupIfEmpty(g);
    };
    call.once('cancelled', remove);
    call.once('close', remove);
    call.once('finish', remove);
    // The first message goes out at once.
    call.write(group.encoded);
  }

  private dropGroupIfEmpty(g: StreamGroup): void {
    if (g.streams.size === 0 && this.groups.get(g.key) === g) this.groups.delete(g.key);
  }

  /** Recomputes a group's message if the cache changed since; keeps the old Buffer if equal. */
  private refresh(g: StreamGroup): void {
    if (g.generation === this.opts.cache.generation) return;
    g.generation = this.opts.cache.generation;
    const next = this.build(g.kind, g.selectors);
    if (next !== null && g.encoded !== null && next.equals(g.encoded)) return;
    g.encoded = next;
  }

  /** On every cache change: each group's message is built and encoded once, then written to its streams. */
  private broadcast(): void {
    for (const g of [...this.groups.values()]) {
      this.refresh(g);
      if (g.encoded === null) {
        // The callers lost their last identity (entry deleted, SVIDs dropped): the stream ends.
        const err = statusError(grpc.status.PERMISSION_DENIED, noIdentityMessage(g.selectors));
        for (const s of [...g.streams]) s.call.emit('error', err);
        g.streams.clear();
        this.dropGroupIfEmpty(g);
        continue;
      }
      for (const s of g.streams) {
        if (s.sent === g.encoded) continue;
        s.sent = g.encoded;
        s.call.write(g.encoded);
      }
    }
  }

  private build(kind: StreamKind, selectors: SelectorSet): Buffer | null {
    const cache = this.opts.cache;
    const identities = cache.identitiesFor(selectors);
    const own = cache.bundle();
    if (kind === 'FetchX509SVID') {
      if (identities.length === 0 || own === null) return null;
      return encodeResponse('FetchX509SVID', {
        svids: identities.map((i) => ({
          spiffe_id: i.entry.spiffeId,
          x509_svid: Buffer.concat(i.svid.chain),
          x509_svid_key: i.svid.key,
          bundle: this.concatAuthorities(own),
          hint: i.entry.hint,
        })),
        crl: [],
        federated_bundles: this.federatedFor(identities, (b) => this.concatAuthorities(b)),
      });
    }
    if (identities.length === 0 && !this.opts.allowUnauthenticatedVerifiers) return null;
    if (own === null) return null;
    if (kind === 'FetchX509Bundles') {
      return encodeResponse('FetchX509Bundles', {
        crl: [],
        bundles: { [trustDomainId(own.trustDomain)]: this.concatAuthorities(own), ...this.federatedFor(identities, (b) => this.concatAuthorities(b)) },
      });
    }
    return encodeResponse('FetchJWTBundles', {
      bundles: { [trustDomainId(own.trustDomain)]: own.jwks, ...this.federatedFor(identities, (b) => b.jwks) },
    });
  }

  private federatedFor(identities: Identity[], pick: (b: TrustBundle) => Buffer): Record<string, Buffer> {
    const out: Record<string, Buffer> = {};
    for (const i of identities) {
      for (const td of i.entry.federatesWith) {
        const b = this.opts.cache.federatedBundle(td);
        if (b && td !== this.opts.cache.trustDomain) out[trustDomainId(td)] = pick(b);
      }
    }
    return out;
  }

  private concatAuthorities(b: TrustBundle): Buffer {
    let c = this.concatCache.get(b);
    if (!c) {
      c = Buffer.concat(b.x509Authorities);
      this.concatCache.set(b, c);
    }
    return c;
  }

  private async fetchJwtSvid(call: grpc.ServerUnaryCall<JwtSvidRequest, unknown>): Promise<object> {
    const selectors = await this.caller(call);
    const req = call.request;
    const audience = req.audience ?? [];
    if (audience.length === 0 || audience.some((a) => a === '')) {
      throw statusError(grpc.status.INVALID_ARGUMENT, 'audience must be specified (one or more non-empty values)');
    }
    if (audience.length > MAX_AUDIENCES) throw statusError(grpc.status.INVALID_ARGUMENT, `at most ${MAX_AUDIENCES} audiences`);
    let identities = this.opts.cache.identitiesFor(selectors);
    if (req.spiffe_id) identities = identities.filter((i) => i.entry.spiffeId === req.spiffe_id);
    if (identities.length === 0) {
      throw statusError(grpc.status.PERMISSION_DENIED, req.spiffe_id
        ? `no identity issued for ${req.spiffe_id} to this caller`
        : noIdentityMessage(selectors));
    }
    const svids = await Promise.all(identities.map(async (i) => {
      try {
        return { spiffe_id: i.entry.spiffeId, svid: await this.opts.jwt.fetchJwtSvid(i.entry, audience), hint: i.entry.hint };
      } catch (e) {
        this.opts.logger.warn({ spiffeId: i.entry.spiffeId, err: (e as Error).message }, 'JWT-SVID signing failed');
        throw statusError(grpc.status.UNAVAILABLE, `could not obtain a JWT-SVID for ${i.entry.spiffeId}: ${(e as Error).message}`);
      }
    }));
    return { svids };
  }

  /**
   * ValidateJWTSVID as SPIRE does it: with the bundles of the agent's trust domain and of the trust
   * domains the caller's entries federate with — not every bundle the agent holds for other
   * workloads — and a foreign token's non-standard claims removed unless allowed by configuration.
   * A caller with no identity can still validate tokens of the agent's own trust domain.
   */
  private async validateJwtSvid(call: grpc.ServerUnaryCall<ValidateJwtSvidRequest, unknown>): Promise<object> {
    const selectors = await this.caller(call);
    const { audience, svid } = call.request;
    if (!audience) throw statusError(grpc.status.INVALID_ARGUMENT, 'audience must be specified');
    if (!svid) throw statusError(grpc.status.INVALID_ARGUMENT, 'svid must be specified');
    const own = this.opts.cache.trustDomain;
    const trusted = new Set([own]);
    for (const i of this.opts.cache.identitiesFor(selectors)) for (const td of i.entry.federatesWith) trusted.add(td);
    let result: { spiffeId: string; claims: Record<string, unknown> };
    try {
      result = await this.opts.jwt.validateJwtSvid(svid, audience, trusted);
    } catch (e) {
      throw statusError(grpc.status.INVALID_ARGUMENT, `JWT-SVID rejected: ${(e as Error).message}`);
    }
    // Whatever the provider did: a token of a trust domain the caller does not trust is refused.
    const td = /^spiffe:\/\/([^/]+)/.exec(result.spiffeId)?.[1];
    if (td === undefined || !trusted.has(td)) {
      throw statusError(grpc.status.INVALID_ARGUMENT,
        `JWT-SVID rejected: trust domain "${td ?? '?'}" is not trusted by this caller (none of its entries federates with it)`);
    }
    let claims = result.claims;
    if (td !== own) {
      const allowed = this.opts.allowedForeignJwtClaims ?? [];
      claims = Object.fromEntries(Object.entries(claims).filter(([k]) => STANDARD_JWT_CLAIMS.has(k) || allowed.includes(k)));
    }
    return { spiffe_id: result.spiffeId, claims: toProtoStruct(claims) };
  }
}

function noIdentityMessage(selectors: SelectorSet): string {
  return `no identity issued (caller selectors: ${selectors.selectors.map((s) => `${s.type}:${s.value}`).join(', ') || 'none'})`;
}

function toServiceError(e: unknown): grpc.ServiceError {
  if (typeof e === 'object' && e !== null && 'code' in e && typeof (e as Status).code === 'number' && 'details' in e) {
    return e as grpc.ServiceError;
  }
  return statusError(grpc.status.INTERNAL, `internal error: ${(e as Error)?.message ?? String(e)}`);
}

/**
 * Makes the socket's directory (0755 when created) and removes a stale socket. The directory
 * must not be writable by group or others: whoever can write there could replace the socket with
 * their own and impersonate the agent to every workload.
 */
function prepareSocketPath(socketPath: string): void {
  if (!path.isAbsolute(socketPath)) throw new WorkloadApiError('unsafe_socket_directory', `socket path ${socketPath} must be absolute`);
  const dir = path.dirname(socketPath);
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const st = fs.statSync(dir);
  if ((st.mode & 0o022) !== 0) {
    throw new WorkloadApiError('unsafe_socket_directory',
      `socket directory ${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}); use a directory only the agent's user can write, e.g. mode 0755`);
  }
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid && st.uid !== 0) {
    throw new WorkloadApiError('unsafe_socket_directory', `socket directory ${dir} is owned by uid ${st.uid}, not by the agent (uid ${uid}) or root`);
  }
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(socketPath);
  } catch {
    existing = undefined;
  }
  if (existing) {
    if (!existing.isSocket()) throw new WorkloadApiError('not_a_socket', `${socketPath} exists and is not a socket; remove it or choose another path`);
    fs.unlinkSync(socketPath);
  }
}
