// The workload library against the agent's real Workload API server (Unix socket, unix attestor,
// identity cache): sources, hot rotation seen through real mTLS handshakes (node:https, undici,
// node:tls), authorizers by ID, trust domain and Unified Identity claims, withdrawal, reconnection.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { request as undiciRequest } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnixAttestor } from '../../src/agent/attestor/unix.js';
import { IdentityCache, type CacheEntry, type CachedSvid, type TrustBundle } from '../../src/agent/cache.js';
import { WorkloadApiServer, type JwtProvider } from '../../src/agent/workloadapi/server.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { mintJwtSvid } from '../../src/spiffe/jwtsvid.js';
import { unifiedIdentityJwtClaim } from '../../src/spiffe/unified-identity.js';
import type { X509Svid } from '../../src/spiffe/svid-source.js';
import {
  authorizeAll, authorizeAny, authorizeId, authorizeMemberOf, authorizeUnifiedIdentity, AuthorizationError, createHttpsServer,
  createTlsServer, JWTSource, peerOf, SpiffeHttpsAgent, spiffeUndiciAgent, StaticX509Source, tlsConnect, WorkloadError, X509Source,
  type Authorizer, type X509SourceLike,
} from '../../src/workload/index.js';
import { tempDir } from '../support/tmp.js';
import { makeDomain, writeSvidFiles, type TestDomain, type TestSvid } from './fixtures.js';

const uid = process.getuid!();
const EU_DE = { country: 'DE', region: 'EU', policy: 'eu-only', sensorKinds: ['gnss'] };

function lines(): { logger: pino.Logger; text: () => string } {
  const out: string[] = [];
  const stream = new Writable({ write(chunk, _e, cb) { out.push(String(chunk)); cb(); } });
  return { logger: pino({ level: 'warn' }, stream), text: () => out.join('') };
}

const byPath = (p: string) => (svids: readonly X509Svid[]): X509Svid | undefined => svids.find((s) => s.id.path === p);

function cached(s: TestSvid): CachedSvid {
  const now = Date.now();
  return { spiffeId: s.id.toString(), chain: s.chain, key: s.pkcs8, notBefore: now - 10_000, notAfter: now + 3600_000 };
}

function nextUpdate(src: { onUpdate(fn: () => void): () => void }, ok: () => boolean, ms = 5000): Promise<void> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { off(); reject(new Error('no update from the Workload API in time')); }, ms);
    const off = src.onUpdate(() => {
      if (!ok()) return;
      clearTimeout(t);
      off();
      resolve();
    });
  });
}

