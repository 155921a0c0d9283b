// Unified Identity with the server-side mobile-operator check: the shared deployment (swtpm, Keylime
// test verifier, gpsd + gpsfake in Berlin) plus the CAMARA operator double over real TLS. The server
// maps the node's EK hash to a SIM; the operator's answer about that SIM decides a policy that
// requires it, and a missing answer or mapping refuses the attestation.
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { NodeAttestationError } from '../../src/agent/node-attestor.js';
import { parseServerConfig, startServer, type RunningServer } from '../../src/server/index.js';
import { unifiedIdentityFromCertificate } from '../../src/spiffe/unified-identity.js';
import { ekHash, parseTpm2bPublic } from '../../src/tpm/index.js';
import { CamaraOperatorDouble, makeTestPki, type OperatorDevice } from '../doubles/camara-operator.js';
import { freePort } from '../support/ports.js';
import { POLICY_PCR, startUnifiedDeployment, TD, ZERO, type UnifiedDeployment } from './fixture.js';
import { BERLIN } from './nmea.js';
import { expectNoCoordinates } from '../support/coordinates.js';

const PHONE = '+4915112345678';
const PARIS = { lat: 48.8566, lon: 2.3522 };
const POLICIES = `
policies:
  eu-operator:
    area: { regions: [EU] }
    sensors: { required: [gnss] }
    maxReadingAgeS: 120
    operator: { required: true }
`;

let d: UnifiedDeployment;
let op: CamaraOperatorDouble;
let nodeEk: string;
/** The SIM's network position; tests move it. */
const sim: OperatorDevice = { phoneNumber: PHONE };
const audit: Record<string, unknown>[] = [];
const servers: RunningServer[] = [];
let mapped: RunningServer;

async function serverWith(devices: Record<string, unknown>, urls: { baseUrl: string; tokenUrl: string } = op, auth: Record<string, unknown> = { clientSecretFile: 'operator-secret' }, env: Record<string, string> = {}): Promise<RunningServer> {
  const dir = path.join(d.dir, `op-server-${servers.length}`);
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'policies.yaml'), POLICIES);
  fs.writeFileSync(path.join(dir, 'operator-secret'), 's3cret\n', { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'operator-ca.pem'), pki.caCert);
  fs.writeFileSync(path.join(dir, 'operator-key.pem'), clientKey.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const cfg = parseServerConfig({
    trustDomain: TD,
    dataDir: dir,
    logLevel: 'silent',
    dataStore: { type: 'sqlite', path: path.join(dir, 'ds.sqlite3') },
    ca: { keyStore: 'memory', ttl: '1d', x509SvidTtl: '1h' },
    agentApi: { bindAddress: '127.0.0.1', port: await freePort(), attestationRateLimit: { perSecond: 100, burst: 1000 } },
    health: { enabled: false },
    nodeAttestation: { joinToken: { enabled: false }, tpm: { enabled: true, manufacturerCaFiles: [d.swtpm.caFile] } },
    keylime: {
      verifierUrl: `https://localhost:${d.verifier.port}`,
      caFile: d.pki.files.serverCa, certFile: d.pki.files.clientCert, keyFile: d.pki.files.clientKey, allowDevelopmentStandIn: true,
      mode: 'oneshot', requestTimeoutMs: 1000,
    },
    unifiedIdentity: {
      locationPolicies: { file: 'policies.yaml' },
      defaultPolicy: 'eu-operator',
      pcrs: [0, 7, POLICY_PCR],
      tpmPolicy: { [String(POLICY_PCR)]: [ZERO] },
      operator: {
        baseUrl: urls.baseUrl, tokenUrl: urls.tokenUrl, clientId: 'terroir-server',
        ...auth, caFile: 'operator-ca.pem', radiusM: 2000, maxAgeS: 600, requestTimeoutMs: 2000,
        devices,
      },
    },
  }, dir, { UNIFIED_IDENTITY_ENABLED: 'true', ...env });
  const sink = new Writable({ write(chunk: Buffer, _enc, cb) { for (const l of chunk.toString().split('\n')) if (l) audit.push(JSON.parse(l) as Record<string, unknown>); cb(); } });
  const server = await startServer(cfg, { logger: pino({ level: 'info' }, sink) });
  servers.push(server);
  return server;
}

let pki: ReturnType<typeof makeTestPki>;
/** The key terroir's server signs its private_key_jwt client assertions with. */
const clientKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });

