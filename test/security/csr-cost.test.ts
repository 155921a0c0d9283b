// Attack: an attested agent makes the server burn CPU on CSRs. RSA keys with huge public exponents
// cost ~10 ms per verification, so one BatchNewX509Svid of 500 of them used to block the event loop
// for seconds. The server now bounds the key (EC P-256/P-384, Ed25519, RSA 2048-4096 with e = 65537)
// from the SPKI before any signature work, meters signing per agent, and meters authenticated RPCs
// per agent, with RESOURCE_EXHAUSTED and a retry-after.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchNewX509SvidResponse, SyncEntriesResponse } from '../../src/api/agent-api.js';
import { createCsr, generateKeyPair } from '../../src/agent/csr.js';
import { agentClient, attestWithToken, startTestServer, TD, unary, type AgentClient, type TestServer } from '../server/e2e/helpers.js';
import { fakeRsaCsr, rsaCsr, rsaKeyWithExponent } from '../server/e2e/expensive-csr.js';

const clients: AgentClient[] = [];
const servers: TestServer[] = [];
afterAll(async () => {
  for (const c of clients) c.close();
  for (const s of servers) await s.stop();
});

async function server(agentApi: Record<string, unknown> = {}): Promise<TestServer> {
  const ts = await startTestServer({ agentApi: { attestationRateLimit: { perSecond: 100, burst: 100 }, ...agentApi } });
  servers.push(ts);
  return ts;
}

/** An attested join-token agent with one entry of its own; returns its client and the entry. */
async function agentWithEntry(ts: TestServer, name: string): Promise<{ c: AgentClient; entryId: string; spiffeId: string }> {
  const agent = await attestWithToken(ts.server);
  const c = agentClient(ts.server, agent);
  clients.push(c);
  const spiffeId = `spiffe://${TD}/w/${name}`;
  const [r] = await ts.server.store.createEntries([{ spiffeId, parentId: agent.id, selectors: [{ type: 'unix', value: 'uid:1000' }], federatesWith: [] }]);
  return { c, entryId: (r as { ok: true; value: { id: string } }).value.id, spiffeId };
}

/** Runs `fn` while measuring the event loop; returns its result, the longest stall and the elapsed time (ms). */
async function measured<T>(fn: () => Promise<T>): Promise<{ value: T; maxDelayMs: number; elapsedMs: number }> {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  const t0 = performance.now();
  try {
    const value = await fn();
    return { value, maxDelayMs: h.max / 1e6, elapsedMs: performance.now() - t0 };
  } finally {
    h.disable();
  }
}