function httpsGet(port: number, agent: https.Agent): Promise<{ status: number; body: string; serverLeaf: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, path: '/', agent }, (res) => {
      const serverLeaf = (res.socket as import('node:tls').TLSSocket).getPeerCertificate().raw;
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, serverLeaf }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('workload library on a real Workload API', () => {
  const tmp = tempDir('terroir-wlib-');
  const socketDir = path.join(tmp.dir, 'public');
  const socket = path.join(socketDir, 'agent.sock');
  const endpoint = `unix://${socket}`;
  let ex: TestDomain;
  let other: TestDomain;
  let stranger: TestDomain;
  let cache: IdentityCache;
  let agent: WorkloadApiServer;
  let serverSource: X509Source;
  let clientSource: X509Source;
  let server: https.Server;
  let port: number;
  let serverLog: ReturnType<typeof lines>;
  const seen: Array<{ id: string; leaf: Buffer }> = [];
  const jwtKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });

  const entry = (id: string, p: string): CacheEntry => ({
    id, spiffeId: `spiffe://example.org${p}`, selectors: [{ type: 'unix', value: `uid:${uid}` }], federatesWith: ['other.test'], hint: '', jwtSvidTtl: 300,
  });
  const trustBundle = (d: TestDomain, seq: number): TrustBundle => {
    const b = d.bundle();
    if (d === ex) b.addJwtAuthority('k1', jwtKey.publicKey);
    b.sequenceNumber = BigInt(seq);
    return { trustDomain: d.td.name, x509Authorities: [d.caDer], jwks: Buffer.from(b.toJSON()), sequence: seq };
  };
  const jwt: JwtProvider = {
    fetchJwtSvid: (e, audience) => mintJwtSvid({
      id: SpiffeId.parse(e.spiffeId), audience, ttlSeconds: 300, key: { kid: 'k1', privateKey: jwtKey.privateKey, alg: 'ES256' },
      ...(e.id === 'e-client' ? { extraClaims: { unified_identity: unifiedIdentityJwtClaim(EU_DE) } } : {}),
    }),
    validateJwtSvid: () => Promise.reject(new Error('not used here')),
  };
  const startAgent = async (): Promise<void> => {
    agent = await WorkloadApiServer.start({ socketPath: socket, cache, attestor: new UnixAttestor(), jwt, logger: pino({ level: 'silent' }) });
  };
  const clientAgent = (source: X509SourceLike, authorizer: Authorizer = authorizeId('spiffe://example.org/consumer')): SpiffeHttpsAgent =>
    new SpiffeHttpsAgent({ source, authorizer }, { keepAlive: false });

  beforeAll(async () => {
    fs.mkdirSync(socketDir, { mode: 0o755 });
    ex = makeDomain('example.org');
    other = makeDomain('other.test');
    stranger = makeDomain('stranger.test');
    cache = new IdentityCache('example.org');
    cache.setBundles(trustBundle(ex, 1), [trustBundle(other, 1)]);
    cache.setEntries([entry('e-consumer', '/consumer'), entry('e-client', '/client')]);
    cache.putSvids(new Map([['e-consumer', cached(ex.svid('/consumer'))], ['e-client', cached(ex.svid('/client', { claims: EU_DE }))]]));
    await startAgent();
    serverSource = await X509Source.create({ endpoint, pick: byPath('/consumer'), timeoutMs: 5000, backoff: { initialMs: 20, maxMs: 200 } });
    clientSource = await X509Source.create({ endpoint, pick: byPath('/client'), timeoutMs: 5000, backoff: { initialMs: 20, maxMs: 200 } });
    serverLog = lines();
    server = createHttpsServer({
      source: serverSource,
      authorizer: authorizeAll(authorizeMemberOf('example.org'), authorizeUnifiedIdentity({ trustDomain: 'example.org', countries: ['DE', 'FR'], regions: ['EU'] })),
      logger: serverLog.logger,
    }, (_req, res, peer) => {
      seen.push({ id: peer.id.toString(), leaf: peer.x509Chain![0]! });
      res.end(peer.id.toString());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    port = (server.address() as AddressInfo).port;
  });

  afterAll(async () => {
    await new Promise((r) => server?.close(r));
    await serverSource?.close();
    await clientSource?.close();
    await agent?.close();
    tmp.cleanup();
  });

  it('X509Source: the picked SVID with its key, our bundle and the federated one', () => {
    const svid = clientSource.getX509Svid();
    expect(svid.id.toString()).toBe('spiffe://example.org/client');
    expect(clientSource.getX509Svids().map((s) => s.id.path).sort()).toEqual(['/client', '/consumer']);
    const pub = crypto.createPublicKey(svid.privateKey).export({ type: 'spki', format: 'der' });
    expect(pub.equals(new crypto.X509Certificate(svid.certificatesDer[0]!).publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
    expect(clientSource.getX509Bundles().map((b) => b.trustDomain.name).sort()).toEqual(['example.org', 'other.test']);
    expect(clientSource.getX509BundleForTrustDomain(ex.td)!.x509Authorities()[0]!.equals(ex.caDer)).toBe(true);
  });

  it('a compliant peer gets through node:https, undici and node:tls', async () => {
    const r = await httpsGet(port, clientAgent(clientSource));
    expect(r).toMatchObject({ status: 200, body: 'spiffe://example.org/client' });
    const dispatcher = spiffeUndiciAgent({ source: clientSource, authorizer: authorizeId('spiffe://example.org/consumer') });
    const u = await undiciRequest(`https://127.0.0.1:${port}/`, { dispatcher });
    expect(u.statusCode).toBe(200);
    expect(await u.body.text()).toBe('spiffe://example.org/client');
    await dispatcher.close();
    const s = tlsConnect({ source: clientSource, authorizer: authorizeMemberOf('example.org'), host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => { s.once('secureConnect', resolve); s.once('error', reject); });
    expect(peerOf(s)!.id.toString()).toBe('spiffe://example.org/consumer');
    s.destroy();
  });

  it('rotation reaches the open server and client without restart', async () => {
    const before = await httpsGet(port, clientAgent(clientSource));
    const oldClientLeaf = seen.at(-1)!.leaf;
    const newConsumer = ex.svid('/consumer');
    const newClient = ex.svid('/client', { claims: EU_DE });
    const updated = Promise.all([
      nextUpdate(serverSource, () => serverSource.getX509Svid().certificatesDer[0]!.equals(newConsumer.chain[0]!)),
      nextUpdate(clientSource, () => clientSource.getX509Svid().certificatesDer[0]!.equals(newClient.chain[0]!)),
    ]);
    cache.putSvids(new Map([['e-consumer', cached(newConsumer)], ['e-client', cached(newClient)]]));
    await updated;
    const after = await httpsGet(port, clientAgent(clientSource));
    // A client sending SNI gets its context from SNICallback: the new SVID there too.
    const sni = tlsConnect({ source: clientSource, authorizer: authorizeAny(), host: '127.0.0.1', port, servername: 'consumer.example' });
    await new Promise<void>((resolve, reject) => { sni.once('secureConnect', resolve); sni.once('error', reject); });
    expect(peerOf(sni)!.x509Chain![0]!.equals(newConsumer.chain[0]!)).toBe(true);
    sni.destroy();
    expect(after.status).toBe(200);
    expect(before.serverLeaf.equals(after.serverLeaf)).toBe(false);
    expect(after.serverLeaf.equals(newConsumer.chain[0]!)).toBe(true);
    expect(seen.at(-1)!.leaf.equals(newClient.chain[0]!)).toBe(true);
    expect(seen.at(-1)!.leaf.equals(oldClientLeaf)).toBe(false);
  });

  it('the server refuses peers without claims, of another country, or of another trust domain; the handler never runs', async () => {
    const cases: Array<[string, TestSvid, TestDomain[], RegExp]> = [
      ['no claims', ex.svid('/noclaims'), [ex], /carries no Unified Identity claims/],
      ['another country', ex.svid('/us', { claims: { country: 'US', region: 'NA', policy: 'us-only' } }), [ex], /has country .*US.*, not one of DE, FR/],
      ['another trust domain', other.svid('/client', { claims: EU_DE }), [ex, other], /not a member of trust domain example\.org/],
    ];
    for (const [name, svid, domains, reason] of cases) {
      const source = StaticX509Source.fromFiles(writeSvidFiles(tmp.dir, name.replace(/ /g, '-'), svid, domains));
      const n = seen.length;
      await expect(httpsGet(port, clientAgent(source)), name).rejects.toThrow();
      expect(seen.length, name).toBe(n);
      expect(serverLog.text(), name).toMatch(reason);
    }
    // Unknown trust domain: not even OpenSSL accepts the chain.
    const s = StaticX509Source.fromFiles(writeSvidFiles(tmp.dir, 'stranger', stranger.svid('/x', { claims: EU_DE }), [stranger, ex]));
    await expect(httpsGet(port, clientAgent(s))).rejects.toThrow();
    // And a compliant file-based peer is accepted: the static source is interchangeable.
    const good = StaticX509Source.fromFiles(writeSvidFiles(tmp.dir, 'good', ex.svid('/fr', { claims: { country: 'FR', region: 'EU' } }), [ex]));
    expect((await httpsGet(port, clientAgent(good))).body).toBe('spiffe://example.org/fr');
  });

  it('the client refuses a server its authorizer does not allow, before sending anything', async () => {
    const n = seen.length;
    await expect(httpsGet(port, clientAgent(clientSource, authorizeId('spiffe://example.org/someone-else')))).rejects.toThrow(AuthorizationError);
    await expect(httpsGet(port, clientAgent(clientSource, authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'] })))).rejects.toThrow(/no Unified Identity claims/);
    expect(seen.length).toBe(n);
  });

  it('a plain node:tls server with a malformed claims extension on the peer: clear refusal', async () => {
    const log = lines();
    const tlsServer = createTlsServer({ source: serverSource, authorizer: authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'] }), logger: log.logger }, (sock) => sock.end('hi'));
    await new Promise<void>((r) => tlsServer.listen(0, '127.0.0.1', r));
    const bad = ex.svid('/bad', { extensions: [{ oid: '2.25.250341728606082657925786220697128205103', critical: false, value: Buffer.from([0x04, 0x02, 0x7b, 0x7d]) }] });
    const src = StaticX509Source.fromFiles(writeSvidFiles(tmp.dir, 'bad', bad, [ex]));
    const s = tlsConnect({ source: src, authorizer: authorizeAny(), host: '127.0.0.1', port: (tlsServer.address() as AddressInfo).port });
    const got = await new Promise<string>((resolve) => {
      let data = '';
      s.on('data', (d) => { data += String(d); });
      s.on('error', () => resolve(data));
      s.on('close', () => resolve(data));
    });
    expect(got).toBe('');
    expect(log.text()).toMatch(/malformed Unified Identity claims \(malformed-extension\)/);
    await new Promise((r) => tlsServer.close(r));
  });

  it('JWTSource: a JWT-SVID with the claims, validated and authorized by the consumer', async () => {
    const client = await JWTSource.create({ endpoint, timeoutMs: 5000 });
    const consumer = await JWTSource.create({ endpoint, timeoutMs: 5000 });
    try {
      const svid = await client.fetchJwtSvid({ audience: ['consumer'], subject: SpiffeId.parse('spiffe://example.org/client') });
      expect(svid.claims['unified_identity']).toEqual(EU_DE);
      const peer = await consumer.authorizeJwtSvid(svid.token, 'consumer', authorizeUnifiedIdentity({ trustDomain: 'example.org', countries: ['DE'], policies: ['eu-only'] }));
      expect(peer.id.toString()).toBe('spiffe://example.org/client');
      await expect(consumer.authorizeJwtSvid(svid.token, 'consumer', authorizeUnifiedIdentity({ trustDomain: 'example.org', countries: ['FR'] }))).rejects.toThrow(/country "DE"/);
      await expect(consumer.authorizeJwtSvid(svid.token, 'other-audience', authorizeAny())).rejects.toThrow(/audience/);
      const plain = await client.fetchJwtSvid({ audience: ['consumer'], subject: SpiffeId.parse('spiffe://example.org/consumer') });
      await expect(consumer.authorizeJwtSvid(plain.token, 'consumer', authorizeUnifiedIdentity({ trustDomain: 'example.org', regions: ['EU'] }))).rejects.toThrow(/no Unified Identity claims/);
      await expect(client.fetchJwtSvid({ audience: ['consumer'], subject: SpiffeId.parse('spiffe://example.org/not-ours') }))
        .rejects.toMatchObject({ code: 'fetch-failed', message: expect.stringMatching(/PERMISSION_DENIED/) });
      await expect(client.fetchJwtSvid({ audience: [] })).rejects.toMatchObject({ code: 'invalid-argument' });
      // A new JWT authority reaches the open source through the bundle stream.
      const k2 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const b = ex.bundle();
      b.addJwtAuthority('k1', jwtKey.publicKey);
      b.addJwtAuthority('k2', k2.publicKey);
      const rotated = nextUpdate(consumer, () => consumer.getJwtBundleForTrustDomain(ex.td)?.getJwtAuthority('k2') !== undefined);
      cache.setBundles({ trustDomain: 'example.org', x509Authorities: [ex.caDer], jwks: Buffer.from(b.toJSON()), sequence: 2 }, [trustBundle(other, 1)]);
      await rotated;
      const byK2 = await mintJwtSvid({ id: SpiffeId.parse('spiffe://example.org/client'), audience: ['consumer'], ttlSeconds: 60, key: { kid: 'k2', privateKey: k2.privateKey, alg: 'ES256' } });
      expect((await consumer.validateJwtSvid(byK2, 'consumer')).id.toString()).toBe('spiffe://example.org/client');
    } finally {
      await client.close();
      await consumer.close();
    }
  });

  it('create() fails clearly without an endpoint or without an answer', async () => {
    const saved = process.env['SPIFFE_ENDPOINT_SOCKET'];
    delete process.env['SPIFFE_ENDPOINT_SOCKET'];
    await expect(X509Source.create()).rejects.toMatchObject({ code: 'no-endpoint' });
    if (saved !== undefined) process.env['SPIFFE_ENDPOINT_SOCKET'] = saved;
    await expect(X509Source.create({ endpoint: `unix://${path.join(tmp.dir, 'nobody.sock')}`, timeoutMs: 300 })).rejects.toMatchObject({ code: 'timeout' });
    expect(() => StaticX509Source.fromFiles({ certFile: path.join(tmp.dir, 'missing.pem'), keyFile: 'x', bundleFiles: {} })).toThrow(WorkloadError);
  });

  it('reconnects after an agent restart and picks up what changed meanwhile', async () => {
    await agent.close();
    const rotated = ex.svid('/client', { claims: EU_DE });
    cache.putSvids(new Map([['e-client', cached(rotated)]]));
    const updated = nextUpdate(clientSource, () => clientSource.getX509Svid().certificatesDer[0]!.equals(rotated.chain[0]!));
    await startAgent();
    await updated;
    expect((await httpsGet(port, clientAgent(clientSource))).status).toBe(200);
    expect(seen.at(-1)!.leaf.equals(rotated.chain[0]!)).toBe(true);
  });

  it('identity withdrawn by the agent: SVIDs dropped at once, no more handshakes', async () => {
    const withdrawn = (src: X509Source) => () => { try { src.getX509Svid(); return false; } catch { return true; } };
    const gone = Promise.all([nextUpdate(clientSource, withdrawn(clientSource)), nextUpdate(serverSource, withdrawn(serverSource))]);
    const lateClient = StaticX509Source.fromFiles(writeSvidFiles(tmp.dir, 'late', ex.svid('/late', { claims: EU_DE }), [ex]));
    expect((await httpsGet(port, clientAgent(lateClient))).status).toBe(200);
    cache.dropSvids();
    await gone;
    expect(() => clientSource.getX509Svid()).toThrow(expect.objectContaining({ code: 'no-svid' }));
    await expect(httpsGet(port, clientAgent(clientSource))).rejects.toMatchObject({ code: 'no-svid' });
    // The open server stops completing handshakes too: its certificate is gone from the context.
    const n = seen.length;
    await expect(httpsGet(port, clientAgent(lateClient))).rejects.toThrow();
    expect(seen.length).toBe(n);
  });
});
