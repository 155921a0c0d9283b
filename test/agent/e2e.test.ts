// End to end: a real terroir server (SQLite, CA keys on disk), a real agent attesting with a
// software TPM (swtpm + tpm2-tss), workloads talking to the agent's Workload API over its Unix
// socket with a client built from the normative spec proto, and a real mutual-TLS handshake
// between two workloads (one of them another user) using the SVIDs they got.
import crypto from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { parseAgentConfig, type AgentConfig } from '../../src/agent/config.js';
import { openTpmCredentialSource, type TpmSession } from '../../src/agent/tpm-session.js';
import { splitDerCertificates } from '../../src/api/workload-api.js';
import { parseServerConfig, startServer, type RunningServer, type ServerConfig } from '../../src/server/index.js';
import { Bundle, BundleSet, TrustDomain, validateJwtSvid, verifyX509Svid } from '../../src/spiffe/index.js';
import { freePort } from '../support/ports.js';
import { captureOutput, stopChild } from '../support/proc.js';
import { startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';
import { makeCa } from './fixtures.js';
import { installWireClient, runWireClientAs, spawnWireClientAs } from './as-user.js';

const SPEC_PROTO = path.resolve(import.meta.dirname, '../../../shared/spec/workloadapi.proto');
const TD = 'e2e.test';
const uid = process.getuid!();
const silent = pino({ level: process.env['E2E_LOG'] ?? 'silent' });

interface Svid { spiffe_id: string; x509_svid: Buffer; x509_svid_key: Buffer; bundle: Buffer; hint: string }
interface X509Msg { svids: Svid[]; federated_bundles: Record<string, Buffer> }
type SpecClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

function specClient(socket: string): SpecClient {
  const def = protoLoader.loadSync(SPEC_PROTO, { keepCase: true, defaults: true });
  const Ctor = (grpc.loadPackageDefinition(def) as unknown as Record<string, grpc.ServiceClientConstructor>)['SpiffeWorkloadAPI']!;
  return new Ctor(`unix://${socket}`, grpc.credentials.createInsecure()) as unknown as SpecClient;
}

function md(): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set('workload.spiffe.io', 'true');
  return m;
}

/** An open FetchX509SVID stream that records every message. */
class X509Stream {
  readonly messages: X509Msg[] = [];
  error: grpc.ServiceError | undefined;
  readonly call: grpc.ClientReadableStream<X509Msg>;
  constructor(client: SpecClient) {
    this.call = client['FetchX509SVID']!({}, md()) as grpc.ClientReadableStream<X509Msg>;
    this.call.on('data', (m: X509Msg) => this.messages.push(m));
    this.call.on('error', (e: grpc.ServiceError) => { this.error = e; });
  }
  /** Waits for a message (after index `from`) satisfying `pred`. */
  async waitFor(pred: (m: X509Msg) => boolean, from = 0, timeoutMs = 15_000): Promise<X509Msg> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.messages.slice(from).find(pred);
      if (hit) return hit;
      if (this.error && this.error.code !== grpc.status.CANCELLED) throw new Error(`stream ended: ${this.error.details}`);
      if (Date.now() > deadline) throw new Error(`no matching message within ${timeoutMs} ms (${this.messages.length} received)`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  close(): void {
    this.call.cancel();
  }
}

const ids = (m: X509Msg) => m.svids.map((s) => s.spiffe_id).sort();
const serialOf = (s: Svid) => new crypto.X509Certificate(splitDerCertificates(s.x509_svid)[0]!).serialNumber;
const pemOf = (ders: Buffer[]) => ders.map((d) => new crypto.X509Certificate(d).toString()).join('');

describe('agent end to end (server + swtpm + Workload API)', () => {
  const tmp = tempDir('terroir-e2e-agent-');
  let swtpm: Swtpm;
  let tpm: TpmSession | undefined;
  let serverConfig: ServerConfig;
  let server: RunningServer | undefined;
  let agentConfig: AgentConfig;
  let agent: Agent | undefined;
  let client: SpecClient;
  let stream: X509Stream;
  const socket = path.join(tmp.dir, 'public', 'agent.sock');
  const entryIds: Record<string, string> = {};
  const children: ChildProcess[] = [];
  let wireClient: string;

  async function addEntry(name: string, spiffeId: string, selectors: string[], extra: Record<string, unknown> = {}): Promise<void> {
    const [res] = await server!.store.createEntries([{
      spiffeId, parentId: agent!.spiffeId!, selectors: selectors.map((s) => ({ type: 'unix', value: s })), federatesWith: [], ...extra,
    }]);
    if (!res?.ok) throw new Error(`createEntries failed: ${JSON.stringify(res)}`);
    entryIds[name] = res.value.id;
  }

  beforeAll(async () => {
    fs.chmodSync(tmp.dir, 0o755);
    wireClient = installWireClient(path.join(tmp.dir, 'client'));
    swtpm = await startSwtpm();
    serverConfig = parseServerConfig({
      trustDomain: TD,
      dataDir: path.join(tmp.dir, 'server'),
      logLevel: 'silent',
      dataStore: { type: 'sqlite', path: path.join(tmp.dir, 'server', 'datastore.sqlite3') },
      ca: { keyStore: 'disk', ttl: '1d', x509SvidTtl: '1h' },
      agentApi: { bindAddress: '127.0.0.1', port: await freePort(), watchIntervalMs: 100 },
      health: { enabled: false },
      nodeAttestation: { tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile] } },
    }, tmp.dir, {});
    server = await startServer(serverConfig, { logger: silent });
    const bootstrap = path.join(tmp.dir, 'bootstrap-bundle.json');
    fs.writeFileSync(bootstrap, server.ca.bundle().bundleJson);
    agentConfig = parseAgentConfig({
      trustDomain: TD,
      serverAddress: '127.0.0.1',
      serverPort: server.agentApiPort,
      dataDir: path.join(tmp.dir, 'agent'),
      socketPath: socket,
      trustBundlePath: bootstrap,
      syncIntervalMs: 1000,
      logLevel: 'silent',
      nodeAttestor: { tpm: { tcti: swtpm.tcti, ekKind: 'rsa2048' } },
    }, {});
    tpm = await openTpmCredentialSource(agentConfig.nodeAttestor.tpm!);
    agent = await Agent.start(agentConfig, { tpm, logger: silent });
    client = specClient(socket);
  });

