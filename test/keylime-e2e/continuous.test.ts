// Keylime continuous mode end to end: a real terroir server with a `keylime` section, a real agent
// attesting with swtpm and serving its quote endpoint from the same TPM and AK, the test verifier
// pulling quotes every second over mTLS, and a workload on the Workload API (spec proto client).
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { createCsr, generateKeyPair } from '../../src/agent/csr.js';
import { attestNode, NodeAttestationError } from '../../src/agent/node-attestor.js';
import { connectToServer, unaryCall } from '../../src/agent/server-conn.js';
import { SvidStore } from '../../src/agent/svid-store.js';
import { AdminClient } from '../../src/api/admin-api.js';
import { startServer } from '../../src/server/index.js';
import { Bundle, TrustDomain } from '../../src/spiffe/index.js';
import { freePort } from '../support/ports.js';
import { badMeasurement, deploymentPerFile, POLICY_PCR, TD, type X509Stream } from './fixture.js';

const f = deploymentPerFile();
const logs = f.logs;
const audits = (action: string): Record<string, unknown>[] => logs.filter((l) => l['audit'] === true && l['action'] === action);
const openStream = (): X509Stream => f.openStream();
let workloadId: string;

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function roots(): Buffer[] {
  return Bundle.parse(TrustDomain.parse(TD), f.d.server.ca.bundle().bundleJson).x509Authorities();
}

