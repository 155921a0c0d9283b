// Unified Identity end to end: swtpm, the Keylime test verifier (one-shot), gpsd + gpsfake, real
// servers and a real agent. Flag on: SVIDs carry the node's claims; every failing check refuses the
// attestation with a precise error. Flag off: plain SVIDs, no claims.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../../src/agent/agent.js';
import { NodeAttestationError, type UnifiedIdentityProvider } from '../../src/agent/node-attestor.js';
import type { UnifiedIdentityEvidence } from '../../src/api/agent-api.js';
import { canonicalClaims } from '../../src/geo/index.js';
import type { RunningServer } from '../../src/server/index.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { DEVELOPMENT_STAND_IN_VERIFIER, unifiedIdentityFromCertificate, UNIFIED_IDENTITY_OID } from '../../src/spiffe/unified-identity.js';
import { SvidIssuer } from '../../src/server/ca/issuer.js';
import { authorizeAny, authorizeUnifiedIdentity, createTlsServer, StaticX509Source, tlsConnect, type X509SourceLike } from '../../src/workload/index.js';
import { specClient, type SpecClient, type X509Msg } from '../keylime-e2e/fixture.js';
import { POLICY_PCR, startAgent, startUnifiedDeployment, TD, type UnifiedDeployment } from './fixture.js';
import { BERLIN } from './nmea.js';
import { expectNoCoordinates } from '../support/coordinates.js';

let d: UnifiedDeployment;
let on: RunningServer;
let agent: Agent | undefined;
/** The compliant workload's SVID (DER leaf, PKCS#8 DER key), from the agent's Workload API. */
let euSvid: { id: string; cert: Buffer; key: Buffer } | undefined;

beforeAll(async () => {
  d = await startUnifiedDeployment();
  on = await d.startServer({ flag: true, keylime: true });
}, 60_000);

afterAll(async () => {
  await agent?.stop();
  await d?.stop();
});

async function refusal(p: Promise<unknown>): Promise<NodeAttestationError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(NodeAttestationError);
  return err as NodeAttestationError;
}

function leafOf(chain: Buffer[]): Buffer {
  return chain[0] as Buffer;
}

function hasUnifiedExtension(der: Buffer): boolean {
  // Node lists no custom extensions; look for the OID's DER encoding in the certificate.
  const oid = UNIFIED_IDENTITY_OID.split('.').map(BigInt);
  const body: number[] = [];
  for (const arc of [oid[0]! * 40n + oid[1]!, ...oid.slice(2)]) {
    const bytes: number[] = [];
    let v = arc;
    do { bytes.unshift(Number(v & 0x7fn)); v >>= 7n; } while (v > 0n);
    for (let i = 0; i < bytes.length - 1; i++) bytes[i]! |= 0x80;
    body.push(...bytes);
  }
  return der.includes(Buffer.from([0x06, body.length, ...body]));
}

async function nodeClaims(server: RunningServer, id: string): Promise<Record<string, unknown> | undefined> {
  return (await server.store.getNode(id))?.claims;
}

function fetchX509(client: SpecClient, timeoutMs = 10_000): Promise<X509Msg> {
  return new Promise((resolve, reject) => {
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    const call = client['FetchX509SVID']!({}, md) as grpc.ClientReadableStream<X509Msg>;
    const timer = setTimeout(() => { call.cancel(); reject(new Error('no X.509-SVID message')); }, timeoutMs);
    call.on('data', (m: X509Msg) => { if (m.svids.length > 0) { clearTimeout(timer); call.cancel(); resolve(m); } });
    call.on('error', (e: grpc.ServiceError) => { if (e.code !== grpc.status.CANCELLED) { clearTimeout(timer); reject(e); } });
  });
}

function fetchJwt(client: SpecClient, audience: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    client['FetchJWTSVID']!({ audience: [audience] }, md, (err: grpc.ServiceError | null, res: { svids: { svid: string }[] }) => {
      if (err) reject(err); else resolve(res.svids[0]!.svid);
    });
  });
}

async function readyFlags(port: number): Promise<{ status: number; flags: unknown }> {
  const res = await fetch(`http://127.0.0.1:${port}/ready`);
  await res.body?.cancel();
  return { status: res.status, flags: JSON.parse(res.headers.get('terroir-feature-flags') ?? 'null') };
}

