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
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(TERROIR_|SPIFFE_|SWTPM_|GPS|UNIFIED_IDENTITY|CONSUMER_)/.test(k)));
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

  it('server.sh with Unified Identity on: a misspelt flag, half-set Keylime settings, missing files, bad values', () => {
    const data = path.join(tmp.dir, 'server-ui');
    const ca = path.join(tmp.dir, 'tpm-ca.pem');
    fs.writeFileSync(ca, 'not read before the checks below fail\n');
    const base = { TERROIR_DATA_DIR: data, TERROIR_TPM_CA_FILES: ca, TERROIR_TPM_CA_WAIT: '0' };
    // The flag is parsed by terroir's own parser: its message, not a guess.
    const typo = script('server.sh', [], { ...base, UNIFIED_IDENTITY_ENABLED: 'ture' });
    expect(typo.status).toBe(1);
    expect(typo.stderr).toContain('environment variable UNIFIED_IDENTITY_ENABLED="ture" is not a boolean; use true or false');
    const half = script('server.sh', [], { ...base, UNIFIED_IDENTITY_ENABLED: 'On', TERROIR_KEYLIME_URL: 'https://keylime-verifier:8881', TERROIR_KEYLIME_CA: ca });
    expect(half.status).toBe(1);
    expect(half.stderr).toContain('deploy/server.sh: UNIFIED_IDENTITY_ENABLED is on but TERROIR_KEYLIME_CERT TERROIR_KEYLIME_KEY not set');
    const full = { ...base, UNIFIED_IDENTITY_ENABLED: '1', TERROIR_KEYLIME_URL: 'https://keylime-verifier:8881', TERROIR_KEYLIME_CA: ca, TERROIR_KEYLIME_CERT: ca, TERROIR_KEYLIME_KEY: ca };
    const noKey = path.join(tmp.dir, 'absent.key');
    expect(script('server.sh', [], { ...full, TERROIR_KEYLIME_KEY: noKey }).stderr).toContain(`TERROIR_KEYLIME_KEY: cannot read ${noKey} (deploy/certs-init.sh makes the Keylime PKI`);
    expect(script('server.sh', [], { ...full, TERROIR_KEYLIME_URL: 'http://keylime:8881' }).stderr).toContain("TERROIR_KEYLIME_URL must be an https:// URL, got 'http://keylime:8881'");
    expect(script('server.sh', [], { ...full, TERROIR_KEYLIME_CA: '/etc/a"b.pem' }).stderr).toContain('TERROIR_KEYLIME_CA must not contain a double quote or a backslash');
    expect(script('server.sh', [], { ...full, TERROIR_KEYLIME_MODE: 'pull' }).stderr).toContain("TERROIR_KEYLIME_MODE must be oneshot or continuous, got 'pull'");
    expect(script('server.sh', [], { ...full, TERROIR_KEYLIME_ALLOW_DEV_STANDIN: 'yes' }).stderr).toContain("TERROIR_KEYLIME_ALLOW_DEV_STANDIN must be true or false, got 'yes'");
    const noPolicies = path.join(tmp.dir, 'absent.yaml');
    expect(script('server.sh', [], { ...full, TERROIR_LOCATION_POLICIES: noPolicies }).stderr).toContain(`TERROIR_LOCATION_POLICIES: cannot read ${noPolicies}`);
    expect(script('server.sh', [], { ...full, TERROIR_UNIFIED_PCRS: '0, 7' }).stderr).toContain("TERROIR_UNIFIED_PCRS must be comma-separated PCR numbers, got '0, 7'");
    expect(script('server.sh', [], { ...full, TERROIR_KEYLIME_TPM_POLICY: '15: [00]' }).stderr).toContain('TERROIR_KEYLIME_TPM_POLICY must be a JSON object on one line');
    expect(script('server.sh', [], { ...full, TERROIR_TPM_CA_FILES: '' }).stderr).toContain('UNIFIED_IDENTITY_ENABLED is on but TPM attestation is off (TERROIR_TPM_CA_FILES is empty)');
    expect(script('server.sh', [], { ...full, TERROIR_KEYLIME_WAIT: 'soon' }).stderr).toContain("TERROIR_KEYLIME_WAIT must be a number of seconds, got 'soon'");
    // Compose starts Keylime in the unified profile, with no depends_on: the server waits, then says what is missing.
    const noVerifier = script('server.sh', [], { ...full, TERROIR_KEYLIME_URL: 'https://127.0.0.1:1', TERROIR_KEYLIME_WAIT: '0' });
    expect(noVerifier.status).toBe(1);
    expect(noVerifier.stderr).toContain('deploy/server.sh: the Keylime verifier at 127.0.0.1:1 accepts no connection after 0s: with Unified Identity on it checks every attestation (compose: start the unified profile');
    expect(fs.existsSync(data)).toBe(false);
  }, 30_000);

  it('agent.sh with Unified Identity on: a join token, a bad gpsd port, a gpsd off loopback without TERROIR_GPSD_ALLOW_REMOTE', () => {
    const bundle = path.join(tmp.dir, 'bundle.pem');
    fs.writeFileSync(bundle, '-----BEGIN CERTIFICATE-----\n');
    const base = { TERROIR_BOOTSTRAP_BUNDLE: bundle, TERROIR_AGENT_DATA_DIR: path.join(tmp.dir, 'agent-ui'), UNIFIED_IDENTITY_ENABLED: 'true' };
    expect(script('agent.sh', [], { ...base, TERROIR_AGENT_JOIN_TOKEN: 'abc' }).stderr).toContain('UNIFIED_IDENTITY_ENABLED is on but TERROIR_AGENT_JOIN_TOKEN is set');
    expect(script('agent.sh', [], { ...base, TERROIR_GPSD_PORT: '99999' }).stderr).toContain("TERROIR_GPSD_PORT must be a port number, got '99999'");
    // Anyone on the network path to a remote gpsd could answer as the node's receiver (issue 13).
    expect(script('agent.sh', [], { ...base, TERROIR_GPSD_HOST: 'gpsd' }).stderr).toContain("TERROIR_GPSD_HOST 'gpsd' is not a loopback address");
    expect(script('agent.sh', [], { ...base, TERROIR_GPSD_HOST: '192.0.2.10' }).stderr).toMatch(/not a loopback address.*TERROIR_GPSD_ALLOW_REMOTE=true/);
    expect(script('agent.sh', [], { ...base, TERROIR_GPSD_ALLOW_REMOTE: 'yes' }).stderr).toContain("TERROIR_GPSD_ALLOW_REMOTE must be true or false, got 'yes'");
    expect(script('agent.sh', [], { ...base, TERROIR_GPSD_WAIT: 'later' }).stderr).toContain("TERROIR_GPSD_WAIT must be a number of seconds, got 'later'");
    // Compose starts gpsd in the unified profile, with no depends_on: the agent waits, then says what is missing.
    const noGpsd = script('agent.sh', [], { ...base, TERROIR_GPSD_PORT: '1', TERROIR_GPSD_WAIT: '0' });
    expect(noGpsd.status).toBe(1);
    expect(noGpsd.stderr).toContain('deploy/agent.sh: no gpsd accepts connections at 127.0.0.1:1 after 0s: with Unified Identity on the agent reads its location from gpsd at every attestation (compose: start the unified profile');
    expect(fs.existsSync(path.join(tmp.dir, 'agent-ui'))).toBe(false);
  });

  it('Keylime continuous mode: agent.sh needs its quote endpoint\'s files and a reachable address; server.sh a known address mode and a port', () => {
    const bundle = path.join(tmp.dir, 'bundle-ql.pem');
    fs.writeFileSync(bundle, '-----BEGIN CERTIFICATE-----\n');
    const file = path.join(tmp.dir, 'quote.pem');
    fs.writeFileSync(file, 'not read before the checks below fail\n');
    const agentData = path.join(tmp.dir, 'agent-ql');
    const base = { TERROIR_BOOTSTRAP_BUNDLE: bundle, TERROIR_AGENT_DATA_DIR: agentData, UNIFIED_IDENTITY_ENABLED: 'true', TERROIR_KEYLIME_MODE: 'continuous' };
    const half = script('agent.sh', [], { ...base, TERROIR_KEYLIME_QUOTE_CERT: file });
    expect(half.status).toBe(1);
    expect(half.stderr).toContain('deploy/agent.sh: TERROIR_KEYLIME_MODE is continuous but TERROIR_KEYLIME_QUOTE_KEY TERROIR_KEYLIME_QUOTE_CLIENT_CA not set: the Keylime verifier pulls quotes from this agent over mutual TLS');
    const full = { ...base, TERROIR_KEYLIME_QUOTE_CERT: file, TERROIR_KEYLIME_QUOTE_KEY: file, TERROIR_KEYLIME_QUOTE_CLIENT_CA: file, TERROIR_KEYLIME_QUOTE_ADVERTISE: 'node-1.example' };
    const absent = path.join(tmp.dir, 'absent-ca.pem');
    expect(script('agent.sh', [], { ...full, TERROIR_KEYLIME_QUOTE_CLIENT_CA: absent }).stderr).toContain(`TERROIR_KEYLIME_QUOTE_CLIENT_CA: cannot read ${absent} (for the compose demo deploy/certs-init.sh makes them in OUT_DIR/agent/`);
    expect(script('agent.sh', [], { ...full, TERROIR_KEYLIME_QUOTE_KEY: '/etc/a"b.key' }).stderr).toContain('TERROIR_KEYLIME_QUOTE_KEY must not contain a double quote or a backslash');
    expect(script('agent.sh', [], { ...full, TERROIR_KEYLIME_QUOTE_PORT: '0' }).stderr).toContain("TERROIR_KEYLIME_QUOTE_PORT must be a port number, got '0'");
    expect(script('agent.sh', [], { ...full, TERROIR_KEYLIME_QUOTE_BIND: 'any host' }).stderr).toContain("TERROIR_KEYLIME_QUOTE_BIND must be a host name or address, got 'any host'");
    expect(script('agent.sh', [], { ...full, TERROIR_KEYLIME_QUOTE_ADVERTISE: '' }).stderr)
      .toContain('TERROIR_KEYLIME_QUOTE_BIND is the wildcard 0.0.0.0 but TERROIR_KEYLIME_QUOTE_ADVERTISE is not set: say which address the Keylime verifier can reach this node at');
    expect(script('agent.sh', [], { ...full, TERROIR_KEYLIME_QUOTE_BIND: '::', TERROIR_KEYLIME_QUOTE_ADVERTISE: '' }).stderr).toContain('TERROIR_KEYLIME_QUOTE_BIND is the wildcard ::');
    expect(script('agent.sh', [], { ...full, TERROIR_KEYLIME_MODE: 'push' }).stderr).toContain("deploy/agent.sh: TERROIR_KEYLIME_MODE must be oneshot or continuous, got 'push'");
    expect(fs.existsSync(agentData)).toBe(false);

    const data = path.join(tmp.dir, 'server-ql');
    const server = {
      TERROIR_DATA_DIR: data, TERROIR_TPM_CA_FILES: file, TERROIR_TPM_CA_WAIT: '0', UNIFIED_IDENTITY_ENABLED: 'true', TERROIR_KEYLIME_MODE: 'continuous',
      TERROIR_KEYLIME_URL: 'https://keylime-verifier:8881', TERROIR_KEYLIME_CA: file, TERROIR_KEYLIME_CERT: file, TERROIR_KEYLIME_KEY: file,
    };
    expect(script('server.sh', [], { ...server, TERROIR_KEYLIME_QUOTE_ADDRESS: 'nat' }).stderr).toContain("deploy/server.sh: TERROIR_KEYLIME_QUOTE_ADDRESS must be source or advertised, got 'nat'");
    expect(script('server.sh', [], { ...server, TERROIR_KEYLIME_QUOTE_PORT: '9002x' }).stderr).toContain("deploy/server.sh: TERROIR_KEYLIME_QUOTE_PORT must be a port number, got '9002x'");
    expect(fs.existsSync(data)).toBe(false);

    const pki = path.join(tmp.dir, 'pki-ql');
    const c = script('certs-init.sh', [pki], { TERROIR_AGENT_HOST: 'agent;rm' });
    expect(c.status).toBe(1);
    expect(c.stderr).toContain("certs-init: host names (KEYLIME_VERIFIER_HOST, KEYLIME_REGISTRAR_HOST, TERROIR_AGENT_HOST) must be DNS names, got 'agent;rm'");
    expect(fs.existsSync(pki)).toBe(false);
  }, 60_000);

  it('gpsd.sh: a position or step out of range; workload.sh: the consumer with the flag on needs a requirement', () => {
    const lat = script('gpsd.sh', [], { GPSD_PORT: '1', GPS_LAT: '95' });
    expect(lat.status).toBe(1);
    expect(lat.stderr).toContain("live-nmea: latitude must be a number in [-90, 90], got '95'");
    expect(script('gpsd.sh', [], { GPS_STEP_S: 'fast' }).stderr).toContain('GPS_STEP_S must be a number of seconds in [0.05, 60], got "fast"');
    const c = script('workload.sh', ['consumer'], { UNIFIED_IDENTITY_ENABLED: 'yes', SPIFFE_ENDPOINT_SOCKET: `unix://${path.join(tmp.dir, 'none.sock')}` });
    expect(c.status).toBe(1);
    expect(c.stderr).toContain('mtls-demo: UNIFIED_IDENTITY_ENABLED is on: set CONSUMER_REQUIRE_REGION, CONSUMER_REQUIRE_COUNTRY and/or CONSUMER_REQUIRE_POLICY');
    const bad = script('workload.sh', ['consumer'], { UNIFIED_IDENTITY_ENABLED: 'yes', CONSUMER_REQUIRE_COUNTRY: 'fr' });
    expect(bad.stderr).toContain('mtls-demo: CONSUMER_REQUIRE_*: countries must be ISO 3166-1 alpha-2 codes in upper case');
  });
});
