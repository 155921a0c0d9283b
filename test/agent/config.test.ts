// agent.yaml validation: the example parses; mistakes are reported by key; env overrides apply.
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentConfigError, loadAgentConfig, parseAgentConfig } from '../../src/agent/config.js';
import { grpcTarget, parseEndpoint } from '../../src/api/workload-api.js';
import { tempDir } from '../support/tmp.js';

const base = {
  trustDomain: 'example.org',
  serverAddress: '127.0.0.1',
  dataDir: '/var/lib/terroir-agent',
  trustBundlePath: '/etc/terroir/bundle.json',
  nodeAttestor: { joinToken: { token: 't' } },
};

describe('agent config', () => {
  it('loads examples/agent.yaml with defaults filled in', () => {
    const cfg = loadAgentConfig(path.resolve(import.meta.dirname, '../../examples/agent.yaml'), {});
    expect(cfg.trustDomain).toBe('example.org');
    expect(cfg.nodeAttestor.tpm?.tcti).toBe('device:/dev/tpmrm0');
    expect(cfg.workloadAttestors.unix.sha256).toBe(true);
    expect(cfg.insecureBootstrap).toBe(false);
  });

  it('names every offending key', () => {
    let err: unknown;
    try {
      parseAgentConfig({ ...base, trustDomain: 'Bad Domain', serverPort: 70000, nodeAttestor: {}, extra: 1 }, {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentConfigError);
    const msg = (err as Error).message;
    expect(msg).toContain('trustDomain');
    expect(msg).toContain('serverPort');
    expect(msg).toContain('exactly one of nodeAttestor.joinToken or nodeAttestor.tpm');
    expect(msg).toContain('extra');
  });

  it('requires a bootstrap bundle unless insecureBootstrap is explicitly set', () => {
    const { trustBundlePath: _t, ...noBundle } = base;
    expect(() => parseAgentConfig(noBundle, {})).toThrow(/trustBundlePath is required/);
    expect(parseAgentConfig({ ...noBundle, insecureBootstrap: true }, {}).insecureBootstrap).toBe(true);
  });

  it('applies environment overrides', () => {
    const cfg = parseAgentConfig(base, {
      SPIFFE_ENDPOINT_SOCKET: 'unix:///run/x/api.sock',
      TERROIR_AGENT_JOIN_TOKEN: 'from-env',
      TERROIR_AGENT_SERVER_PORT: '9000',
      TERROIR_AGENT_LOG_LEVEL: 'debug',
    });
    expect(cfg.socketPath).toBe('/run/x/api.sock');
    expect(cfg.nodeAttestor.joinToken?.token).toBe('from-env');
    expect(cfg.serverPort).toBe(9000);
    expect(cfg.logLevel).toBe('debug');
    expect(() => parseAgentConfig(base, { SPIFFE_ENDPOINT_SOCKET: 'tcp://127.0.0.1:9' })).toThrow(/must be a unix:\/\/ endpoint/);
    expect(() => parseAgentConfig(base, { SPIFFE_ENDPOINT_SOCKET: 'unix://host/x' })).toThrow(AgentConfigError);
  });

  it('resolves relative paths against the config file and reports unreadable or non-YAML files', () => {
    const { dir, cleanup } = tempDir('terroir-agent-cfg-');
    const f = path.join(dir, 'a.yaml');
    fs.writeFileSync(f, 'agent:\n  trustDomain: example.org\n  serverAddress: s\n  dataDir: ./data\n  trustBundlePath: b.json\n  nodeAttestor:\n    joinToken: { token: x }\n');
    const cfg = loadAgentConfig(f, {});
    expect(cfg.dataDir).toBe(path.join(dir, 'data'));
    expect(cfg.trustBundlePath).toBe(path.join(dir, 'b.json'));
    fs.writeFileSync(f, 'agent: [unclosed');
    expect(() => loadAgentConfig(f, {})).toThrow(/not valid YAML/);
    expect(() => loadAgentConfig(path.join(dir, 'missing.yaml'), {})).toThrow(/cannot read agent config/);
    cleanup();
  });

  it('parses SPIFFE_ENDPOINT_SOCKET forms', () => {
    expect(parseEndpoint('unix:///tmp/a.sock')).toEqual({ kind: 'unix', path: '/tmp/a.sock' });
    expect(parseEndpoint('unix:/tmp/a.sock')).toEqual({ kind: 'unix', path: '/tmp/a.sock' });
    expect(parseEndpoint('tcp://127.0.0.1:8000')).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 8000 });
    expect(grpcTarget('tcp://[::1]:8000')).toBe('ipv6:[::1]:8000');
    expect(() => parseEndpoint('tcp://localhost:8000')).toThrow(/IP literal/);
    expect(() => parseEndpoint('http://x')).toThrow(/scheme/);
    expect(() => parseEndpoint('unix:///a?b=c')).toThrow();
  });
});