  afterAll(async () => {
    stream?.close();
    client?.close();
    await Promise.all(children.map((c) => stopChild(c, 1000)));
    await agent?.stop();
    await tpm?.close();
    await server?.stop();
    await swtpm?.stop();
    tmp.cleanup();
  });

  it('attests the node with the TPM and keeps the agent SVID and key on disk, 0600', () => {
    expect(agent!.stats.attestations).toBe(1);
    expect(agent!.spiffeId).toMatch(new RegExp(`^spiffe://${TD.replace('.', '\\.')}/agent/tpm/[0-9a-f]{64}$`));
    const dir = agentConfig.dataDir;
    expect(fs.statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of fs.readdirSync(dir)) expect(fs.statSync(path.join(dir, f)).mode & 0o777).toBe(0o600);
  });

  it('an entry for this process\'s uid yields a valid X.509-SVID over the Workload API', async () => {
    stream = new X509Stream(client);
    await addEntry('a', `spiffe://${TD}/workload/a`, [`uid:${uid}`]);
    const msg = await stream.waitFor((m) => ids(m).includes(`spiffe://${TD}/workload/a`));
    const svid = msg.svids.find((s) => s.spiffe_id.endsWith('/workload/a'))!;
    const bundle = Bundle.parse(TrustDomain.parse(TD), server!.ca.bundle().bundleJson);
    const verified = verifyX509Svid(splitDerCertificates(svid.x509_svid), new BundleSet(bundle));
    expect(verified.id.toString()).toBe(`spiffe://${TD}/workload/a`);
    const key = crypto.createPrivateKey({ key: svid.x509_svid_key, format: 'der', type: 'pkcs8' });
    expect(verified.leaf.checkPrivateKey(key)).toBe(true);
  });

  it('another uid with no entry gets PermissionDenied', async () => {
    const res = await runWireClientAs<{ ok: boolean; uid: number; code: number }>(4242, wireClient, [socket, 'fetch']);
    expect(res).toMatchObject({ ok: false, uid: 4242, code: grpc.status.PERMISSION_DENIED });
  });

