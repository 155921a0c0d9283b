// A test double of the Keylime verifier (7.x, REST API 2.x) that speaks the same protocol and does
// real checks. Used because a real Keylime verifier (Python) does not run here.
//
// - HTTPS with a server certificate; client certificates are optional at the TLS layer, as in Keylime:
//   none → /version and /verify/* answer, /agents* → 403; a certificate from another CA → the
//   connection is dropped before any request is read (Keylime: handshake alert "unknown ca").
// - POST /v2.x/verify/evidence: real quote checks (checks.ts).
// - Agents CRUD + status; in continuous mode pulls quotes from each node's quote endpoint over mTLS
//   (pinning the node's mtls_cert) every quoteIntervalMs with fresh nonces, and moves through
//   Keylime's operational states: 3 Get Quote, 4 retry, 7 Failed, 9 Invalid Quote.
// - Fault injection (slow, 5xx, garbage, oversized) and stop()/restart() on the same port.
// - `GET /version` adds `terroir_development_stand_in: true`: a terroir server refuses this double unless
//   its configuration allows a development stand-in (the native demo runs it, clearly labelled).
import crypto from 'node:crypto';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { parseTpmPolicyJson, type ParsedTpmPolicy } from '../../src/keylime/policy.js';
import { parseTpm2bPublic, type ClockInfo, type TpmPublic } from '../../src/tpm/index.js';
import { checkQuote, invalidQuote, type Failure } from './keylime/checks.js';

export type Fault =
  | { mode: 'none' }
  | { mode: 'slow'; delayMs: number }
  | { mode: '5xx'; html?: boolean }
  | { mode: 'garbage' }
  | { mode: 'oversized'; bytes: number; chunked?: boolean }
  | { mode: 'wrong-shape' }
  | { mode: 'contradiction' }
  /** Every POST /verify/evidence gets Keylime 7.14's 400 for a request without tpm_ek (what an old terroir got). */
  | { mode: 'bad-request' };

export interface TestVerifierOptions {
  /** The verifier's server certificate and key, and the CA its admin clients must come from. */
  cert: string;
  key: string;
  clientCa: string;
  /** The verifier's own client identity towards nodes' quote endpoints. */
  pullCert: string;
  pullKey: string;
  port?: number;
  supportedVersions?: string[];
  quoteIntervalMs?: number;
  retryIntervalMs?: number;
  maxRetries?: number;
  pullTimeoutMs?: number;
  /** Highest TLS version offered (default TLSv1.3). */
  maxTlsVersion?: 'TLSv1.2' | 'TLSv1.3';
  /**
   * Push revocation notifications to the nodes' quote endpoints when a node fails, as Keylime does
   * with its default `[revocations] enabled_revocation_notifications = ['agent']`. Default true.
   */
  notifyRevocations?: boolean;
}

export interface AgentRecord {
  id: string;
  akPublic: TpmPublic;
  policy: ParsedTpmPolicy;
  tpmPolicyText: string;
  /** The enrollment's `metadata` (a JSON string), returned as `meta_data`. */
  metadata: string;
  ip: string;
  port: number;
  mtlsCert: string;
  supportedVersion: string;
  acceptHashAlgs: string[];
  acceptEncAlgs: string[];
  acceptSignAlgs: string[];
  operationalState: number;
  attestationCount: number;
  lastSuccessfulAttestation: number | null;
  lastReceivedQuote: number | null;
  lastEventId: string | null;
  severityLevel: number | null;
  failures: Failure[];
  pubkey?: string;
  hashAlg?: string;
  clock?: ClockInfo;
  retries: number;
  timer?: NodeJS.Timeout;
  pulling: boolean;
  deleted: boolean;
}

