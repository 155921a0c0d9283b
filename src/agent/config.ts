// agent.yaml: parsed with `yaml`, validated with zod, then environment overrides. Every problem is
// reported with the path of the offending key and what is expected.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';
import { parseEndpoint, ENDPOINT_SOCKET_ENV } from '../api/workload-api.js';
import { FeatureFlagError, loadFeatureFlags, type FeatureFlags, type FeatureFlagSources } from '../../feature-flags/index.js';
import { sensorConfigSchema } from '../geo/index.js';

export class AgentConfigError extends Error {
  readonly code = 'invalid_agent_config';
  constructor(message: string) {
    super(message);
    this.name = 'AgentConfigError';
  }
}

const trustDomain = z.string().regex(/^[a-z0-9._-]{1,255}$/, 'a trust domain name: lowercase letters, digits, ".", "_" or "-"');

const joinToken = z.object({ token: z.string().min(1, 'the join token must not be empty') }).strict();
const tpm = z.object({
  /** TCTI configuration, e.g. "swtpm:host=127.0.0.1,port=2321" or "device:/dev/tpmrm0". */
  tcti: z.string().min(1),
  /** Which EK to use: RSA-2048 (the TCG default) or ECC P-256. */
  ekKind: z.enum(['rsa2048', 'ecc-p256', 'ecc-p384']).default('rsa2048'),
  /** Persistent handle to keep the AK at across restarts (0x81000000-0x81ffffff); absent: a fresh AK each attestation. */
  akHandle: z.number().int().min(0x81000000).max(0x81ffffff).optional(),
}).strict();

/** The node's Keylime-compatible quote endpoint, which the Keylime verifier pulls TPM quotes from. */
const quoteEndpoint = z.object({
  bindAddress: z.string().min(1).default('0.0.0.0'),
  /** TCP port (0 picks a free one, for tests). */
  port: z.number().int().min(0).max(65535).default(9002),
  /** Host or IP the verifier should dial, sent to the server; default the bindAddress (required when that is a wildcard). */
  advertiseAddress: z.string().min(1).optional(),
  /** The endpoint's TLS certificate and key (PEM); the verifier pins this certificate. */
  certFile: z.string().min(1),
  keyFile: z.string().min(1),
  /** CA (PEM) of the verifier's client certificate: only it gets a TLS session. */
  clientCaFile: z.string().min(1),
}).strict();

/** The Kubernetes workload attestor (SPIRE's k8s WorkloadAttestor); the kubelet is always TLS-verified. */
const k8sAttestor = z.object({
  /** The kubelet's secure port, e.g. https://10.0.0.5:10250; default https://<nodeName>:10250. */
  kubeletUrl: z.string().url('an https URL of the kubelet, e.g. https://node-1:10250')
    .refine((u) => u.startsWith('https://'), 'the kubelet must be reached over https (its read-only http port is not used)').optional(),
  /** The node this agent runs on (e.g. from the downward API, spec.nodeName). */
  nodeName: z.string().regex(/^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/, 'a Kubernetes node name (DNS subdomain)').optional(),
  /** PEM CA the kubelet's serving certificate is verified against (there is no "skip verify"). */
  caFile: z.string().min(1, 'caFile: the CA of the kubelet serving certificate is required'),
  /** The agent's service account token (re-read for every kubelet request, so rotation is followed). */
  tokenFile: z.string().min(1).default('/var/run/secrets/kubernetes.io/serviceaccount/token'),
  /** How long a fetched pod list is used (ms). */
  cacheTtlMs: z.number().int().min(0).max(600_000).default(5000),
  /** A container missing from the cached list triggers at most one kubelet request per this interval (ms). */
  minRefreshIntervalMs: z.number().int().min(50).max(60_000).default(500),
  /** Larger kubelet answers are refused (bytes). */
  maxResponseBytes: z.number().int().min(1024).max(512 * 1024 * 1024).default(32 * 1024 * 1024),
}).strict().refine((k) => k.kubeletUrl !== undefined || k.nodeName !== undefined,
  'set workloadAttestors.k8s.nodeName (the kubelet is then https://<nodeName>:10250) or kubeletUrl');

/** A DNS name (letters, digits, "-", "." between labels) or an IP literal, without port or brackets. */
function isHost(s: string): boolean {
  return net.isIP(s) !== 0 || /^(?=.{1,253}$)[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?)*\.?$/.test(s);
}

const port = z.number().int().min(1).max(65535);