/** Wraps a provider to keep what it sent. */
function recording(inner: UnifiedIdentityProvider): UnifiedIdentityProvider & { sent: UnifiedIdentityEvidence[] } {
  const sent: UnifiedIdentityEvidence[] = [];
  return { sent, evidence: async (nonce, pcrs) => { const e = await inner.evidence(nonce, pcrs); sent.push(e); return e; } };
}

describe('Unified Identity, flag on', () => {
  it('the /ready endpoint shows the flag', async () => {
    const r = await readyFlags(on.healthPort!);
    expect(r.status).toBe(200);
    expect(r.flags).toEqual({ UNIFIED_IDENTITY_ENABLED: { value: true, source: 'env' } });
  });

  it('a node in Berlin gets an agent SVID with coarse claims, stored on the node and audited precisely', async () => {
    const before = Date.now();
    const res = await d.attest(on, d.provider(d.berlin));
    const claims = unifiedIdentityFromCertificate(leafOf(res.svidChain));
    expect(claims).toMatchObject({ country: 'DE', region: 'EU', policy: 'eu-only', sensorKinds: ['gnss'], verifier: DEVELOPMENT_STAND_IN_VERIFIER, satisfiedPolicies: ['eu-only'] });
    expect(claims!['pcrDigest']).toMatch(/^[0-9a-f]{64}$/);
    expect(Date.parse(claims!['attestedAt'] as string)).toBeGreaterThanOrEqual(before - 1000);
    // Never coordinates in what the SVID says.
    expectNoCoordinates(claims, BERLIN);
    expect(JSON.parse(res.unifiedIdentityClaims!.toString())).toEqual(claims);
    expect(await nodeClaims(on, res.spiffeId)).toEqual(claims);
    expect(d.verifier.counters.evidenceChecks).toBeGreaterThan(0);
  });

  it('an agent serves workload X.509- and JWT-SVIDs carrying its node\'s claims; a consumer requiring EU accepts them', async () => {
    agent = await startAgent(d, on, true, 'agent-on');
    expect(agent.lastClaims).toMatchObject({ country: 'DE', region: 'EU' });
    const uid = process.getuid!();
    const spiffeId = `spiffe://${TD}/workload/eu-app`;
    const [r] = await on.store.createEntries([{ spiffeId, parentId: agent.spiffeId!, selectors: [{ type: 'unix', value: `uid:${uid}` }], federatesWith: [] }]);
    expect(r?.ok).toBe(true);
    const client = specClient(agent.socketPath);
    try {
      const msg = await fetchX509(client);
      const svid = msg.svids.find((s) => s.spiffe_id === spiffeId)!;
      const leafDer = Buffer.from(new crypto.X509Certificate(svid.x509_svid).raw);
      const claims = unifiedIdentityFromCertificate(leafDer);
      expect(claims).toEqual(await nodeClaims(on, agent.spiffeId!));
      euSvid = { id: spiffeId, cert: leafDer, key: svid.x509_svid_key };
      // The verifier here is the development stand-in, and the claims say so: refused unless allowed.
      expect(() => authorizeUnifiedIdentity({ trustDomain: TD, regions: ['EU'] })({ id: SpiffeId.parse(spiffeId), x509Chain: [leafDer] }))
        .toThrow(/checked only by terroir's development Keylime stand-in/);
      authorizeUnifiedIdentity({ trustDomain: TD, regions: ['EU'], allowDevelopmentStandIn: true })({ id: SpiffeId.parse(spiffeId), x509Chain: [leafDer] });

      const token = await fetchJwt(client, 'eu-service');
      const payload = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
      expect(payload['unified_identity']).toEqual(claims);
      authorizeUnifiedIdentity({ trustDomain: TD, countries: ['DE'], policies: ['eu-only'], allowDevelopmentStandIn: true })({ id: SpiffeId.parse(spiffeId), jwtClaims: payload });
    } finally {
      client.close();
    }
  });

  it('over real mTLS, a consumer requiring region EU accepts the compliant workload and refuses a plain SVID of the same CA', async () => {
    const pem = (der: Buffer): string => new crypto.X509Certificate(der).toString();
    const bundleFile = path.join(d.dir, 'consumer-bundle.pem');
    fs.writeFileSync(bundleFile, on.ca.x509Roots().map(pem).join(''));
    const source = (name: string, cert: Buffer, key: crypto.KeyObject): X509SourceLike => {
      const certFile = path.join(d.dir, `${name}.pem`);
      const keyFile = path.join(d.dir, `${name}.key`);
      fs.writeFileSync(certFile, pem(cert));
      fs.writeFileSync(keyFile, key.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
      return StaticX509Source.fromFiles({ certFile, keyFile, bundleFiles: { [TD]: bundleFile } });
    };
    const eu = source('eu-app', euSvid!.cert, crypto.createPrivateKey({ key: euSvid!.key, format: 'der', type: 'pkcs8' }));
    // What a server with the flag off (same CA) issues: the same kind of SVID without the extension.
    const keys = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const plainId = `spiffe://${TD}/workload/plain-app`;
    const plainCert = new SvidIssuer({ ca: on.ca, maxTtlSeconds: 3600 }).mintX509(SpiffeId.parse(plainId), keys.publicKey, 600).certChain[0]!;
    expect(hasUnifiedExtension(plainCert)).toBe(false);
    const plain = source('plain-app', plainCert, keys.privateKey);

    const accepted: string[] = [];
    const server = createTlsServer({ source: eu, authorizer: authorizeUnifiedIdentity({ trustDomain: TD, regions: ['EU'], allowDevelopmentStandIn: true }) }, (sock, peer) => {
      accepted.push(peer.id.toString());
      sock.end('hello from an EU-only service');
    });
    // The control: a consumer accepting any SPIFFE ID of the trust domain takes the plain SVID, so the
    // refusal above is the claims' doing, not the certificate's.
    const anyServer = createTlsServer({ source: eu, authorizer: authorizeAny() }, (sock) => sock.end('hello from anyone'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    await new Promise<void>((r) => anyServer.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    const call = (src: X509SourceLike, to = port): Promise<string> => new Promise((resolve) => {
      const sock = tlsConnect({ source: src, authorizer: authorizeAny(), host: '127.0.0.1', port: to });
      let data = '';
      sock.on('data', (c: Buffer) => { data += c.toString(); });
      sock.on('error', () => undefined);
      sock.on('close', () => resolve(data));
    });
    try {
      expect(await call(eu)).toBe('hello from an EU-only service');
      expect(await call(plain)).toBe('');
      expect(accepted).toEqual([euSvid!.id]);
      expect(await call(plain, (anyServer.address() as AddressInfo).port)).toBe('hello from anyone');
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
      await new Promise<void>((r) => anyServer.close(() => r()));
    }
  });

  it('an entry naming a location policy its node does not satisfy gets no SVID', async () => {
    const uid = process.getuid!();
    const spiffeId = `spiffe://${TD}/workload/fr-app`;
    const [r] = await on.store.createEntries([{ spiffeId, parentId: agent!.spiffeId!, selectors: [{ type: 'unix', value: `uid:${uid}` }], federatesWith: [], locationPolicy: 'fr-only' }]);
    expect(r?.ok).toBe(true);
    await new Promise((res) => setTimeout(res, 2500));
    const client = specClient(agent!.socketPath);
    try {
      const msg = await fetchX509(client);
      expect(msg.svids.map((s) => s.spiffe_id)).toContain(`spiffe://${TD}/workload/eu-app`);
      expect(msg.svids.map((s) => s.spiffe_id)).not.toContain(spiffeId);
    } finally {
      client.close();
    }
    // The attestations below re-attest the same node (same TPM): this agent's SVID would be replaced.
    await agent!.stop();
    agent = undefined;
  });

  it('a reading outside the region (New York) is refused with the policy reasons', async () => {
    const err = await refusal(d.attest(on, d.provider(d.newYork)));
    expect(err.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.message).toMatch(/location policy eu-only denied/);
    expect(err.message).toMatch(/US/);
  });

  it('a replayed quote (a previous challenge response) is refused', async () => {
    const rec = recording(d.provider(d.berlin));
    await d.attest(on, rec);
    const old = rec.sent[0]!;
    const err = await refusal(d.attest(on, { evidence: async () => old }));
    expect(err.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.message).toMatch(/extra-data-mismatch.*replayed quote/);
  });

  it('claims changed after the quote are refused', async () => {
    const inner = d.provider(d.berlin);
    const tamper: UnifiedIdentityProvider = {
      async evidence(nonce, pcrs) {
        const e = await inner.evidence(nonce, pcrs);
        const doc = JSON.parse(e.claimsDocument.toString()) as { readings: { lat: number; lon: number }[] };
        doc.readings[0]!.lat = 48.8566; // "I am in Paris now"
        doc.readings[0]!.lon = 2.3522;
        return { ...e, claimsDocument: canonicalClaims(doc) };
      },
    };
    const err = await refusal(d.attest(on, tamper));
    expect(err.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.message).toMatch(/claims changed after quoting/);
  });

  it('a malformed or non-canonical claims document is refused as invalid', async () => {
    const inner = d.provider(d.berlin);
    const spaced: UnifiedIdentityProvider = {
      async evidence(nonce, pcrs) {
        const e = await inner.evidence(nonce, pcrs);
        return { ...e, claimsDocument: Buffer.from(JSON.stringify(JSON.parse(e.claimsDocument.toString()), null, 1)) };
      },
    };
    const err = await refusal(d.attest(on, spaced));
    expect(err.grpcCode).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.message).toMatch(/not in RFC 8785 canonical form/);
  });

  it('no evidence (an agent with the flag off) is refused', async () => {
    const err = await refusal(d.attest(on));
    expect(err.grpcCode).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err.message).toMatch(/must carry unified_identity/);
  });

  it('a changed PCR in the Keylime policy is refused, and the node\'s earlier claims are withdrawn', async () => {
    const ok = await d.attest(on, d.provider(d.berlin));
    expect(await nodeClaims(on, ok.spiffeId)).toMatchObject({ country: 'DE' });
    const quoter = d.tpm.quoter!();
    await quoter.pcrExtend(POLICY_PCR, crypto.createHash('sha256').update('rootkit').digest());
    try {
      const err = await refusal(d.attest(on, d.provider(d.berlin)));
      expect(err.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
      expect(err.message).toMatch(/Keylime refused the evidence/);
      expect(await nodeClaims(on, ok.spiffeId)).toBeUndefined();
    } finally {
      await quoter.pcrReset(POLICY_PCR);
    }
    const again = await d.attest(on, d.provider(d.berlin)); // and back in policy, accepted again
    expect(await nodeClaims(on, again.spiffeId)).toMatchObject({ country: 'DE' });
  });

  it('Keylime down: refused, fail closed', async () => {
    d.verifier.fault = { mode: '5xx' };
    try {
      const err = await refusal(d.attest(on, d.provider(d.berlin)));
      expect(err.grpcCode).toBe(grpc.status.UNAVAILABLE);
      expect(err.message).toMatch(/fail closed/);
    } finally {
      d.verifier.fault = { mode: 'none' };
    }
  });

  it('with a verifier that is not the stand-in, the claims name Keylime and a consumer needs no allowance', async () => {
    d.verifier.announceStandIn = false;
    try {
      const strict = await d.startServer({ flag: true, keylime: true, allowStandIn: false });
      const res = await d.attest(strict, d.provider(d.berlin));
      const leaf = leafOf(res.svidChain);
      expect(unifiedIdentityFromCertificate(leaf)).toMatchObject({ verifier: 'keylime', region: 'EU' });
      authorizeUnifiedIdentity({ trustDomain: TD, regions: ['EU'] })({ id: SpiffeId.parse(res.spiffeId), x509Chain: [leaf] });
    } finally {
      d.verifier.announceStandIn = true;
    }
  });

  it('a server not configured for development refuses the Keylime stand-in: attestation refused, fail closed', async () => {
    const strict = await d.startServer({ flag: true, keylime: true, allowStandIn: false });
    const checks = d.verifier.counters.evidenceChecks;
    const err = await refusal(d.attest(strict, d.provider(d.berlin)));
    expect(err.grpcCode).toBe(grpc.status.UNAVAILABLE);
    expect(err.message).toMatch(/development stand-in, not a Keylime verifier.*refused/);
    // The evidence never went to it.
    expect(d.verifier.counters.evidenceChecks).toBe(checks);
  });

  it('flag on without Keylime configured: refused with a clear error', async () => {
    const noKeylime = await d.startServer({ flag: true, keylime: false });
    const err = await refusal(d.attest(noKeylime, d.provider(d.berlin)));
    expect(err.grpcCode).toBe(grpc.status.FAILED_PRECONDITION);
    expect(err.message).toMatch(/no Keylime verifier configured.*fail closed/);
  });
});

describe('Unified Identity, flag off', () => {
  it('plain SVIDs: no extension, no claims, no Keylime call; a consumer requiring EU rejects them', async () => {
    const off = await d.startServer({ flag: false, keylime: true });
    const r = await readyFlags(off.healthPort!);
    expect(r.flags).toEqual({ UNIFIED_IDENTITY_ENABLED: { value: false, source: 'default' } });
    const checks = d.verifier.counters.evidenceChecks;
    const rec = recording(d.provider(d.berlin));
    const res = await d.attest(off, rec);
    expect(rec.sent).toHaveLength(0); // the server asked for no quote
    expect(d.verifier.counters.evidenceChecks).toBe(checks);
    const leaf = leafOf(res.svidChain);
    expect(hasUnifiedExtension(leaf)).toBe(false);
    expect(unifiedIdentityFromCertificate(leaf)).toBeUndefined();
    expect(res.unifiedIdentityClaims?.length ?? 0).toBe(0);
    expect(await nodeClaims(off, res.spiffeId)).toBeUndefined();
    expect(() => authorizeUnifiedIdentity({ trustDomain: TD, regions: ['EU'] })({ id: SpiffeId.parse(res.spiffeId), x509Chain: [leaf] })).toThrow(/carries no Unified Identity claims/);
  });

  it('the OID check above does see the extension on a flag-on SVID', async () => {
    const res = await d.attest(on, d.provider(d.berlin));
    expect(hasUnifiedExtension(leafOf(res.svidChain))).toBe(true);
  });
});

describe('Unified Identity, re-attestation interval', () => {
  it('when a node\'s claims expire the server tells its agent, which attests again and gets fresh claims', async () => {
    // One agent at a time: an earlier one (same swtpm, same node) would attest too and skew the counts.
    await agent?.stop();
    const short = await d.startServer({ flag: true, keylime: true, reattestInterval: 2 });
    agent = await startAgent(d, short, true, 'agent-short');
    const first = agent.lastClaims!['attestedAt'] as string;
    // Claims of 2 s also cut the agent SVID to 2 s, so on a slow machine the agent may already have
    // renewed (re-attested) by now: count from here.
    const n0 = agent.stats.attestations;
    expect(n0).toBeGreaterThanOrEqual(1);
    const deadline = Date.now() + 10_000;
    while (agent.stats.attestations <= n0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(agent.stats.attestations).toBeGreaterThan(n0);
    expect(Date.parse(agent.lastClaims!['attestedAt'] as string)).toBeGreaterThan(Date.parse(first));
    const node = await short.store.getNode(agent.spiffeId!);
    expect(Date.parse(node!.claims!['attestedAt'] as string)).toBeGreaterThan(Date.parse(first));
    await agent.stop();
    agent = undefined;
  });
});

describe('Unified Identity, one-shot verdict freshness (unifiedIdentity.verdictMaxAge)', () => {
  it('no SVID outlives the verdict behind it; with the verifier down nothing new is signed once the verdict aged out', async () => {
    await agent?.stop();
    const fresh = await d.startServer({ flag: true, keylime: true, verdictMaxAge: 4 });
    agent = await startAgent(d, fresh, true, 'agent-fresh');
    const client = specClient(agent.socketPath);
    try {
      const validUntil = Date.parse(agent.lastClaims!['validUntil'] as string);
      const attestedAt = Date.parse(agent.lastClaims!['attestedAt'] as string);
      expect(validUntil - attestedAt).toBe(4000);
      const spiffeId = `spiffe://${TD}/workload/fresh-app`;
      const uid = { type: 'unix', value: `uid:${process.getuid!()}` };
      const [r] = await fresh.store.createEntries([{ spiffeId, parentId: agent.spiffeId!, selectors: [uid], federatesWith: [] }]);
      expect(r?.ok).toBe(true);
      // The workload's X.509-SVID and JWT-SVID end no later than the claims they carry (x509SvidTtl is 1 h).
      const msg = await fetchX509(client);
      const leaf = new crypto.X509Certificate(msg.svids.find((s) => s.spiffe_id === spiffeId)!.x509_svid);
      const claims = unifiedIdentityFromCertificate(Buffer.from(leaf.raw))!;
      expect(Date.parse(leaf.validTo)).toBeLessThanOrEqual(Date.parse(claims['validUntil'] as string));
      const jwt = await fetchJwt(client, 'fresh-audience');
      const payload = JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8')) as { exp: number; unified_identity: { validUntil: string } };
      expect(payload.exp * 1000).toBeLessThanOrEqual(Date.parse(payload.unified_identity.validUntil));
      // The agent re-attests before its verdict runs out (its agent SVID ends with the claims).
      const deadline = Date.now() + 10_000;
      while (agent.stats.attestations < 2 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
      expect(agent.stats.attestations).toBeGreaterThanOrEqual(2);

      // The verifier goes away: a node whose last verdict aged out gets nothing new, even for an entry made meanwhile.
      await d.verifier.stop();
      try {
        const lastVerdict = Date.parse((await nodeClaims(fresh, agent.spiffeId!))!['attestedAt'] as string);
        await new Promise((res) => setTimeout(res, Math.max(0, lastVerdict + 4500 - Date.now())));
        const lateId = `spiffe://${TD}/workload/made-during-outage`;
        const [late] = await fresh.store.createEntries([{ spiffeId: lateId, parentId: agent.spiffeId!, selectors: [uid], federatesWith: [] }]);
        expect(late?.ok).toBe(true);
        const served = await fetchX509(client, 3000).then((m) => m.svids.map((s) => s.spiffe_id), () => []);
        expect(served).not.toContain(lateId);
        expect(served).not.toContain(spiffeId);
      } finally {
        await d.verifier.restart();
      }
    } finally {
      client.close();
      await agent.stop();
      agent = undefined;
    }
  });
});

describe('Unified Identity with Keylime continuous mode', () => {
  it('one-shot check at attestation, then the continuous gate: a PCR change withdraws the node\'s workload SVIDs', async () => {
    await agent?.stop();
    const cont = await d.startServer({ flag: true, keylime: true, keylimeMode: 'continuous' });
    const evidence = d.verifier.counters.evidenceChecks;
    agent = await startAgent(d, cont, true, 'agent-continuous', true);
    try {
      expect(agent.lastClaims).toMatchObject({ country: 'DE', verifier: DEVELOPMENT_STAND_IN_VERIFIER });
      // At least this attestation's one-shot check (CI once counted one more, from a source not pinned down:
      // the verifier is shared by every server this file starts).
      expect(d.verifier.counters.evidenceChecks, `attestations by this agent: ${agent.stats.attestations}`).toBeGreaterThanOrEqual(evidence + 1);
      expect(agent.stats.attestations).toBe(1);
      const spiffeId = `spiffe://${TD}/workload/continuous-app`;
      const [r] = await cont.store.createEntries([{ spiffeId, parentId: agent.spiffeId!, selectors: [{ type: 'unix', value: `uid:${process.getuid!()}` }], federatesWith: [] }]);
      expect(r?.ok).toBe(true);
      const client = specClient(agent.socketPath);
      try {
        const msg = await fetchX509(client);
        const svid = msg.svids.find((s) => s.spiffe_id === spiffeId)!;
        expect(unifiedIdentityFromCertificate(Buffer.from(new crypto.X509Certificate(svid.x509_svid).raw))).toMatchObject({ region: 'EU' });
      } finally {
        client.close();
      }
      await d.tpm.quoter!().pcrExtend(POLICY_PCR, crypto.createHash('sha256').update('rootkit').digest());
      try {
        // Keylime's next pulled quote fails; the server withdraws the node and the agent drops its SVIDs.
        const serving = async (): Promise<boolean> => {
          const c = specClient(agent!.socketPath);
          try {
            return await fetchX509(c, 500).then(() => true, () => false);
          } finally {
            c.close();
          }
        };
        const deadline = Date.now() + 10_000;
        while (await serving() && Date.now() < deadline) await new Promise((res) => setTimeout(res, 200));
        expect(await serving()).toBe(false);
        // Its re-attestation is refused by the one-shot check, which also clears its claims.
        while ((await nodeClaims(cont, agent.spiffeId!)) !== undefined && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
        expect(await nodeClaims(cont, agent.spiffeId!)).toBeUndefined();
      } finally {
        await d.tpm.quoter!().pcrReset(POLICY_PCR);
      }
    } finally {
      await agent.stop();
      agent = undefined;
    }
  });
});