const MAX_BODY = 1024 * 1024;
/** Inputs POST /verify/evidence requires, in the order Keylime checks them. */
export const EVIDENCE_REQUIRED = ['quote', 'nonce', 'hash_alg', 'tpm_ek', 'tpm_ak'] as const;
/** At least one of these must be given. */
export const EVIDENCE_POLICIES = ['tpm_policy', 'runtime_policy', 'mb_policy'] as const;
const REQUIRED_AGENT_FIELDS = [
  'v', 'cloudagent_ip', 'cloudagent_port', 'tpm_policy', 'runtime_policy', 'mb_policy', 'mb_policy_name',
  'ima_sign_verification_keys', 'metadata', 'revocation_key', 'accept_tpm_hash_algs', 'accept_tpm_encryption_algs',
  'accept_tpm_signing_algs', 'ak_tpm', 'mtls_cert',
];

export class TestKeylimeVerifier {
  /** Every failed verdict, in order: a test can check what Keylime decided after the node was re-enrolled. */
  readonly failedVerdicts: { id: string; state: number; lastEventId: string }[] = [];
  /** When each failed verdict was reached (ms since the epoch), in the order of `failedVerdicts`: for timing. */
  readonly verdictLog: { id: string; state: number; at: number }[] = [];
  /** The W3C `traceparent` header of every request that carried one (tracing tests; Keylime ignores it). */
  readonly traceparents: string[] = [];
  readonly counters = { requests: 0, tlsSessions: 0, droppedUntrustedClients: 0, evidenceChecks: 0, quotesPulled: 0, pullErrors: 0, notificationsSent: 0, notificationErrors: 0 };
  /** When each revocation notification was sent (ms since the epoch), with the failed node's id. */
  readonly notifications: { at: number; aboutId: string; toId: string; status: number | undefined }[] = [];
  readonly agents = new Map<string, AgentRecord>();
  /** TLS version of the last session. */
  lastTlsProtocol: string | null = null;
  fault: Fault = { mode: 'none' };
  /** false: answer /version exactly as Keylime does (no stand-in marker), to test what a server does with a real verifier. */
  announceStandIn = true;
  /** The last body POSTed to /verify/evidence, for asserting the exact keys sent. */
  lastEvidenceBody: unknown;
  port = 0;
  private deleteHold: { gate: Promise<void>; arrived: () => void; acted: (r: AgentRecord | undefined) => void } | undefined;
  private readonly server: https.Server;
  private readonly sockets = new Set<Socket>();
  private readonly opts: Required<Omit<TestVerifierOptions, 'port' | 'maxTlsVersion'>>;
  /** Set per test: whether failures are pushed to quote endpoints (see TestVerifierOptions.notifyRevocations). */
  notifyRevocations: boolean;
  private up = false;

  private constructor(opts: TestVerifierOptions) {
    this.opts = {
      supportedVersions: ['1.0', '2.0', '2.1', '2.2', '2.3', '2.4', '2.5', '2.6', '3.0'],
      quoteIntervalMs: 1000,
      retryIntervalMs: 200,
      maxRetries: 3,
      pullTimeoutMs: 2000,
      notifyRevocations: true,
      ...opts,
    };
    this.notifyRevocations = this.opts.notifyRevocations;
    // Client certificates are optional (requested, verified by us below), as on Keylime's verifier.
    this.server = https.createServer({
      cert: opts.cert, key: opts.key, ca: opts.clientCa, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2',
      maxVersion: opts.maxTlsVersion ?? 'TLSv1.3',
    }, (req, res) => { void this.handle(req, res); });
    // Runs before the HTTP layer sees the socket, so an untrusted client never gets a request read.
    this.server.prependListener('secureConnection', (socket: TLSSocket) => {
      this.counters.tlsSessions++;
      this.lastTlsProtocol = socket.getProtocol();
      if (hasPeerCert(socket) && !socket.authorized) {
        this.counters.droppedUntrustedClients++;
        socket.destroy();
      }
    });
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
  }

