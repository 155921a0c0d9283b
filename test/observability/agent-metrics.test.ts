// The agent's health listener (config `health`): /live and /metrics after real events — a join-token
// attestation, a sync, Workload API calls accepted and refused, the server going away.
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { WORKLOAD_API_HEADER, type JwtSvidResponse } from '../../src/api/workload-api.js';
import type { RunningServer } from '../../src/server/run.js';
import { workloadClient } from '../../src/workload/endpoint.js';
import { startTestServer } from '../agent/fixtures.js';
import { tempDir } from '../support/tmp.js';
import { parseMetrics, sample } from './prom-text.js';

const TD = 'metrics.test';

async function metricsOf(agent: Agent): Promise<ReturnType<typeof parseMetrics>> {
  const res = await fetch(`http://127.0.0.1:${agent.healthPort}/metrics`);
  expect(res.status).toBe(200);
  return parseMetrics(await res.text());
}

function fetchJwt(socket: string, header: boolean): Promise<JwtSvidResponse> {
  const client = workloadClient(`unix://${socket}`);
  const md = new grpc.Metadata();
  if (header) md.set(WORKLOAD_API_HEADER, 'true');
  return new Promise<JwtSvidResponse>((resolve, reject) => {
    client.FetchJWTSVID({ audience: ['db'] }, md, { deadline: Date.now() + 5000 }, (err, res) => {
      client.close();
      if (err) reject(err); else resolve(res as JwtSvidResponse);
    });
  });
}

describe('agent /metrics', () => {
  const tmp = tempDir('terroir-agent-metrics-');
  let server: RunningServer;
  let agent: Agent;
  let serverStopped = false;

  beforeAll(async () => {
    ({ server } = await startTestServer(tmp.dir, TD, { nodeAttestation: { joinToken: { enabled: true } } }));
    const token = 'metrics-token-1';
    await server.store.createJoinToken({ token, expiresAt: new Date(Date.now() + 600_000) });
    const agentId = `spiffe://${TD}/agent/join_token/${token}`;
    // The test process's uid: the unix attestor gives the caller of the Workload API this selector.
    await server.store.createEntries([{ spiffeId: `spiffe://${TD}/db`, parentId: agentId, selectors: [{ type: 'unix', value: `uid:${process.getuid?.() ?? 0}` }], federatesWith: [] }]);
    agent = await Agent.start(parseAgentConfig({
      trustDomain: TD, serverAddress: '127.0.0.1', serverPort: server.agentApiPort,
      dataDir: path.join(tmp.dir, 'agent'), socketPath: path.join(tmp.dir, 'agent.sock'),
      insecureBootstrap: true, syncIntervalMs: 200, logLevel: 'silent',
      nodeAttestor: { joinToken: { token } },
      health: { port: 0 },
    }, {}), { logger: pino({ level: 'silent' }) });
  });
  afterAll(async () => {
    await agent?.stop();
    if (!serverStopped) await server?.stop();
    tmp.cleanup();
  });

  it('serves /live and /metrics on loopback, with the attestation, sync and cache', async () => {
    expect(agent.healthPort).toBeGreaterThan(0);
    expect((await fetch(`http://127.0.0.1:${agent.healthPort}/live`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${agent.healthPort}/nope`)).status).toBe(404);
    const m = await metricsOf(agent);
    expect(sample(m, 'terroir_agent_node_attestations_total', {})).toBe(1);
    expect(sample(m, 'terroir_agent_syncs_total', {})).toBeGreaterThanOrEqual(1);
    expect(sample(m, 'terroir_agent_cache_entries', {})).toBe(1);
    expect(sample(m, 'terroir_agent_cache_svids', {})).toBe(1);
    expect(sample(m, 'terroir_agent_svids_signed_total', {})).toBe(1);
    expect(sample(m, 'terroir_agent_keylime_revocations_total', {})).toBe(0);
    // The workload SVID (server default TTL 1 h at most) expires before the agent's own.
    const svid = agent.cache.svid(agent.cache.entryList()[0]!.id)!;
    expect(Math.abs(sample(m, 'terroir_agent_svid_expiry_seconds', {})! - (svid.notAfter - Date.now()) / 1000)).toBeLessThan(5);
  });

  it('counts Workload API calls by RPC and status code', async () => {
    const res = await fetchJwt(agent.socketPath, true);
    expect(res.svids).toHaveLength(1);
    await expect(fetchJwt(agent.socketPath, false)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const m = await metricsOf(agent);
    expect(sample(m, 'terroir_agent_workload_api_calls_total', { rpc: 'FetchJWTSVID', code: 'OK' })).toBe(1);
    expect(sample(m, 'terroir_agent_workload_api_calls_total', { rpc: 'FetchJWTSVID', code: 'INVALID_ARGUMENT' })).toBe(1);
  });

  it('server_reachable follows the watch stream: 1 while connected, 0 once the server is gone', async () => {
    await expect.poll(async () => sample(await metricsOf(agent), 'terroir_agent_server_reachable', {}), { timeout: 5000 }).toBe(1);
    await server.stop();
    serverStopped = true;
    await expect.poll(async () => sample(await metricsOf(agent), 'terroir_agent_server_reachable', {}), { timeout: 5000 }).toBe(0);
    // Metrics carry no SPIFFE ID, path or selector.
    const text = await (await fetch(`http://127.0.0.1:${agent.healthPort}/metrics`)).text();
    expect(text).not.toMatch(/spiffe:\/\/|uid:|\.sock/);
  });
});