describe('expensive CSRs from an attested agent', () => {
  let ts: TestServer;
  beforeAll(async () => { ts = await server(); });

  it('a batch of 500 RSA-3072 CSRs with a 3072-bit exponent is refused from the key alone, fast, without stalling the event loop', async () => {
    const { c, entryId, spiffeId } = await agentWithEntry(ts, 'heavy');
    const csr = rsaCsr(rsaKeyWithExponent(3072, 3072), spiffeId);
    const params = Array.from({ length: 500 }, () => ({ entryId, csr }));
    const { value: res, maxDelayMs, elapsedMs } = await measured(() => unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params }));
    console.log(`500 RSA-3072 CSRs with a 3072-bit exponent: longest event-loop stall ${maxDelayMs.toFixed(0)} ms, call ${elapsedMs.toFixed(0)} ms`);
    // Verifying them was one synchronous stretch of seconds before; now the key is refused unread.
    expect(maxDelayMs).toBeLessThan(400);
    expect(elapsedMs).toBeLessThan(2000);
    expect(res.results).toHaveLength(500);
    for (const r of res.results) {
      expect(r.errorCode).toBe(grpc.status.INVALID_ARGUMENT);
      expect(r.errorMessage).toMatch(/public exponent.*65537/);
    }
  });

  it('RSA keys below 2048 or above 4096 bits are refused with a clear error, before verification', async () => {
    const { c, entryId, spiffeId } = await agentWithEntry(ts, 'sizes');
    const res = await unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params: [
      { entryId, csr: rsaCsr(rsaKeyWithExponent(1024, 65537), spiffeId) },
      { entryId, csr: fakeRsaCsr(6144) },
      { entryId, csr: rsaCsr(rsaKeyWithExponent(2048, 65537), spiffeId) },
    ] });
    expect(res.results.map((r) => r.errorCode)).toEqual([grpc.status.INVALID_ARGUMENT, grpc.status.INVALID_ARGUMENT, 0]);
    expect(res.results[0]?.errorMessage).toMatch(/RSA-1024.*2048.*4096/);
    expect(res.results[1]?.errorMessage).toMatch(/RSA-6144.*2048.*4096/);
  });

  it('the most expensive accepted CSRs (RSA-4096, e = 65537) spend the agent signing budget: RESOURCE_EXHAUSTED with a retry-after', async () => {
    const limited = await server({ signingRateLimit: { perSecond: 1, burst: 10 } });
    const { c, entryId, spiffeId } = await agentWithEntry(limited, 'budget');
    const csr = rsaCsr(rsaKeyWithExponent(4096, 65537), spiffeId);
    const first = await unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params: Array.from({ length: 30 }, () => ({ entryId, csr })) });
    const codes = first.results.map((r) => r.errorCode);
    expect(codes.filter((x) => x === 0)).toHaveLength(10);
    expect(codes.filter((x) => x === grpc.status.RESOURCE_EXHAUSTED)).toHaveLength(20);
    expect(first.results[29]?.errorMessage).toMatch(/signing budget.*retry in \d+ s/);
    // With the bucket empty, the next call is refused whole, before any CSR is read.
    await expect(unary(c, 'BatchNewX509Svid', { params: [{ entryId, csr }] }))
      .rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/signing budget.*retry in \d+ s/) });
    // Another agent has its own budget.
    const other = await agentWithEntry(limited, 'other');
    const ok = await unary<BatchNewX509SvidResponse>(other.c, 'BatchNewX509Svid', { params: [{ entryId: other.entryId, csr: createCsr(generateKeyPair(), other.spiffeId) }] });
    expect(ok.results[0]?.errorCode).toBe(0);
  });

  it('authenticated RPCs have a per-agent call budget', async () => {
    const limited = await server({ rpcRateLimit: { perSecond: 1, burst: 5 } });
    const { c } = await agentWithEntry(limited, 'calls');
    for (let i = 0; i < 5; i++) await unary<SyncEntriesResponse>(c, 'SyncEntries', { knownRevision: '' });
    await expect(unary(c, 'SyncEntries', { knownRevision: '' }))
      .rejects.toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/call budget.*retry in \d+ s/) });
    const other = await agentWithEntry(limited, 'calls2');
    await expect(unary<SyncEntriesResponse>(other.c, 'SyncEntries', { knownRevision: '' })).resolves.toBeDefined();
  });

  it('with the defaults, a normal agent signing 3 batches of 100 P-256 SVIDs is never refused', async () => {
    const { c, entryId, spiffeId } = await agentWithEntry(ts, 'normal');
    for (let b = 0; b < 3; b++) {
      const params = Array.from({ length: 100 }, () => ({ entryId, csr: createCsr(generateKeyPair(), spiffeId) }));
      const res = await unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params });
      expect(res.results.filter((r) => r.errorCode !== 0)).toEqual([]);
    }
  });

  it('a full batch of 500 accepted RSA-4096 CSRs is signed without one long stall of the event loop', async () => {
    const { c, entryId, spiffeId } = await agentWithEntry(ts, 'rsa4096');
    const csr = rsaCsr(rsaKeyWithExponent(4096, 65537), spiffeId);
    const { value: res, maxDelayMs, elapsedMs } = await measured(() => unary<BatchNewX509SvidResponse>(c, 'BatchNewX509Svid', { params: Array.from({ length: 500 }, () => ({ entryId, csr })) }));
    expect(res.results.filter((r) => r.errorCode !== 0)).toEqual([]);
    // The batch is worked in slices that give the loop back; what stalls is the message decoding and
    // encoding (and this process's client side). Before, the whole batch was one stall (~90% of the call).
    console.log(`500 RSA-4096 CSRs: longest event-loop stall ${maxDelayMs.toFixed(0)} ms of ${elapsedMs.toFixed(0)} ms`);
    expect(maxDelayMs).toBeLessThan(elapsedMs / 3);
  });
});