/** One terroir server of an HA group (servers sharing one datastore). */
const serverEndpoint = z.object({
  address: z.string().min(1).superRefine((a, ctx) => {
    if (!isHost(a)) ctx.addIssue({ code: 'custom', message: `"${a}" is not a host name or IP address (write the port in "port", and IPv6 addresses without brackets)` });
  }),
  /** Default: serverPort (8081). */
  port: port.optional(),
}).strict();

const schema = z.object({
  trustDomain,
  /** Host name or IP of the terroir server's agent API (one server; a name may resolve to several). */
  serverAddress: z.string().min(1).optional(),
  serverPort: port.default(8081),
  /** Several servers sharing one datastore (HA): the agent uses one and fails over to the others. */
  servers: z.array(serverEndpoint).min(1, 'list at least one server, or use serverAddress').max(32).optional(),
  /** Where the agent keeps its SVID, key and last bundle (created 0700). */
  dataDir: z.string().min(1),
  /** Workload API socket (absolute path); SPIFFE_ENDPOINT_SOCKET overrides it. */
  socketPath: z.string().min(1).default('/run/terroir/agent.sock'),
  /** SPIFFE bundle JSON (or PEM CA certificates) the agent trusts the server by on first attestation. */
  trustBundlePath: z.string().min(1).optional(),
  /** Development only: attest without a bootstrap bundle. Refused unless true. */
  insecureBootstrap: z.boolean().default(false),
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  /** How often entries and bundles are polled even without a server push (ms). */
  syncIntervalMs: z.number().int().min(100).max(3_600_000).default(5_000),
  /** Serve FetchX509Bundles/FetchJWTBundles to callers with no identity. */
  allowUnauthenticatedVerifiers: z.boolean().default(false),
  /** Non-standard claims of foreign JWT-SVIDs that ValidateJWTSVID passes on (others are removed). */
  allowedForeignJwtClaims: z.array(z.string().min(1).max(256)).max(64).default([]),
  nodeAttestor: z.object({ joinToken: joinToken.optional(), tpm: tpm.optional() }).strict()
    .refine((n) => (n.joinToken ? 1 : 0) + (n.tpm ? 1 : 0) === 1, 'configure exactly one of nodeAttestor.joinToken or nodeAttestor.tpm'),
  /** Keylime continuous attestation: serve a quote endpoint for the verifier (needs nodeAttestor.tpm). */
  keylime: z.object({ quoteEndpoint }).strict().optional(),
  /** Unified Identity (featureFlags.unifiedIdentity): the location sensors read at every attestation. */
  unifiedIdentity: z.object({
    sensors: z.array(sensorConfigSchema).min(1, 'configure at least one sensor').max(16),
    /** sha256 PCRs this agent agrees to quote; a server asking for others is refused. Absent: any. */
    pcrs: z.array(z.number().int().min(0).max(23)).min(1).max(24).optional(),
    /** How long one attestation waits for each sensor's reading (ms). */
    sensorTimeoutMs: z.number().int().min(100).max(600_000).default(10_000),
    /** A background reading received at most this long ago is used as is; older: wait for the next fix. */
    readingMaxAgeMs: z.number().int().min(0).max(60_000).default(2000),
  }).strict().optional(),
  /**
   * The latency probe endpoint (docs/latency-witness.md): landmarks listed here may time challenges
   * answered with the agent SVID's key or the TPM. A fixed port, because it is advertised at attestation.
   */
  latencyProbe: z.object({
    bindAddress: z.string().min(1).default('0.0.0.0'),
    port: z.number().int().min(1).max(65535),
    /** The address landmarks dial (required with a wildcard bindAddress). */
    advertiseAddress: z.string().min(1).optional(),
    /** SPIFFE IDs of the landmarks allowed to probe (this trust domain). */
    landmarks: z.array(z.string().regex(/^spiffe:\/\//, 'a SPIFFE ID (spiffe://...)')).min(1, 'list the landmarks allowed to probe this node').max(64),
  }).strict().optional(),
  /** The health listener: GET /live and GET /metrics (Prometheus; docs/observability.md). Off unless configured; loopback by default. */
  health: z.object({
    bindAddress: z.string().min(1).default('127.0.0.1'),
    port: z.number().int().min(0).max(65535),
  }).strict().optional(),
  /** OpenTelemetry traces (docs/observability.md "Traces"): off unless an OTLP/HTTP endpoint is given. */
  tracing: z.object({
    /** e.g. http://otel-collector:4318/v1/traces */
    otlpEndpoint: z.string().regex(/^https?:\/\/[^\s]+$/, 'an http(s):// URL of an OTLP/HTTP traces endpoint'),
  }).strict().optional(),
  featureFlags: z.record(z.string(), z.boolean()).optional(),
  workloadAttestors: z.object({
    unix: z.object({
      sha256: z.boolean().default(true),
      maxBinaryBytes: z.number().int().positive().default(1024 * 1024 * 1024),
    }).strict().default({ sha256: true, maxBinaryBytes: 1024 * 1024 * 1024 }),
    /** Kubernetes: pod and container of a caller, from its cgroup and the kubelet's pod list (attestor/k8s.ts). */
    k8s: k8sAttestor.optional(),
  }).strict().default({ unix: { sha256: true, maxBinaryBytes: 1024 * 1024 * 1024 } }),
}).strict();

/** Where a terroir server's agent API listens. */
export interface ServerEndpoint {
  address: string;
  port: number;
}

export type AgentConfig = Omit<z.infer<typeof schema>, 'serverAddress' | 'servers'> & {
  /** The first server and its port (insecure bootstrap, which trusts one server's CA, uses them). */
  serverAddress: string;
  /** Every server, in the configured order: `servers`, or the one `serverAddress`/`serverPort`. */
  servers: ServerEndpoint[];
  /** Resolved feature flags (environment > featureFlags > default), set by parseAgentConfig. */
  flags?: { flags: FeatureFlags; sources: FeatureFlagSources };
};
export type UnifiedIdentityAgentConfig = NonNullable<z.infer<typeof schema>['unifiedIdentity']>;
export type TpmAttestorConfig = z.infer<typeof tpm>;
export type QuoteEndpointConfig = z.infer<typeof quoteEndpoint>;

/** `servers`, or the single `serverAddress`; exactly one of them, and no server twice. */
function serverList(c: z.infer<typeof schema>): { serverAddress: string; serverPort: number; servers: ServerEndpoint[] } {
  if (c.serverAddress !== undefined && c.servers !== undefined) {
    throw new AgentConfigError('invalid agent config:\n  servers: set serverAddress (one server) or servers (several), not both; ' +
      'to fail over between servers, list every one of them under servers');
  }
  if (c.servers === undefined) {
    if (c.serverAddress === undefined) {
      throw new AgentConfigError('invalid agent config:\n  serverAddress: required: the host name or IP of the terroir server ' +
        '(or list several under servers: [{address, port}])');
    }
    return { serverAddress: c.serverAddress, serverPort: c.serverPort, servers: [{ address: c.serverAddress, port: c.serverPort }] };
  }
  const servers = c.servers.map((s) => ({ address: s.address, port: s.port ?? c.serverPort }));
  const seen = new Set<string>();
  for (const [i, s] of servers.entries()) {
    const key = `${s.address.toLowerCase()}:${s.port}`;
    if (seen.has(key)) throw new AgentConfigError(`invalid agent config:\n  servers.${i}: ${s.address} port ${s.port} is listed twice`);
    seen.add(key);
  }
  const first = servers[0] as ServerEndpoint;
  return { serverAddress: first.address, serverPort: first.port, servers };
}

function formatIssues(err: z.ZodError): string {
  return err.issues.map((i) => `  ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`).join('\n');
}

/**
 * Validates a parsed config object and applies environment overrides:
 * SPIFFE_ENDPOINT_SOCKET (socket), TERROIR_AGENT_JOIN_TOKEN (join token), TERROIR_AGENT_SERVER_ADDRESS,
 * TERROIR_AGENT_SERVER_PORT, TERROIR_AGENT_LOG_LEVEL, TERROIR_AGENT_DATA_DIR.
 */
export function parseAgentConfig(raw: unknown, env: NodeJS.ProcessEnv = process.env, baseDir = process.cwd()): AgentConfig {
  const doc = structuredClone((raw ?? {}) as Record<string, unknown>);
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new AgentConfigError('agent config must be a YAML mapping');
  if (env['TERROIR_AGENT_SERVER_ADDRESS']) {
    // The environment names the one server to use: it replaces a configured list too.
    doc['serverAddress'] = env['TERROIR_AGENT_SERVER_ADDRESS'];
    delete doc['servers'];
  }
  if (env['TERROIR_AGENT_SERVER_PORT']) doc['serverPort'] = Number(env['TERROIR_AGENT_SERVER_PORT']);
  if (env['TERROIR_AGENT_LOG_LEVEL']) doc['logLevel'] = env['TERROIR_AGENT_LOG_LEVEL'];
  if (env['TERROIR_AGENT_DATA_DIR']) doc['dataDir'] = env['TERROIR_AGENT_DATA_DIR'];
  if (env['TERROIR_AGENT_JOIN_TOKEN']) doc['nodeAttestor'] = { joinToken: { token: env['TERROIR_AGENT_JOIN_TOKEN'] } };
  const endpoint = env[ENDPOINT_SOCKET_ENV];
  if (endpoint) {
    let parsed: ReturnType<typeof parseEndpoint>;
    try {
      parsed = parseEndpoint(endpoint);
    } catch (e) {
      throw new AgentConfigError(`${ENDPOINT_SOCKET_ENV}: ${(e as Error).message}`);
    }
    if (parsed.kind !== 'unix') throw new AgentConfigError(`${ENDPOINT_SOCKET_ENV} must be a unix:// endpoint for the agent (TCP has no peer credentials)`);
    doc['socketPath'] = parsed.path;
  }
  const res = schema.safeParse(doc);
  if (!res.success) throw new AgentConfigError(`invalid agent config:\n${formatIssues(res.error)}`);
  const cfg: AgentConfig = { ...res.data, ...serverList(res.data) };
  try {
    cfg.flags = loadFeatureFlags(cfg.featureFlags, env);
  } catch (e) {
    if (e instanceof FeatureFlagError) throw new AgentConfigError(`featureFlags: ${e.message}`);
    throw e;
  }
  if (cfg.flags.flags.unifiedIdentity) {
    if (!cfg.nodeAttestor.tpm) throw new AgentConfigError('Unified Identity is enabled (UNIFIED_IDENTITY_ENABLED / featureFlags.unifiedIdentity) but nodeAttestor is not tpm: the claims are bound to a TPM quote');
    if (!cfg.unifiedIdentity) throw new AgentConfigError('Unified Identity is enabled but unifiedIdentity.sensors is not configured: the server needs location readings');
  }
  if (!path.isAbsolute(cfg.socketPath)) throw new AgentConfigError(`socketPath must be absolute, got "${cfg.socketPath}"`);
  cfg.dataDir = path.resolve(baseDir, cfg.dataDir);
  if (cfg.trustBundlePath) cfg.trustBundlePath = path.resolve(baseDir, cfg.trustBundlePath);
  const k8s = cfg.workloadAttestors.k8s;
  if (k8s) {
    k8s.caFile = path.resolve(baseDir, k8s.caFile);
    k8s.tokenFile = path.resolve(baseDir, k8s.tokenFile);
  }
  const qe = cfg.keylime?.quoteEndpoint;
  if (qe) {
    if (!cfg.nodeAttestor.tpm) throw new AgentConfigError('keylime.quoteEndpoint needs nodeAttestor.tpm: Keylime attests the node\'s TPM');
    qe.certFile = path.resolve(baseDir, qe.certFile);
    qe.keyFile = path.resolve(baseDir, qe.keyFile);
    qe.clientCaFile = path.resolve(baseDir, qe.clientCaFile);
    if (!qe.advertiseAddress && (qe.bindAddress === '0.0.0.0' || qe.bindAddress === '::')) {
      throw new AgentConfigError(`keylime.quoteEndpoint.advertiseAddress is required when bindAddress is the wildcard ${qe.bindAddress}: say which address the verifier can reach this node at`);
    }
  }
  const lp = cfg.latencyProbe;
  if (lp) {
    if ((lp.bindAddress === '0.0.0.0' || lp.bindAddress === '::') && lp.advertiseAddress === undefined) {
      throw new AgentConfigError(`latencyProbe.advertiseAddress is required when bindAddress is the wildcard ${lp.bindAddress}: say which address landmarks can reach this node at`);
    }
    for (const id of lp.landmarks) {
      if (!id.startsWith(`spiffe://${cfg.trustDomain}/`)) throw new AgentConfigError(`latencyProbe.landmarks: ${id} is not in this agent's trust domain ${cfg.trustDomain}`);
    }
  }
  if (!cfg.trustBundlePath && !cfg.insecureBootstrap) {
    throw new AgentConfigError('trustBundlePath is required: the agent must know the server\'s CA before attesting ' +
      '(get it with "terroir-server bundle show"); insecureBootstrap: true exists for development only');
  }
  return cfg;
}

/** Reads and validates an agent.yaml file (relative paths are relative to the file). */
export function loadAgentConfig(file: string, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new AgentConfigError(`cannot read agent config ${file}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = YAML.parse(text);
  } catch (e) {
    throw new AgentConfigError(`agent config ${file} is not valid YAML: ${(e as Error).message}`);
  }
  // The common layout nests everything under "agent:"; a flat file is accepted too.
  const body = raw && typeof raw === 'object' && 'agent' in raw ? (raw as { agent: unknown }).agent : raw;
  return parseAgentConfig(body, env, path.dirname(path.resolve(file)));
}