  it('two workloads (two users) do mutual TLS with their SVIDs', async () => {
    await addEntry('b', `spiffe://${TD}/workload/b`, ['uid:65534']);
    // The server workload runs as nobody and accepts only workload a.
    let child: ChildProcess | undefined;
    let line = '';
    for (let attempt = 0; attempt < 50 && !line; attempt++) {
      // Until the agent has synced the new entry, nobody is refused; retry.
      child = spawnWireClientAs(65534, wireClient, [socket, 'mtls', `spiffe://${TD}/workload/a`]);
      children.push(child);
      const out = captureOutput(child);
      line = await new Promise<string>((resolve) => {
        child!.stdout!.on('data', () => { if (out().includes('\n')) resolve(out().split('\n')[0]!); });
        child!.once('exit', () => resolve(''));
      });
      if (!line.includes('"port"')) line = '';
      if (!line) await new Promise((r) => setTimeout(r, 200));
    }
    const { port, id } = JSON.parse(line) as { port: number; id: string };
    expect(id).toBe(`spiffe://${TD}/workload/b`);

    const mine = (stream.messages.at(-1) as X509Msg).svids.find((s) => s.spiffe_id.endsWith('/workload/a'))!;
    const key = crypto.createPrivateKey({ key: mine.x509_svid_key, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' });
    const reply = await new Promise<string>((resolve, reject) => {
      const sock = tls.connect({
        host: '127.0.0.1', port,
        key, cert: pemOf(splitDerCertificates(mine.x509_svid)), ca: pemOf(splitDerCertificates(mine.bundle)),
        // SPIFFE authentication: the peer's ID, not a host name.
        checkServerIdentity: (_h, cert) => (cert.subjectaltname === `URI:spiffe://${TD}/workload/b` ? undefined : new Error(`unexpected server ${cert.subjectaltname}`)),
      });
      let data = '';
      sock.on('data', (d) => { data += d.toString(); });
      sock.on('end', () => resolve(data));
      sock.on('error', reject);
    });
    expect(reply.trim()).toBe(`hello spiffe://${TD}/workload/a, this is spiffe://${TD}/workload/b`);
  });

  it('a rotation arrives on the open stream without reconnecting', async () => {
    await addEntry('rot', `spiffe://${TD}/workload/rotating`, [`uid:${uid}`], { x509SvidTtl: 6 });
    const first = await stream.waitFor((m) => ids(m).includes(`spiffe://${TD}/workload/rotating`));
    const idx = stream.messages.indexOf(first);
    const serial = serialOf(first.svids.find((s) => s.spiffe_id.endsWith('/rotating'))!);
    const rotated = await stream.waitFor((m) => {
      const s = m.svids.find((x) => x.spiffe_id.endsWith('/rotating'));
      return s !== undefined && serialOf(s) !== serial;
    }, idx + 1, 10_000);
    expect(ids(rotated)).toEqual([`spiffe://${TD}/workload/a`, `spiffe://${TD}/workload/rotating`]);
    expect(stream.error).toBeUndefined();
  });

  it('deleting an entry withdraws its SVID from the open stream', async () => {
    const from = stream.messages.length;
    await server!.store.deleteEntries([entryIds['rot']!]);
    const msg = await stream.waitFor((m) => !ids(m).includes(`spiffe://${TD}/workload/rotating`), from);
    expect(ids(msg)).toEqual([`spiffe://${TD}/workload/a`]);
  });

  it('federated bundles reach the workloads whose entries federate with that trust domain', async () => {
    const partner = makeCa('partner.test');
    const pb = new Bundle(TrustDomain.parse('partner.test'));
    pb.addX509Authority(partner.der);
    pb.sequenceNumber = 3n;
    await server!.store.setBundle({ trustDomain: 'partner.test', bundleJson: pb.toJSON(), sequence: 3n });
    await addEntry('fed', `spiffe://${TD}/workload/federated`, [`uid:${uid}`], { federatesWith: ['partner.test'] });
    const from = stream.messages.length;
    const msg = await stream.waitFor((m) => ids(m).includes(`spiffe://${TD}/workload/federated`) && 'spiffe://partner.test' in m.federated_bundles, from);
    expect(msg.federated_bundles['spiffe://partner.test']!.equals(partner.der)).toBe(true);
    await server!.store.deleteEntries([entryIds['fed']!]);
    const after = await stream.waitFor((m) => !ids(m).includes(`spiffe://${TD}/workload/federated`), stream.messages.indexOf(msg) + 1);
    expect(after.federated_bundles).toEqual({});
    partner.cleanup();
  });

  it('JWT-SVIDs: fetched for an audience (signed by the server), validated by the agent and independently', async () => {
    const unary = <T>(method: string, req: object) => new Promise<T>((resolve, reject) =>
      client[method]!(req, md(), (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res))));
    const res = await unary<{ svids: Array<{ spiffe_id: string; svid: string }> }>('FetchJWTSVID', { audience: ['db.example'] });
    expect(res.svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/workload/a`]);
    const token = res.svids[0]!.svid;
    const bundle = Bundle.parse(TrustDomain.parse(TD), server!.ca.bundle().bundleJson);
    const independent = await validateJwtSvid(token, new BundleSet(bundle), 'db.example');
    expect(independent.id.toString()).toBe(`spiffe://${TD}/workload/a`);
    const v = await unary<{ spiffe_id: string; claims: { fields: Record<string, unknown> } }>('ValidateJWTSVID', { audience: 'db.example', svid: token });
    expect(v.spiffe_id).toBe(`spiffe://${TD}/workload/a`);
    expect(Object.keys(v.claims.fields)).toEqual(expect.arrayContaining(['sub', 'aud', 'exp']));
    await expect(unary('ValidateJWTSVID', { audience: 'other', svid: token })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it('when the server drops the node, every stream loses its SVIDs at once and the agent re-attests', async () => {
    const before = agent!.stats.attestations;
    server!.dropNode(agent!.spiffeId!, 'test: attestation withdrawn');
    const deadline = Date.now() + 10_000;
    while (!stream.error && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(stream.error?.code).toBe(grpc.status.PERMISSION_DENIED);
    while (agent!.stats.attestations === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(agent!.stats.attestations).toBe(before + 1);
    // Like any Workload API client, retry PermissionDenied until the re-signed SVIDs are there.
    let msg: X509Msg | undefined;
    while (!msg && Date.now() < deadline + 10_000) {
      stream = new X509Stream(client);
      msg = await stream.waitFor((m) => ids(m).includes(`spiffe://${TD}/workload/a`)).catch(() => undefined);
      if (!msg) await new Promise((r) => setTimeout(r, 100));
    }
    expect(ids(msg!)).toEqual([`spiffe://${TD}/workload/a`]);
  });

  it('an evicted node (deleted on the server) re-attests by itself and keeps serving', async () => {
    const before = agent!.stats.attestations;
    await server!.store.deleteNode(agent!.spiffeId!);
    const deadline = Date.now() + 15_000;
    while (agent!.stats.attestations === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(agent!.stats.attestations).toBe(before + 1);
    expect(await server!.store.getNode(agent!.spiffeId!)).toBeDefined();
    const fresh = new X509Stream(client);
    const msg = await fresh.waitFor((m) => ids(m).includes(`spiffe://${TD}/workload/a`));
    fresh.close();
    expect(ids(msg)).toEqual([`spiffe://${TD}/workload/a`]);
  });

  it('a restarted agent resumes from its stored SVID without attesting again', async () => {
    stream.close();
    await agent!.stop();
    agent = await Agent.start(agentConfig, { tpm, logger: silent });
    expect(agent.stats.attestations).toBe(0);
    stream = new X509Stream(client);
    const msg = await stream.waitFor((m) => ids(m).includes(`spiffe://${TD}/workload/a`));
    expect(ids(msg)).toEqual([`spiffe://${TD}/workload/a`]);
    expect(agent.stats.svidsSigned).toBeGreaterThan(0); // the server accepted the stored SVID for mTLS
  });

  it('with the server stopped, cached SVIDs keep being served', async () => {
    await server!.stop();
    server = undefined;
    const again = new X509Stream(client);
    const msg = await again.waitFor((m) => m.svids.length > 0);
    expect(ids(msg)).toEqual([`spiffe://${TD}/workload/a`]);
    again.close();
    // The open stream is not broken either.
    expect(stream.error).toBeUndefined();
  });

  it('when the server comes back, the agent reconnects by itself and picks up changes', async () => {
    await new Promise((r) => setTimeout(r, 1000)); // a few failed retries, so backoff is in play
    server = await startServer(serverConfig, { logger: silent });
    await addEntry('c', `spiffe://${TD}/workload/c`, [`uid:${uid}`]);
    const msg = await stream.waitFor((m) => ids(m).includes(`spiffe://${TD}/workload/c`), 0, 30_000);
    expect(ids(msg)).toEqual([`spiffe://${TD}/workload/a`, `spiffe://${TD}/workload/c`]);
    expect(agent!.stats.attestations).toBe(0);
  }, 40_000);
});
