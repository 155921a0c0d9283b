// The server's /metrics after real events on a real server (join tokens: cheap, no TPM): attestations
// accepted and refused with their bounded reasons, SVIDs signed, rate limits, datastore timings, the
// nodes gauge, CA and bundle expiry; that nothing identifying leaks into labels; metrics off.
import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchNewX509SvidResponse, NewJwtSvidResponse } from '../../src/api/agent-api.js';
import { refusalReason, ServerMetrics, REFUSAL_REASONS } from '../../src/server/metrics.js';
import { agentClient, attest, attestWithToken, newKey, startTestServer, TD, unary, type TestServer } from '../server/e2e/helpers.js';
import { parseMetrics, sample } from './prom-text.js';

async function scrape(port: number | undefined): Promise<{ status: number; type: string | null; text: string }> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
}

describe('server /metrics (join-token server)', () => {
  let ts: TestServer;
  let agent: Awaited<ReturnType<typeof attestWithToken>>;
  const badToken = `secret-${crypto.randomBytes(8).toString('hex')}`;

  beforeAll(async () => {
    ts = await startTestServer({
      metrics: { nodesMaxAgeSeconds: 0 },
      agentApi: { rpcRateLimit: { perSecond: 0.01, burst: 6 } },
    });
    // One accepted attestation and one refused (a token nobody created).
    agent = await attestWithToken(ts.server);
    const c = agentClient(ts.server);
    try {
      await expect(attest(c, { params: { joinToken: { token: badToken }, csr: newKey().csr } })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    } finally {
      c.close();
    }
  });
  afterAll(async () => { await ts?.stop(); });

  it('counts the accepted and the refused attestation by method, result and bounded reason, with their durations', async () => {
    const m = parseMetrics((await scrape(ts.server.healthPort)).text);
    expect(sample(m, 'terroir_server_node_attestations_total', { method: 'join_token', result: 'ok', reason: 'none' })).toBe(1);
    expect(sample(m, 'terroir_server_node_attestations_total', { method: 'join_token', result: 'denied', reason: 'join_token_invalid' })).toBe(1);
    expect(sample(m, 'terroir_server_node_attestation_duration_seconds_count', { method: 'join_token', result: 'ok' })).toBe(1);
    expect(sample(m, 'terroir_server_node_attestation_duration_seconds_count', { method: 'join_token', result: 'denied' })).toBe(1);
    expect(sample(m, 'terroir_server_svids_issued_total', { type: 'x509', kind: 'agent' })).toBe(1);
  });

  it('counts workload SVIDs by type, and a spent rpc budget as a rate-limit refusal', async () => {
    const c = agentClient(ts.server, agent);
    try {
      const [e] = await ts.server.store.createEntries([{ spiffeId: `spiffe://${TD}/api`, parentId: agent.id, selectors: [{ type: 'unix', value: 'uid:7' }], federatesWith: [] }]);
      const id = (e as { ok: true; value: { id: string } }).value.id;
      const jwt = await unary<NewJwtSvidResponse>(c, 'NewJwtSvid', { entryId: id, audience: ['svc'] });
      expect(jwt.token).toBeTruthy();
      const x = await unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params: [{ entryId: id, csr: newKey().csr }, { entryId: id, csr: newKey().csr }] });
      expect(x.results.filter((r) => r.svid)).toHaveLength(2);
      let m = parseMetrics((await scrape(ts.server.healthPort)).text);
      expect(sample(m, 'terroir_server_svids_issued_total', { type: 'jwt', kind: 'workload' })).toBe(1);
      expect(sample(m, 'terroir_server_svids_issued_total', { type: 'x509', kind: 'workload' })).toBe(2);
      expect(sample(m, 'terroir_server_rate_limit_refusals_total', { limiter: 'rpc' }) ?? 0).toBe(0);
      // A burst of 6 calls: the rest of these are refused by the rpc limiter.
      const results = await Promise.allSettled(Array.from({ length: 6 }, () => unary(c, 'NewJwtSvid', { entryId: id, audience: ['svc'] })));
      const refused = results.filter((r) => r.status === 'rejected' && (r.reason as { code?: number }).code === grpc.status.RESOURCE_EXHAUSTED).length;
      expect(refused).toBeGreaterThan(0);
      m = parseMetrics((await scrape(ts.server.healthPort)).text);
      expect(sample(m, 'terroir_server_rate_limit_refusals_total', { limiter: 'rpc' })).toBe(refused);
    } finally {
      c.close();
    }
  });

  it('times datastore operations by method', async () => {
    const m = parseMetrics((await scrape(ts.server.healthPort)).text);
    expect(sample(m, 'terroir_server_datastore_operation_duration_seconds_count', { operation: 'consumeJoinToken', result: 'ok' })).toBe(2);
    expect(sample(m, 'terroir_server_datastore_operation_duration_seconds_count', { operation: 'createNode', result: 'ok' })).toBe(1);
    // A call that fails (the node exists) is timed as an error and still rejects as before.
    const node = await ts.server.store.getNode(agent.id);
    await expect(ts.server.store.createNode({ ...node!, spiffeId: agent.id })).rejects.toMatchObject({ code: 'already_exists' });
    const after = parseMetrics((await scrape(ts.server.healthPort)).text);
    expect(sample(after, 'terroir_server_datastore_operation_duration_seconds_count', { operation: 'createNode', result: 'error' })).toBe(1);
  });

  it('gauges nodes by state, country and assurance at scrape time, following a ban', async () => {
    let m = parseMetrics((await scrape(ts.server.healthPort)).text);
    expect(sample(m, 'terroir_server_nodes', { state: 'attested', country: 'none', assurance: 'none' })).toBe(1);
    await ts.server.store.banNode(agent.id);
    m = parseMetrics((await scrape(ts.server.healthPort)).text);
    expect(sample(m, 'terroir_server_nodes', { state: 'banned', country: 'none', assurance: 'none' })).toBe(1);
    expect(sample(m, 'terroir_server_nodes', { state: 'attested', country: 'none', assurance: 'none' })).toBeUndefined();
  });

  it('gives the CA and bundle expiry as Unix timestamps', async () => {
    const m = parseMetrics((await scrape(ts.server.healthPort)).text);
    expect(sample(m, 'terroir_server_ca_expiry_timestamp_seconds', { kind: 'x509' })).toBe(ts.server.ca.activeX509().notAfter.getTime() / 1000);
    expect(sample(m, 'terroir_server_ca_expiry_timestamp_seconds', { kind: 'jwt' })).toBe(ts.server.ca.activeJwt().notAfter.getTime() / 1000);
    const root = new crypto.X509Certificate(ts.server.ca.x509Roots()[0] as Buffer);
    expect(sample(m, 'terroir_server_bundle_expiry_timestamp_seconds', {})).toBe(Date.parse(root.validTo) / 1000);
  });

  it('leaks no SPIFFE ID, token or free-text reason: every label value is from a bounded set', async () => {
    const { status, type, text } = await scrape(ts.server.healthPort);
    expect(status).toBe(200);
    expect(type).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(text).not.toContain('spiffe://');
    expect(text).not.toContain(badToken);
    expect(text).not.toContain(agent.token);
    expect(text).not.toMatch(/unknown, already used|generate a new one/);
    const m = parseMetrics(text);
    for (const s of m) {
      for (const [k, v] of Object.entries(s.labels)) {
        if (k === 'reason') expect([...REFUSAL_REASONS, 'none']).toContain(v);
        else if (k === 'le' || k === 'quantile') continue;
        else expect(v).toMatch(/^[A-Za-z0-9_.-]{1,64}$/);
      }
    }
    // Every family has HELP text and terroir's prefix; counters end in _total.
    for (const line of text.split('\n').filter((l) => l.startsWith('# TYPE '))) {
      const [, , name, kind] = line.split(' ');
      expect(name).toMatch(/^terroir_server_/);
      expect(text).toMatch(new RegExp(`# HELP ${name} \\S`));
      if (kind === 'counter') expect(name).toMatch(/_total$/);
    }
  });

  it('counts the attestation and signing limiters, and an agent SVID renewal', async () => {
    const tight = await startTestServer({ agentApi: { attestationRateLimit: { perSecond: 0.01, burst: 1 }, signingRateLimit: { perSecond: 0.01, burst: 2 } } });
    try {
      const a = await attestWithToken(tight.server);
      // The source's only token is spent: the next attempt is refused before anything is read.
      const c = agentClient(tight.server);
      await expect(attest(c, { params: { joinToken: { token: 'whatever' }, csr: newKey().csr } })).rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED });
      c.close();
      const ac = agentClient(tight.server, a);
      try {
        const [e] = await tight.server.store.createEntries([{ spiffeId: `spiffe://${TD}/w`, parentId: a.id, selectors: [{ type: 'unix', value: 'uid:1' }], federatesWith: [] }]);
        const id = (e as { ok: true; value: { id: string } }).value.id;
        // The renewal spends one unit of the signing budget (2), the batch the other; its second CSR is refused.
        await unary(ac, 'RenewAgent', { csr: newKey().csr });
        const x = await unary<BatchNewX509SvidResponse>(ac, 'BatchNewX509Svid', { params: [{ entryId: id, csr: newKey().csr }, { entryId: id, csr: newKey().csr }] });
        expect(x.results.map((r) => r.errorCode)).toEqual([0, grpc.status.RESOURCE_EXHAUSTED]);
      } finally {
        ac.close();
      }
      const m = parseMetrics((await scrape(tight.server.healthPort)).text);
      expect(sample(m, 'terroir_server_rate_limit_refusals_total', { limiter: 'attestation' })).toBe(1);
      expect(sample(m, 'terroir_server_node_attestations_total', { method: 'unknown', result: 'denied', reason: 'rate_limited' })).toBe(1);
      expect(sample(m, 'terroir_server_rate_limit_refusals_total', { limiter: 'signing' })).toBe(1);
      expect(sample(m, 'terroir_server_svids_issued_total', { type: 'x509', kind: 'workload' })).toBe(1);
      // The attestation's agent SVID, then the renewal's.
      expect(sample(m, 'terroir_server_svids_issued_total', { type: 'x509', kind: 'agent' })).toBe(2);
    } finally {
      await tight.stop();
    }
  });

  it('answers 404 on /metrics when metrics are off', async () => {
    const off = await startTestServer({ metrics: { enabled: false } });
    try {
      expect(off.server.metrics).toBeUndefined();
      expect((await scrape(off.server.healthPort)).status).toBe(404);
      expect((await fetch(`http://127.0.0.1:${off.server.healthPort}/live`)).status).toBe(200);
    } finally {
      await off.stop();
    }
  });
});

