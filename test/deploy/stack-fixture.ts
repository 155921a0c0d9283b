// The compose services' scripts brought up natively, step for step, for the deployment tests (flag off
// in stack.test.ts, flag on in stack-unified.test.ts): certs-init.sh, swtpm.sh (a real swtpm with an EK
// chain), server.sh (SQLite), register.sh, agent.sh (TPM attestation), the consumer workload as its own
// user; with Unified Identity on also the Keylime development stand-in on certs-init's PKI and gpsd.sh
// (gpsfake with a live log), read by the agent. Every process is stopped by its PID, the directory removed.
// keylimeMode 'continuous' (stack-continuous.test.ts) adds the agent's Keylime quote endpoint, which the
// stand-in pulls quotes from.
import { type ChildProcess, execFile, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePort, freePortPair, waitForPort } from '../support/ports.js';
import { captureOutput, ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
export const ROOT = path.resolve(import.meta.dirname, '../..');
export const DEPLOY = path.join(ROOT, 'deploy');
const TSX = `file://${ROOT}/node_modules/tsx/dist/loader.mjs`;
export const CONSUMER_UID = 10101;
export const CLIENT_UID = 10102;
export const TD = 'deploy.test';

export interface StackOptions {
  /** UNIFIED_IDENTITY_ENABLED for every script (and the stand-in and gpsd it then needs). */
  unified: boolean;
  /** The consumer's own settings (CONSUMER_REQUIRE_*, ...). */
  consumerEnv?: Record<string, string>;
  /**
   * TERROIR_KEYLIME_MODE for server.sh and agent.sh (with `unified`). continuous: the agent serves its
   * quote endpoint on ports.quote with certs-init's agent/ material, and the stand-in pulls from it.
   */
  keylimeMode?: 'oneshot' | 'continuous';
}

export interface Stack {
  dir: string;
  ports: { swtpm: number; agentApi: number; health: number; consumer: number; gpsd: number; quote: number };
  agentSocket: string;
  /** A script's environment: the test's own minus anything that would steer the scripts elsewhere, plus `extra`. */
  env(extra?: Record<string, string>): NodeJS.ProcessEnv;
  serverEnv(): NodeJS.ProcessEnv;
  /** A workload's environment (Workload API socket, consumer address). */
  workloadEnv(extra?: Record<string, string>): NodeJS.ProcessEnv;
  /** Starts a long-running process whose output is kept under `name`; stopped by stop(). */
  start(name: string, cmd: string, args: string[], env: NodeJS.ProcessEnv): ChildProcess;
  log(name: string): string;
  /** Starts deploy/workload.sh consumer as `uid` on `port` and waits until it listens. */
  startConsumer(name: string, port: number, extra?: Record<string, string>, uid?: number): Promise<void>;
  /** deploy/workload.sh client --once as `uid`, calling the consumer on `port`. */
  callOnce(uid: number, port: number, extra?: Record<string, string>): SpawnSyncReturns<Buffer>;
  /** Polls `fn` until it holds; on timeout throws with every log's tail. */
  until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void>;
  stop(): Promise<void>;
}

/** [cmd, args] running a deploy/ script as another user. */
export const asUser = (uid: number, script: string, args: string[]): [string, string[]] =>
  ['setpriv', ['--reuid', String(uid), '--regid', String(uid), '--clear-groups', 'bash', path.join(DEPLOY, script), ...args]];

/** Distinct free ports, none of them swtpm's control port. */
async function allocatePorts(): Promise<Stack['ports']> {
  const swtpm = await freePortPair();
  const taken = new Set([swtpm, swtpm + 1]);
  const next = async (): Promise<number> => {
    let p = await freePort();
    while (taken.has(p)) p = await freePort();
    taken.add(p);
    return p;
  };
  return { swtpm, agentApi: await next(), health: await next(), consumer: await next(), gpsd: await next(), quote: await next() };
}

export async function startStack(o: StackOptions): Promise<Stack> {
  const tmp = tempDir(o.unified ? 'terroir-deploy-unified-' : 'terroir-deploy-stack-');
  fs.chmodSync(tmp.dir, 0o755); // the workloads run as other users and must reach the agent's socket
  const W = tmp.dir;
  const group = new ProcessGroup();
  const logs = new Map<string, () => string>();
  const ports = await allocatePorts();
  const agentSocket = path.join(W, 'run', 'api.sock');
  let keylimeUrl = '';

  const env = (extra: Record<string, string> = {}): NodeJS.ProcessEnv => {
    const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(TERROIR_|SPIFFE_|SWTPM_|UNIFIED_IDENTITY|GPS|CONSUMER_|NODE_ENV$)/.test(k)));
    return { ...base, TERROIR_FROM_SOURCE: '1', TERROIR_TRUST_DOMAIN: TD, UNIFIED_IDENTITY_ENABLED: String(o.unified), ...extra };
  };
  const serverEnv = (): NodeJS.ProcessEnv => env({
    TERROIR_DATA_DIR: path.join(W, 'server'),
    TERROIR_AGENT_API_PORT: String(ports.agentApi),
    TERROIR_HEALTH_PORT: String(ports.health),
    TERROIR_TPM_CA_FILES: path.join(W, 'swtpm', 'ca', 'manufacturer-ca.pem'),
    TERROIR_ADMIN_SOCKET: path.join(W, 'server', 'admin', 'api.sock'),
    TERROIR_BUNDLE_OUT: path.join(W, 'bootstrap', 'bootstrap-bundle.pem'),
    ...(o.unified ? {
      TERROIR_KEYLIME_URL: keylimeUrl,
      TERROIR_KEYLIME_CA: path.join(W, 'pki', 'keylime', 'ca.crt'),
      TERROIR_KEYLIME_CERT: path.join(W, 'pki', 'keylime', 'terroir-client.crt'),
      TERROIR_KEYLIME_KEY: path.join(W, 'pki', 'keylime', 'terroir-client.key'),
      TERROIR_KEYLIME_ALLOW_DEV_STANDIN: 'true',
    } : {}),
    ...(o.unified && o.keylimeMode ? { TERROIR_KEYLIME_MODE: o.keylimeMode, TERROIR_KEYLIME_QUOTE_PORT: String(ports.quote) } : {}),
  });
  const workloadEnv = (extra: Record<string, string> = {}): NodeJS.ProcessEnv =>
    env({ SPIFFE_ENDPOINT_SOCKET: `unix://${agentSocket}`, SVID_FETCH_TIMEOUT_S: '60', ...extra });
  const start = (name: string, cmd: string, args: string[], e: NodeJS.ProcessEnv): ChildProcess => {
    const child = group.start(cmd, args, { env: e });
    logs.set(name, captureOutput(child));
    return child;
  };
  const log = (name: string): string => logs.get(name)?.() ?? '';
  const until = async (what: string, fn: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (await fn()) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`${what} within ${timeoutMs} ms; logs:\n${[...logs].map(([n, l]) => `--- ${n}\n${l().slice(-3000)}`).join('\n')}`);
  };
  const stop = async (): Promise<void> => {
    // swtpm first gets its orderly TPM2_Shutdown through stop.sh (it signals only the swtpm of that state dir).
    spawnSync('bash', [path.join(ROOT, 'swtpm', 'stop.sh'), path.join(W, 'swtpm', 'state')]);
    await group.stopAll();
    tmp.cleanup();
  };

  const stack: Stack = {
    dir: W, ports, agentSocket, env, serverEnv, workloadEnv, start, log, until, stop,
    async startConsumer(name, port, extra = {}, uid = CONSUMER_UID) {
      const [cmd, args] = asUser(uid, 'workload.sh', ['consumer']);
      start(name, cmd, args, workloadEnv({ CONSUMER_PORT: String(port), ...o.consumerEnv, ...extra }));
      await until(`${name} did not listen`, () => log(name).includes('listening on'), 60_000);
    },
    callOnce(uid, port, extra = {}) {
      const [cmd, args] = asUser(uid, 'workload.sh', ['client', '--once']);
      return spawnSync(cmd, args, { env: workloadEnv({ CONSUMER_ADDR: `127.0.0.1:${port}`, ...extra }), timeout: 60_000 });
    },
  };

  try {
    // The PKI, the TPM and the location sensor do not depend on each other.
    const pki = run('bash', [path.join(DEPLOY, 'certs-init.sh'), path.join(W, 'pki')]);
    start('swtpm', 'bash', [path.join(DEPLOY, 'swtpm.sh')], env({
      SWTPM_STATE_DIR: path.join(W, 'swtpm', 'state'), SWTPM_CA_DIR: path.join(W, 'swtpm', 'ca'),
      SWTPM_PORT: String(ports.swtpm), SWTPM_BIND: '127.0.0.1',
    }));
    if (o.unified) {
      start('gpsd', 'bash', [path.join(DEPLOY, 'gpsd.sh')], env({ GPSD_PORT: String(ports.gpsd), GPSD_LISTEN_ALL: '0' }));
      await pki;
      // The development stand-in for the Keylime verifier, on certs-init's PKI, as the README's demo runs it.
      start('keylime-standin', process.execPath, ['--import', TSX, path.join(ROOT, 'test', 'doubles', 'keylime-standin.ts'), '--pki', path.join(W, 'pki', 'keylime')], env());
      await until('the Keylime stand-in did not announce itself', () => log('keylime-standin').includes('"standIn":true'), 30_000);
      const line = log('keylime-standin').split('\n').find((l) => l.includes('"standIn":true')) ?? '';
      keylimeUrl = (JSON.parse(line) as { url: string }).url;
    } else {
      await pki;
    }
    await waitForPort(ports.swtpm, '127.0.0.1', 30_000);

    start('server', 'bash', [path.join(DEPLOY, 'server.sh')], serverEnv());
    const reg = await run('bash', [path.join(DEPLOY, 'register.sh')], { env: serverEnv() });
    logs.set('register', () => reg.stdout + reg.stderr);

    if (o.unified) await waitForPort(ports.gpsd, '127.0.0.1', 15_000);
    start('agent', 'bash', [path.join(DEPLOY, 'agent.sh')], env({
      TERROIR_AGENT_SERVER_ADDRESS: '127.0.0.1', TERROIR_AGENT_SERVER_PORT: String(ports.agentApi),
      TERROIR_AGENT_DATA_DIR: path.join(W, 'agent'), TERROIR_AGENT_SOCKET_DIR: path.join(W, 'run'),
      TERROIR_BOOTSTRAP_BUNDLE: path.join(W, 'bootstrap', 'bootstrap-bundle.pem'),
      TERROIR_TPM_TCTI: `swtpm:host=127.0.0.1,port=${ports.swtpm}`,
      TERROIR_GPSD_HOST: '127.0.0.1', TERROIR_GPSD_PORT: String(ports.gpsd),
      ...(o.unified && o.keylimeMode ? {
        TERROIR_KEYLIME_MODE: o.keylimeMode, TERROIR_KEYLIME_QUOTE_PORT: String(ports.quote), TERROIR_KEYLIME_QUOTE_BIND: '127.0.0.1',
        TERROIR_KEYLIME_QUOTE_CERT: path.join(W, 'pki', 'agent', 'quote-endpoint.crt'),
        TERROIR_KEYLIME_QUOTE_KEY: path.join(W, 'pki', 'agent', 'quote-endpoint.key'),
        TERROIR_KEYLIME_QUOTE_CLIENT_CA: path.join(W, 'pki', 'agent', 'verifier-client-ca.crt'),
      } : {}),
    }));
    await until('the agent did not attest', () => log('agent').includes('"msg":"node attested"'), 60_000);
    await stack.startConsumer('consumer', ports.consumer);
    return stack;
  } catch (err) {
    await stop();
    throw err;
  }
}