  static async start(opts: TestVerifierOptions): Promise<TestKeylimeVerifier> {
    const v = new TestKeylimeVerifier(opts);
    await v.listen(opts.port ?? 0);
    return v;
  }

  get url(): string {
    return `https://localhost:${this.port}`;
  }

  /**
   * The next DELETE /agents/{id} is read but not acted on until `release()`: a request that is slow
   * to arrive, for ordering tests. Later requests are served meanwhile.
   */
  holdNextDelete(): { release: () => void; held: Promise<void>; removed: Promise<AgentRecord | undefined> } {
    let release!: () => void;
    let arrived!: () => void;
    let acted!: (r: AgentRecord | undefined) => void;
    const held = new Promise<void>((r) => { arrived = r; });
    const removed = new Promise<AgentRecord | undefined>((r) => { acted = r; });
    this.deleteHold = { gate: new Promise<void>((r) => { release = r; }), arrived, acted };
    return { release, held, removed };
  }

  /** The verifier goes away: no listener, open connections cut, no polling (state kept). */
  async stop(): Promise<void> {
    if (!this.up) return;
    this.up = false;
    for (const a of this.agents.values()) if (a.timer !== undefined) clearTimeout(a.timer);
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  /** Comes back on the same port and resumes polling. */
  async restart(): Promise<void> {
    await this.listen(this.port);
    for (const a of this.agents.values()) if (isPolling(a)) this.schedule(a, 0);
  }

  async close(): Promise<void> {
    await this.stop();
    this.agents.clear();
  }

  private async listen(port: number): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, '127.0.0.1', () => { this.server.off('error', reject); resolve(); });
    });
    this.port = (this.server.address() as AddressInfo).port;
    this.up = true;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const socket = req.socket as TLSSocket;
    if (hasPeerCert(socket) && !socket.authorized) { socket.destroy(); return; }
    this.counters.requests++;
    const fault = this.fault;
    if (fault.mode === 'slow') await sleep(fault.delayMs);
    if (fault.mode === '5xx' && fault.html === true) { res.writeHead(502, { 'content-type': 'text/html' }); res.end('<html>Bad Gateway</html>'); return; }
    if (fault.mode === '5xx') return send(res, 503, 'Service Unavailable');
    if (fault.mode === 'garbage') { res.writeHead(200, { 'content-type': 'application/json' }); res.end('{"code":200,"status":"Success","results":{"valid":tru'); return; }
    if (fault.mode === 'oversized') return sendOversized(res, fault.bytes, fault.chunked === true);
    if (fault.mode === 'contradiction') return send(res, 200, 'Success', { valid: true, claims: {}, failures: [{ type: 'pcr_validation.invalid_pcr_0', context: 'x' }] });
    if (fault.mode === 'wrong-shape') return send(res, 200, 'Success', { valid: 'yes', current_version: 2.6, operational_state: 'ok' });

    const url = new URL(req.url ?? '/', 'https://verifier.invalid');
    if (url.pathname === '/version' && req.method === 'GET') {
      const versions = this.opts.supportedVersions;
      // It says what it is: terroir servers refuse it unless configured for development (keylime.allowDevelopmentStandIn).
      return send(res, 200, 'Success', {
        current_version: versions.filter((v) => v.startsWith('2.')).pop() ?? versions[versions.length - 1], supported_versions: versions,
        ...(this.announceStandIn ? { terroir_development_stand_in: true } : {}),
      });
    }
    const tp = req.headers['traceparent'];
    if (typeof tp === 'string') this.traceparents.push(tp);
    const m = /^\/v(\d+\.\d+)(\/.*)$/.exec(url.pathname);
    // Keylime 7.14's web framework: an unknown version or path is a 404 without a body.
    if (m === null || !this.opts.supportedVersions.includes(m[1] as string)) return sendEmpty(res, 404);
    const route = m[2] as string;
    let body: unknown;
    try {
      body = req.method === 'POST' ? await readJson(req) : undefined;
    } catch {
      // Keylime's web framework: unparseable JSON declared as JSON is "Malformed Request Parameter";
      // otherwise the handler gives up without answering (500). Both without a body.
      return sendEmpty(res, /^application\/(?:[a-z-.]+\+)?json/.test(req.headers['content-type'] ?? '') ? 400 : 500);
    }
    if (route === '/verify/evidence' && req.method === 'POST') {
      if (fault.mode === 'bad-request') return sendBadRequest(res, 'missing_param', { message: 'missing parameter "tpm_ek"' });
      return this.verifyEvidence(res, body);
    }
    if (route === '/agents/' || route === '/agents') {
      if (!socket.authorized) return send(res, 403, 'Forbidden: a client certificate from a trusted CA is required');
      if (req.method !== 'GET') return send(res, 405, 'Method not allowed');
      // As Keylime 7.x: its database rows, each a one-element list.
      return send(res, 200, 'Success', { uuids: [...this.agents.keys()].map((id) => [id]) });
    }
    const agent = /^\/agents\/([A-Za-z0-9._-]{1,255})$/.exec(route);
    if (agent === null) return send(res, 404, 'Not found');
    if (!socket.authorized) return send(res, 403, 'Forbidden: a client certificate from a trusted CA is required');
    const id = agent[1] as string;
    switch (req.method) {
      case 'POST': return this.addAgent(res, id, body);
      case 'GET': return this.agentStatus(res, id);
      case 'DELETE': {
        const hold = this.deleteHold;
        if (hold !== undefined) {
          this.deleteHold = undefined;
          hold.arrived();
          await hold.gate;
          hold.acted(this.agents.get(id));
        }
        return this.deleteAgent(res, id);
      }
      default: return send(res, 405, 'Method not allowed');
    }
  }

  /**
   * POST /verify/evidence with Keylime 7.14.3's input rules, in its order (keylime/cloud_verifier_tornado.py
   * VerifyEvidenceHandler.post and `_tpm_verify`; ../shared/docs/keylime-api.md), each answer as Keylime
   * gives it: `type` and `data` present (400 "missing parameter '...'"), type "tpm" (400 "invalid evidence
   * type"); quote, nonce, hash_alg, tpm_ek, tpm_ak each present and not "" (400 default.missing_param), at
   * least one of tpm_policy / runtime_policy / mb_policy not "" (400 default.missing_policy). A value of
   * JSON null passes those checks and fails later with an exception: 500. Evidence that fails a check,
   * including an AK or tpm_policy that does not parse, is 200 valid:false; on success the request's
   * `data` is echoed as the claims. Like Keylime, `tpm_ek` is required but never checked.
   * Stricter than Keylime on purpose (terroir sends neither): `type: "tee"` is refused as an invalid
   * type (Keylime would run its TEE path), and the nonce must equal extraData as UTF-8 (Keylime also
   * accepts its base64 decoding).
   */
  private verifyEvidence(res: ServerResponse, body: unknown): void {
    this.counters.evidenceChecks++;
    this.lastEvidenceBody = body;
    if (body === null || typeof body !== 'object') return sendEmpty(res, 500);
    const b = body as Record<string, unknown>;
    if (!('type' in b) || b.type === '') return send(res, 400, "missing parameter 'type'");
    if (!('data' in b) || b.data === '') return send(res, 400, "missing parameter 'data'");
    if (b.type !== 'tpm') return send(res, 400, 'invalid evidence type');
    if (b.data === null || typeof b.data !== 'object') return sendException(res);
    const d = b.data as Record<string, unknown>;
    for (const k of EVIDENCE_REQUIRED) {
      if (!(k in d) || d[k] === '') return sendBadRequest(res, 'missing_param', { message: `missing parameter "${k}"` });
    }
    if (!EVIDENCE_POLICIES.some((k) => k in d && d[k] !== '')) {
      return sendBadRequest(res, 'missing_policy', { message: 'at least one policy (tpm_policy, runtime_policy, or mb_policy) must be provided' });
    }
    // Present but not text (null, a number...): Keylime raises while verifying.
    if (EVIDENCE_REQUIRED.some((k) => typeof d[k] !== 'string')) return sendException(res);
    if ('runtime_policy' in d && d.runtime_policy !== '' && !isJson(d.runtime_policy)) return sendException(res);
    const tpmPolicy = typeof d.tpm_policy === 'string' && d.tpm_policy !== '' ? d.tpm_policy : '{}';
    let ak: TpmPublic;
    let policy: ParsedTpmPolicy;
    try {
      ak = parseTpm2bPublic(Buffer.from(d.tpm_ak as string, 'base64'));
      policy = tpmPolicy === '{}' ? { mask: [], allowed: new Map() } : parseTpmPolicyJson(tpmPolicy);
    } catch (err) {
      return send(res, 200, 'Success', { valid: false, claims: {}, failures: [invalidQuote((err as Error).message)] });
    }
    const result = checkQuote({ quote: d.quote as string, nonce: d.nonce as string, hashAlg: d.hash_alg as string, akPublic: ak, policy });
    const valid = result.failures.length === 0;
    send(res, 200, 'Success', { valid, claims: valid ? d : {}, failures: result.failures });
  }

  private addAgent(res: ServerResponse, id: string, body: unknown): void {
    if (typeof body !== 'object' || body === null) return send(res, 400, 'agent data must be a JSON object');
    const d = body as Record<string, unknown>;
    for (const k of REQUIRED_AGENT_FIELDS) if (!(k in d)) return send(res, 400, `missing required field ${k}`);
    if (this.agents.has(id)) return send(res, 409, `Agent of uuid ${id} already exists`);
    if (typeof d.runtime_policy !== 'string') return send(res, 400, 'runtime_policy must be a (base64) string');
    if (typeof d.cloudagent_ip !== 'string' || !Number.isInteger(d.cloudagent_port)) return send(res, 400, 'cloudagent_ip/cloudagent_port invalid');
    if (typeof d.mtls_cert !== 'string') return send(res, 400, 'mtls_cert is required while agent mTLS is enabled');
    const arrays = ['accept_tpm_hash_algs', 'accept_tpm_encryption_algs', 'accept_tpm_signing_algs'] as const;
    for (const k of arrays) if (!Array.isArray(d[k]) || !(d[k] as unknown[]).every((x) => typeof x === 'string')) return send(res, 400, `${k} must be a list of strings`);
    let ak: TpmPublic;
    let policy: ParsedTpmPolicy;
    try {
      new crypto.X509Certificate(d.mtls_cert);
      ak = parseTpm2bPublic(Buffer.from(String(d.ak_tpm), 'base64'));
      policy = parseTpmPolicyJson(String(d.tpm_policy));
    } catch (err) {
      return send(res, 400, (err as Error).message);
    }
    if (!policy.mask.includes(16)) policy.mask.push(16);
    const rec: AgentRecord = {
      id, akPublic: ak, policy, tpmPolicyText: String(d.tpm_policy), metadata: typeof d.metadata === 'string' ? d.metadata : '{}', ip: d.cloudagent_ip, port: d.cloudagent_port as number,
      mtlsCert: d.mtls_cert, supportedVersion: typeof d.supported_version === 'string' ? d.supported_version : '2.2',
      acceptHashAlgs: d.accept_tpm_hash_algs as string[], acceptEncAlgs: d.accept_tpm_encryption_algs as string[],
      acceptSignAlgs: d.accept_tpm_signing_algs as string[],
      operationalState: 3, attestationCount: 0, lastSuccessfulAttestation: null, lastReceivedQuote: null,
      lastEventId: null, severityLevel: null, failures: [], retries: 0, pulling: false, deleted: false,
    };
    this.agents.set(id, rec);
    this.schedule(rec, 0);
    send(res, 200, 'Success', {});
  }

  private agentStatus(res: ServerResponse, id: string): void {
    const a = this.agents.get(id);
    if (a === undefined) return send(res, 404, `agent id ${id} not found`);
    // As Keylime in pull mode: PASS for 3..6 even before any quote was verified, FAIL for 7/9/10.
    const s = a.operationalState;
    const attestationStatus = s >= 3 && s <= 6 ? 'PASS' : s === 7 || s === 9 || s === 10 ? 'FAIL' : 'PENDING';
    send(res, 200, 'Success', {
      operational_state: s, v: null, ip: a.ip, port: a.port, tpm_policy: a.tpmPolicyText, meta_data: a.metadata,
      has_mb_refstate: 0, has_runtime_policy: 0, accept_tpm_hash_algs: a.acceptHashAlgs,
      accept_tpm_encryption_algs: a.acceptEncAlgs, accept_tpm_signing_algs: a.acceptSignAlgs,
      hash_alg: a.hashAlg ?? '', enc_alg: '', sign_alg: '', verifier_id: 'default', verifier_ip: '127.0.0.1',
      verifier_port: this.port, severity_level: a.severityLevel, last_event_id: a.lastEventId,
      attestation_count: a.attestationCount, last_received_quote: a.lastReceivedQuote,
      last_successful_attestation: a.lastSuccessfulAttestation, attestation_status: attestationStatus,
    });
  }

  private deleteAgent(res: ServerResponse, id: string): void {
    const a = this.agents.get(id);
    if (a === undefined) return send(res, 404, `agent id ${id} not found`);
    a.deleted = true;
    if (a.timer !== undefined) clearTimeout(a.timer);
    if (a.pulling) {
      send(res, 202, 'Accepted'); // removed when the in-flight poll returns
      return;
    }
    this.agents.delete(id);
    send(res, 200, 'Success', {});
  }

  private schedule(a: AgentRecord, delayMs: number): void {
    if (a.timer !== undefined) clearTimeout(a.timer);
    a.timer = setTimeout(() => { void this.poll(a); }, delayMs);
  }

  private async poll(a: AgentRecord): Promise<void> {
    if (!this.up || a.deleted || !isPolling(a)) return;
    a.pulling = true;
    const nonce = randomAlnum(20);
    let results: Record<string, unknown>;
    try {
      results = await this.pull(a, nonce);
    } catch (err) {
      a.pulling = false;
      this.counters.pullErrors++;
      if (a.deleted) { this.agents.delete(a.id); return; }
      if (!this.up) return;
      a.retries++;
      if (a.retries > this.opts.maxRetries) {
        a.operationalState = 7;
        a.lastEventId = 'agent.unreachable';
        a.severityLevel = 6;
        a.failures = [{ type: 'agent.unreachable', context: (err as Error).message }];
        this.failedVerdicts.push({ id: a.id, state: 7, lastEventId: a.lastEventId });
        this.verdictLog.push({ id: a.id, state: 7, at: Date.now() });
        // Keylime sends comm_error only for a node that had passed before.
        if (a.attestationCount > 0) this.notifyAll(a, 'comm_error');
        return;
      }
      a.operationalState = 4;
      this.schedule(a, this.opts.retryIntervalMs);
      return;
    }
    a.pulling = false;
    if (a.deleted) { this.agents.delete(a.id); return; }
    this.counters.quotesPulled++;
    a.lastReceivedQuote = Math.floor(Date.now() / 1000);
    const failures = this.judgePulled(a, nonce, results);
    if (failures.length > 0) {
      a.operationalState = 9;
      a.failures = failures;
      a.lastEventId = failures[0]?.type ?? 'qoute_validation.quote_validation';
      a.severityLevel = 6;
      this.failedVerdicts.push({ id: a.id, state: 9, lastEventId: a.lastEventId });
      this.verdictLog.push({ id: a.id, state: 9, at: Date.now() });
      this.notifyAll(a, 'revocation');
      return;
    }
    a.retries = 0;
    a.operationalState = 3;
    a.attestationCount++;
    a.lastSuccessfulAttestation = Math.floor(Date.now() / 1000);
    if (this.up) this.schedule(a, this.opts.quoteIntervalMs);
  }

  private judgePulled(a: AgentRecord, nonce: string, r: Record<string, unknown>): Failure[] {
    const str = (k: string): string | undefined => (typeof r[k] === 'string' ? (r[k] as string) : undefined);
    const quote = str('quote'), hashAlg = str('hash_alg'), encAlg = str('enc_alg'), signAlg = str('sign_alg');
    if (quote === undefined || hashAlg === undefined || encAlg === undefined || signAlg === undefined) {
      return [{ type: 'qoute_validation.malformed_response', context: 'quote, hash_alg, enc_alg, sign_alg are required' }];
    }
    if (!a.acceptHashAlgs.includes(hashAlg)) return [{ type: 'qoute_validation.hash_alg', context: `hash_alg ${hashAlg} not accepted` }];
    if (!a.acceptEncAlgs.includes(encAlg)) return [{ type: 'qoute_validation.enc_alg', context: `enc_alg ${encAlg} not accepted` }];
    if (!a.acceptSignAlgs.includes(signAlg)) return [{ type: 'qoute_validation.sign_alg', context: `sign_alg ${signAlg} not accepted` }];
    if (a.hashAlg !== undefined && a.hashAlg !== hashAlg) return [{ type: 'qoute_validation.hash_alg', context: 'hash_alg changed' }];
    a.hashAlg = hashAlg;
    if (a.pubkey === undefined) {
      const pub = str('pubkey');
      if (pub === undefined) return [{ type: 'qoute_validation.pubkey', context: 'no public key in the first quote' }];
      a.pubkey = pub;
    }
    const result = checkQuote({
      quote, nonce, hashAlg, akPublic: a.akPublic, policy: a.policy, pubkeyPem: a.pubkey,
      ...(a.clock !== undefined ? { previousClock: a.clock } : {}),
    });
    if (result.info !== undefined && result.failures.length === 0) a.clock = result.info.clockInfo;
    return result.failures;
  }

  /**
   * Keylime's push on a failure (keylime/cloud_verifier_tornado.py invoke_notify_error, message from
   * cloud_verifier_common.py prepare_error): POST /v{ver}/notifications/revocation to every node this
   * verifier polls, the failed one included, over mTLS with its client certificate, pinning each
   * node's mtls_cert; body {"msg": <JSON text>, "signature": ""} (unsigned: terroir enrolls no
   * revocation_key). Fire and forget: Keylime only logs a non-200.
   */
  private notifyAll(failed: AgentRecord, type: 'revocation' | 'comm_error'): void {
    if (!this.notifyRevocations) return;
    const msg = JSON.stringify({
      type, ip: failed.ip, agent_id: failed.id, port: failed.port, tpm_policy: failed.tpmPolicyText, meta_data: failed.metadata,
      event_time: new Date().toUTCString(), event_id: failed.lastEventId ?? 'qoute_validation.quote_validation', severity_label: 'emergency',
      context: JSON.stringify(failed.failures[0]?.context ?? {}),
    });
    const body = JSON.stringify({ msg, signature: '' });
    for (const to of this.agents.values()) {
      if (to.deleted) continue;
      const req = https.request({
        host: to.ip, port: to.port, path: `/v${to.supportedVersion}/notifications/revocation`, method: 'POST',
        ca: to.mtlsCert, cert: this.opts.pullCert, key: this.opts.pullKey, minVersion: 'TLSv1.2', timeout: this.opts.pullTimeoutMs, agent: false,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      }, (res) => {
        res.resume();
        this.counters.notificationsSent++;
        this.notifications.push({ at: Date.now(), aboutId: failed.id, toId: to.id, status: res.statusCode });
      });
      req.on('timeout', () => req.destroy(new Error('notification timed out')));
      req.on('error', () => { this.counters.notificationErrors++; });
      req.end(body);
    }
  }

  private pull(a: AgentRecord, nonce: string): Promise<Record<string, unknown>> {
    const mask = `0x${a.policy.mask.reduce((m, i) => m | (1 << i), 0).toString(16)}`;
    const partial = a.pubkey === undefined ? '0' : '1';
    const path = `/v${a.supportedVersion}/quotes/integrity?nonce=${nonce}&mask=${mask}&partial=${partial}&ima_ml_entry=0`;
    return new Promise((resolve, reject) => {
      const req = https.request({
        host: a.ip, port: a.port, path, method: 'GET', ca: a.mtlsCert, cert: this.opts.pullCert, key: this.opts.pullKey,
        minVersion: 'TLSv1.2', timeout: this.opts.pullTimeoutMs, agent: false,
      }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY) { req.destroy(new Error('quote response too large')); return; }
          chunks.push(c);
        });
        res.on('end', () => {
          if (res.statusCode !== 200) return reject(new Error(`quote endpoint answered ${res.statusCode}`));
          try {
            const env = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { results?: unknown };
            if (typeof env.results !== 'object' || env.results === null) return reject(new Error('no results in the quote response'));
            resolve(env.results as Record<string, unknown>);
          } catch {
            reject(new Error('quote response is not JSON'));
          }
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new Error('quote request timed out')));
      req.on('error', reject);
      req.end();
    });
  }
}

