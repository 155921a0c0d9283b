// Shared pieces of the server end-to-end tests: a real server on free ports with a temp SQLite
// datastore, and a real gRPC-over-TLS client that plays the agent.
import crypto, { type KeyObject } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { agentServiceClient, AGENT_API_CHANNEL_OPTIONS, type AttestAgentRequest, type AttestAgentResponse } from '../../../src/api/agent-api.js';
import { parseServerConfig } from '../../../src/server/config.js';
import { startServer, type RunningServer } from '../../../src/server/run.js';
import { createCsr } from '../../../src/agent/csr.js';
import { tempDir } from '../../support/tmp.js';

export const TD = 'example.org';

export interface TestServer {
  server: RunningServer;
  dir: string;
  audit: Record<string, unknown>[];
  stop(): Promise<void>;
}

export async function startTestServer(overrides: Record<string, unknown> = {}): Promise<TestServer> {
  const { dir, cleanup } = tempDir('terroir-server-e2e-');
  const base = {
    trustDomain: TD,
    dataDir: dir,
    logLevel: 'silent',
    agentApi: { bindAddress: '127.0.0.1', port: 0, watchIntervalMs: 100 },
    health: { bindAddress: '127.0.0.1', port: 0 },
    ca: { keyStore: 'memory' },
  };
  const config = parseServerConfig({ ...base, ...overrides, agentApi: { ...base.agentApi, ...(overrides.agentApi as object ?? {}) } }, dir, {});
  // Audit records are captured from the real pino logger (the records the operator would see).
  const audit: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => { const r = JSON.parse(line) as Record<string, unknown>; if (r.audit) audit.push(r); } });
  const server = await startServer(config, { logger });
  return { server, dir, audit, async stop() { await server.stop(); cleanup(); } };
}

export function bundleRootsPem(server: RunningServer): string {
  return server.ca.x509Roots().map((d) => new crypto.X509Certificate(d).toString()).join('');
}

export type AgentClient = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

/** A client that authenticates the server as spiffe://<td>/spire/server against the bundle, optionally presenting an SVID. */
export function agentClient(server: RunningServer, identity?: { chain: Buffer[]; key: KeyObject }): AgentClient {
  const Client = agentServiceClient();
  const creds = grpc.credentials.createSsl(
    Buffer.from(bundleRootsPem(server)),
    identity ? Buffer.from(identity.key.export({ format: 'pem', type: 'pkcs8' }) as string) : null,
    identity ? Buffer.from(identity.chain.map((d) => new crypto.X509Certificate(d).toString()).join('')) : null,
    {
      checkServerIdentity: (_host, cert) => {
        const san = new crypto.X509Certificate(cert.raw).subjectAltName ?? '';
        return san.includes(`URI:spiffe://${TD}/spire/server`) ? undefined : new Error(`unexpected server identity ${san}`);
      },
    },
  );
  // SNI must be a name (RFC 6066), as the agent sends; the server is authenticated by SPIFFE ID.
  return new Client(`127.0.0.1:${server.agentApiPort}`, creds, { ...AGENT_API_CHANNEL_OPTIONS, 'grpc.ssl_target_name_override': 'terroir-server' }) as AgentClient;
}

export function unary<Res>(client: AgentClient, method: string, req: unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    (client[method] as (r: unknown, cb: (e: grpc.ServiceError | null, r: Res) => void) => void).call(client, req, (e, r) => (e ? reject(e) : resolve(r)));
  });
}

/** Runs AttestAgent: sends `first`, answers a challenge with `answer` (if given), returns all responses or the error. */
export async function attest(client: AgentClient, first: AttestAgentRequest, answer?: (r: AttestAgentResponse) => Promise<AttestAgentRequest | undefined>): Promise<AttestAgentResponse[]> {
  const call = (client.AttestAgent as () => grpc.ClientDuplexStream<AttestAgentRequest, AttestAgentResponse>).call(client);
  const out: AttestAgentResponse[] = [];
  return new Promise((resolve, reject) => {
    call.on('data', (r: AttestAgentResponse) => {
      out.push(r);
      if (r.challenge && answer) {
        answer(r).then((next) => { if (next) call.write(next); }, reject);
      }
    });
    call.on('error', reject);
    call.on('end', () => resolve(out));
    call.write(first);
  });
}

export function newKey(): { privateKey: KeyObject; publicKey: KeyObject; csr: Buffer } {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return { privateKey, publicKey, csr: createCsr({ privateKey, publicKey }) };
}

export async function createJoinToken(server: RunningServer, ttlSeconds = 600): Promise<string> {
  const token = crypto.randomBytes(16).toString('hex');
  await server.store.createJoinToken({ token, expiresAt: new Date(Date.now() + ttlSeconds * 1000) });
  return token;
}

/** Join-token attestation; returns the agent identity for mTLS. */
export async function attestWithToken(server: RunningServer): Promise<{ id: string; chain: Buffer[]; key: KeyObject; token: string }> {
  const token = await createJoinToken(server);
  const k = newKey();
  const c = agentClient(server);
  try {
    const res = await attest(c, { params: { joinToken: { token }, csr: k.csr } });
    const result = res[0]?.result;
    if (!result) throw new Error('no attestation result');
    return { id: result.spiffeId, chain: result.svidChain, key: k.privateKey, token };
  } finally {
    c.close();
  }
}
