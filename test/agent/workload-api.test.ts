// Workload API conformance, with an independent client built from the normative spec proto
// (../shared/spec/workloadapi.proto), over the real Unix socket, with the real unix attestor.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as jose from 'jose';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityCache, type CacheEntry } from '../../src/agent/cache.js';
import { UnixAttestor } from '../../src/agent/attestor/unix.js';
import { WorkloadApiServer, WorkloadApiError, type JwtProvider } from '../../src/agent/workloadapi/server.js';
import { tempDir } from '../support/tmp.js';
import { installWireClient, runWireClientAs } from './as-user.js';
import { makeCa, makeSvid, type TestCa } from './fixtures.js';

const SPEC_PROTO = path.resolve(import.meta.dirname, '../../../shared/spec/workloadapi.proto');
const uid = process.getuid!();
const gid = process.getgid!();

interface Received {
  messages: Array<Record<string, unknown>>;
  error?: grpc.ServiceError;
  next(count: number, timeoutMs?: number): Promise<void>;
  call: grpc.ClientReadableStream<Record<string, unknown>>;
}

type SpecClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

function specClient(socket: string): SpecClient {
  const def = protoLoader.loadSync(SPEC_PROTO, { keepCase: true, defaults: true });
  const Ctor = (grpc.loadPackageDefinition(def) as unknown as Record<string, grpc.ServiceClientConstructor>)['SpiffeWorkloadAPI']!;
  return new Ctor(`unix://${socket}`, grpc.credentials.createInsecure()) as unknown as SpecClient;
}

function header(value: string | string[] | null = 'true'): grpc.Metadata {
  const md = new grpc.Metadata();
  if (value === null) return md;
  for (const v of Array.isArray(value) ? value : [value]) md.add('workload.spiffe.io', v);
  return md;
}

function openStream(client: SpecClient, method: string, md = header()): Received {
  const call = client[method]!({}, md) as grpc.ClientReadableStream<Record<string, unknown>>;
  const r: Received = {
    messages: [],
    call,
    next: (count, timeoutMs = 5000) =>
      new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`expected ${count} messages, got ${r.messages.length}`)), timeoutMs);
        const check = () => {
          if (r.messages.length >= count || r.error) {
            clearTimeout(t);
            resolve();
          } else setTimeout(check, 5);
        };
        check();
      }),
  };
  call.on('data', (m) => r.messages.push(m));
  call.on('error', (e: grpc.ServiceError) => { r.error = e; });
  return r;
}

