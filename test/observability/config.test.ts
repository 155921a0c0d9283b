// The configuration of metrics: the server's `metrics` section (on by default) and the agent's
// `health` listener (off unless configured, loopback by default).
import { describe, expect, it } from 'vitest';
import { AgentConfigError, parseAgentConfig } from '../../src/agent/config.js';
import { ConfigError, parseServerConfig } from '../../src/server/config.js';

const server = (extra: Record<string, unknown>) => parseServerConfig({ trustDomain: 'example.org', dataDir: '/tmp/x', ...extra }, '/tmp', {});
const agent = (extra: Record<string, unknown>) => parseAgentConfig({
  trustDomain: 'example.org', serverAddress: '127.0.0.1', dataDir: '/tmp/a', socketPath: '/tmp/a.sock', insecureBootstrap: true,
  nodeAttestor: { joinToken: { token: 't' } }, ...extra,
}, {});

describe('metrics configuration', () => {
  it('server: absent means on; enabled and nodesMaxAgeSeconds are checked', () => {
    expect(server({}).metrics).toBeUndefined();
    expect(server({ metrics: {} }).metrics).toEqual({ enabled: true, nodesMaxAgeSeconds: 15 });
    expect(server({ metrics: { enabled: false } }).metrics?.enabled).toBe(false);
    expect(() => server({ metrics: { enabled: 'yes' } })).toThrow(ConfigError);
    expect(() => server({ metrics: { nodesMaxAgeSeconds: -1 } })).toThrow(ConfigError);
    expect(() => server({ metrics: { port: 9090 } })).toThrow(ConfigError);
  });

  it('agent: no listener unless `health` is set; loopback by default; the port is required', () => {
    expect(agent({}).health).toBeUndefined();
    expect(agent({ health: { port: 9091 } }).health).toEqual({ bindAddress: '127.0.0.1', port: 9091 });
    expect(() => agent({ health: {} })).toThrow(AgentConfigError);
    expect(() => agent({ health: { port: 70000 } })).toThrow(AgentConfigError);
    expect(() => agent({ health: { port: 9091, path: '/m' } })).toThrow(AgentConfigError);
  });
});
