// The admin API protocol (proto/admin.proto) as loaded by grpc-js, with TypeScript shapes for its
// messages. Shared by the server (which implements it) and the terroir-server CLI (which calls it).
import * as grpc from '@grpc/grpc-js';
import type * as protoLoader from '@grpc/proto-loader';
import { loadServiceClient, TERROIR_PROTO_OPTIONS } from './proto-file.js';

/** Largest message either side accepts; listings are paged well below it. */
export const ADMIN_API_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
/** Most items one batch call may carry. */
export const ADMIN_API_MAX_BATCH = 1000;
/** Largest page of ListEntries. */
export const ADMIN_API_MAX_PAGE = 1000;
export const ADMIN_SERVICE_NAME = 'terroir.admin.v1.Admin';
/** Where the CLI looks for the socket unless told otherwise. */
export const DEFAULT_ADMIN_SOCKET = '/tmp/terroir-server/private/api.sock';

/** camelCase fields, int64 as JS numbers, bytes as Buffer (see proto-file.ts). */
export const ADMIN_PROTO_OPTIONS: protoLoader.Options = TERROIR_PROTO_OPTIONS;

let cached: grpc.ServiceClientConstructor | undefined;

export function adminServiceClient(): grpc.ServiceClientConstructor {
  cached ??= loadServiceClient('admin.proto', ['terroir', 'admin', 'v1', 'Admin']);
  return cached;
}

export function adminServiceDefinition(): grpc.ServiceDefinition {
  return adminServiceClient().service;
}

// ---------------------------------------------------------------- message shapes
// Decoded messages have every field (defaults: true); when sending, omitted fields take defaults.

export interface Selector { type: string; value: string }

export interface Entry {
  id: string;
  spiffeId: string;
  parentId: string;
  selectors: Selector[];
  x509SvidTtl: number;
  jwtSvidTtl: number;
  dnsNames: string[];
  federatesWith: string[];
  admin: boolean;
  downstream: boolean;
  hint: string;
  storeSvid: boolean;
  locationPolicy: string;
  revision: number;
  createdAt: number;
}

export type EntryMask = { [K in Exclude<keyof Entry, 'id' | 'revision' | 'createdAt'>]?: boolean };

export interface Status { code: number; message: string }
export interface EntryResult { status: Status; entry: Entry | null }
export interface BatchCreateEntryRequest { entries: Partial<Entry>[]; allOrNothing?: boolean }
export interface BatchUpdateEntryRequest { entries: Partial<Entry>[]; mask: EntryMask; allOrNothing?: boolean }
export interface BatchDeleteEntryRequest { ids: string[]; allOrNothing?: boolean }
export interface BatchEntryResponse { results: EntryResult[] }

export type SelectorMatchName = 'exact' | 'subset' | 'superset' | 'any';
export interface ListEntriesRequest {
  bySpiffeId?: string;
  byParentId?: string;
  bySelectors?: { selectors: Selector[]; match?: SelectorMatchName | '' } | null;
  byHint?: string;
  byFederatesWith?: string;
  pageSize?: number;
  pageToken?: string;
}
export interface ListEntriesResponse { entries: Entry[]; nextPageToken: string }
export interface GetEntryRequest { id: string }

export interface Agent {
  spiffeId: string;
  attestationType: string;
  selectors: Selector[];
  serialNumber: string;
  expiresAt: number;
  banned: boolean;
  attestationDataJson: string;
  claimsJson: string;
  createdAt: number;
  updatedAt: number;
}
export interface ListAgentsRequest { byBanned?: '' | 'true' | 'false'; byAttestationType?: string }
export interface ListAgentsResponse { agents: Agent[] }
export interface AgentRequest { spiffeId: string }

export interface GenerateJoinTokenRequest { ttl?: number; agentSpiffeId?: string }
export interface JoinToken { value: string; expiresAt: number; agentSpiffeId: string }

export interface Bundle { trustDomain: string; spiffeJson: string; x509Authorities: Buffer[]; sequence: number }
export interface ListFederatedBundlesResponse { bundles: Bundle[] }
export interface SetFederatedBundleRequest { trustDomain: string; spiffeJson?: string; x509Authorities?: Buffer[] }
export interface DeleteFederatedBundleRequest { trustDomain: string }
export interface HealthcheckResponse { status: string; trustDomain: string }

/** The methods of the Admin service, request → response, for typed clients and handlers. */
export interface AdminMethods {
  BatchCreateEntry: [BatchCreateEntryRequest, BatchEntryResponse];
  BatchUpdateEntry: [BatchUpdateEntryRequest, BatchEntryResponse];
  BatchDeleteEntry: [BatchDeleteEntryRequest, BatchEntryResponse];
  ListEntries: [ListEntriesRequest, ListEntriesResponse];
  GetEntry: [GetEntryRequest, Entry];
  ListAgents: [ListAgentsRequest, ListAgentsResponse];
  GetAgent: [AgentRequest, Agent];
  BanAgent: [AgentRequest, Agent];
  EvictAgent: [AgentRequest, Agent];
  GenerateJoinToken: [GenerateJoinTokenRequest, JoinToken];
  GetBundle: [Record<string, never>, Bundle];
  ListFederatedBundles: [Record<string, never>, ListFederatedBundlesResponse];
  SetFederatedBundle: [SetFederatedBundleRequest, Bundle];
  DeleteFederatedBundle: [DeleteFederatedBundleRequest, Record<string, never>];
  Healthcheck: [Record<string, never>, HealthcheckResponse];
}
export type AdminMethod = keyof AdminMethods;

/** A client for the admin socket; `call` returns a promise and rejects with the grpc ServiceError. */
export class AdminClient {
  private readonly client: grpc.Client;

  constructor(socketPath: string) {
    const Ctor = adminServiceClient();
    this.client = new Ctor(`unix:${socketPath}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': ADMIN_API_MAX_MESSAGE_BYTES,
      'grpc.max_send_message_length': ADMIN_API_MAX_MESSAGE_BYTES,
    });
  }

  call<M extends AdminMethod>(method: M, request: AdminMethods[M][0], timeoutMs = 30_000): Promise<AdminMethods[M][1]> {
    const fn = (this.client as unknown as Record<string, unknown>)[method] as
      (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void;
    return new Promise((resolve, reject) => {
      fn.call(this.client, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
        if (err) reject(err);
        else resolve(res as AdminMethods[M][1]);
      });
    });
  }

  close(): void {
    this.client.close();
  }
}
