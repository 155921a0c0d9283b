// The Keylime continuous-mode deployment the e2e test and the benchmark share: swtpm (provisioned,
// with EK certificates), the test Keylime verifier pulling quotes over mTLS, a real terroir server with
// a `keylime` section, a real agent whose quote endpoint is backed by the swtpm, and a Workload API
// client built from the normative spec proto.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import pino, { type Logger } from 'pino';
import { afterAll, beforeAll } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { parseAgentConfig, type AgentConfig } from '../../src/agent/config.js';
import { openTpmCredentialSource, type TpmSession } from '../../src/agent/tpm-session.js';
import { parseServerConfig, startServer, type RunningServer, type ServerConfig } from '../../src/server/index.js';
import type { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { createPki, startVerifier, type KeylimePki } from '../keylime/helpers/fixture.js';
import { freePort } from '../support/ports.js';
import { startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';

export const TD = 'keylime-e2e.test';
/** The PCR the policy pins (and a test extends to turn the node bad); all zero on a fresh TPM. */
export const POLICY_PCR = 15;
export const ZERO = '00'.repeat(32);
const SPEC_PROTO = path.resolve(import.meta.dirname, '../../../shared/spec/workloadapi.proto');

export interface Svid { spiffe_id: string; x509_svid: Buffer; x509_svid_key: Buffer; bundle: Buffer }
export interface X509Msg { svids: Svid[] }
export type SpecClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

export function specClient(socket: string): SpecClient {
  const def = protoLoader.loadSync(SPEC_PROTO, { keepCase: true, defaults: true });
  const Ctor = (grpc.loadPackageDefinition(def) as unknown as Record<string, grpc.ServiceClientConstructor>)['SpiffeWorkloadAPI']!;
  return new Ctor(`unix://${socket}`, grpc.credentials.createInsecure()) as unknown as SpecClient;
}

/** An open FetchX509SVID stream that records every message and its end. */
export class X509Stream {
  readonly messages: { at: number; msg: X509Msg }[] = [];
  error: grpc.ServiceError | undefined;
  errorAt = 0;
  readonly call: grpc.ClientReadableStream<X509Msg>;
  constructor(client: SpecClient) {
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    this.call = client['FetchX509SVID']!({}, md) as grpc.ClientReadableStream<X509Msg>;
    this.call.on('data', (m: X509Msg) => this.messages.push({ at: Date.now(), msg: m }));
    this.call.on('error', (e: grpc.ServiceError) => { this.error = e; this.errorAt = Date.now(); });
  }
  async waitFor(pred: (m: X509Msg) => boolean, timeoutMs = 15_000): Promise<X509Msg> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.messages.find((m) => pred(m.msg));
      if (hit) return hit.msg;
      if (this.error) throw new Error(`stream ended: ${this.error.details}`);
      if (Date.now() > deadline) throw new Error(`no matching message within ${timeoutMs} ms (${this.messages.length} received)`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  /** Resolves when the stream has ended with an error or sent a message without SVIDs. */
  async waitForLoss(timeoutMs = 15_000, from = 0): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.error) return this.errorAt;
      const empty = this.messages.slice(from).find((m) => m.msg.svids.length === 0);
      if (empty) return empty.at;
      if (Date.now() > deadline) throw new Error(`the stream still serves SVIDs after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  close(): void {
    this.call.cancel();
  }
}

export interface Deployment {
  dir: string;
  pki: KeylimePki;
  swtpm: Swtpm;
  verifier: TestKeylimeVerifier;
  serverConfig: ServerConfig;
  server: RunningServer;
  agentConfig: AgentConfig;
  tpm: TpmSession;
  agent: Agent;
  socket: string;
  /** The node's Keylime agent id (its EK hash). */
  keylimeId: string;
  /** How long Agent.start took: TPM attestation, Keylime enrollment and first verified quote, first sync. */
  agentStartMs: number;
  /** Registers a workload entry (unix uid of this process) under the agent. */
  addWorkload(name: string): Promise<string>;
  stop(): Promise<void>;
}

export interface DeploymentOptions {
  quoteIntervalMs?: number;
  pollIntervalMs?: number;
  logger?: Logger;
}

export async function startDeployment(opts: DeploymentOptions = {}): Promise<Deployment> {
  const logger = opts.logger ?? pino({ level: process.env['E2E_LOG'] ?? 'silent' });
  const tmp = tempDir('terroir-keylime-e2e-');
  const stops: (() => Promise<void> | void)[] = [() => tmp.cleanup()];
  const stop = async (): Promise<void> => {
    while (stops.length) await Promise.resolve(stops.pop()?.()).catch(() => undefined);
  };
  try {
    const pki = await createPki(tmp.dir);
    const write = (name: string, text: string): string => {
      const p = path.join(tmp.dir, name);
      fs.writeFileSync(p, text, { mode: 0o600 });
      return p;
    };
    const swtpm = await startSwtpm();
    stops.push(() => swtpm.stop());
    const verifier = await startVerifier(pki, { quoteIntervalMs: opts.quoteIntervalMs ?? 1000, retryIntervalMs: 200, maxRetries: 2, pullTimeoutMs: 2000 });
    stops.push(() => verifier.close());

    const serverConfig = parseServerConfig({
      trustDomain: TD,
      dataDir: path.join(tmp.dir, 'server'),
      logLevel: 'silent',
      dataStore: { type: 'sqlite', path: path.join(tmp.dir, 'server', 'ds.sqlite3') },
      ca: { keyStore: 'memory', ttl: '1d', x509SvidTtl: '1h' },
      agentApi: { bindAddress: '127.0.0.1', port: await freePort(), watchIntervalMs: 100, attestationRateLimit: { perSecond: 10, burst: 100 } },
      health: { enabled: false },
      nodeAttestation: { joinToken: { enabled: false }, tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile] } },
      keylime: {
        verifierUrl: `https://localhost:${verifier.port}`,
        caFile: pki.files.serverCa, certFile: pki.files.clientCert, keyFile: pki.files.clientKey, allowDevelopmentStandIn: true,
        mode: 'continuous',
        pollIntervalMs: opts.pollIntervalMs ?? 250,
        maxAttestationAge: '10s',
        enrollTimeout: '10s',
        requestTimeoutMs: 1000,
        tpmPolicy: { [String(POLICY_PCR)]: [ZERO] },
      },
    }, tmp.dir, {});
    const server = await startServer(serverConfig, { logger });
    stops.push(() => server.stop());

    const socket = path.join(tmp.dir, 'agent.sock');
    const agentConfig = parseAgentConfig({
      trustDomain: TD,
      serverAddress: '127.0.0.1',
      serverPort: server.agentApiPort,
      dataDir: path.join(tmp.dir, 'agent'),
      socketPath: socket,
      trustBundlePath: write('bootstrap.json', server.ca.bundle().bundleJson),
      syncIntervalMs: 1000,
      logLevel: 'silent',
      nodeAttestor: { tpm: { tcti: swtpm.tcti, ekKind: 'rsa2048' } },
      keylime: {
        quoteEndpoint: {
          bindAddress: '127.0.0.1', port: 0,
          certFile: write('qe.pem', pki.node.certPem), keyFile: write('qe.key', pki.node.keyPem),
          clientCaFile: write('pull-ca.pem', pki.pullCa.certPem),
        },
      },
    }, {});
    const tpm = await openTpmCredentialSource(agentConfig.nodeAttestor.tpm!);
    stops.push(() => tpm.close());
    const t0 = performance.now();
    const agent = await Agent.start(agentConfig, { tpm, logger });
    const agentStartMs = performance.now() - t0;
    let current = agent;
    stops.push(() => current.stop());
    const keylimeId = /\/agent\/tpm\/([0-9a-f]{64})$/.exec(agent.spiffeId ?? '')?.[1];
    if (!keylimeId) throw new Error(`unexpected agent id ${agent.spiffeId}`);
    const uid = process.getuid!();
    return {
      dir: tmp.dir, pki, swtpm, verifier, serverConfig, server, agentConfig, tpm, socket, keylimeId, agentStartMs,
      get agent() { return current; },
      set agent(a: Agent) { current = a; },
      async addWorkload(name) {
        const spiffeId = `spiffe://${TD}/workload/${name}`;
        const [res] = await server.store.createEntries([{
          spiffeId, parentId: current.spiffeId!, selectors: [{ type: 'unix', value: `uid:${uid}` }], federatesWith: [],
        }]);
        if (!res?.ok) throw new Error(`createEntries failed: ${JSON.stringify(res)}`);
        return spiffeId;
      },
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** A digest to extend the policy PCR with (anything but what the policy allows). */
export function badMeasurement(label: string): Buffer {
  return crypto.createHash('sha256').update(label).digest();
}

/** A deployment shared by the tests of one file, with its server's and agent's logs captured. */
export interface FileDeployment {
  /** The running deployment (set once the file's beforeAll ran). */
  readonly d: Deployment;
  /** Every log line of the server and the agent, parsed. */
  readonly logs: Record<string, unknown>[];
  /** A FetchX509SVID stream from the spec client; closed when the file's tests end. */
  openStream(): X509Stream;
}

/** Starts a deployment before the file's tests and stops it (streams, client, processes) after them. */
export function deploymentPerFile(opts: Omit<DeploymentOptions, 'logger'> = {}): FileDeployment {
  const logs: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => { logs.push(JSON.parse(line) as Record<string, unknown>); } });
  const streams: X509Stream[] = [];
  let d: Deployment | undefined;
  let client: SpecClient | undefined;
  beforeAll(async () => {
    d = await startDeployment({ ...opts, logger });
    client = specClient(d.socket);
  }, 60_000);
  afterAll(async () => {
    for (const s of streams) s.close();
    client?.close();
    await d?.stop();
  });
  return {
    get d(): Deployment {
      if (d === undefined) throw new Error('the deployment is not started yet (use it inside a test)');
      return d;
    },
    logs,
    openStream() {
      if (client === undefined) throw new Error('the deployment is not started yet (use it inside a test)');
      const s = new X509Stream(client);
      streams.push(s);
      return s;
    },
  };
}