describe('Keylime continuous mode, server + agent + swtpm + verifier', () => {
  it('issues the agent SVID only after Keylime verified a quote; the workload gets its SVID', async () => {
    const rec = f.d.verifier.agents.get(f.d.keylimeId);
    expect(rec).toBeDefined();
    // Enrolled with what the agent advertised: its quote endpoint and the pinned certificate.
    expect(rec).toMatchObject({ ip: '127.0.0.1', port: f.d.agent.keylimeQuoteEndpoint?.port, mtlsCert: f.d.pki.node.certPem, supportedVersion: '2.2' });
    expect(rec!.attestationCount).toBeGreaterThanOrEqual(1);
    expect(rec!.policy.mask).toEqual([POLICY_PCR, 16]);
    // The server issued the agent SVID only after Keylime had verified a quote.
    const verifiedAt = logs.findIndex((l) => l['msg'] === 'Keylime verified the node');
    const attestedAt = logs.findIndex((l) => l['audit'] === true && l['action'] === 'attest_agent' && l['result'] === 'ok');
    expect(verifiedAt).toBeGreaterThanOrEqual(0);
    expect(attestedAt).toBeGreaterThan(verifiedAt);
    workloadId = await f.d.addWorkload('db');
    const stream = openStream();
    const msg = await stream.waitFor((m) => m.svids.some((s) => s.spiffe_id === workloadId));
    expect(msg.svids.map((s) => s.spiffe_id)).toEqual([workloadId]);
  });

  it('evicting the node removes it from the verifier; the agent attests again and is re-enrolled', async () => {
    const old = f.d.verifier.agents.get(f.d.keylimeId)!;
    const before = f.d.agent.stats.attestations;
    // The eviction's DELETE reaches the verifier late; the agent, told to drop its SVIDs, attests again
    // at once. Its admission must wait for that DELETE, or the DELETE would remove the new enrollment.
    const hold = f.d.verifier.holdNextDelete();
    const admin = new AdminClient(f.d.server.adminSocketPath!);
    try {
      await admin.call('EvictAgent', { spiffeId: f.d.agent.spiffeId! });
    } finally {
      admin.close();
    }
    await hold.held;
    await until('the new admission to queue behind the eviction', () => logs.some((l) => l['agent'] === f.d.agent.spiffeId
      && l['msg'] === 'Keylime: waiting for this node\'s previous admission or eviction to finish'));
    expect(old.deleted).toBe(false); // nothing touched the enrollment meanwhile
    // Any other reason to attest meanwhile (a sync refused, if the push arrived after it began) joins the
    // one in flight (checked below). Released well within the client's 1 s request timeout, so the held
    // DELETE is answered, not retried.
    await new Promise((r) => setTimeout(r, 300));
    hold.release();
    expect(await hold.removed).toBe(old); // the eviction removed what it meant to, not a newer enrollment
    await until('the verifier to drop the evicted node', () => old.deleted);
    await until('the eviction audit record', () => audits('keylime').some((a) => a['subject'] === f.d.agent.spiffeId && a['result'] === 'ok'));
    await until('the agent to attest again', () => f.d.agent.stats.attestations > before);
    const fresh = f.d.verifier.agents.get(f.d.keylimeId);
    expect(fresh).toBeDefined();
    expect(fresh).not.toBe(old);
    expect(fresh!.attestationCount).toBeGreaterThanOrEqual(1);
    expect(fresh!.deleted).toBe(false);
    let msg;
    for (let i = 0; i < 100 && !msg; i++) {
      // Workload API clients retry PermissionDenied until the re-signed SVIDs are there.
      msg = await openStream().waitFor((m) => m.svids.some((s) => s.spiffe_id === workloadId), 3000).catch(() => undefined);
    }
    expect(msg?.svids.map((s) => s.spiffe_id)).toEqual([workloadId]);
    // One eviction, one new attestation.
    expect(f.d.agent.stats.attestations).toBe(before + 1);
    expect(f.d.verifier.agents.get(f.d.keylimeId)).toBe(fresh);
  });

  it('the verifier going away withdraws the SVIDs (fail closed); when it returns the node recovers by itself', async () => {
    const stream = openStream();
    await stream.waitFor((m) => m.svids.length > 0);
    await f.d.verifier.stop();
    try {
      await stream.waitForLoss(15_000);
      expect(f.d.server.keylime!.check(f.d.agent.spiffeId!, 'tpm')).toBeDefined();
      expect(f.d.server.keylime!.counters().verifierUnreachable).toBeGreaterThan(0);
      expect(audits('keylime').some((a) => (a['details'] as Record<string, unknown>)['kind'] === 'verifier_unreachable')).toBe(true);
    } finally {
      await f.d.verifier.restart();
    }
    let msg;
    for (let i = 0; i < 100 && !msg; i++) {
      msg = await openStream().waitFor((m) => m.svids.some((s) => s.spiffe_id === workloadId), 3000).catch(() => undefined);
    }
    expect(msg?.svids.map((s) => s.spiffe_id)).toEqual([workloadId]);
    expect(f.d.server.keylime!.check(f.d.agent.spiffeId!, 'tpm')).toBeUndefined();
  }, 60_000);

  it('a second server sharing the datastore adopts the node: it signs once it has read Keylime\'s verdict, with no new attestation', async () => {
    const attestations = f.d.agent.stats.attestations;
    const enrollment = f.d.verifier.agents.get(f.d.keylimeId);
    const dir = path.join(f.d.dir, 'server-b');
    const b = await startServer({
      ...f.d.serverConfig, dataDir: dir, adminApi: { socketPath: path.join(dir, 'admin.sock') },
      ca: { ...f.d.serverConfig.ca, keyDir: path.join(dir, 'keys') }, agentApi: { ...f.d.serverConfig.agentApi, port: await freePort() },
    }, { logger: pino({ level: 'silent' }) });
    const state = new SvidStore(f.d.agentConfig.dataDir).load()!;
    const conn = connectToServer({
      address: '127.0.0.1', port: b.agentApiPort, trustDomain: TD,
      roots: Bundle.parse(TrustDomain.parse(TD), b.ca.bundle().bundleJson).x509Authorities(), identity: { chain: state.chain, key: state.key },
    });
    try {
      const entryId = (await b.store.listEntries()).find((e) => e.spiffeId === workloadId)!.id;
      const sign = () => unaryCall<object, { spiffeId: string; token: string }>(conn, 'NewJwtSvid', { entryId, audience: ['db'] });
      // Server B has never seen the node: the first request is answered "retry" (not "attest again").
      await expect(sign()).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE, details: expect.stringMatching(/still reading its Keylime verdict/) });
      let signed;
      for (let i = 0; i < 100 && !signed; i++) {
        signed = await sign().catch(() => undefined);
        if (!signed) await new Promise((r) => setTimeout(r, 50));
      }
      expect(signed).toMatchObject({ spiffeId: workloadId, token: expect.stringMatching(/^ey/) });
      expect(b.keylime!.check(f.d.agent.spiffeId!, 'tpm')).toBeUndefined();
      expect(f.d.agent.stats.attestations).toBe(attestations);
      expect(f.d.verifier.agents.get(f.d.keylimeId)).toBe(enrollment); // not enrolled again
    } finally {
      conn.close();
      await b.stop();
    }
  });

  it('a PCR extended on the node: Keylime fails it, its workloads lose their SVIDs, the server signs nothing for it (polled: no push)', async () => {
    // The server's own poll of the verdict, with Keylime's push to the node switched off (the push
    // path has its own test: test/keylime-e2e/revocation-push.test.ts).
    f.d.verifier.notifyRevocations = false;
    const stream = openStream();
    await stream.waitFor((m) => m.svids.length > 0);
    const t0 = Date.now();
    await f.d.tpm.quoter!().pcrExtend(POLICY_PCR, badMeasurement('rootkit'));
    const lostAt = await stream.waitForLoss(15_000);
    expect(lostAt - t0).toBeLessThan(10_000);
    // Not the verifier's current record: the agent re-attests at once and that re-enrolls the node.
    expect(f.d.verifier.failedVerdicts).toContainEqual({ id: f.d.keylimeId, state: 9, lastEventId: `pcr_validation.invalid_pcr_${POLICY_PCR}` });

    const audit = audits('keylime').find((a) => a['result'] === 'denied' && a['subject'] === f.d.agent.spiffeId
      && (a['details'] as Record<string, unknown>)['kind'] === 'invalid_quote');
    expect(audit).toMatchObject({ caller: 'keylime-verifier', details: { kind: 'invalid_quote', lastEventId: `pcr_validation.invalid_pcr_${POLICY_PCR}` } });

    // The node's current agent SVID still authenticates it, but nothing is signed for it.
    const state = new SvidStore(f.d.agentConfig.dataDir).load()!;
    const conn = connectToServer({ address: '127.0.0.1', port: f.d.server.agentApiPort, trustDomain: TD, roots: roots(), identity: { chain: state.chain, key: state.key } });
    try {
      const entryId = (await f.d.server.store.listEntries()).find((e) => e.spiffeId === workloadId)!.id;
      await expect(unaryCall(conn, 'NewJwtSvid', { entryId, audience: ['db'] })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      const csr = createCsr(generateKeyPair(), workloadId);
      await expect(unaryCall(conn, 'BatchNewX509Svid', { params: [{ entryId, csr }] })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      await expect(unaryCall(conn, 'RenewAgent', { csr: createCsr(generateKeyPair()) })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
      // An agent that missed the push (no watch open at that moment) is told when it opens one.
      const watch = (conn['WatchAgent'] as (req: object) => grpc.ClientReadableStream<{ kind: string; reason: string }>).call(conn, {});
      const events: { kind: string; reason: string }[] = [];
      watch.on('data', (ev: { kind: string; reason: string }) => events.push(ev));
      const ended = await new Promise<grpc.ServiceError>((resolve) => watch.on('error', resolve));
      expect(ended.code).toBe(grpc.status.PERMISSION_DENIED);
      // The running agent re-attests as soon as it is told to drop its SVIDs, so the reason is the
      // node's standing at this moment: still failed, being re-admitted, or refused again.
      expect(events).toEqual([expect.objectContaining({ kind: 'DROP_SVIDS' })]);
      const reason = events[0]!.reason;
      expect(reason.startsWith(`node ${f.d.agent.spiffeId!} `)).toBe(true);
      expect(reason).toMatch(/ (is not trusted by Keylime: Keylime state 9 Invalid Quote|is not trusted until Keylime verifies its new attestation|was refused by Keylime: )/);
    } finally {
      conn.close();
    }
    expect(audits('sign_x509_svid').some((a) => a['result'] === 'denied' && (a['details'] as Record<string, unknown>)['gate'] === 'keylime')).toBe(true);
    // A new Workload API client gets nothing either.
    const later = openStream();
    await until('the new stream to be refused', () => later.error !== undefined, 5000);
    expect(later.error?.code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('fails closed: no quote endpoint, or the verifier down, and a new attestation is refused without changing the node', async () => {
    const conn = connectToServer({ address: '127.0.0.1', port: f.d.server.agentApiPort, trustDomain: TD, roots: roots() });
    try {
      const node = await f.d.server.store.getNode(f.d.agent.spiffeId!);
      const noEndpoint = await attestNode(conn, { csr: createCsr(generateKeyPair()), tpm: f.d.tpm }).catch((e: unknown) => e);
      expect(noEndpoint).toBeInstanceOf(NodeAttestationError);
      expect((noEndpoint as NodeAttestationError).grpcCode).toBe(grpc.status.FAILED_PRECONDITION);
      expect((noEndpoint as Error).message).toMatch(/keylime\.quoteEndpoint/);

      const ep = f.d.agent.keylimeQuoteEndpoint!;
      for (const [bad, message] of [
        [{ ...ep, tlsCertificatePem: '-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n' }, /tls_certificate_pem is not a PEM certificate/],
        [{ ...ep, apiVersion: '9.9' }, /api_version "9.9"/],
        [{ ...ep, port: 0 }, /port 0 is not a TCP port/],
      ] as const) {
        const refused = await attestNode(conn, { csr: createCsr(generateKeyPair()), tpm: f.d.tpm, keylimeQuoteEndpoint: bad }).catch((e: unknown) => e);
        expect((refused as NodeAttestationError).grpcCode).toBe(grpc.status.INVALID_ARGUMENT);
        expect((refused as Error).message).toMatch(message);
      }

      await f.d.verifier.stop();
      const down = await attestNode(conn, { csr: createCsr(generateKeyPair()), tpm: f.d.tpm, keylimeQuoteEndpoint: f.d.agent.keylimeQuoteEndpoint! })
        .catch((e: unknown) => e);
      expect(down).toBeInstanceOf(NodeAttestationError);
      expect((down as NodeAttestationError).grpcCode).toBe(grpc.status.UNAVAILABLE);
      expect((down as Error).message).toMatch(/Keylime verifier unreachable/);
      expect(await f.d.server.store.getNode(f.d.agent.spiffeId!)).toEqual(node);
      expect(f.d.server.keylime!.check(f.d.agent.spiffeId!, 'tpm')).toBeDefined();
    } finally {
      conn.close();
    }
  });
});
