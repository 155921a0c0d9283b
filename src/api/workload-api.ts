// The SPIFFE Workload API protocol (proto/workload.proto): loading, message types, and the small
// helpers both ends need (the header, endpoint parsing, google.protobuf.Struct conversion).
// The agent serves it; the workload library (src/workload) is a client of it.
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoFile } from './proto-file.js';

/** Metadata key every Workload API request must carry, with exactly one value "true". */
export const WORKLOAD_API_HEADER = 'workload.spiffe.io';
/** Environment variable naming the Workload API endpoint (`unix:///abs/path` or `tcp://IP:port`). */
export const ENDPOINT_SOCKET_ENV = 'SPIFFE_ENDPOINT_SOCKET';

export interface X509Svid {
  spiffe_id: string;
  /** DER chain, leaf first, certificates concatenated. */
  x509_svid: Buffer;
  /** DER PKCS#8, unencrypted. */
  x509_svid_key: Buffer;
  /** Concatenated DER CA certificates of the SVID's trust domain. */
  bundle: Buffer;
  hint: string;
}
export interface X509SvidResponse {
  svids: X509Svid[];
  crl: Buffer[];
  federated_bundles: Record<string, Buffer>;
}
export interface X509BundlesResponse {
  crl: Buffer[];
  bundles: Record<string, Buffer>;
}
export interface JwtSvidRequest {
  audience: string[];
  spiffe_id: string;
}
export interface JwtSvid {
  spiffe_id: string;
  svid: string;
  hint: string;
}
export interface JwtSvidResponse {
  svids: JwtSvid[];
}
export interface JwtBundlesResponse {
  bundles: Record<string, Buffer>;
}
export interface ValidateJwtSvidRequest {
  audience: string;
  svid: string;
}
/** google.protobuf.Struct as proto-loader represents it. */
export interface ProtoStruct {
  fields: Record<string, ProtoValue>;
}
export interface ProtoValue {
  nullValue?: 'NULL_VALUE' | 0;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: ProtoStruct;
  listValue?: { values: ProtoValue[] };
  kind?: string;
}
export interface ValidateJwtSvidResponse {
  spiffe_id: string;
  claims: ProtoStruct | null;
}

/** The method names of the SpiffeWorkloadAPI service. */
export type WorkloadApiMethod =
  | 'FetchX509SVID'
  | 'FetchX509Bundles'
  | 'FetchJWTSVID'
  | 'FetchJWTBundles'
  | 'ValidateJWTSVID'
  | 'FetchWITSVID'
  | 'FetchWITBundles';

/** Proto-loader options shared by both ends: proto field names, bytes as Buffer, empty defaults present. */
export const WORKLOAD_PROTO_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

let cached: grpc.ServiceDefinition | undefined;

/** The SpiffeWorkloadAPI service definition (loaded once). */
export function workloadServiceDefinition(): grpc.ServiceDefinition {
  if (cached) return cached;
  const pkg = protoLoader.loadSync(protoFile('workload.proto'), WORKLOAD_PROTO_OPTIONS);
  const svc = pkg['SpiffeWorkloadAPI'];
  if (svc === undefined || !('FetchX509SVID' in svc)) throw new Error('SpiffeWorkloadAPI missing from workload.proto');
  cached = svc as unknown as grpc.ServiceDefinition;
  return cached;
}

/**
 * The service definition for a server that may write pre-encoded messages: a Buffer written to a
 * stream goes out as is. The agent encodes each distinct response once and writes those bytes to
 * every stream that should see it, so a rotation reaching many streams costs one encoding.
 */
export function workloadServerDefinition(): grpc.ServiceDefinition {
  const base = workloadServiceDefinition();
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(base)) {
    const serialize = m.responseSerialize;
    out[name] = {
      ...m,
      responseSerialize: (v: unknown) => (Buffer.isBuffer(v) ? v : serialize(v)),
    };
  }
  return out as grpc.ServiceDefinition;
}

/** Encodes one response message of `method` to its protobuf bytes. */
export function encodeResponse(method: WorkloadApiMethod, message: object): Buffer {
  const m = workloadServiceDefinition()[method];
  if (m === undefined) throw new Error(`unknown Workload API method ${method}`);
  return m.responseSerialize(message);
}

/** A client constructor for the SpiffeWorkloadAPI service. */
export function workloadClientConstructor(): grpc.ServiceClientConstructor {
  return grpc.makeGenericClientConstructor(workloadServiceDefinition(), 'SpiffeWorkloadAPI');
}

