// The compose stack's `monitoring` profile: a hardened Prometheus reading deploy/prometheus (config and
// alerts), scraping terroir-server where the server's health listener really is, its UI on the host's
// loopback only; and the profile off, nothing of it (the plain and unified stacks unchanged).
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');

interface Service {
  image?: string; user?: string; read_only?: boolean; cap_drop?: string[]; security_opt?: string[];
  volumes?: string[]; ports?: { published?: string | number; host_ip?: string; target?: number }[] | string[];
  environment?: Record<string, string>; profiles?: string[]; command?: string[];
}

async function config(...args: string[]): Promise<{ services: Record<string, Service> }> {
  if (spawnSync('sh', ['-c', 'command -v docker-compose']).status !== 0) {
    throw new Error('docker-compose is not installed: apt-get install --no-install-recommends docker-compose');
  }
  const { stdout } = await run('docker-compose', ['--env-file', 'deploy/.env.example', ...args, 'config'], { cwd: ROOT });
  return YAML.parse(stdout) as { services: Record<string, Service> };
}

describe('docker-compose.yml, profile monitoring', () => {
  // One rendering: docker-compose 1.29's `config` prints every service whatever the profiles (`up` starts
  // those without profiles or with an active one), so the stacks are told apart from `profiles` below.
  let c: { services: Record<string, Service> };
  beforeAll(async () => { c = await config('--profile', 'monitoring'); });

  it('adds a hardened Prometheus with deploy/prometheus, scraping the server\'s health listener', () => {
    const p = c.services['prometheus'] as Service;
    expect(p.profiles).toEqual(['monitoring']);
    expect(p.read_only).toBe(true);
    expect(p.cap_drop).toEqual(['ALL']);
    expect(p.security_opt).toContain('no-new-privileges:true');
    expect(p.user).toBe('65534:65534');
    expect(p.volumes?.some((v) => v === `${path.join(ROOT, 'deploy/prometheus')}:/etc/prometheus:ro`)).toBe(true);
    expect(p.command).toContain('--config.file=/etc/prometheus/prometheus.yml');
    expect(JSON.stringify(p.ports)).toMatch(/127\.0\.0\.1/);
    // The scrape target is the server's health listener: the port it binds, on an address other containers reach.
    const server = c.services['terroir-server'] as Service;
    expect(server.environment?.['TERROIR_HEALTH_BIND_ADDRESS']).toBe('0.0.0.0');
    const prom = YAML.parse(fs.readFileSync(path.join(ROOT, 'deploy/prometheus/prometheus.yml'), 'utf8')) as { scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[]; rule_files: string[] };
    const target = prom.scrape_configs.find((s) => s.job_name === 'terroir-server')?.static_configs[0]?.targets[0];
    const serverScript = fs.readFileSync(path.join(ROOT, 'deploy/server.sh'), 'utf8');
    const healthPort = /TERROIR_HEALTH_PORT:-(\d+)/.exec(serverScript)?.[1];
    expect(target).toBe(`terroir-server:${server.environment?.['TERROIR_HEALTH_PORT'] ?? healthPort}`);
    expect(prom.rule_files).toEqual(['alerts.yml']);
  });

  it('is not part of the plain or the unified stack', () => {
    const started = (...profiles: string[]): string[] => Object.entries(c.services)
      .filter(([, s]) => s.profiles === undefined || s.profiles.some((p) => profiles.includes(p))).map(([n]) => n);
    expect(started()).not.toContain('prometheus');
    expect(started('unified')).not.toContain('prometheus');
    expect(started('unified', 'monitoring')).toContain('prometheus');
    expect(started('monitoring')).toContain('terroir-server');
  });
});
