// The Unified Identity deployment the tests and the benchmark share: swtpm (provisioned, with EK
// certificates), the Keylime test verifier answering one-shot POST /verify/evidence with real quote
// checks, gpsd fed by gpsfake with live-stamped NMEA logs (Berlin inside the EU, New York outside), a
// real terroir server with the flag on, and a real agent attesting with its gpsd sensor.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import pino, { type Logger } from 'pino';
import { Agent } from '../../src/agent/agent.js';
import { parseAgentConfig, type AgentConfig } from '../../src/agent/config.js';
import { createCsr, generateKeyPair } from '../../src/agent/csr.js';
import { attestNode, type AttestOptions, type UnifiedIdentityProvider } from '../../src/agent/node-attestor.js';
import { connectToServer } from '../../src/agent/server-conn.js';
import { openTpmCredentialSource, type TpmSession } from '../../src/agent/tpm-session.js';
import { openUnifiedIdentity, type AgentUnifiedIdentity } from '../../src/agent/unified-identity.js';
import type { AttestationResult } from '../../src/api/agent-api.js';
import { parseServerConfig, startServer, type RunningServer } from '../../src/server/index.js';
import type { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { createPki, startVerifier, type KeylimePki } from '../keylime/helpers/fixture.js';
import { startGpsfake, type Gpsfake } from '../support/gpsfake.js';
import { freePort } from '../support/ports.js';
import { startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';
import { ekHash, parseTpm2bPublic } from '../../src/tpm/index.js';
import { BERLIN, liveNmeaLog, NEW_YORK } from './nmea.js';

export const TD = 'unified.test';
/** The PCR the Keylime policy pins: resettable (PC client PCR 23), so a test can break and restore it. */
export const POLICY_PCR = 23;
export const ZERO = '00'.repeat(32);
/** gpsfake's delay between sentences (s); an epoch is three sentences, so NMEA times advance 3 × this. */
const CYCLE_S = 0.1;
const EPOCH_S = 3 * CYCLE_S;

export const POLICIES = `
policies:
  eu-only:
    area: { regions: [EU] }
    sensors: { required: [gnss] }
    maxReadingAgeS: 120
  fr-only:
    area: { countries: [FR] }
    sensors: { required: [gnss] }
`;

export interface ServerOptions {
  flag: boolean;
  keylime: boolean;
  /** keylime.allowDevelopmentStandIn (default true: the verifier here is the test double). */
  allowStandIn?: boolean;
  /** Seconds (default 1 h). */
  reattestInterval?: number;
  /** Keylime mode (default oneshot); continuous also enrolls nodes and gates signing. */
  keylimeMode?: 'oneshot' | 'continuous';
  /** unifiedIdentity.verdictMaxAge, seconds (default: the server's, 300). */
  verdictMaxAge?: number;
  /** unifiedIdentity.latency (raw config): landmarks for the latency witness. */
  latency?: Record<string, unknown>;
  /** More policies, YAML lines indented under `policies:` (appended to POLICIES). */
  extraPolicies?: string;
  /** Raw server config laid over the fixture's, one top-level section at a time (e.g. `{ evidenceLog: { enabled: false } }`). */
  config?: Record<string, unknown>;
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

export interface UnifiedDeployment {
  dir: string;
  pki: KeylimePki;
  swtpm: Swtpm;
  verifier: TestKeylimeVerifier;
  berlin: Gpsfake;
  newYork: Gpsfake;
  tpm: TpmSession;
  logger: Logger;
  /** Starts a server (flag on or off, with or without Keylime); stopped with the deployment. */
  startServer(o: ServerOptions): Promise<RunningServer>;
  /** The agent config for a server, with the Berlin sensor (used when `flag`); `quoteEndpoint` for Keylime continuous mode. */
  agentConfig(server: RunningServer, flag: boolean, name: string, quoteEndpoint?: boolean, extra?: Record<string, unknown>): AgentConfig;
  /** A Unified Identity provider on the shared TPM reading one gpsd (closed with the deployment). */
  provider(gps: Gpsfake): AgentUnifiedIdentity;
  /** One AttestAgent exchange against `server` with the shared TPM. */
  attest(server: RunningServer, unifiedIdentity?: UnifiedIdentityProvider, extra?: Partial<AttestOptions>): Promise<AttestationResult>;
  stop(): Promise<void>;
}

export interface UnifiedDeploymentOptions {
  ekKind?: 'rsa2048' | 'ecc-p256';
  /** ECC only: make the EK persistent at 0x81010002 first (swtpm_setup persists only the RSA EK), so activation does not re-create it. */
  persistEk?: boolean;
}

export async function startUnifiedDeployment(opts: UnifiedDeploymentOptions = {}): Promise<UnifiedDeployment> {
  const logger = pino({ level: process.env['E2E_LOG'] ?? 'silent' });
  const tmp = tempDir('terroir-unified-');
  const stops: (() => Promise<void> | void)[] = [() => tmp.cleanup()];
  const stop = async (): Promise<void> => {
    while (stops.length) await Promise.resolve(stops.pop()?.()).catch(() => undefined);
  };
  const write = (name: string, text: string): string => {
    const p = path.join(tmp.dir, name);
    fs.writeFileSync(p, text, { mode: 0o600 });
    return p;
  };
  try {
    const pki = await createPki(tmp.dir);
    const [swtpm, verifier, berlin, newYork] = await Promise.all([
      startSwtpm(),
      startVerifier(pki),
      startGpsfake(liveNmeaLog(tmp.dir, 'berlin.nmea', BERLIN, 1200, EPOCH_S), CYCLE_S),
      startGpsfake(liveNmeaLog(tmp.dir, 'new-york.nmea', NEW_YORK, 1200, EPOCH_S), CYCLE_S),
    ]);
    stops.push(() => swtpm.stop(), () => verifier.close(), () => berlin.stop(), () => newYork.stop());
    const policies = write('policies.yaml', POLICIES);
    // A persistent AK: every attestation of this node quotes with the same key, so a replayed quote
    // still carries a valid signature and must be caught by its binding to the nonce.
    const tpmCfg = { tcti: swtpm.tcti, ekKind: opts.ekKind ?? 'rsa2048', akHandle: 0x81010010 };
    if (opts.persistEk && tpmCfg.ekKind === 'ecc-p256') {
      execFileSync('tpm2_createek', ['-T', swtpm.tcti, '-c', '0x81010002', '-G', 'ecc', '-u', path.join(tmp.dir, 'ek.pub')], { stdio: 'pipe' });
    }
    const tpm = await openTpmCredentialSource(tpmCfg);
    stops.push(() => tpm.close());
    // swtpm is provisioned with an RSA EK certificate only: an ECC EK is trusted by its enrolled hash.
    const enrolled = tpmCfg.ekKind === 'rsa2048' ? [] : [ekHash(parseTpm2bPublic((await tpm.attestationData()).ekPublic))];
    let n = 0;

    const d: UnifiedDeployment = {
      dir: tmp.dir, pki, swtpm, verifier, berlin, newYork, tpm, logger,
      async startServer(o) {
        const name = `server-${n++}`;
        const policyFile = o.extraPolicies ? write(`${name}-policies.yaml`, POLICIES + o.extraPolicies) : policies;
        const raw: Record<string, unknown> = {
          trustDomain: TD,
          dataDir: path.join(tmp.dir, name),
          logLevel: 'silent',
          dataStore: { type: 'sqlite', path: path.join(tmp.dir, name, 'ds.sqlite3') },
          ca: { keyStore: 'memory', ttl: '1d', x509SvidTtl: '1h' },
          agentApi: { bindAddress: '127.0.0.1', port: await freePort(), watchIntervalMs: 100, attestationRateLimit: { perSecond: 100, burst: 1000 } },
          health: { enabled: true, bindAddress: '127.0.0.1', port: 0 },
          nodeAttestation: { joinToken: { enabled: false }, tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile], enrolledEkHashes: enrolled } },
          ...(o.keylime ? {
            keylime: {
              verifierUrl: `https://localhost:${verifier.port}`,
              caFile: pki.files.serverCa, certFile: pki.files.clientCert, keyFile: pki.files.clientKey, allowDevelopmentStandIn: o.allowStandIn ?? true,
              mode: o.keylimeMode ?? 'oneshot', requestTimeoutMs: 1000,
              ...(o.keylimeMode === 'continuous' ? {
                pollIntervalMs: 250, maxAttestationAge: '10s', enrollTimeout: '10s', tpmPolicy: { [String(POLICY_PCR)]: [ZERO] },
              } : {}),
            },
          } : {}),
          unifiedIdentity: {
            locationPolicies: { file: policyFile },
            defaultPolicy: 'eu-only',
            pcrs: [0, 7, POLICY_PCR],
            tpmPolicy: { [String(POLICY_PCR)]: [ZERO] },
            reattestInterval: o.reattestInterval ?? '1h',
            ...(o.verdictMaxAge !== undefined ? { verdictMaxAge: o.verdictMaxAge } : {}),
            ...(o.latency ? { latency: o.latency } : {}),
          },
        };
        for (const [k, v] of Object.entries(o.config ?? {})) raw[k] = isObject(v) && isObject(raw[k]) ? { ...raw[k], ...v } : v;
        const cfg = parseServerConfig(raw, tmp.dir, o.flag ? { UNIFIED_IDENTITY_ENABLED: 'true' } : {});
        const server = await startServer(cfg, { logger });
        stops.push(() => server.stop());
        return server;
      },
      agentConfig(server, flag, name, quoteEndpoint = false, extra = {}) {
        return parseAgentConfig({
          trustDomain: TD,
          serverAddress: '127.0.0.1',
          serverPort: server.agentApiPort,
          dataDir: path.join(tmp.dir, name),
          socketPath: path.join(tmp.dir, `${name}.sock`),
          trustBundlePath: write(`${name}-bootstrap.json`, server.ca.bundle().bundleJson),
          syncIntervalMs: 1000,
          logLevel: 'silent',
          nodeAttestor: { tpm: tpmCfg },
          unifiedIdentity: { sensors: [{ type: 'gpsd', host: '127.0.0.1', port: berlin.port }], sensorTimeoutMs: 8000 },
          ...(quoteEndpoint ? {
            keylime: {
              quoteEndpoint: {
                bindAddress: '127.0.0.1', port: 0,
                certFile: write(`${name}-qe.pem`, pki.node.certPem), keyFile: write(`${name}-qe.key`, pki.node.keyPem),
                clientCaFile: write(`${name}-pull-ca.pem`, pki.pullCa.certPem),
              },
            },
          } : {}),
          ...extra,
        }, flag ? { UNIFIED_IDENTITY_ENABLED: '1' } : {});
      },
      provider(gps) {
        const p = openUnifiedIdentity({ sensors: [{ type: 'gpsd', host: '127.0.0.1', port: gps.port }], sensorTimeoutMs: 8000, readingMaxAgeMs: 2000 }, tpm);
        stops.push(() => p.close());
        return p;
      },
      async attest(server, unifiedIdentity, extra = {}) {
        const roots = server.ca.x509Roots();
        const client = connectToServer({ address: '127.0.0.1', port: server.agentApiPort, trustDomain: TD, roots });
        try {
          return await attestNode(client, { csr: createCsr(generateKeyPair()), tpm, ...(unifiedIdentity ? { unifiedIdentity } : {}), timeoutMs: 20_000, ...extra });
        } finally {
          client.close();
        }
      },
      stop,
    };
    return d;
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Starts a real agent (Workload API and all) for `server`; the caller stops it. */
export async function startAgent(d: UnifiedDeployment, server: RunningServer, flag: boolean, name: string, quoteEndpoint = false, extra: Record<string, unknown> = {}): Promise<Agent> {
  return Agent.start(d.agentConfig(server, flag, name, quoteEndpoint, extra), { tpm: d.tpm, logger: d.logger });
}