/** The workload client as a typed surface (the generic client's methods are untyped). */
export interface WorkloadApiClient extends grpc.Client {
  FetchX509SVID(req: object, md: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientReadableStream<X509SvidResponse>;
  FetchX509Bundles(req: object, md: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientReadableStream<X509BundlesResponse>;
  FetchJWTBundles(req: object, md: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientReadableStream<JwtBundlesResponse>;
  FetchJWTSVID(
    req: Partial<JwtSvidRequest>,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res?: JwtSvidResponse) => void,
  ): grpc.ClientUnaryCall;
  ValidateJWTSVID(
    req: ValidateJwtSvidRequest,
    md: grpc.Metadata,
    opts: grpc.CallOptions,
    cb: (err: grpc.ServiceError | null, res?: ValidateJwtSvidResponse) => void,
  ): grpc.ClientUnaryCall;
}

/** Creates a Workload API client for an endpoint (`unix:///path`, `tcp://IP:port`, or a bare path). */
export function createWorkloadClient(endpoint: string, options: grpc.ChannelOptions = {}): WorkloadApiClient {
  const Ctor = workloadClientConstructor();
  return new Ctor(grpcTarget(endpoint), grpc.credentials.createInsecure(), options) as unknown as WorkloadApiClient;
}

/** Metadata with the mandatory Workload API header. */
export function workloadMetadata(): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set(WORKLOAD_API_HEADER, 'true');
  return md;
}

export class EndpointError extends Error {
  readonly code = 'invalid_endpoint';
  constructor(message: string) {
    super(message);
    this.name = 'EndpointError';
  }
}

/**
 * Parses a SPIFFE_ENDPOINT_SOCKET value. `unix:///abs/path` (or `unix:/abs/path`) gives a socket
 * path; `tcp://IP:port` gives an IP literal and port (names are not allowed by the standard).
 */
export function parseEndpoint(value: string): { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number } {
  if (value.startsWith('/')) return { kind: 'unix', path: value };
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new EndpointError(`workload endpoint "${value}" is not a URL; use unix:///abs/path or tcp://IP:port`);
  }
  if (url.protocol === 'unix:') {
    if (url.host !== '' || url.search !== '' || url.hash !== '' || url.username !== '' || !url.pathname.startsWith('/')) {
      throw new EndpointError(`workload endpoint "${value}" must be unix:///absolute/path with no host, query or fragment`);
    }
    return { kind: 'unix', path: decodeURIComponent(url.pathname) };
  }
  if (url.protocol === 'tcp:') {
    const host = url.hostname.replace(/^\[|\]$/g, '');
    const port = Number(url.port);
    const isIp = /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host.includes(':');
    if (!isIp || !Number.isInteger(port) || port <= 0 || url.pathname !== '' && url.pathname !== '/' || url.search !== '') {
      throw new EndpointError(`workload endpoint "${value}" must be tcp://IP:port with an IP literal and a port`);
    }
    return { kind: 'tcp', host, port };
  }
  throw new EndpointError(`workload endpoint "${value}" has scheme ${url.protocol}; use unix:// or tcp://`);
}

/** The grpc-js target string for an endpoint. */
export function grpcTarget(endpoint: string): string {
  const e = parseEndpoint(endpoint);
  if (e.kind === 'unix') return `unix://${e.path}`;
  return e.host.includes(':') ? `ipv6:[${e.host}]:${e.port}` : `ipv4:${e.host}:${e.port}`;
}

/** JSON value -> google.protobuf.Value. */
export function toProtoValue(v: unknown): ProtoValue {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toProtoValue) } };
  if (typeof v === 'object') return { structValue: toProtoStruct(v as Record<string, unknown>) };
  return { stringValue: String(v) };
}

/** JSON object -> google.protobuf.Struct. */
export function toProtoStruct(obj: Record<string, unknown>): ProtoStruct {
  const fields: Record<string, ProtoValue> = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = toProtoValue(v);
  return { fields };
}

/** google.protobuf.Value -> JSON value. */
export function fromProtoValue(v: ProtoValue): unknown {
  switch (v.kind) {
    case 'numberValue': return v.numberValue;
    case 'stringValue': return v.stringValue;
    case 'boolValue': return v.boolValue;
    case 'structValue': return v.structValue ? fromProtoStruct(v.structValue) : {};
    case 'listValue': return (v.listValue?.values ?? []).map(fromProtoValue);
    default: return null;
  }
}

/** google.protobuf.Struct -> JSON object. */
export function fromProtoStruct(s: ProtoStruct): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(s.fields ?? {})) out[k] = fromProtoValue(v);
  return out;
}

/** Splits concatenated DER certificates (as the Workload API carries them) into one buffer each. */
export function splitDerCertificates(concatenated: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let off = 0;
  while (off < concatenated.length) {
    const len = derElementLength(concatenated, off);
    out.push(concatenated.subarray(off, off + len));
    off += len;
  }
  return out;
}

function derElementLength(buf: Buffer, off: number): number {
  if (buf[off] !== 0x30 || off + 2 > buf.length) throw new Error(`malformed DER certificate list at byte ${off}: expected a SEQUENCE`);
  const first = buf[off + 1] as number;
  let header = 2;
  let len = first;
  if (first & 0x80) {
    const n = first & 0x7f;
    if (n === 0 || n > 4 || off + 2 + n > buf.length) throw new Error(`malformed DER length at byte ${off}`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[off + 2 + i] as number);
    header += n;
  }
  if (off + header + len > buf.length) throw new Error(`truncated DER certificate at byte ${off}`);
  return header + len;
}
