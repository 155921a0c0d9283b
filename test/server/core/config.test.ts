import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { loadServerConfig, parseServerConfig, ConfigError } from '../../../src/server/config.js';
import { tempDir } from '../../support/tmp.js';

const cleanups: (() => void)[] = [];
afterEach(() => { while (cleanups.length) cleanups.pop()?.(); });

describe('server config', () => {
  it('loads examples/server.yaml with every documented section', () => {
    const cfg = loadServerConfig(path.resolve('examples/server.yaml'), {});
    expect(cfg.trustDomain).toBe('example.org');
    expect(cfg.ca.x509SvidTtl).toBe(3600);
    expect(cfg.ca.jwtSvidTtl).toBe(300);
    expect(cfg.ca.ttl).toBe(86400);
    expect(path.isAbsolute(cfg.dataStore.type === 'sqlite' ? cfg.dataStore.path : '/')).toBe(true);
  });

  it('agentApi budgets and connection limits: the example states the defaults; out-of-range values are refused', () => {
    const example = loadServerConfig(path.resolve('examples/server.yaml'), {});
    const defaults = parseServerConfig({ trustDomain: 'example.org', dataDir: '/tmp/x' }, '/tmp', {});
    for (const k of ['rpcRateLimit', 'signingRateLimit', 'connections'] as const) expect(example.agentApi[k]).toEqual(defaults.agentApi[k]);
    expect(defaults.agentApi.signingRateLimit).toEqual({ perSecond: 100, burst: 1000 });
    expect(defaults.agentApi.connections).toMatchObject({ handshakeTimeoutMs: 10_000, maxPerSource: 256 });
    expect(() => parseServerConfig({ trustDomain: 'example.org', dataDir: '/tmp/x', agentApi: { connections: { handshakeTimeoutMs: 0 } } }, '/tmp', {})).toThrow(ConfigError);
    expect(() => parseServerConfig({ trustDomain: 'example.org', dataDir: '/tmp/x', agentApi: { signingRateLimit: { perSecond: 0 } } }, '/tmp', {})).toThrow(ConfigError);
  });

  it('evidenceLog: on by default, origin and key file derived; the example states the defaults; a bad origin is refused', () => {
    const d = parseServerConfig({ trustDomain: 'example.org', dataDir: '/tmp/x' }, '/tmp', {});
    expect(d.evidenceLog).toMatchObject({ enabled: true, origin: 'example.org/terroir/evidence', keyFile: '/tmp/x/audit-key', checkpointInterval: 10, api: { enabled: false, port: 8445, auditorIds: [] } });
    const example = loadServerConfig(path.resolve('examples/server.yaml'), {});
    expect(example.evidenceLog.checkpointInterval).toBe(d.evidenceLog.checkpointInterval);
    expect(example.evidenceLog.api).toEqual(d.evidenceLog.api);
    for (const origin of ['has space', 'a+b', '']) {
      expect(() => parseServerConfig({ trustDomain: 'example.org', dataDir: '/tmp/x', evidenceLog: { origin } }, '/tmp', {})).toThrow(/evidenceLog\.origin/);
    }
    expect(() => parseServerConfig({ trustDomain: 'example.org', dataDir: '/tmp/x', evidenceLog: { retentionDays: 0 } }, '/tmp', {})).toThrow(/retentionDays/);
  });

  it('applies defaults and resolves relative paths against the config file', () => {
    const { dir, cleanup } = tempDir();
    cleanups.push(cleanup);
    const file = path.join(dir, 'server.yaml');
    fs.writeFileSync(file, 'trustDomain: example.org\ndataDir: ./state\n');
    const cfg = loadServerConfig(file, {});
    expect(cfg.dataDir).toBe(path.join(dir, 'state'));
    expect(cfg.dataStore).toEqual({ type: 'sqlite', path: path.join(dir, 'state', 'datastore.sqlite3') });
    expect(cfg.adminApi.socketPath).toBe(path.join(dir, 'state', 'admin.sock'));
    expect(cfg.agentApi.port).toBe(8081);
    expect(cfg.nodeAttestation.challengeTtl).toBe(60);
  });

  it('accepts JSON too', () => {
    const { dir, cleanup } = tempDir();
    cleanups.push(cleanup);
    const file = path.join(dir, 'server.json');
    fs.writeFileSync(file, JSON.stringify({ trustDomain: 'json.example', ca: { x509SvidTtl: '30m' } }));
    expect(loadServerConfig(file, {}).ca.x509SvidTtl).toBe(1800);
  });

  it('lets the environment override the usual settings', () => {
    const cfg = parseServerConfig({ trustDomain: 'file.org', dataStore: { type: 'sqlite', path: '/x.db' } }, '/tmp', {
      TERROIR_TRUST_DOMAIN: 'env.org',
      TERROIR_LOG_LEVEL: 'debug',
      TERROIR_DATASTORE_TYPE: 'postgres',
      TERROIR_DATASTORE_CONNECTION_STRING: 'postgres://u@127.0.0.1:5432/terroir',
      TERROIR_AGENT_API_PORT: '9443',
      TERROIR_HEALTH_BIND_ADDRESS: '0.0.0.0',
    });
    expect(cfg.trustDomain).toBe('env.org');
    expect(cfg.logLevel).toBe('debug');
    expect(cfg.dataStore).toEqual({ type: 'postgres', connectionString: 'postgres://u@127.0.0.1:5432/terroir' });
    expect(cfg.agentApi.port).toBe(9443);
    expect(cfg.health.bindAddress).toBe('0.0.0.0');
    expect(() => parseServerConfig({ trustDomain: 'a.org' }, '/tmp', { TERROIR_AGENT_API_PORT: 'eighty' })).toThrow(/TERROIR_AGENT_API_PORT="eighty" is not a port/);
  });

  it('names every wrong field in one clear error', () => {
    let err: unknown;
    try {
      parseServerConfig({ trustDomain: 'Bad_Domain!', ca: { ttl: 'soon', colour: 'red' }, agentApi: { port: 70000 } }, '/tmp', {});
    } catch (e) { err = e; }
    expect(err).toBeInstanceOf(ConfigError);
    const msg = (err as Error).message;
    expect(msg).toMatch(/trustDomain: a trust domain name/);
    expect(msg).toMatch(/ca\.ttl: "soon" is not a duration/);
    expect(msg).toMatch(/ca: Unrecognized key: "colour"/);
    expect(msg).toMatch(/agentApi\.port/);
  });

  it('enforces max SVID TTL <= CA TTL / 6 and other cross-field rules', () => {
    expect(() => parseServerConfig({ trustDomain: 'a.org', ca: { ttl: '6h', x509SvidTtl: '2h' } }, '/tmp', {}))
      .toThrow(/ca\.x509SvidTtl \(7200s\) must be at most ca\.ttl\/6 \(3600s\)/);
    expect(() => parseServerConfig({ trustDomain: 'a.org', nodeAttestation: { tpm: { enabled: true } } }, '/tmp', {}))
      .toThrow(/trusts nothing/);
    expect(() => parseServerConfig({ trustDomain: 'a.org', federation: { federatesWith: [{ trustDomain: 'b.org', bundleEndpointUrl: 'https://b.org/', profile: 'https_spiffe' }] } }, '/tmp', {}))
      .toThrow(/endpointSpiffeId: required for the https_spiffe profile/);
    expect(() => parseServerConfig({ trustDomain: 'a.org', featureFlags: { NO_SUCH_FLAG: true } }, '/tmp', {}))
      .toThrow(/unknown feature flag/);
  });

  it('reports unreadable and malformed files', () => {
    expect(() => loadServerConfig('/nonexistent/server.yaml', {})).toThrow(/cannot read config file/);
    const { dir, cleanup } = tempDir();
    cleanups.push(cleanup);
    const file = path.join(dir, 'bad.yaml');
    fs.writeFileSync(file, 'trustDomain: [unclosed\n');
    expect(() => loadServerConfig(file, {})).toThrow(/not valid YAML/);
  });
});