beforeAll(async () => {
  d = await startUnifiedDeployment();
  pki = makeTestPki(d.dir);
  op = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'terroir-server', clientSecret: 's3cret', devices: [sim] });
  nodeEk = ekHash(parseTpm2bPublic((await d.tpm.attestationData()).ekPublic));
  mapped = await serverWith({ [nodeEk]: { phoneNumber: PHONE } });
}, 60_000);

afterAll(async () => {
  for (const s of servers) await s.stop();
  await op?.stop();
  await d?.stop();
});

async function refusal(p: Promise<unknown>): Promise<NodeAttestationError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(NodeAttestationError);
  return err as NodeAttestationError;
}

/** The audit record of the last attestation of this node, after `since` records. */
function lastAttestAudit(since: number): Record<string, unknown> {
  const recs = audit.slice(since).filter((r) => r['audit'] === true && r['action'] === 'attest_agent');
  expect(recs.length).toBeGreaterThan(0);
  return recs[recs.length - 1]!;
}

describe('Unified Identity with the mobile operator (CAMARA double)', () => {
  it('operator TRUE (SIM next to the GNSS fix): SVID with claims; the answer, not coordinates, is audited', async () => {
    sim.location = { lat: BERLIN.lat + 0.001, lon: BERLIN.lon, accuracyM: 300, time: new Date() };
    const calls = op.verifyCalls;
    const since = audit.length;
    const res = await d.attest(mapped, d.provider(d.berlin));
    expect(op.verifyCalls).toBe(calls + 1);
    expect(unifiedIdentityFromCertificate(res.svidChain[0]!)).toMatchObject({ country: 'DE', policy: 'eu-operator', satisfiedPolicies: ['eu-operator'] });
    const rec = lastAttestAudit(since);
    expect(rec['result']).toBe('ok');
    const operator = ((rec['details'] as Record<string, unknown>)['unifiedIdentity'] as Record<string, unknown>)['operator'] as Record<string, unknown>;
    expect(operator).toMatchObject({ result: 'TRUE', radiusM: 2000, deviceKind: 'phoneNumber' });
    expect(JSON.stringify(operator)).not.toContain(PHONE);
    expectNoCoordinates(operator, BERLIN);
  });

  it('operator FALSE (SIM in Paris): refused, the reason audited', async () => {
    sim.location = { ...PARIS, accuracyM: 300, time: new Date() };
    const since = audit.length;
    const err = await refusal(d.attest(mapped, d.provider(d.berlin)));
    expect(err.message).toMatch(/location policy eu-operator denied: .*mobile operator reports the device outside the area/);
    const rec = lastAttestAudit(since);
    expect(rec['result']).toBe('denied');
    expect(rec['reason']).toMatch(/mobile operator reports the device outside the area/);
  });

  it('operator down (HTTP 503): refused as unavailable, fail closed', async () => {
    sim.location = { lat: BERLIN.lat, lon: BERLIN.lon, accuracyM: 300, time: new Date() };
    op.failNext(503);
    const since = audit.length;
    const err = await refusal(d.attest(mapped, d.provider(d.berlin)));
    expect(err.message).toMatch(/requires the mobile operator's check: the operator gave no answer \(GEO_OPERATOR_UNAVAILABLE\).*fail closed/);
    expect(lastAttestAudit(since)['reason']).toMatch(/GEO_OPERATOR_UNAVAILABLE/);
    // The next attempt, with the operator back, succeeds: nothing was left half-done.
    const ok = await d.attest(mapped, d.provider(d.berlin));
    expect(unifiedIdentityFromCertificate(ok.svidChain[0]!)).toMatchObject({ policy: 'eu-operator' });
  });

  it('operator unreachable (nothing listening): refused as unavailable', async () => {
    const dead = await freePort();
    const s = await serverWith({ [nodeEk]: { phoneNumber: PHONE } }, { baseUrl: `https://127.0.0.1:${dead}/location-verification/v3`, tokenUrl: `https://127.0.0.1:${dead}/oauth2/token` });
    const err = await refusal(d.attest(s, d.provider(d.berlin)));
    expect(err.message).toMatch(/gave no answer \(GEO_OPERATOR_UNAVAILABLE\): operator at https:\/\/127\.0\.0\.1:\d+ unreachable/);
  });

  it('no SIM mapped to the node while the policy requires the operator: refused without asking the operator', async () => {
    const other = await serverWith({ ['ab'.repeat(32)]: { phoneNumber: PHONE } });
    const calls = op.verifyCalls;
    const since = audit.length;
    const err = await refusal(d.attest(other, d.provider(d.berlin)));
    expect(err.message).toMatch(new RegExp(`no SIM mapped to its EK hash in unifiedIdentity.operator.devices`));
    expect(op.verifyCalls).toBe(calls);
    expect(lastAttestAudit(since)['reason']).toMatch(/no SIM mapped/);
  });

  it('config: a missing client secret file or a malformed device mapping is a config error', () => {
    const base = {
      trustDomain: TD, dataDir: d.dir, nodeAttestation: { tpm: { enabled: true, enrolledEkHashes: [nodeEk] } },
      unifiedIdentity: { locationPolicies: { inline: POLICIES }, defaultPolicy: 'eu-operator' },
    };
    const withOp = (o: Record<string, unknown>): unknown => ({ ...base, unifiedIdentity: { ...base.unifiedIdentity, operator: { baseUrl: op.baseUrl, tokenUrl: op.tokenUrl, clientId: 'c', clientSecretFile: 'op-server-0/operator-secret', ...o } } });
    expect(() => parseServerConfig(withOp({ clientSecretFile: 'nope' }), d.dir, {})).toThrow(/unifiedIdentity.operator.clientSecretFile: cannot read .*nope/);
    expect(() => parseServerConfig(withOp({ devices: { [nodeEk]: { phoneNumber: '015112345678' } } }), d.dir, {})).toThrow(/unifiedIdentity.operator.devices/);
    expect(() => parseServerConfig(withOp({ devices: { xyz: { phoneNumber: PHONE } } }), d.dir, {})).toThrow(/devices.xyz: "xyz" is not an EK hash: write 64 hex characters/);
    expect(() => parseServerConfig(withOp({ baseUrl: 'http://op.example/v3' }), d.dir, {})).toThrow(/must be https/);
    const ok = parseServerConfig(withOp({ devices: { [nodeEk.toUpperCase()]: { ipv4Address: { publicAddress: '84.125.93.10', publicPort: 59765 } } } }), d.dir, {});
    expect(ok.unifiedIdentity!.operator!.radiusM).toBe(2000);
    expect(Object.keys(ok.unifiedIdentity!.operator!.devices)).toEqual([nodeEk]);
    // IPv6 devices: one address, no prefix or zone.
    expect(parseServerConfig(withOp({ devices: { [nodeEk]: { ipv6Address: '2001:db8:85a3::8a2e:370:7344' } } }), d.dir, {}).unifiedIdentity!.operator!.devices[nodeEk]).toEqual({ ipv6Address: '2001:db8:85a3::8a2e:370:7344' });
    expect(() => parseServerConfig(withOp({ devices: { [nodeEk]: { ipv6Address: '2001:db8::/64' } } }), d.dir, {})).toThrow(/unifiedIdentity.operator.devices/);
  });
  it('private_key_jwt: the server signs a client assertion the operator verifies, and gets its answer', async () => {
    sim.location = { lat: BERLIN.lat + 0.001, lon: BERLIN.lon, accuracyM: 300, time: new Date() };
    const jwtOp = await CamaraOperatorDouble.start({ tls: { key: pki.key, cert: pki.cert }, clientId: 'terroir-server', clientKey: { publicKey: clientKey.publicKey, alg: 'ES256' }, devices: [sim] });
    try {
      const s = await serverWith({ [nodeEk]: { phoneNumber: PHONE } }, jwtOp, { clientAuthMethod: 'private_key_jwt', privateKeyFile: 'operator-key.pem', signingAlg: 'ES256', keyId: 'terroir-1' });
      const res = await d.attest(s, d.provider(d.berlin));
      expect(unifiedIdentityFromCertificate(res.svidChain[0]!)).toMatchObject({ policy: 'eu-operator' });
      expect(jwtOp.lastAssertion).toMatchObject({ header: { alg: 'ES256', kid: 'terroir-1' }, claims: { iss: 'terroir-server', sub: 'terroir-server', aud: jwtOp.tokenUrl } });
      expect(jwtOp.tokensIssued).toBe(1);
    } finally {
      await jwtOp.stop();
    }
  });

  it('the client secret from an environment variable the config names', async () => {
    sim.location = { lat: BERLIN.lat + 0.001, lon: BERLIN.lon, accuracyM: 300, time: new Date() };
    vi.stubEnv('TERROIR_TEST_OPERATOR_SECRET', 's3cret');
    try {
      const s = await serverWith({ [nodeEk]: { phoneNumber: PHONE } }, op, { clientSecretEnv: 'TERROIR_TEST_OPERATOR_SECRET' }, { TERROIR_TEST_OPERATOR_SECRET: 's3cret' });
      const res = await d.attest(s, d.provider(d.berlin));
      expect(unifiedIdentityFromCertificate(res.svidChain[0]!)).toMatchObject({ policy: 'eu-operator' });
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it('config: client authentication and device errors are clear', () => {
    const dir = path.join(d.dir, 'op-server-0');
    const base = {
      trustDomain: TD, dataDir: d.dir, nodeAttestation: { tpm: { enabled: true, enrolledEkHashes: [nodeEk] } },
      unifiedIdentity: { locationPolicies: { inline: POLICIES }, defaultPolicy: 'eu-operator' },
    };
    const withOp = (o: Record<string, unknown>): unknown => ({ ...base, unifiedIdentity: { ...base.unifiedIdentity, operator: { baseUrl: op.baseUrl, tokenUrl: op.tokenUrl, clientId: 'c', ...o } } });
    const parse = (o: Record<string, unknown>, env: Record<string, string> = {}): unknown => parseServerConfig(withOp(o), dir, env);
    // Secrets never inline.
    expect(() => parse({ clientSecret: 's3cret' })).toThrow(/clientSecret: never put the client secret in the config: use clientSecretFile .* or clientSecretEnv/);
    expect(() => parse({ clientAuthMethod: 'private_key_jwt', privateKey: '-----BEGIN PRIVATE KEY-----', signingAlg: 'ES256' })).toThrow(/privateKey: never put the private key in the config: use privateKeyFile .* or privateKeyEnv/);
    // Exactly one source, fitting the method.
    expect(() => parse({})).toThrow(/client_secret_basic needs clientSecretFile or clientSecretEnv/);
    expect(() => parse({ clientSecretFile: 'operator-secret', clientSecretEnv: 'X' })).toThrow(/give one of clientSecretFile and clientSecretEnv, not both/);
    expect(() => parse({ clientAuthMethod: 'private_key_jwt', privateKeyFile: 'operator-key.pem' })).toThrow(/private_key_jwt needs signingAlg \(ES256, RS256 or PS256\)/);
    expect(() => parse({ clientAuthMethod: 'private_key_jwt', clientSecretFile: 'operator-secret', signingAlg: 'ES256' })).toThrow(/private_key_jwt needs privateKeyFile or privateKeyEnv/);
    expect(() => parse({ clientSecretFile: 'operator-secret', privateKeyFile: 'operator-key.pem' })).toThrow(/privateKeyFile belongs to clientAuthMethod: private_key_jwt/);
    // The environment variable must be set; the key must fit the algorithm.
    expect(() => parse({ clientSecretEnv: 'TERROIR_NOPE' })).toThrow(/unifiedIdentity.operator.clientSecretEnv: the environment variable TERROIR_NOPE is not set or empty/);
    expect(() => parse({ clientSecretEnv: 'lower-case bad' })).toThrow(/clientSecretEnv/);
    expect(parse({ clientSecretEnv: 'TERROIR_X' }, { TERROIR_X: 'v' })).toBeTruthy();
    expect(() => parse({ clientAuthMethod: 'private_key_jwt', privateKeyFile: 'operator-key.pem', signingAlg: 'RS256' })).toThrow(/unifiedIdentity.operator.privateKeyFile: RS256 needs an RSA key/);
    expect(() => parse({ clientAuthMethod: 'private_key_jwt', privateKeyFile: 'operator-secret', signingAlg: 'ES256' })).toThrow(/unifiedIdentity.operator.privateKeyFile: .*not a PEM private key/);
    expect(() => parse({ clientAuthMethod: 'private_key_jwt', privateKeyEnv: 'TERROIR_KEY', signingAlg: 'ES256' }, { TERROIR_KEY: 'junk' })).toThrow(/privateKeyEnv: .*not a PEM private key/);
    const pem = clientKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    expect(parse({ clientAuthMethod: 'private_key_jwt', privateKeyEnv: 'TERROIR_KEY', signingAlg: 'ES256' }, { TERROIR_KEY: pem })).toBeTruthy();
    // r3.2 does not allow networkAccessIdentifier.
    expect(() => parse({ clientSecretFile: 'operator-secret', devices: { [nodeEk]: { networkAccessIdentifier: '123456789@domain.com' } } }))
      .toThrow(/networkAccessIdentifier.*CAMARA r3.2 does not allow/);
  });
});
