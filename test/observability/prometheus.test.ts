// A real Prometheus (Debian's package, as scripts/setup.sh installs it) scraping a real terroir server
// and agent: a TPM node in Berlin accepted, the same node refused from New York, an attestation while
// Keylime fails, then a real agent; the test asks Prometheus's HTTP API for what it scraped.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../../src/agent/agent.js';
import type { RunningServer } from '../../src/server/run.js';
import { freePort, waitForPort } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';
import { parseMetrics } from './prom-text.js';
import { startAgent, startUnifiedDeployment, type UnifiedDeployment } from '../unified-identity/fixture.js';

const PROMETHEUS = '/usr/bin/prometheus';

function writeConfig(config: string, targets: Record<string, string>): void {
  fs.writeFileSync(config, [
    'global: { scrape_interval: 1s, evaluation_interval: 1s }',
    'scrape_configs:',
    ...Object.entries(targets).map(([job, t]) => `  - { job_name: ${job}, static_configs: [{ targets: ["${t}"] }] }`),
  ].join('\n'));
}

/**
 * Starts Prometheus on a free loopback port with no targets yet (it starts while the deployment does);
 * `scrape` points it at targets (job → host:port, every second) by rewriting its configuration and
 * asking it to reload (SIGHUP).
 */
async function startPrometheus(dir: string): Promise<{ port: number; proc: ChildProcess; scrape(targets: Record<string, string>): void; log: () => string }> {
  if (!fs.existsSync(PROMETHEUS) && spawnSync('sh', ['-c', 'command -v prometheus']).status !== 0) {
    throw new Error('prometheus is not installed: run scripts/setup.sh (Debian package prometheus)');
  }
  const bin = fs.existsSync(PROMETHEUS) ? PROMETHEUS : 'prometheus';
  const config = path.join(dir, 'prometheus.yml');
  writeConfig(config, {});
  const port = await freePort();
  let out = '';
  const proc = spawn(bin, [
    `--config.file=${config}`, `--storage.tsdb.path=${path.join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr?.on('data', (d: Buffer) => { out += d.toString(); });
  await waitForPort(port, '127.0.0.1', 15_000).catch((err: unknown) => { proc.kill(); throw new Error(`prometheus did not start: ${String(err)}\n${out}`); });
  return { port, proc, log: () => out, scrape: (targets) => { writeConfig(config, targets); proc.kill('SIGHUP'); } };
}

/** Prometheus's instant query result as [labels, value] pairs. */
async function query(port: number, q: string): Promise<{ metric: Record<string, string>; value: number }[]> {
  const res = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${encodeURIComponent(q)}`);
  const body = await res.json() as { status: string; data: { result: { metric: Record<string, string>; value: [number, string] }[] } };
  expect(body.status).toBe('success');
  return body.data.result.map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
}

/** The single value of `q` (undefined while Prometheus has no such series). */
async function value(port: number, q: string): Promise<number | undefined> {
  const r = await query(port, q);
  return r.length === 1 ? r[0]?.value : undefined;
}

describe('Prometheus scraping a real server and agent', () => {
  const tmp = tempDir('terroir-prometheus-');
  let d: UnifiedDeployment;
  let server: RunningServer;
  let agent: Agent | undefined;
  let prom: Awaited<ReturnType<typeof startPrometheus>> | undefined;

  beforeAll(async () => {
    [d, prom] = await Promise.all([startUnifiedDeployment(), startPrometheus(tmp.dir)]);
    server = await d.startServer({ flag: true, keylime: true });
    // Known events: accepted (Berlin), refused by the location policy (New York), refused with Keylime down.
    await d.attest(server, d.provider(d.berlin));
    await expect(d.attest(server, d.provider(d.newYork))).rejects.toThrow(/location policy eu-only denied/);
    d.verifier.fault = { mode: '5xx' };
    try {
      await expect(d.attest(server, d.provider(d.berlin))).rejects.toThrow(/fail closed/);
    } finally {
      d.verifier.fault = { mode: 'none' };
    }
    // A real agent (Workload API and all) with its health listener: one more accepted attestation.
    agent = await startAgent(d, server, true, 'agent-prom', false, { health: { port: 0 } });
    prom.scrape({ 'terroir-server': `127.0.0.1:${server.healthPort}`, 'terroir-agent': `127.0.0.1:${agent.healthPort}` });
  }, 90_000);

  afterAll(async () => {
    prom?.proc.kill('SIGTERM');
    await agent?.stop();
    await d?.stop();
    if (prom && prom.proc.exitCode === null) await new Promise((r) => prom?.proc.once('exit', r));
    tmp.cleanup();
  });

  it('scrapes both targets', async () => {
    const p = prom!.port;
    await expect.poll(() => value(p, 'up{job="terroir-server"}'), { timeout: 15_000, interval: 250 }).toBe(1);
    await expect.poll(() => value(p, 'up{job="terroir-agent"}'), { timeout: 15_000, interval: 250 }).toBe(1);
  });

  it('has the attestations by method, result and reason', async () => {
    const p = prom!.port;
    await expect.poll(() => value(p, 'terroir_server_node_attestations_total{method="tpm",result="ok",reason="none"}'), { timeout: 10_000, interval: 250 }).toBe(2);
    expect(await value(p, 'terroir_server_node_attestations_total{method="tpm",result="denied",reason="policy_denied"}')).toBe(1);
    expect(await value(p, 'terroir_server_node_attestations_total{method="tpm",result="denied",reason="keylime_unreachable"}')).toBe(1);
    expect(await value(p, 'sum(terroir_server_node_attestations_total)')).toBe(4);
    expect(await value(p, 'terroir_server_node_attestation_duration_seconds_count{method="tpm",result="ok"}')).toBe(2);
  });

  it('has Keylime requests, policy decisions, stage durations, SVIDs and the node in DE', async () => {
    const p = prom!.port;
    // Keylime checks the quote before the place is decided: New York's evidence was verified too.
    await expect.poll(() => value(p, 'terroir_server_keylime_requests_total{kind="verify_evidence",result="ok"}'), { timeout: 10_000, interval: 250 }).toBe(3);
    expect(await value(p, 'terroir_server_keylime_requests_total{kind="verify_evidence",result="http"}')).toBe(1);
    expect(await value(p, 'terroir_server_keylime_request_duration_seconds_count{kind="verify_evidence"}')).toBe(4);
    expect(await value(p, 'terroir_server_location_policy_decisions_total{policy="eu-only",result="deny",assurance="none"}')).toBe(1);
    expect(await value(p, 'sum(terroir_server_location_policy_decisions_total{policy="eu-only",result="allow"})')).toBe(2);
    expect(await value(p, 'terroir_server_attestation_stage_duration_seconds_count{stage="keylime"}')).toBe(2);
    expect(await value(p, 'terroir_server_attestation_stage_duration_seconds_count{stage="policy"}')).toBe(2);
    expect(await value(p, 'sum(terroir_server_svids_issued_total{type="x509",kind="agent"})')).toBe(2);
    expect(await value(p, 'sum(terroir_server_svids_issued_total{type="x509",kind="workload"})')).toBeUndefined();
    // One node (one TPM): attested, in Germany, with the assurance its claims carry.
    const nodes = await query(p, 'terroir_server_nodes');
    expect(nodes.map((n) => [n.metric['state'], n.metric['country'], n.value])).toEqual([['attested', 'DE', 1]]);
    expect(await value(p, 'terroir_server_ca_expiry_timestamp_seconds{kind="x509"}')).toBe(server.ca.activeX509().notAfter.getTime() / 1000);
  });

  it('the server\'s exposition, after nodes in Berlin and New York, has no coordinate, SPIFFE ID or free text in a label', async () => {
    const text = await (await fetch(`http://127.0.0.1:${server.healthPort}/metrics`)).text();
    expect(text).not.toContain('spiffe://');
    expect(text).not.toMatch(/\b(lat|lon|latitude|longitude)\b/i);
    for (const sample of parseMetrics(text)) {
      for (const [k, v] of Object.entries(sample.labels)) {
        // No dot outside bucket bounds: a coordinate cannot hide in a label; the values are words of bounded sets.
        if (k !== 'le') expect(v, `${sample.name}{${k}}`).toMatch(/^[A-Za-z0-9_-]{1,32}$/);
      }
    }
  });

  it('has the agent\'s view: its attestation, the server reachable, an SVID expiry ahead', async () => {
    const p = prom!.port;
    await expect.poll(() => value(p, 'terroir_agent_node_attestations_total'), { timeout: 10_000, interval: 250 }).toBe(1);
    expect(await value(p, 'terroir_agent_server_reachable')).toBe(1);
    expect(await value(p, 'terroir_agent_svid_expiry_seconds')).toBeGreaterThan(60);
  });
});