function unary<T>(client: SpecClient, method: string, req: object, md = header()): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method]!(req, md, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

function leafId(der: Buffer): string {
  return new crypto.X509Certificate(der).subjectAltName!.replace(/^URI:/, '');
}

describe('Workload API server', () => {
  const tmp = tempDir('terroir-wl-');
  const socketDir = path.join(tmp.dir, 'public');
  const socket = path.join(socketDir, 'agent.sock');
  let ca: TestCa;
  let fed: TestCa;
  let cache: IdentityCache;
  let server: WorkloadApiServer;
  let client: SpecClient;
  const jwtKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwtCalls: Array<{ entry: string; audience: string[] }> = [];

  const entry = (id: string, spiffeId: string, selectors: string[], extra: Partial<CacheEntry> = {}): CacheEntry => ({
    id,
    spiffeId,
    selectors: selectors.map((s) => ({ type: 'unix', value: s })),
    federatesWith: [],
    hint: '',
    jwtSvidTtl: 300,
    ...extra,
  });

  const jwt: JwtProvider = {
    async fetchJwtSvid(e, audience) {
      jwtCalls.push({ entry: e.id, audience });
      return new jose.SignJWT({})
        .setProtectedHeader({ alg: 'ES256', kid: 'k1', typ: 'JWT' })
        .setSubject(e.spiffeId)
        .setAudience(audience)
        .setExpirationTime('5m')
        .sign(jwtKey.privateKey);
    },
    async validateJwtSvid(token, audience) {
      const { payload } = await jose.jwtVerify(token, jwtKey.publicKey, { audience });
      return { spiffeId: payload.sub!, claims: payload as Record<string, unknown> };
    },
  };

  beforeAll(async () => {
    fs.mkdirSync(socketDir, { mode: 0o755 });
    fs.chmodSync(tmp.dir, 0o755); // so the test's "nobody" child can reach the socket
    ca = makeCa('example.org');
    fed = makeCa('partner.test');
    cache = new IdentityCache('example.org');
    cache.setBundles(ca.bundle(1), [fed.bundle(7)]);
    cache.setEntries([
      entry('e-web', 'spiffe://example.org/web', [`uid:${uid}`], { federatesWith: ['partner.test'], hint: 'internal' }),
      entry('e-other', 'spiffe://example.org/someone-else', ['uid:4242']),
    ]);
    cache.putSvids(new Map([
      ['e-web', makeSvid(ca, 'spiffe://example.org/web')],
      ['e-other', makeSvid(ca, 'spiffe://example.org/someone-else')],
    ]));
    server = await WorkloadApiServer.start({
      socketPath: socket,
      cache,
      attestor: new UnixAttestor(),
      jwt,
      logger: pino({ level: 'silent' }),
    });
    client = specClient(socket);
  });

  afterAll(async () => {
    client?.close();
    await server?.close();
    ca?.cleanup();
    fed?.cleanup();
    tmp.cleanup();
  });

  it('creates a world-connectable socket in a directory others cannot write', () => {
    const st = fs.statSync(socket);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o777);
  });

  it('refuses a socket directory writable by others', async () => {
    const bad = path.join(tmp.dir, 'open');
    fs.mkdirSync(bad);
    fs.chmodSync(bad, 0o777);
    await expect(WorkloadApiServer.start({
      socketPath: path.join(bad, 's.sock'), cache, attestor: new UnixAttestor(), jwt, logger: pino({ level: 'silent' }),
    })).rejects.toBeInstanceOf(WorkloadApiError);
    expect(fs.existsSync(path.join(bad, 's.sock'))).toBe(false);
  });

  it('rejects requests without exactly one "workload.spiffe.io: true" header', async () => {
    for (const md of [header(null), header('false'), header(['true', 'true'])]) {
      const s = openStream(client, 'FetchX509SVID', md);
      await s.next(1);
      expect(s.messages).toHaveLength(0);
      expect(s.error?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(s.error?.details).toContain('workload.spiffe.io');
    }
    await expect(unary(client, 'FetchJWTSVID', { audience: ['a'] }, header(null))).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(unary(client, 'ValidateJWTSVID', { audience: 'a', svid: 'x' }, header('yes'))).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it('FetchX509SVID: the first message at once, only the caller\'s SVIDs, DER chain, PKCS#8 key, bundles', async () => {
    const t0 = performance.now();
    const s = openStream(client, 'FetchX509SVID');
    await s.next(1);
    expect(performance.now() - t0).toBeLessThan(2000);
    s.call.cancel();
    const msg = s.messages[0] as { svids: Array<Record<string, Buffer | string>>; federated_bundles: Record<string, Buffer> };
    expect(msg.svids.map((x) => x.spiffe_id)).toEqual(['spiffe://example.org/web']);
    const svid = msg.svids[0]!;
    expect(svid.hint).toBe('internal');
    expect(leafId(svid.x509_svid as Buffer)).toBe('spiffe://example.org/web');
    const key = crypto.createPrivateKey({ key: svid.x509_svid_key as Buffer, format: 'der', type: 'pkcs8' });
    const pub = crypto.createPublicKey(key).export({ format: 'der', type: 'spki' });
    const certPub = new crypto.X509Certificate(svid.x509_svid as Buffer).publicKey.export({ format: 'der', type: 'spki' });
    expect(Buffer.compare(pub, certPub)).toBe(0);
    expect(Buffer.compare(svid.bundle as Buffer, ca.der)).toBe(0);
    expect(Object.keys(msg.federated_bundles)).toEqual(['spiffe://partner.test']);
    expect(Buffer.compare(msg.federated_bundles['spiffe://partner.test']!, fed.der)).toBe(0);
  });

  it('streams the full state on every change: rotation, a new entry, withdrawal, then PermissionDenied', async () => {
    const s = openStream(client, 'FetchX509SVID');
    await s.next(1);
    const first = (s.messages[0] as { svids: Array<{ x509_svid: Buffer }> }).svids[0]!.x509_svid;

    cache.putSvids(new Map([['e-web', makeSvid(ca, 'spiffe://example.org/web')]]));
    await s.next(2);
    const rotated = (s.messages[1] as { svids: Array<{ x509_svid: Buffer }> }).svids;
    expect(rotated).toHaveLength(1);
    expect(Buffer.compare(rotated[0]!.x509_svid, first)).not.toBe(0);

    const entries = cache.entryList();
    cache.setEntries([...entries, entry('e-db', 'spiffe://example.org/db', [`gid:${gid}`])]);
    cache.putSvids(new Map([['e-db', makeSvid(ca, 'spiffe://example.org/db')]]));
    await s.next(3);
    expect((s.messages[2] as { svids: Array<{ spiffe_id: string }> }).svids.map((x) => x.spiffe_id))
      .toEqual(['spiffe://example.org/db', 'spiffe://example.org/web']);

    cache.setEntries(entries.filter((e) => e.id !== 'e-web').concat(entry('e-db', 'spiffe://example.org/db', [`gid:${gid}`])));
    await s.next(4);
    const after = s.messages[3] as { svids: Array<{ spiffe_id: string }>; federated_bundles: Record<string, Buffer> };
    expect(after.svids.map((x) => x.spiffe_id)).toEqual(['spiffe://example.org/db']);
    expect(after.federated_bundles).toEqual({}); // the federating entry is gone, so is its bundle

    cache.setEntries(entries.filter((e) => e.id !== 'e-web'));
    await s.next(5);
    expect(s.messages).toHaveLength(4);
    expect(s.error?.code).toBe(grpc.status.PERMISSION_DENIED);

    // Restore for the following tests.
    cache.setEntries(entries);
    cache.putSvids(new Map([['e-web', makeSvid(ca, 'spiffe://example.org/web')]]));
  });

  it('sends a rotation to every open stream of the same caller', async () => {
    const streams = Array.from({ length: 50 }, () => openStream(client, 'FetchX509SVID'));
    await Promise.all(streams.map((s) => s.next(1)));
    const next = makeSvid(ca, 'spiffe://example.org/web');
    cache.putSvids(new Map([['e-web', next]]));
    await Promise.all(streams.map((s) => s.next(2)));
    for (const s of streams) {
      const got = (s.messages[1] as { svids: Array<{ x509_svid: Buffer }> }).svids[0]!.x509_svid;
      expect(Buffer.compare(got, next.chain[0]!)).toBe(0);
      s.call.cancel();
    }
  });

  it('drop of all SVIDs ends every stream with PermissionDenied at once', async () => {
    const streams = Array.from({ length: 5 }, () => openStream(client, 'FetchX509SVID'));
    await Promise.all(streams.map((s) => s.next(1)));
    const saved = new Map([['e-web', cache.svid('e-web')!], ['e-other', cache.svid('e-other')!]]);
    cache.dropSvids();
    await Promise.all(streams.map((s) => s.next(2)));
    for (const s of streams) expect(s.error?.code).toBe(grpc.status.PERMISSION_DENIED);
    cache.putSvids(saved);
  });

  it('FetchX509Bundles and FetchJWTBundles: own and federated bundles, updated on change', async () => {
    const x = openStream(client, 'FetchX509Bundles');
    const j = openStream(client, 'FetchJWTBundles');
    await x.next(1);
    await j.next(1);
    const xb = (x.messages[0] as { bundles: Record<string, Buffer> }).bundles;
    expect(Object.keys(xb).sort()).toEqual(['spiffe://example.org', 'spiffe://partner.test']);
    expect(Buffer.compare(xb['spiffe://example.org']!, ca.der)).toBe(0);
    const jb = (j.messages[0] as { bundles: Record<string, Buffer> }).bundles;
    expect(JSON.parse(jb['spiffe://example.org']!.toString()).spiffe_sequence).toBe(1);

    cache.setBundles(ca.bundle(2), [fed.bundle(8)]);
    await j.next(2);
    const jb2 = (j.messages[1] as { bundles: Record<string, Buffer> }).bundles;
    expect(JSON.parse(jb2['spiffe://example.org']!.toString()).spiffe_sequence).toBe(2);
    expect(JSON.parse(jb2['spiffe://partner.test']!.toString()).spiffe_sequence).toBe(8);
    x.call.cancel();
    j.call.cancel();
  });

  it('FetchJWTSVID: requires an audience, returns the caller\'s JWT-SVIDs, filters by SPIFFE ID', async () => {
    await expect(unary(client, 'FetchJWTSVID', { audience: [] })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const res = await unary<{ svids: Array<{ spiffe_id: string; svid: string; hint: string }> }>(client, 'FetchJWTSVID', { audience: ['db'] });
    expect(res.svids.map((s) => s.spiffe_id)).toEqual(['spiffe://example.org/web']);
    expect(res.svids[0]!.hint).toBe('internal');
    expect(jose.decodeJwt(res.svids[0]!.svid).aud).toEqual(['db']);
    await expect(unary(client, 'FetchJWTSVID', { audience: ['db'], spiffe_id: 'spiffe://example.org/someone-else' }))
      .rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    expect(jwtCalls.every((c) => c.entry === 'e-web')).toBe(true);
  });

  it('ValidateJWTSVID: returns the SPIFFE ID and claims, rejects a wrong audience or garbage', async () => {
    const { svids } = await unary<{ svids: Array<{ svid: string }> }>(client, 'FetchJWTSVID', { audience: ['db'] });
    const ok = await unary<{ spiffe_id: string; claims: { fields: Record<string, { stringValue?: string }> } }>(
      client, 'ValidateJWTSVID', { audience: 'db', svid: svids[0]!.svid });
    expect(ok.spiffe_id).toBe('spiffe://example.org/web');
    expect(ok.claims.fields['sub']?.stringValue).toBe('spiffe://example.org/web');
    await expect(unary(client, 'ValidateJWTSVID', { audience: 'other', svid: svids[0]!.svid })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(unary(client, 'ValidateJWTSVID', { audience: 'db', svid: 'not.a.jwt' })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    await expect(unary(client, 'ValidateJWTSVID', { audience: '', svid: svids[0]!.svid })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it('refuses oversized and malformed requests, and keeps serving', async () => {
    const huge = 'a'.repeat(100 * 1024);
    await expect(unary(client, 'ValidateJWTSVID', { audience: 'db', svid: huge })).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED });
    const raw = await new Promise<grpc.ServiceError | null>((resolve) => {
      client.makeUnaryRequest('/SpiffeWorkloadAPI/ValidateJWTSVID', (b: Buffer) => b, (b: Buffer) => b,
        Buffer.from([0x7f, 0x01]), header(), (err) => resolve(err));
    });
    expect(raw?.code).toBe(grpc.status.INTERNAL);
    expect(raw?.details).toMatch(/deserializ/i);
    // Not HTTP/2 at all, and a connection reset mid-way: the agent drops them and carries on.
    await new Promise<void>((resolve) => {
      const junk = net.connect(socket, () => junk.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
      junk.on('error', () => undefined);
      junk.on('close', () => resolve());
      junk.resume();
    });
    const reset = net.connect(socket, () => reset.end('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00'));
    reset.on('error', () => undefined);
    await new Promise((r) => setTimeout(r, 50));
    const s = openStream(client, 'FetchX509SVID');
    await s.next(1);
    expect(s.messages).toHaveLength(1);
    s.call.cancel();
  });

  it('allowUnauthenticatedVerifiers: bundles for a caller with no identity, but still no SVID', async () => {
    const other = new IdentityCache('example.org');
    other.setBundles(ca.bundle(5), [fed.bundle(1)]);
    other.setEntries([entry('x', 'spiffe://example.org/x', ['uid:4242'], { federatesWith: ['partner.test'] })]);
    other.putSvids(new Map([['x', makeSvid(ca, 'spiffe://example.org/x')]]));
    const sock = path.join(socketDir, 'verifiers.sock');
    const srv = await WorkloadApiServer.start({
      socketPath: sock, cache: other, attestor: new UnixAttestor(), jwt, logger: pino({ level: 'silent' }), allowUnauthenticatedVerifiers: true,
    });
    const c = specClient(sock);
    try {
      const b = openStream(c, 'FetchX509Bundles');
      await b.next(1);
      // Only the own trust domain: federated bundles follow the caller's entries, and it has none.
      expect(Object.keys((b.messages[0] as { bundles: Record<string, Buffer> }).bundles)).toEqual(['spiffe://example.org']);
      b.call.cancel();
      const x = openStream(c, 'FetchX509SVID');
      await x.next(1);
      expect(x.error?.code).toBe(grpc.status.PERMISSION_DENIED);
    } finally {
      c.close();
      await srv.close();
    }
  });

  it('answers Unimplemented for the WIT-SVID profile', async () => {
    const s = openStream(client, 'FetchWITSVID');
    await s.next(1);
    expect(s.error?.code).toBe(grpc.status.UNIMPLEMENTED);
  });

  it('another uid with no entry gets PermissionDenied (a real process running as nobody)', async () => {
    const script = installWireClient(path.join(tmp.dir, 'client'));
    const res = await runWireClientAs<{ ok: boolean; uid: number; code: number; details: string }>(65534, script, [socket, 'fetch']);
    expect(res.uid).toBe(65534);
    expect(res.ok).toBe(false);
    expect(res.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(res.details).toContain('unix:uid:65534');
  });

  it('the same process as nobody gets its SVID once an entry names its uid', async () => {
    const entries = cache.entryList();
    cache.setEntries([...entries, entry('e-nobody', 'spiffe://example.org/nobody', ['uid:65534', 'user:nobody'])]);
    cache.putSvids(new Map([['e-nobody', makeSvid(ca, 'spiffe://example.org/nobody')]]));
    const script = installWireClient(path.join(tmp.dir, 'client'));
    expect(await runWireClientAs(65534, script, [socket, 'fetch'])).toEqual({ ok: true, uid: 65534, svids: ['spiffe://example.org/nobody'] });
    cache.setEntries(entries);
  });
});
