// terroir-server configuration: a YAML or JSON file, validated with zod, with environment overrides
// for the settings operators usually change per deployment. Every field is documented in
// docs/server.md and examples/server.yaml.
import fs from 'node:fs';
import path from 'node:path';
import net from 'node:net';
import YAML from 'yaml';
import { z } from 'zod';
import { loadFeatureFlags, FeatureFlagError, type FeatureFlags, type FeatureFlagSources } from '../../feature-flags/index.js';
import { camaraSigningKey } from '../geo/camara.js';
import { dashboardSchema } from './dashboard/config.js';

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly code = 'invalid_config';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** A duration in seconds: a positive integer, or a string like "90s", "5m", "1h", "7d", "1h30m". */
const duration = z.union([z.number().int().positive(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return v;
  const m = /^(?:\d+[smhd])+$/.test(v.trim()) ? v.trim().match(/\d+[smhd]/g) : null;
  if (!m) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a duration; write seconds (e.g. 3600) or "30s", "5m", "1h", "1d"` });
    return z.NEVER;
  }
  let total = 0;
  for (const part of m) total += Number(part.slice(0, -1)) * (UNITS[part.slice(-1)] ?? 0);
  if (total <= 0) {
    ctx.addIssue({ code: 'custom', message: `duration "${v}" must be positive` });
    return z.NEVER;
  }
  return total;
});

const port = z.number().int().min(0).max(65535);
const trustDomainName = z.string().regex(/^[a-z0-9._-]{1,255}$/, 'a trust domain name: lowercase letters, digits, ".", "_" or "-", no scheme (e.g. "example.org")');

const dataStoreSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('sqlite'), path: z.string().min(1) }).strict(),
  z.object({
    type: z.literal('postgres'),
    connectionString: z.string().min(1),
    poolSize: z.number().int().positive().max(100).optional(),
  }).strict(),
]);

const caSchema = z.object({
  keyType: z.enum(['ec-p256', 'rsa-2048']).default('ec-p256'),
  ttl: duration.default(86400),
  x509SvidTtl: duration.default(3600),
  jwtSvidTtl: duration.default(300),
  /** Where CA keys live: only in memory (lost on restart, a new CA is minted) or on disk (0600 files). */
  keyStore: z.enum(['memory', 'disk']).default('disk'),
  /** Directory for CA key files when keyStore is disk; created 0700. Default: <dataDir>/keys. */
  keyDir: z.string().min(1).optional(),
  subject: z.object({
    commonName: z.string().min(1).default('terroir CA'),
    organization: z.string().min(1).optional(),
    country: z.string().length(2).optional(),
  }).strict().prefault({}),
  /** An upstream CA on disk: the server's CA certificates are signed by it instead of self-signed. */
  upstream: z.object({
    certFile: z.string().min(1),
    keyFile: z.string().min(1),
    /** Roots to publish in the bundle; default: the upstream certificate itself. */
    bundleFile: z.string().min(1).optional(),
  }).strict().optional(),
  /** spiffe_refresh_hint published in the bundle. */
  bundleRefreshHint: duration.default(300),
  /** JWT `iss` claim; omitted when unset (SPIRE's default). */
  jwtIssuer: z.string().url().optional(),
}).strict();

const rateSchema = z.object({
  /** Tokens added per second, per source address. */
  perSecond: z.number().positive().default(2),
  /** Bucket size: how many attestations a source may make in a burst. */
  burst: z.number().int().positive().default(10),
}).strict();

/** A per-agent token bucket of the agent API (defaults in src/server/ratelimit.ts). */
const agentRate = (perSecond: number, burst: number) => z.object({
  perSecond: z.number().positive().default(perSecond),
  burst: z.number().int().positive().default(burst),
}).strict().prefault({});

const agentApiMs = (min: number, max: number, def: number) => z.number().int().min(min).max(max).default(def);
const agentApiConnectionsSchema = z.object({
  /** A TCP connection must finish its TLS handshake within this (else closed). */
  handshakeTimeoutMs: agentApiMs(100, 120_000, 10_000),
  /** A connection with no call in flight for this long is closed (GOAWAY); agents reconnect on demand. */
  idleTimeoutMs: agentApiMs(100, 86_400_000, 300_000),
  /** Every connection is closed (GOAWAY, +/-10% jitter) after this long; calls in flight get maxAgeGraceMs more. */
  maxAgeMs: agentApiMs(1000, 604_800_000, 3_600_000),
  maxAgeGraceMs: agentApiMs(0, 86_400_000, 300_000),
  /** Open connections from one source address; more are closed at once. */
  maxPerSource: z.number().int().min(1).default(256),
  /** Open connections in total; more are closed at once. */
  maxTotal: z.number().int().min(1).default(16_384),
  /** The server pings a connection silent for this long, and closes it if no answer within keepaliveTimeoutMs. */
  keepaliveTimeMs: agentApiMs(1000, 86_400_000, 120_000),
  keepaliveTimeoutMs: agentApiMs(100, 600_000, 20_000),
}).strict();

const agentApiSchema = z.object({
  bindAddress: z.string().min(1).default('0.0.0.0'),
  port: port.default(8081),
  /** Extra SANs for the server SVID, so agents may also dial by name. */
  dnsNames: z.array(z.string().min(1)).default([]),
  ipAddresses: z.array(z.string().min(1)).default([]),
  attestationRateLimit: rateSchema.prefault({}),
  /** How often WatchAgent streams look for entry changes. */
  watchIntervalMs: z.number().int().min(50).max(60_000).default(500),
  /** Per agent: authenticated calls (tokens per second, burst). */
  rpcRateLimit: agentRate(100, 500),
  /** Per agent: CSR verifications and SVID signings, X.509 and JWT (tokens per second, burst). */
  signingRateLimit: agentRate(100, 1000),
  /** Connection hygiene: handshake and idle timeouts, maximum age, caps, keepalive. */
  connections: agentApiConnectionsSchema.prefault({}),
}).strict();

const tpmSchema = z.object({
  enabled: z.boolean().default(false),
  /** PEM or DER files of TPM manufacturer CA certificates (roots and intermediates) EK certificates must chain to. */
  manufacturerCaFiles: z.array(z.string().min(1)).default([]),
  /** Enrolled EK public hashes (lowercase hex SHA-256) accepted without an EK certificate. */
  enrolledEkHashes: z.array(z.string().regex(/^[0-9a-f]{64}$/, 'a lowercase hex SHA-256 (64 characters)')).default([]),
  /**
   * sha256-bank PCRs every TPM node must quote at attestation; each becomes a selector
   * tpm:pcr:sha256:<index>:<hex value> that entries can require. Default [] (no PCR quote asked for).
   */
  pcrSelectors: z.array(z.number().int('a PCR index is a whole number').min(0, 'PCR indexes are 0..23').max(23, 'PCR indexes are 0..23'))
    .max(24).default([])
    .refine((a) => new Set(a).size === a.length, 'a PCR is listed twice; list each PCR once'),
}).strict();

const nodeAttestationSchema = z.object({
  joinToken: z.object({ enabled: z.boolean().default(true) }).strict().prefault({}),
  tpm: tpmSchema.prefault({}),
  /** How long a TPM credential challenge (and its nonce) stays valid. */
  challengeTtl: duration.default(60),
}).strict();

const federatesWithSchema = z.object({
  trustDomain: trustDomainName,
  bundleEndpointUrl: z.string().url().refine((u) => u.startsWith('https://'), 'the bundle endpoint URL must be https://'),
  profile: z.enum(['https_web', 'https_spiffe']),
  /** https_spiffe: the SPIFFE ID the endpoint must present. */
  endpointSpiffeId: z.string().startsWith('spiffe://').optional(),
  /** https_spiffe: the first bundle of that trust domain (SPIFFE bundle JSON), used until one is fetched. */
  bootstrapBundleFile: z.string().min(1).optional(),
  /** https_web: extra CA certificates (PEM) to trust for the endpoint, in addition to the system roots. */
  caFile: z.string().min(1).optional(),
}).strict().superRefine((v, ctx) => {
  if (v.profile === 'https_spiffe' && !v.endpointSpiffeId) {
    ctx.addIssue({ code: 'custom', path: ['endpointSpiffeId'], message: 'required for the https_spiffe profile' });
  }
});

const federationSchema = z.object({
  bundleEndpoint: z.object({
    enabled: z.boolean().default(false),
    bindAddress: z.string().min(1).default('0.0.0.0'),
    port: port.default(8443),
    profile: z.enum(['https_web', 'https_spiffe']).default('https_spiffe'),
    /** https_web: the web PKI certificate chain and key (PEM). */
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
  }).strict().superRefine((v, ctx) => {
    if (v.enabled && v.profile === 'https_web' && (!v.certFile || !v.keyFile)) {
      ctx.addIssue({ code: 'custom', path: ['certFile'], message: 'certFile and keyFile are required for the https_web profile' });
    }
  }).prefault({}),
  federatesWith: z.array(federatesWithSchema).default([]),
  /** Poll interval used when a federated bundle carries no refresh hint. */
  defaultRefreshHint: duration.default(300),
}).strict();

const hexDigest = z.string().regex(/^(?:[0-9a-fA-F]{2}){20,64}$/, 'a hex PCR digest (e.g. 64 hex characters for sha256)');
/** Keylime tpm_policy: PCR index (0..23, not 16: the quote endpoint's key binding) → allowed digests. */
const tpmPolicySchema = z.record(z.string(), z.array(hexDigest).min(1, 'allow at least one value, or every quote fails'))
  .superRefine((policy, ctx) => {
    for (const k of Object.keys(policy)) {
      if (!/^(?:[0-9]|1[0-57-9]|2[0-3])$/.test(k)) {
        ctx.addIssue({ code: 'custom', path: [k], message: `"${k}" is not a PCR index 0..23 other than 16 (PCR 16 carries the quote endpoint key binding and is always checked)` });
      }
    }
  });

const keylimeSchema = z.object({
  /** The verifier's base URL (https only). */
  verifierUrl: z.string().url().refine((u) => u.startsWith('https://'), 'the Keylime verifier URL must be https://'),
  /** The verifier's CA (PEM): the only trust anchor for its certificate. */
  caFile: z.string().min(1),
  /** This server's client certificate and key (PEM), issued by a CA in the verifier's trusted_client_ca. */
  certFile: z.string().min(1),
  keyFile: z.string().min(1),
  /** TLS server name to check when the verifier's certificate names another host than the URL. */
  servername: z.string().min(1).optional(),
  /**
   * continuous: the server enrolls TPM nodes with the verifier (tenant, pull mode) and gates signing on
   * its verdicts. oneshot: no enrollment; the Unified Identity pipeline (featureFlags.unifiedIdentity)
   * sends each attestation's quote to POST /verify/evidence. With the flag on, continuous mode also
   * runs the one-shot check at every attestation.
   */
  mode: z.enum(['continuous', 'oneshot']).default('continuous'),
  /** How often the server asks the verifier about each node. */
  pollIntervalMs: z.number().int().min(100).max(600_000).default(1000),
  /** A node whose last verified quote is older than this is no longer trusted. */
  maxAttestationAge: duration.default(30),
  /** How long a new node may take to get its first quote verified before its attestation is refused. */
  enrollTimeout: duration.default(30),
  /**
   * A node enrolled by terroir that has not attested again for this long (gone, or its agent
   * stopped) is removed from the verifier, which otherwise keeps polling it forever. Checked at start
   * and every removeAfter/4 (at most hourly). Must exceed ca.x509SvidTtl: TPM nodes re-attest at
   * half their agent SVID's lifetime.
   */
  removeAfter: duration.default(86_400),
  /** Per-request timeout towards the verifier. */
  requestTimeoutMs: z.number().int().min(100).max(120_000).default(5000),
  /**
   * Unified Identity's one-shot checks: at most this many requests in flight to the verifier (and as
   * many kept-alive connections). Continuous mode's status polls are not limited (one per node).
   */
  maxConcurrentRequests: z.number().int().min(1).max(1024).default(16),
  /**
   * One-shot checks waiting for one of those slots (the wait counts against requestTimeoutMs); one
   * more is refused at once with UNAVAILABLE "verifier busy, retry", never queued without bound.
   */
  maxQueuedRequests: z.number().int().min(0).max(100_000).default(64),
  /** Default PCR policy for TPM nodes no `policies` item matches; absent: such nodes are refused. */
  tpmPolicy: tpmPolicySchema.optional(),
  /** PCR policies per node group: the first item whose selectors the node has (all of them) applies. */
  policies: z.array(z.object({
    selectors: z.array(z.string().regex(/^[^:]+:.+$/, 'a selector "type:value", e.g. "tpm:ek_hash:<hex>"')).min(1),
    tpmPolicy: tpmPolicySchema,
  }).strict()).default([]),
  /** Port agents serve their quote endpoint on; when set, an agent reporting another port is refused. */
  quoteEndpointPort: port.min(1).optional(),
  /**
   * Which host the verifier dials: `source` (default) the address the agent attested from, so an agent
   * cannot point the verifier at another machine; `advertised` the host the agent reports (behind NAT).
   */
  quoteEndpointAddress: z.enum(['source', 'advertised']).default('source'),
  /**
   * Development only: accept terroir's Keylime stand-in (the test double the native demo runs), which
   * announces itself in GET /version. Refused with NODE_ENV=production.
   */
  allowDevelopmentStandIn: z.boolean().default(false),
}).strict();

const envName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,127}$/, 'the name of an environment variable (letters, digits and _)');
/** A field that must stay absent: the secret belongs in a file or the environment, never in the config. */
const inlineSecret = (what: string, file: string, env: string) => z.unknown().optional()
  .refine((v) => v === undefined, `never put ${what} in the config: use ${file} (a file only the server can read) or ${env} (the name of an environment variable)`);
const E164 = /^\+[1-9][0-9]{4,14}$/;
const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const ipv4 = z.string().regex(IPV4, 'a dotted IPv4 address');
/** The SIM the server asks the operator about for one node: bound by the server, never named by the agent. */
const operatorDeviceSchema = z.union([
  z.object({ phoneNumber: z.string().regex(E164, 'an E.164 phone number with a leading +, e.g. +4915112345678') }).strict(),
  z.object({
    ipv4Address: z.object({
      publicAddress: ipv4,
      privateAddress: ipv4.optional(),
      publicPort: port.optional(),
    }).strict().refine((a) => a.privateAddress !== undefined || a.publicPort !== undefined, 'ipv4Address needs privateAddress or publicPort besides publicAddress (CAMARA)'),
  }).strict(),
  z.object({
    ipv6Address: z.string().refine((a) => net.isIPv6(a), 'a single IPv6 address (no /prefix or %zone), e.g. 2001:db8::1'),
  }).strict(),
  // r3.2 keeps networkAccessIdentifier in the schema only for the future (Commonalities 0.6, Device NOTE2).
  z.object({ networkAccessIdentifier: z.unknown() }).passthrough().refine(() => false, 'networkAccessIdentifier is not accepted: CAMARA r3.2 does not allow its use; map the node to a phoneNumber or an ipv4Address'),
], { error: 'a device is { phoneNumber: "+<E.164>" }, { ipv4Address: { publicAddress, privateAddress | publicPort } } or { ipv6Address: "<address>" }' });

/** Server-side mobile-operator check (CAMARA Device Location Verification) of each node's attested GNSS position. */
const operatorSchema = z.object({
  /** API root including the version path, e.g. https://operator.example/location-verification/v3 */
  baseUrl: z.string().url().refine((u) => u.startsWith('https://'), 'the operator API URL must be https://'),
  tokenUrl: z.string().url().refine((u) => u.startsWith('https://'), 'the operator token URL must be https://'),
  clientId: z.string().min(1),
  /**
   * How the server authenticates to the operator's token endpoint: `private_key_jwt` (RFC 7523; what
   * CAMARA's security profile requires) or `client_secret_basic` (the default, for operators that offer it).
   */
  clientAuthMethod: z.enum(['client_secret_basic', 'private_key_jwt']).default('client_secret_basic'),
  /** client_secret_basic: file holding the OAuth2 client secret (read at start; surrounding whitespace ignored)… */
  clientSecretFile: z.string().min(1).optional(),
  /** …or the name of the environment variable holding it. */
  clientSecretEnv: envName.optional(),
  /** private_key_jwt: PEM file of the private key whose public half the operator has registered… */
  privateKeyFile: z.string().min(1).optional(),
  /** …or the name of the environment variable holding that PEM. */
  privateKeyEnv: envName.optional(),
  /** private_key_jwt: the assertion's algorithm, as registered with the operator. */
  signingAlg: z.enum(['ES256', 'RS256', 'PS256']).optional(),
  /** private_key_jwt: the `kid` header, when the operator registered several keys. */
  keyId: z.string().min(1).max(256).optional(),
  /** Refused: secrets never go into the config file. */
  clientSecret: inlineSecret('the client secret', 'clientSecretFile', 'clientSecretEnv'),
  privateKey: inlineSecret('the private key', 'privateKeyFile', 'privateKeyEnv'),
  /** PEM CA certificate(s) to trust for the operator instead of the system roots. */
  caFile: z.string().min(1).optional(),
  /** Radius (m) of the circle around the node's GNSS position the operator is asked about. */
  radiusM: z.number().int().min(1).max(200_000).default(2000),
  /** How old (s) the operator's own location fix may be; absent: the operator's choice. */
  maxAgeS: z.number().int().min(0).max(86_400).optional(),
  requestTimeoutMs: z.number().int().min(100).max(120_000).default(5000),
  /** How far (s) the operator's clock may be off: a lastLocationTime further ahead, or older than maxAgeS by more, is refused. */
  clockSkewS: z.number().int().min(0).max(300).default(5),
  /**
   * HTTP 429/503 with Retry-After: wait and retry once when the wait is at most this (ms), else refuse
   * the attestation at once ("retry after N s") and ask nothing more until then.
   */
  maxRetryWaitMs: z.number().int().min(0).max(10_000).default(2000),
  /** Node EK hash (hex SHA-256, as in the tpm:ek_hash selector) → the SIM to ask about. */
  devices: z.record(z.string(), operatorDeviceSchema).superRefine((devices, ctx) => {
    const seen = new Set<string>();
    for (const k of Object.keys(devices)) {
      if (!/^[0-9a-fA-F]{64}$/.test(k)) {
        ctx.addIssue({ code: 'custom', path: [k], message: `"${k.slice(0, 80)}" is not an EK hash: write 64 hex characters (the tpm:ek_hash selector value)` });
      } else if (seen.has(k.toLowerCase())) {
        ctx.addIssue({ code: 'custom', path: [k], message: 'this EK hash is mapped twice (keys are case-insensitive)' });
      }
      seen.add(k.toLowerCase());
    }
  }).default({}),
}).strict().superRefine((o, ctx) => {
  const issue = (field: string, message: string): void => {
    ctx.addIssue({ code: 'custom', path: [field], message });
  };
  const [own, other] = o.clientAuthMethod === 'client_secret_basic'
    ? [['clientSecretFile', 'clientSecretEnv'], ['privateKeyFile', 'privateKeyEnv', 'signingAlg', 'keyId']] as const
    : [['privateKeyFile', 'privateKeyEnv'], ['clientSecretFile', 'clientSecretEnv']] as const;
  const given = own.filter((f) => o[f] !== undefined);
  if (given.length === 0) issue('clientAuthMethod', `${o.clientAuthMethod} needs ${own[0]} or ${own[1]}`);
  if (given.length > 1) issue(own[1], `give one of ${own[0]} and ${own[1]}, not both`);
  for (const f of other) if (o[f] !== undefined) issue(f, `${f} belongs to clientAuthMethod: ${o.clientAuthMethod === 'client_secret_basic' ? 'private_key_jwt' : 'client_secret_basic'}; remove it or change clientAuthMethod`);
  if (o.clientAuthMethod === 'private_key_jwt' && o.signingAlg === undefined) issue('signingAlg', 'private_key_jwt needs signingAlg (ES256, RS256 or PS256), as registered with the operator');
});

/** Unified Identity (featureFlags.unifiedIdentity): quote, Keylime one-shot, location policy, claims. */
/**
 * The latency witness (docs/latency-witness.md): landmarks at declared places that time a node's
 * signed answers. The positions are declared here, by the operator, never by a landmark or a node.
 */
const latencySchema = z.object({
  landmarks: z.array(z.object({
    /** The landmark's SPIFFE ID (its SVID must carry it); spiffe://<td>/spire/server for this server itself. */
    id: z.string().regex(/^spiffe:\/\/[^/]+\/.+/, 'a SPIFFE ID with a path'),
    lat: z.number().min(-90).max(90),
    lon: z.number().min(-180).max(180),
    /** https URL of the landmark's API (terroir-server landmark run); absent: this server probes by itself. */
    url: z.string().regex(/^https:\/\/[^/]+\/?$/, 'an https:// URL of the landmark (scheme, host, port; no path)').optional(),
  }).strict()).min(1, 'declare at least one landmark').max(16),
  /** What the node signs its answers with: the agent SVID key, or a TPM quote by its attested AK. */
  strength: z.enum(['agent-key', 'tpm']).default('agent-key'),
  /** Challenges per probe; the smallest round trip counts. */
  rounds: z.number().int().min(1).max(256).default(10),
  /** Per landmark and attempt. */
  timeoutMs: z.number().int().min(100).max(60_000).default(10_000),
  /** Attempts per landmark when the node's endpoint cannot be reached yet (it starts once the node has its SVID). */
  attempts: z.number().int().min(1).max(10).default(4),
}).strict();

const unifiedIdentitySchema = z.object({
  /** Sovereign-location policies (src/geo format): a file, or the document inline (YAML text or a mapping). */
  locationPolicies: z.object({
    file: z.string().min(1).optional(),
    inline: z.union([z.string().min(1), z.record(z.string(), z.unknown())]).optional(),
  }).strict().refine((l) => (l.file === undefined) !== (l.inline === undefined), 'give exactly one of locationPolicies.file or locationPolicies.inline'),
  /** The policy every node must satisfy to get an SVID; its claims go into the SVIDs. */
  defaultPolicy: z.string().min(1),
  /** sha256-bank PCRs the agents quote (PCR 16 excluded: it belongs to the quote endpoint binding). */
  pcrs: z.array(z.number().int().min(0).max(23).refine((n) => n !== 16, 'PCR 16 is reserved for the Keylime quote endpoint binding')).min(1).max(24).default([0, 1, 2, 3, 4, 5, 6, 7, 15]),
  /** PCR allowlist Keylime checks the quote against (default: keylime.tpmPolicy). Its PCRs must be among `pcrs`. */
  tpmPolicy: tpmPolicySchema.optional(),
  /** Claims older than this are expired: no SVIDs until the node re-attests (the server tells it to). */
  reattestInterval: duration.default(3600),
  /**
   * One-shot mode (keylime.mode: oneshot): how old the node's last Keylime verdict may be before
   * nothing more is signed for it. A one-shot verdict is never refreshed, so claims (and every SVID
   * carrying them) expire this long after the attestation; agents re-attest before that. Lower:
   * fresher evidence, more attestations; higher: SVIDs keep being signed longer through a verifier
   * outage. Continuous mode ignores it (keylime.maxAttestationAge bounds the verdict there).
   */
  verdictMaxAge: duration.default(300),
  /** Optional: ask the node's mobile operator whether its SIM is where its GNSS says (policies with operator.required need it). */
  operator: operatorSchema.optional(),
  /** Optional: landmarks that bound where nodes can be by the speed of light (policies with latency need them). */
  latency: latencySchema.optional(),
}).strict();

/** The evidence log (docs/evidence-log.md): on unless `enabled: false`. */
const evidenceLogSchema = z.object({
  enabled: z.boolean().default(true),
  /** The log's name in its checkpoints (C2SP origin) and the audit key's name. Default: `<trustDomain>/terroir/evidence`. */
  origin: z.string().regex(/^[!-*,-~]{1,200}$/, 'printable ASCII without spaces or "+", at most 200 characters').optional(),
  /** The audit signing key (Ed25519, C2SP signer key string), apart from the CA. Default: <dataDir>/audit-key; created 0600 when absent. */
  keyFile: z.string().min(1).optional(),
  /** Names this server in the records it writes. Default: the host name. */
  serverName: z.string().min(1).max(200).optional(),
  /** How often a new checkpoint is signed when the log grew, seconds. */
  checkpointInterval: duration.default(10),
  /** Retention: evidence bodies older than this many days may be pruned (leaf hashes and checkpoints stay). Absent: kept forever. */
  retentionDays: z.number().int().min(1).max(36500).optional(),
  /** The evidence API (proofs, entries, EARs) over mTLS: callers present an X.509-SVID of this trust domain. */
  api: z.object({
    enabled: z.boolean().default(false),
    bindAddress: z.string().min(1).default('127.0.0.1'),
    port: port.default(8445),
    /** SPIFFE IDs allowed to read checkpoints, proofs and EARs; absent: any SVID of this trust domain. */
    allowedIds: z.array(z.string().startsWith('spiffe://')).optional(),
    /**
     * SPIFFE IDs that may also read record bodies (which hold nodes' precise readings and evidence).
     * Default none: bodies leave the server only through `terroir-server audit export` on its host.
     */
    auditorIds: z.array(z.string().startsWith('spiffe://')).default([]),
  }).strict().prefault({}),
}).strict();

const serverSchema = z.object({
  trustDomain: trustDomainName,
  dataDir: z.string().min(1).default('./data'),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  dataStore: dataStoreSchema.optional(),
  ca: caSchema.prefault({}),
  agentApi: agentApiSchema.prefault({}),
  adminApi: z.object({ socketPath: z.string().min(1).optional() }).strict().prefault({}),
  health: z.object({
    enabled: z.boolean().default(true),
    bindAddress: z.string().min(1).default('127.0.0.1'),
    port: port.default(8080),
  }).strict().prefault({}),
  /**
   * Prometheus metrics at GET /metrics on the health listener (docs/observability.md). On unless
   * `enabled: false`; absent means on with the defaults.
   */
  metrics: z.object({
    enabled: z.boolean().default(true),
    /** The nodes gauge reads every node; it is recomputed at most this often (0: at every scrape). */
    nodesMaxAgeSeconds: z.number().min(0).max(3600).default(15),
  }).strict().optional(),
  nodeAttestation: nodeAttestationSchema.prefault({}),
  federation: federationSchema.prefault({}),
  /** Keylime continuous attestation for TPM nodes; absent: plain SPIFFE issuance. */
  keylime: keylimeSchema.optional(),
  unifiedIdentity: unifiedIdentitySchema.optional(),
  /** OpenTelemetry traces (docs/observability.md "Traces"): off unless an OTLP/HTTP endpoint is given. */
  tracing: z.object({
    /** e.g. http://otel-collector:4318/v1/traces */
    otlpEndpoint: z.string().regex(/^https?:\/\/[^\s]+$/, 'an http(s):// URL of an OTLP/HTTP traces endpoint'),
  }).strict().optional(),
  /** The operator's read-only dashboard (docs/observability.md "Dashboard"): off by default, loopback unless remote mTLS is configured. */
  dashboard: dashboardSchema.prefault({}),
  evidenceLog: evidenceLogSchema.prefault({}),
  featureFlags: z.record(z.string(), z.boolean()).optional(),
}).strict();

type Parsed = z.output<typeof serverSchema>;

/** The validated configuration, paths resolved against the config file's directory. */
export type ServerConfig = Omit<Parsed, 'dataStore' | 'adminApi' | 'evidenceLog'> & {
  dataStore: NonNullable<Parsed['dataStore']>;
  evidenceLog: Parsed['evidenceLog'] & { origin: string; keyFile: string };
  adminApi: { socketPath: string };
  /** The resolved feature flags (environment > featureFlags > default), set by parseServerConfig. */
  flags?: { flags: FeatureFlags; sources: FeatureFlagSources };
};

/** Environment variables that override the file (applied before validation). */
export const ENV_OVERRIDES = {
  TERROIR_TRUST_DOMAIN: 'trustDomain',
  TERROIR_LOG_LEVEL: 'logLevel',
  TERROIR_DATA_DIR: 'dataDir',
  TERROIR_DATASTORE_TYPE: 'dataStore.type',
  TERROIR_DATASTORE_PATH: 'dataStore.path',
  TERROIR_DATASTORE_CONNECTION_STRING: 'dataStore.connectionString',
  TERROIR_AGENT_API_BIND_ADDRESS: 'agentApi.bindAddress',
  TERROIR_AGENT_API_PORT: 'agentApi.port',
  TERROIR_HEALTH_BIND_ADDRESS: 'health.bindAddress',
  TERROIR_HEALTH_PORT: 'health.port',
  TERROIR_ADMIN_SOCKET: 'adminApi.socketPath',
  TERROIR_BUNDLE_ENDPOINT_PORT: 'federation.bundleEndpoint.port',
} as const;

const NUMERIC_PATHS = new Set(['agentApi.port', 'health.port', 'federation.bundleEndpoint.port']);

function applyEnv(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): void {
  for (const [name, dotted] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    const keys = dotted.split('.');
    let node: Record<string, unknown> = raw;
    for (const k of keys.slice(0, -1)) {
      const next = node[k];
      if (next === undefined || next === null) node[k] = {};
      else if (typeof next !== 'object') throw new ConfigError(`${name}: cannot override "${dotted}": "${k}" in the file is not a section`);
      node = node[k] as Record<string, unknown>;
    }
    const last = keys[keys.length - 1] as string;
    if (NUMERIC_PATHS.has(dotted)) {
      if (!/^\d+$/.test(value)) throw new ConfigError(`${name}="${value}" is not a port number`);
      node[last] = Number(value);
    } else {
      node[last] = value;
    }
  }
  // Switching the datastore type by environment drops file settings that belong to the other type.
  const ds = raw.dataStore as Record<string, unknown> | undefined;
  if (ds && env.TERROIR_DATASTORE_TYPE === 'postgres') delete ds.path;
  if (ds && env.TERROIR_DATASTORE_TYPE === 'sqlite') { delete ds.connectionString; delete ds.poolSize; }
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `  - ${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`)
    .join('\n');
}

/**
 * Validates a config object (already parsed from YAML/JSON). `baseDir` resolves relative paths;
 * `env` supplies overrides (pass `{}` to ignore the process environment).
 */
export function parseServerConfig(input: unknown, baseDir: string, env: NodeJS.ProcessEnv = process.env): ServerConfig {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new ConfigError('the config must be a mapping (YAML) or an object (JSON) at the top level');
  }
  const raw = structuredClone(input) as Record<string, unknown>;
  applyEnv(raw, env);
  const result = serverSchema.safeParse(raw);
  if (!result.success) throw new ConfigError(`invalid server config:\n${describeIssues(result.error)}`);
  const c = result.data;
  const abs = (p: string): string => path.resolve(baseDir, p);
  const dataDir = abs(c.dataDir);

  const cfg: ServerConfig = {
    ...c,
    dataDir,
    dataStore: c.dataStore
      ? (c.dataStore.type === 'sqlite' ? { ...c.dataStore, path: abs(c.dataStore.path) } : c.dataStore)
      : { type: 'sqlite', path: path.join(dataDir, 'datastore.sqlite3') },
    adminApi: { socketPath: abs(c.adminApi.socketPath ?? path.join(dataDir, 'admin.sock')) },
    evidenceLog: {
      ...c.evidenceLog,
      origin: c.evidenceLog.origin ?? `${c.trustDomain}/terroir/evidence`,
      keyFile: abs(c.evidenceLog.keyFile ?? path.join(dataDir, 'audit-key')),
    },
    ca: {
      ...c.ca,
      keyDir: abs(c.ca.keyDir ?? path.join(dataDir, 'keys')),
      upstream: c.ca.upstream && {
        certFile: abs(c.ca.upstream.certFile),
        keyFile: abs(c.ca.upstream.keyFile),
        bundleFile: c.ca.upstream.bundleFile && abs(c.ca.upstream.bundleFile),
      },
    },
    nodeAttestation: {
      ...c.nodeAttestation,
      tpm: { ...c.nodeAttestation.tpm, manufacturerCaFiles: c.nodeAttestation.tpm.manufacturerCaFiles.map(abs) },
    },
    keylime: c.keylime && { ...c.keylime, caFile: abs(c.keylime.caFile), certFile: abs(c.keylime.certFile), keyFile: abs(c.keylime.keyFile) },
    unifiedIdentity: c.unifiedIdentity && {
      ...c.unifiedIdentity,
      locationPolicies: c.unifiedIdentity.locationPolicies.file !== undefined
        ? { file: abs(c.unifiedIdentity.locationPolicies.file) }
        : c.unifiedIdentity.locationPolicies,
      operator: c.unifiedIdentity.operator && {
        ...c.unifiedIdentity.operator,
        clientSecretFile: c.unifiedIdentity.operator.clientSecretFile && abs(c.unifiedIdentity.operator.clientSecretFile),
        privateKeyFile: c.unifiedIdentity.operator.privateKeyFile && abs(c.unifiedIdentity.operator.privateKeyFile),
        caFile: c.unifiedIdentity.operator.caFile && abs(c.unifiedIdentity.operator.caFile),
        devices: Object.fromEntries(Object.entries(c.unifiedIdentity.operator.devices).map(([k, v]) => [k.toLowerCase(), v])),
      },
    },
    federation: {
      ...c.federation,
      bundleEndpoint: {
        ...c.federation.bundleEndpoint,
        certFile: c.federation.bundleEndpoint.certFile && abs(c.federation.bundleEndpoint.certFile),
        keyFile: c.federation.bundleEndpoint.keyFile && abs(c.federation.bundleEndpoint.keyFile),
      },
      federatesWith: c.federation.federatesWith.map((f) => ({
        ...f,
        bootstrapBundleFile: f.bootstrapBundleFile && abs(f.bootstrapBundleFile),
        caFile: f.caFile && abs(f.caFile),
      })),
    },
  };
  checkConsistency(cfg);
  checkOperatorCredentials(cfg, env);
  if (cfg.keylime?.allowDevelopmentStandIn === true && env['NODE_ENV'] === 'production') {
    throw new ConfigError('keylime.allowDevelopmentStandIn is true but NODE_ENV=production: a production server never accepts the development '
      + 'Keylime stand-in; remove the setting and point keylime.verifierUrl at a real Keylime verifier');
  }
  try {
    cfg.flags = loadFeatureFlags(cfg.featureFlags, env);
  } catch (err) {
    if (err instanceof FeatureFlagError) throw new ConfigError(`featureFlags: ${err.message}`, { cause: err });
    throw err;
  }
  return cfg;
}

function checkConsistency(c: ServerConfig): void {
  // SPIRE's rule: an SVID may live at most a sixth of the CA's lifetime, so rotation (at half the
  // CA's life) always leaves issued SVIDs covered by a published authority.
  const maxSvid = Math.floor(c.ca.ttl / 6);
  if (c.ca.x509SvidTtl > maxSvid) {
    throw new ConfigError(`ca.x509SvidTtl (${c.ca.x509SvidTtl}s) must be at most ca.ttl/6 (${maxSvid}s); lower it or raise ca.ttl`);
  }
  if (c.ca.jwtSvidTtl > maxSvid) {
    throw new ConfigError(`ca.jwtSvidTtl (${c.ca.jwtSvidTtl}s) must be at most ca.ttl/6 (${maxSvid}s); lower it or raise ca.ttl`);
  }
  if (c.nodeAttestation.tpm.enabled && c.nodeAttestation.tpm.manufacturerCaFiles.length === 0
    && c.nodeAttestation.tpm.enrolledEkHashes.length === 0) {
    throw new ConfigError('nodeAttestation.tpm is enabled but trusts nothing: set manufacturerCaFiles and/or enrolledEkHashes');
  }
  if (!c.nodeAttestation.tpm.enabled && c.nodeAttestation.tpm.pcrSelectors.length > 0) {
    throw new ConfigError('nodeAttestation.tpm.pcrSelectors is set but nodeAttestation.tpm is disabled: PCR selectors come from TPM attestation; enable nodeAttestation.tpm or remove pcrSelectors');
  }
  if (!c.nodeAttestation.joinToken.enabled && !c.nodeAttestation.tpm.enabled) {
    throw new ConfigError('nodeAttestation: enable at least one of joinToken and tpm, or no agent can ever attest');
  }
  if (c.keylime) {
    if (!c.nodeAttestation.tpm.enabled) {
      throw new ConfigError('keylime is configured but nodeAttestation.tpm is disabled: Keylime attests TPM nodes; enable nodeAttestation.tpm');
    }
    if (c.keylime.removeAfter <= c.ca.x509SvidTtl) {
      throw new ConfigError(`keylime.removeAfter (${c.keylime.removeAfter}s) must exceed ca.x509SvidTtl (${c.ca.x509SvidTtl}s): live TPM nodes re-attest only at half their agent SVID's lifetime and would be removed from the verifier`);
    }
    if (c.keylime.mode === 'continuous' && !c.keylime.tpmPolicy && c.keylime.policies.length === 0) {
      throw new ConfigError('keylime: set tpmPolicy (the default PCR policy) and/or policies, or no TPM node can ever be trusted');
    }
    for (const [name, file] of [['caFile', c.keylime.caFile], ['certFile', c.keylime.certFile], ['keyFile', c.keylime.keyFile]] as const) {
      try {
        fs.accessSync(file, fs.constants.R_OK);
      } catch (err) {
        throw new ConfigError(`keylime.${name}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
      }
    }
  }
  const ui = c.unifiedIdentity;
  if (ui) {
    const policy = ui.tpmPolicy ?? c.keylime?.tpmPolicy;
    for (const pcr of Object.keys(policy ?? {})) {
      if (!ui.pcrs.includes(Number(pcr))) {
        throw new ConfigError(`unifiedIdentity: the Keylime PCR policy pins PCR ${pcr}, which is not in unifiedIdentity.pcrs (${ui.pcrs.join(', ')}): add it, or Keylime can never check it`);
      }
    }
    const op = ui.operator;
    if (op) {
      for (const [name, file] of [['clientSecretFile', op.clientSecretFile], ['privateKeyFile', op.privateKeyFile], ['caFile', op.caFile]] as const) {
        if (file === undefined) continue;
        try {
          fs.accessSync(file, fs.constants.R_OK);
        } catch (err) {
          throw new ConfigError(`unifiedIdentity.operator.${name}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
        }
      }
    }
    const seen = new Set<string>();
    for (const l of ui.latency?.landmarks ?? []) {
      if (!l.id.startsWith(`spiffe://${c.trustDomain}/`)) throw new ConfigError(`unifiedIdentity.latency.landmarks: ${l.id} is not in this server's trust domain ${c.trustDomain}`);
      if (seen.has(l.id)) throw new ConfigError(`unifiedIdentity.latency.landmarks: ${l.id} is declared twice`);
      seen.add(l.id);
      const self = l.id === `spiffe://${c.trustDomain}/spire/server`;
      if (self !== (l.url === undefined)) {
        throw new ConfigError(self
          ? `unifiedIdentity.latency.landmarks: ${l.id} is this server, which probes by itself: remove its url`
          : `unifiedIdentity.latency.landmarks: ${l.id} needs the url of its landmark API (terroir-server landmark run)`);
      }
    }
  }
  for (const f of c.federation.federatesWith) {
    if (f.trustDomain === c.trustDomain) {
      throw new ConfigError(`federation.federatesWith: "${f.trustDomain}" is this server's own trust domain`);
    }
  }
}

/**
 * The operator credentials the config names exist: environment variables set and non-empty, a
 * private key that parses and fits signingAlg. The server reads them again at start (operatorClient).
 */
function checkOperatorCredentials(c: ServerConfig, env: NodeJS.ProcessEnv): void {
  const op = c.unifiedIdentity?.operator;
  if (!op) return;
  for (const [field, name] of [['clientSecretEnv', op.clientSecretEnv], ['privateKeyEnv', op.privateKeyEnv]] as const) {
    if (name !== undefined && (env[name] ?? '').trim() === '') {
      throw new ConfigError(`unifiedIdentity.operator.${field}: the environment variable ${name} is not set or empty; export the operator's ${field === 'clientSecretEnv' ? 'OAuth2 client secret' : 'client private key (PEM)'} in it`);
    }
  }
  if (op.clientAuthMethod !== 'private_key_jwt' || op.signingAlg === undefined) return;
  const [field, pem] = op.privateKeyFile !== undefined
    ? ['privateKeyFile', readOrNull(op.privateKeyFile)] as const
    : ['privateKeyEnv', env[op.privateKeyEnv ?? ''] ?? ''] as const;
  if (pem === null) return; // unreadable: checkConsistency said so
  try {
    camaraSigningKey(pem, op.signingAlg);
  } catch (err) {
    throw new ConfigError(`unifiedIdentity.operator.${field}: ${(err as Error).message}`, { cause: err });
  }
}

function readOrNull(file: string): Buffer | null {
  try {
    return fs.readFileSync(file);
  } catch {
    return null;
  }
}

/** Reads, parses (YAML, of which JSON is a subset) and validates a config file. */
export function loadServerConfig(file: string, env: NodeJS.ProcessEnv = process.env): ServerConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`, { cause: err });
  }
  let doc: unknown;
  try {
    doc = YAML.parse(text, { prettyErrors: true, uniqueKeys: true });
  } catch (err) {
    throw new ConfigError(`config file ${file} is not valid YAML/JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseServerConfig(doc ?? {}, path.dirname(path.resolve(file)), env);
}
