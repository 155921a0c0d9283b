// The deploy/ scripts refuse bad settings with a message naming the setting, and start nothing.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/tmp.js';

const DEPLOY = path.resolve(import.meta.dirname, '../../deploy');
const tmp = tempDir('terroir-deploy-errors-');
afterAll(() => tmp.cleanup());

function script(name: string, args: string[], extra: Record<string, string>): { status: number | null; stderr: string } {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(TERROIR_|SPIFFE_|SWTPM_|GPS)/.test(k)));
  const r = spawnSync('bash', [path.join(DEPLOY, name), ...args], { env: { ...base, TERROIR_FROM_SOURCE: '1', ...extra }, timeout: 20_000 });
  return { status: r.status, stderr: r.stderr.toString() };
}

describe('deploy/ scripts refuse bad settings', () => {
  it('agent.sh: no bootstrap bundle, or a bad wait', () => {
    const missing = path.join(tmp.dir, 'no-such-bundle.pem');
    const r = script('agent.sh', [], { TERROIR_BOOTSTRAP_BUNDLE: missing, TERROIR_BUNDLE_WAIT: '0', TERROIR_AGENT_DATA_DIR: path.join(tmp.dir, 'agent') });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`deploy/agent.sh: no bootstrap bundle at ${missing} after 0s: deploy/register.sh writes it`);
    expect(fs.existsSync(path.join(tmp.dir, 'agent'))).toBe(false);
    expect(script('agent.sh', [], { TERROIR_BUNDLE_WAIT: 'soon' }).stderr).toContain("TERROIR_BUNDLE_WAIT must be a number of seconds, got 'soon'");
  });

  it('server.sh: a bad join-token switch, a missing TPM CA file', () => {
    const data = path.join(tmp.dir, 'server');
    expect(script('server.sh', [], { TERROIR_DATA_DIR: data, TERROIR_JOIN_TOKENS: 'maybe' }).stderr).toContain("TERROIR_JOIN_TOKENS must be true or false, got 'maybe'");
    const ca = path.join(tmp.dir, 'none.pem');
    const r = script('server.sh', [], { TERROIR_DATA_DIR: data, TERROIR_TPM_CA_FILES: ca, TERROIR_TPM_CA_WAIT: '0' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain(`TPM manufacturer CA file ${ca} is missing (TERROIR_TPM_CA_FILES; empty turns TPM attestation off)`);
    expect(fs.existsSync(data)).toBe(false);
  });

  it('workload.sh and gpsd.sh: usage and unreadable input', () => {
    const w = script('workload.sh', ['both'], {});
    expect(w.status).toBe(2);
    expect(w.stderr).toContain('usage: deploy/workload.sh consumer | client [--once]');
    const g = script('gpsd.sh', [], { GPS_LOG: path.join(tmp.dir, 'missing.nmea') });
    expect(g.status).toBe(1);
    expect(g.stderr).toContain('missing.nmea not readable');
  });

  it('certs-init.sh: a bad validity is refused before anything is written', () => {
    const out = path.join(tmp.dir, 'pki');
    const r = script('certs-init.sh', [out], { CERT_DAYS: '-5' });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain("CERT_DAYS must be a positive number of days, got '-5'");
    expect(fs.existsSync(out)).toBe(false);
  });
});
