// The `keylime` sections of the server and agent configurations: what is accepted, and that every
// missing or unusable credential is a configuration error at start-up, before anything listens.
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentConfigError, parseAgentConfig } from '../../src/agent/config.js';
import { ConfigError, parseServerConfig, startServer } from '../../src/server/index.js';
import { createPki, type KeylimePki } from '../keylime/helpers/fixture.js';
import { freePort } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';

const tmp = tempDir('terroir-keylime-config-');
let pki: KeylimePki;
let caFile: string;

beforeAll(async () => {
  pki = await createPki(tmp.dir);
  caFile = path.join(tmp.dir, 'tpm-ca.pem');
  fs.writeFileSync(caFile, pki.serverCa.certPem);
});
afterAll(() => tmp.cleanup());

function serverConfig(keylime: Record<string, unknown> | undefined, tpmEnabled = true): unknown {
  return {
    trustDomain: 'cfg.test',
    dataDir: path.join(tmp.dir, 'server'),
    nodeAttestation: { tpm: { enabled: tpmEnabled, manufacturerCaFiles: [caFile] } },
    ...(keylime ? { keylime } : {}),
  };
}

function keylime(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    verifierUrl: 'https://localhost:8881', caFile: pki.files.serverCa, certFile: pki.files.clientCert, keyFile: pki.files.clientKey,
    tpmPolicy: { 7: ['aa'.repeat(32)] }, ...over,
  };
}

describe('server keylime section', () => {
  it('is optional, and filled with defaults when present', () => {
    expect(parseServerConfig(serverConfig(undefined), tmp.dir, {}).keylime).toBeUndefined();
    const k = parseServerConfig(serverConfig(keylime({ caFile: path.relative(tmp.dir, pki.files.serverCa) })), tmp.dir, {}).keylime!;
    expect(k).toMatchObject({ mode: 'continuous', pollIntervalMs: 1000, maxAttestationAge: 30, enrollTimeout: 30, quoteEndpointAddress: 'source', caFile: pki.files.serverCa });
  });

  it.each([
    ['a missing CA file', { caFile: path.join(tmp.dir, 'nope.pem') }, /keylime\.caFile: cannot read/],
    ['a missing client certificate', { certFile: path.join(tmp.dir, 'nope.pem') }, /keylime\.certFile: cannot read/],
    ['a missing client key', { keyFile: undefined }, /keylime\.keyFile/],
    ['an http:// verifier', { verifierUrl: 'http://localhost:8881' }, /must be https/],
    ['one-shot mode', { mode: 'one-shot' }, /keylime\.mode/],
    ['no PCR policy at all', { tpmPolicy: undefined }, /tpmPolicy.*policies/],
    ['a policy for PCR 16', { tpmPolicy: { 16: ['aa'.repeat(32)] } }, /other than 16/],
    ['a policy allowing nothing', { tpmPolicy: { 7: [] } }, /at least one value/],
    ['a policy value that is not hex', { tpmPolicy: { 7: ['zz'.repeat(32)] } }, /hex PCR digest/],
    ['a group policy without selectors', { policies: [{ selectors: [], tpmPolicy: { 7: ['aa'.repeat(32)] } }] }, /policies\.0\.selectors/],
    ['an unknown key', { insecure: true }, /Unrecognized key/i],
  ] as [string, Record<string, unknown>, RegExp][])('refuses %s', (_name, over, message) => {
    const k = keylime(over);
    expect(() => parseServerConfig(serverConfig(k), tmp.dir, {})).toThrow(ConfigError);
    expect(() => parseServerConfig(serverConfig(k), tmp.dir, {})).toThrow(message);
  });

  it('allows the development Keylime stand-in only when asked, and never with NODE_ENV=production', () => {
    expect(parseServerConfig(serverConfig(keylime()), tmp.dir, {}).keylime?.allowDevelopmentStandIn).toBe(false);
    expect(parseServerConfig(serverConfig(keylime({ allowDevelopmentStandIn: true })), tmp.dir, { NODE_ENV: 'development' }).keylime?.allowDevelopmentStandIn).toBe(true);
    expect(() => parseServerConfig(serverConfig(keylime({ allowDevelopmentStandIn: true })), tmp.dir, { NODE_ENV: 'production' }))
      .toThrow(/allowDevelopmentStandIn is true but NODE_ENV=production/);
    expect(parseServerConfig(serverConfig(keylime()), tmp.dir, { NODE_ENV: 'production' }).keylime?.allowDevelopmentStandIn).toBe(false);
  });

  it('refuses keylime without TPM node attestation', () => {
    expect(() => parseServerConfig({ ...serverConfig(keylime(), false) as object, nodeAttestation: { joinToken: { enabled: true } } }, tmp.dir, {}))
      .toThrow(/nodeAttestation\.tpm is disabled/);
  });

  it('a client key that does not match the certificate stops the server at start-up', async () => {
    const cfg = parseServerConfig({
      ...serverConfig(keylime({ keyFile: pki.files.rogueKey })) as object,
      dataDir: path.join(tmp.dir, 'mismatch'), ca: { keyStore: 'memory' }, health: { enabled: false },
      agentApi: { bindAddress: '127.0.0.1', port: await freePort() },
    }, tmp.dir, {});
    await expect(startServer(cfg, { logger: pino({ level: 'silent' }) })).rejects.toThrow(/keylime: .*(key|match)/i);
  });
});

describe('agent keylime.quoteEndpoint', () => {
  const base = {
    trustDomain: 'cfg.test', serverAddress: '127.0.0.1', dataDir: 'agent', insecureBootstrap: true,
    nodeAttestor: { tpm: { tcti: 'swtpm:host=127.0.0.1,port=2321' } },
  };
  const qe = { certFile: 'qe.pem', keyFile: 'qe.key', clientCaFile: 'ca.pem' };

  it('resolves paths and takes defaults', () => {
    const c = parseAgentConfig({ ...base, keylime: { quoteEndpoint: { ...qe, bindAddress: '10.0.0.5' } } }, {}, '/etc/terroir');
    expect(c.keylime?.quoteEndpoint).toEqual({ bindAddress: '10.0.0.5', port: 9002, certFile: '/etc/terroir/qe.pem', keyFile: '/etc/terroir/qe.key', clientCaFile: '/etc/terroir/ca.pem' });
  });

  it('needs an advertised address when bound to the wildcard', () => {
    expect(() => parseAgentConfig({ ...base, keylime: { quoteEndpoint: qe } }, {})).toThrow(/advertiseAddress is required/);
    expect(parseAgentConfig({ ...base, keylime: { quoteEndpoint: { ...qe, advertiseAddress: 'node1.example' } } }, {}).keylime?.quoteEndpoint.advertiseAddress).toBe('node1.example');
  });

  it('needs a TPM node attestor and all three files', () => {
    expect(() => parseAgentConfig({ ...base, nodeAttestor: { joinToken: { token: 't' } }, keylime: { quoteEndpoint: { ...qe, bindAddress: '10.0.0.5' } } }, {}))
      .toThrow(/needs nodeAttestor\.tpm/);
    expect(() => parseAgentConfig({ ...base, keylime: { quoteEndpoint: { certFile: 'a', keyFile: 'b', bindAddress: '10.0.0.5' } } }, {})).toThrow(AgentConfigError);
  });
});
