// deploy/prometheus: the alerts pass `promtool check rules` and their unit tests (`promtool test
// rules`), the compose stack's prometheus.yml passes `promtool check config`, and every metric an
// alert or the Grafana dashboard names is one the server or the agent really exports.
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { AgentMetrics } from '../../src/agent/metrics.js';
import { ServerMetrics } from '../../src/server/metrics.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const PROM_DIR = path.join(ROOT, 'deploy/prometheus');

function promtool(): string {
  if (spawnSync('sh', ['-c', 'command -v promtool']).status !== 0) {
    throw new Error('promtool is not installed: run scripts/setup.sh (Debian package prometheus)');
  }
  return 'promtool';
}

/** Metric families the server and agent registries define, with the series names a query may use. */
async function exportedNames(): Promise<Set<string>> {
  const names = new Set<string>();
  for (const registry of [new ServerMetrics().registry, new AgentMetrics().registry]) {
    for (const m of await registry.getMetricsAsJSON()) {
      names.add(m.name);
      if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
    }
  }
  return names;
}

/** terroir_* names in a PromQL expression. */
function metricNames(expr: string): string[] {
  return [...expr.matchAll(/\bterroir_[a-z_]+\b/g)].map((m) => m[0]);
}

describe('deploy/prometheus', () => {
  it('alerts.yml passes promtool check rules', async () => {
    const { stdout } = await run(promtool(), ['check', 'rules', 'alerts.yml'], { cwd: PROM_DIR });
    expect(stdout).toMatch(/SUCCESS: 6 rules found/);
  });

  it('alerts.yml passes its unit tests (promtool test rules alerts.test.yml)', async () => {
    const { stdout } = await run(promtool(), ['test', 'rules', 'alerts.test.yml'], { cwd: PROM_DIR });
    expect(stdout).toMatch(/SUCCESS/);
  });

  it('a broken alert fails its unit test (the test can fail)', async () => {
    const { dir, cleanup } = tempDir('terroir-promtool-');
    try {
      const broken = fs.readFileSync(path.join(PROM_DIR, 'alerts.yml'), 'utf8').replace('terroir_agent_server_reachable == 0', 'terroir_agent_server_reachable == 2');
      fs.writeFileSync(path.join(dir, 'alerts.yml'), broken);
      fs.copyFileSync(path.join(PROM_DIR, 'alerts.test.yml'), path.join(dir, 'alerts.test.yml'));
      const err = await run(promtool(), ['test', 'rules', 'alerts.test.yml'], { cwd: dir }).then(() => undefined, (e: unknown) => e as { stdout: string; stderr: string });
      expect(err, 'promtool test rules passed a broken alert').toBeDefined();
      expect(`${err?.stdout}${err?.stderr}`).toMatch(/FAILED[\s\S]*TerroirAgentCannotReachServer/);
    } finally {
      cleanup();
    }
  });

  it('prometheus.yml passes promtool check config', async () => {
    const { stdout } = await run(promtool(), ['check', 'config', 'prometheus.yml'], { cwd: PROM_DIR });
    expect(stdout).toMatch(/SUCCESS/);
  });

  it('every alert names only metrics the server or the agent exports', async () => {
    const names = await exportedNames();
    const doc = YAML.parse(fs.readFileSync(path.join(PROM_DIR, 'alerts.yml'), 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] };
    const alerts = doc.groups.flatMap((g) => g.rules);
    expect(alerts.map((a) => a.alert).sort()).toEqual([
      'TerroirAgentCannotReachServer', 'TerroirAgentSvidExpiring', 'TerroirAttestationFailureRatio', 'TerroirCaExpiring', 'TerroirKeylimeUnreachable', 'TerroirNodesOutOfPolicy',
    ]);
    for (const a of alerts) {
      expect(metricNames(a.expr).length, a.alert).toBeGreaterThan(0);
      for (const n of metricNames(a.expr)) expect(names, `${a.alert}: ${n}`).toContain(n);
    }
  });
});

describe('deploy/grafana/terroir.json', () => {
  const dashboard = JSON.parse(fs.readFileSync(path.join(ROOT, 'deploy/grafana/terroir.json'), 'utf8')) as {
    title: string; uid: string; panels: { title: string; type: string; targets?: { expr: string }[] }[];
  };

  it('is a dashboard whose every panel queries metrics the server or the agent exports', async () => {
    const names = await exportedNames();
    expect(dashboard.title).toMatch(/terroir/i);
    const queried = dashboard.panels.filter((p) => p.type !== 'row');
    expect(queried.length).toBeGreaterThanOrEqual(8);
    const used = new Set<string>();
    for (const p of queried) {
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) {
        expect(metricNames(t.expr).length, `${p.title}: ${t.expr}`).toBeGreaterThan(0);
        for (const n of metricNames(t.expr)) { expect(names, `${p.title}: ${n}`).toContain(n); used.add(n.replace(/_(bucket|sum|count)$/, '')); }
      }
    }
    // Every server and agent family is on the dashboard somewhere.
    const families = [...names].filter((n) => !/_(bucket|sum|count)$/.test(n) || !names.has(n.replace(/_(bucket|sum|count)$/, '')));
    for (const f of families) expect(used, f).toContain(f);
  });
});