describe('refusal reasons', () => {
  it('maps the server\'s refusal messages to the bounded enum', () => {
    const cases: [string | undefined, string, string][] = [
      ['RESOURCE_EXHAUSTED', 'too many attestation attempts from 127.0.0.1; retry in 3 s', 'rate_limited'],
      ['PERMISSION_DENIED', 'attestation nonce already used (replay); attest again', 'nonce_replay'],
      ['UNAVAILABLE', 'Keylime verifier unreachable or failing, attestation refused (fail closed): connect', 'keylime_unreachable'],
      ['PERMISSION_DENIED', 'Keylime refused the evidence: PCR 23 mismatch', 'keylime_refused'],
      ['PERMISSION_DENIED', 'location policy eu-only denied: reading in US', 'policy_denied'],
      ['PERMISSION_DENIED', 'location policy eu-only could not decide: no fix', 'policy_undecided'],
      ['PERMISSION_DENIED', 'quote verification failed (extra-data-mismatch): replayed quote', 'nonce_replay'],
      ['PERMISSION_DENIED', 'quote verification failed (bad-signature): x', 'quote_invalid'],
      ['PERMISSION_DENIED', 'join token is unknown, already used or expired', 'join_token_invalid'],
      ['PERMISSION_DENIED', 'node spiffe://x/y is banned; an operator must evict it', 'banned'],
      ['FAILED_PRECONDITION', 'TPM attestation is disabled on this server (nodeAttestation.tpm.enabled)', 'method_disabled'],
      ['PERMISSION_DENIED', 'activated secret does not match: the AK is not in the TPM holding this EK', 'tpm_evidence_invalid'],
      ['DEADLINE_EXCEEDED', 'the challenge response did not arrive within 30 s', 'timeout'],
      ['CANCELLED', 'the agent closed the attestation stream', 'cancelled'],
      ['INVALID_ARGUMENT', 'params must carry join_token or tpm attestation data', 'invalid_request'],
      ['INTERNAL', 'boom', 'internal'],
      [undefined, 'something new', 'other'],
    ];
    for (const [code, msg, want] of cases) expect([msg, refusalReason(code, msg)]).toEqual([msg, want]);
  });

  it('an unknown attestation method or stage name never becomes a label', async () => {
    const m = new ServerMetrics();
    const audit = m.auditor({ record: () => undefined });
    audit.record({ action: 'attest_agent', caller: '10.0.0.1', result: 'denied', reason: 'x', details: { method: 'spiffe://evil/label', code: 'PERMISSION_DENIED' } });
    m.attestationStages({ 'spiffe://evil': 1, quote: 2 });
    const text = await m.registry.metrics();
    expect(text).not.toContain('evil');
    expect(sample(parseMetrics(text), 'terroir_server_node_attestations_total', { method: 'unknown', result: 'denied', reason: 'other' })).toBe(1);
    expect(sample(parseMetrics(text), 'terroir_server_attestation_stage_duration_seconds_count', { stage: 'quote' })).toBe(1);
  });
});
