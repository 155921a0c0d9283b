import { execFileSync, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const tsx = ['--import', 'tsx'];

describe('command lines', () => {
  it('terroir-server prints help and refuses unknown commands', () => {
    const help = execFileSync(process.execPath, [...tsx, 'src/cli/terroir-server.ts', 'help']).toString();
    expect(help).toContain('terroir-server');
    const bad = spawnSync(process.execPath, [...tsx, 'src/cli/terroir-server.ts', 'frobnicate']);
    expect(bad.status).toBe(2);
    expect(bad.stderr.toString()).toContain('unknown command "frobnicate"');
  });

  it('terroir-agent prints help', () => {
    const help = execFileSync(process.execPath, [...tsx, 'src/cli/terroir-agent.ts', '--help']).toString();
    expect(help).toContain('Workload API');
  });
});