function isPolling(a: AgentRecord): boolean {
  return !a.deleted && (a.operationalState === 3 || a.operationalState === 4);
}

function hasPeerCert(socket: TLSSocket): boolean {
  const cert = socket.getPeerCertificate();
  return cert !== null && typeof cert === 'object' && Object.keys(cert).length > 0;
}

function send(res: ServerResponse, code: number, status: string, results: Record<string, unknown> = {}): void {
  const body = JSON.stringify({ code, status, results });
  res.writeHead(code, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** Keylime's answer to an exception while verifying (its handler catches it). */
function sendException(res: ServerResponse): void {
  send(res, 500, 'Internal Server Error: Failed to process attestation data');
}

/** The web framework's own answers carry no body. */
function sendEmpty(res: ServerResponse, code: number): void {
  res.writeHead(code, { 'content-length': 0 });
  res.end();
}

function isJson(v: unknown): boolean {
  if (typeof v !== 'string') return false;
  try {
    JSON.parse(v);
    return true;
  } catch {
    return false;
  }
}

/** Keylime's 400 for refused input: results carry valid:false and one `default.<type>` failure. */
function sendBadRequest(res: ServerResponse, type: string, context: Record<string, string>): void {
  send(res, 400, 'Bad Request', { valid: false, claims: {}, failures: [{ type: `default.${type}`, context }] });
}

function sendOversized(res: ServerResponse, bytes: number, chunked: boolean): void {
  const filler = 'x'.repeat(bytes);
  const body = `{"code":200,"status":"Success","results":{"valid":true,"pad":"${filler}"}}`;
  res.writeHead(200, chunked ? { 'content-type': 'application/json' } : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  if (!chunked) { res.end(body); return; }
  for (let i = 0; i < body.length; i += 65536) res.write(body.slice(i, i + 65536));
  res.end();
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    size += (c as Buffer).length;
    if (size > MAX_BODY) throw new Error('request body too large');
    chunks.push(c as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new Error('request body is not JSON');
  }
}

function randomAlnum(n: number): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  const bytes = crypto.randomBytes(n);
  return [...bytes].map((b) => alphabet[b % alphabet.length]).join('');
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
