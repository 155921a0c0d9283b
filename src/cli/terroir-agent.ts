#!/usr/bin/env node
// terroir-agent command line: thin — parse, call, print.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  ENDPOINT_SOCKET_ENV, createWorkloadClient, fromProtoStruct, splitDerCertificates, workloadMetadata,
  type WorkloadApiClient, type X509SvidResponse,
} from '../api/workload-api.js';
import { AgentConfigError, loadAgentConfig } from '../agent/config.js';
import { describeAttestationFailure, readHealthStatus } from '../agent/health-status.js';
import type { TpmSession } from '../agent/tpm-session.js';
import { unifiedIdentityFromCertificate } from '../spiffe/index.js';
import { FlagError, FlagSet, str, type FlagSpec, type ParsedFlags } from './flags.js';

const HELP = `terroir-agent — proves its node (TPM, location) and serves the SPIFFE Workload API

Usage: terroir-agent <command> [flags]

Commands:
  run -c agent.yaml                                   run the agent
  api fetch x509 [-socketPath S] [-write DIR]         fetch X.509-SVIDs (writes svid.N.pem, svid.N.key, bundle.N.pem)
  api fetch jwt -audience A [-spiffeID ID]            fetch JWT-SVIDs for an audience
  api validate jwt -audience A -svid TOKEN            validate a JWT-SVID
  api watch [-socketPath S]                           print every X.509-SVID update as it arrives
  healthcheck [-socketPath S]                         exit 0 when the Workload API answers and the node is attested
  help                                                show this help

The Workload API socket defaults to $${ENDPOINT_SOCKET_ENV} (unix:///path) or /run/terroir/agent.sock.
Flags may be written -flag value, -flag=value or --flag value; "<command> -h" lists its flags.
`;

class UsageError extends Error {}

type Flags = ParsedFlags;

const SOCKET_FLAG: FlagSpec = { name: 'socketPath', type: 'string', usage: 'Workload API socket path or unix:// / tcp:// endpoint', defaultText: `$${ENDPOINT_SOCKET_ENV} or /run/terroir/agent.sock` };
const TIMEOUT_FLAG: FlagSpec = { name: 'timeout', type: 'string', usage: 'how long to wait for the agent (e.g. 5s, 500ms)', defaultText: '5s' };

/** Parses a command's flags (Go/SPIRE style, src/cli/flags.ts); `-h` prints the command's flags. */
function parseCommand(command: string, argv: string[], specs: FlagSpec[]): Flags | undefined {
  const set = new FlagSet(specs);
  const f = set.parse(argv);
  if (f.help) {
    process.stdout.write(`Usage of terroir-agent ${command}:\n${set.usage()}`);
    return undefined;
  }
  if (f.args.length > 0) throw new UsageError(`unexpected argument "${f.args[0]}" for ${command}`);
  return f;
}

function socketFrom(flags: Flags): string {
  const s = str(flags, 'socketPath');
  if (s !== undefined) return s.startsWith('unix:') || s.startsWith('tcp:') ? s : path.resolve(s);
  return process.env[ENDPOINT_SOCKET_ENV] ?? '/run/terroir/agent.sock';
}

function timeoutFrom(flags: Flags): number {
  const t = str(flags, 'timeout');
  if (t === undefined) return 5_000;
  const m = /^(\d+)(ms|s|m)?$/.exec(t);
  if (!m) throw new UsageError(`-timeout "${t}" must look like 5s, 500ms or 1m`);
  return Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000);
}

function pem(der: Buffer, label: string): string {
  return `-----BEGIN ${label}-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END ${label}-----\n`;
}

function describeError(e: unknown): string {
  const se = e as grpc.ServiceError;
  if (typeof se?.code === 'number') return `${grpc.status[se.code] ?? se.code}: ${se.details}`;
  return (e as Error).message;
}

function firstX509(client: WorkloadApiClient, timeoutMs: number): Promise<X509SvidResponse> {
  return new Promise((resolve, reject) => {
    const call = client.FetchX509SVID({}, workloadMetadata(), { deadline: Date.now() + timeoutMs });
    call.once('data', (res: X509SvidResponse) => {
      resolve(res);
      call.cancel();
    });
    call.on('error', (e: grpc.ServiceError) => {
      if (e.code !== grpc.status.CANCELLED) reject(e);
    });
  });
}

interface OutputFile {
  name: string;
  data: string;
  mode: number;
}

/**
 * Writes `-write` output: every path is checked first (a symbolic link or anything but a regular
 * file there is refused, so nothing is written through a link someone planted), then each file is
 * written to a fresh temp file in the same directory (O_EXCL|O_NOFOLLOW, created with its final
 * mode: 0600 for keys), fsynced and renamed over the old one. The rename replaces a name, never the
 * target of a link planted after the check, and an old file's looser mode is not kept (new inode).
 */
function writeOutputFiles(dir: string, files: OutputFile[]): void {
  fs.mkdirSync(dir, { recursive: true });
  for (const f of files) {
    const file = path.join(dir, f.name);
    let st: fs.Stats | undefined;
    try {
      st = fs.lstatSync(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (st?.isSymbolicLink()) throw new Error(`refusing to write ${file}: it is a symbolic link (remove it first)`);
    if (st && !st.isFile()) throw new Error(`refusing to write ${file}: it exists and is not a regular file`);
  }
  for (const f of files) {
    const file = path.join(dir, f.name);
    const tmp = path.join(dir, `.${f.name}.${crypto.randomBytes(6).toString('hex')}.tmp`);
    const c = fs.constants;
    const fd = fs.openSync(tmp, c.O_WRONLY | c.O_CREAT | c.O_EXCL | c.O_NOFOLLOW, f.mode);
    try {
      fs.fchmodSync(fd, f.mode); // the umask may have cleared bits of a 0644 file; never adds any to a key
      fs.writeFileSync(fd, f.data);
      fs.fsyncSync(fd);
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(tmp, { force: true });
      throw e;
    }
    fs.closeSync(fd);
    try {
      fs.renameSync(tmp, file);
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw e;
    }
  }
  // The renames are durable once the directory is synced.
  const dfd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}

async function fetchX509(args: string[]): Promise<number> {
  const flags = parseCommand('api fetch x509', args, [SOCKET_FLAG, TIMEOUT_FLAG,
    { name: 'write', type: 'string', usage: 'write svid.N.pem, svid.N.key, bundle.N.pem (and federated bundles) to this directory' }]);
  if (!flags) return 0;
  const client = createWorkloadClient(socketFrom(flags));
  try {
    const t0 = performance.now();
    const res = await firstX509(client, timeoutFrom(flags));
    const ms = performance.now() - t0;
    const dir = str(flags, 'write');
    const files: OutputFile[] = [];
    process.stdout.write(`Received ${res.svids.length} svid after ${ms.toFixed(3)}ms\n`);
    res.svids.forEach((s, i) => {
      const chain = splitDerCertificates(s.x509_svid);
      const leaf = new crypto.X509Certificate(chain[0] as Buffer);
      process.stdout.write(`\nSPIFFE ID:\t\t${s.spiffe_id}\n`);
      if (s.hint) process.stdout.write(`Hint:\t\t\t${s.hint}\n`);
      process.stdout.write(`SVID Valid After:\t${leaf.validFrom}\nSVID Valid Until:\t${leaf.validTo}\n`);
      process.stdout.write(`Unified Identity:\t${describeClaims(chain[0] as Buffer)}\n`);
      const cas = splitDerCertificates(s.bundle);
      cas.forEach((ca, j) => {
        const c = new crypto.X509Certificate(ca);
        process.stdout.write(`CA #${j + 1} Valid After:\t${c.validFrom}\nCA #${j + 1} Valid Until:\t${c.validTo}\n`);
      });
      files.push({ name: `svid.${i}.pem`, data: chain.map((c) => pem(c, 'CERTIFICATE')).join(''), mode: 0o644 });
      files.push({ name: `svid.${i}.key`, data: pem(s.x509_svid_key, 'PRIVATE KEY'), mode: 0o600 });
      files.push({ name: `bundle.${i}.pem`, data: cas.map((c) => pem(c, 'CERTIFICATE')).join(''), mode: 0o644 });
      let k = 0;
      for (const b of Object.values(res.federated_bundles)) {
        files.push({ name: `federated_bundle.${i}.${k++}.pem`, data: splitDerCertificates(b).map((c) => pem(c, 'CERTIFICATE')).join(''), mode: 0o644 });
      }
    });
    if (typeof dir === 'string') writeOutputFiles(dir, files);
    if (typeof dir === 'string') process.stdout.write(`\nWriting SVIDs, keys and bundles to ${dir}\n`);
    return 0;
  } finally {
    client.close();
  }
}

/** The SVID's Unified Identity claims as one JSON line, or why there are none. */
function describeClaims(leafDer: Buffer): string {
  try {
    const claims = unifiedIdentityFromCertificate(leafDer);
    return claims === undefined ? 'none (a plain SVID; the server adds claims only with UNIFIED_IDENTITY_ENABLED on)' : JSON.stringify(claims);
  } catch (err) {
    return `malformed extension (${(err as Error).message})`;
  }
}

function unary<T>(fn: (cb: (err: grpc.ServiceError | null, res?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res as T))));
}

async function fetchJwt(args: string[]): Promise<number> {
  const flags = parseCommand('api fetch jwt', args, [SOCKET_FLAG, TIMEOUT_FLAG,
    { name: 'audience', type: 'string', usage: 'comma-separated audience values (required)' },
    { name: 'spiffeID', type: 'string', usage: 'only the JWT-SVID of this SPIFFE ID' }]);
  if (!flags) return 0;
  const audience = str(flags, 'audience');
  if (audience === undefined || audience === '') throw new UsageError('-audience is required');
  const client = createWorkloadClient(socketFrom(flags));
  try {
    const res = await unary<{ svids: Array<{ spiffe_id: string; svid: string }> }>((cb) =>
      client.FetchJWTSVID({ audience: audience.split(','), spiffe_id: str(flags, 'spiffeID') ?? '' },
        workloadMetadata(), { deadline: Date.now() + timeoutFrom(flags) }, cb));
    for (const s of res.svids) process.stdout.write(`token(${s.spiffe_id}):\n\t${s.svid}\n`);
    return 0;
  } finally {
    client.close();
  }
}

async function validateJwt(args: string[]): Promise<number> {
  const flags = parseCommand('api validate jwt', args, [SOCKET_FLAG, TIMEOUT_FLAG,
    { name: 'audience', type: 'string', usage: 'the audience the token must carry (required)' },
    { name: 'svid', type: 'string', usage: 'the JWT-SVID to validate (required)' }]);
  if (!flags) return 0;
  const audience = str(flags, 'audience');
  const svid = str(flags, 'svid');
  if (audience === undefined || audience === '') throw new UsageError('-audience is required');
  if (svid === undefined || svid === '') throw new UsageError('-svid is required');
  const client = createWorkloadClient(socketFrom(flags));
  try {
    const res = await unary<{ spiffe_id: string; claims: Parameters<typeof fromProtoStruct>[0] | null }>((cb) =>
      client.ValidateJWTSVID({ audience, svid }, workloadMetadata(), { deadline: Date.now() + timeoutFrom(flags) }, cb));
    process.stdout.write(`SVID is valid.\nSPIFFE ID : ${res.spiffe_id}\nClaims    : ${JSON.stringify(res.claims ? fromProtoStruct(res.claims) : {})}\n`);
    return 0;
  } finally {
    client.close();
  }
}

async function watch(args: string[]): Promise<number> {
  const flags = parseCommand('api watch', args, [SOCKET_FLAG]);
  if (!flags) return 0;
  const client = createWorkloadClient(socketFrom(flags));
  return new Promise((resolve) => {
    const call = client.FetchX509SVID({}, workloadMetadata());
    call.on('data', (res: X509SvidResponse) => {
      const ids = res.svids.map((s) => {
        const leaf = new crypto.X509Certificate(splitDerCertificates(s.x509_svid)[0] as Buffer);
        return `${s.spiffe_id} (valid until ${leaf.validTo}, serial ${leaf.serialNumber})`;
      });
      process.stdout.write(`${new Date().toISOString()} received ${res.svids.length} SVID(s): ${ids.join('; ')}\n`);
    });
    call.on('error', (e: grpc.ServiceError) => {
      process.stderr.write(`terroir-agent: watch ended: ${describeError(e)}\n`);
      client.close();
      resolve(1);
    });
    const stop = () => {
      call.cancel();
      client.close();
      resolve(0);
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

async function healthcheck(args: string[]): Promise<number> {
  const flags = parseCommand('healthcheck', args, [SOCKET_FLAG, TIMEOUT_FLAG,
    { name: 'shallow', type: 'bool', usage: 'accepted for SPIRE compatibility; the check is always the Workload API answering' },
    { name: 'verbose', type: 'bool', usage: 'accepted for SPIRE compatibility' }]);
  if (!flags) return 0;
  const socket = socketFrom(flags);
  // The agent's own account, next to its socket: while the server refuses the node there is no
  // Workload API to ask, and the reason is what the operator needs.
  const local = socket.startsWith('tcp:') ? undefined : readHealthStatus(socket.replace(/^unix:(\/\/)?/, ''));
  if (local?.running) {
    const failing = describeAttestationFailure(local.status);
    if (failing !== undefined) {
      process.stderr.write(`Agent is unhealthy: ${failing}\n`);
      return 1;
    }
  }
  const client = createWorkloadClient(socket);
  try {
    await new Promise<void>((resolve, reject) => {
      const call = client.FetchX509Bundles({}, workloadMetadata(), { deadline: Date.now() + timeoutFrom(flags) });
      call.once('data', () => {
        call.cancel();
        resolve();
      });
      call.on('error', (e: grpc.ServiceError) => {
        // PermissionDenied means the agent answered and attested us: it is alive.
        if (e.code === grpc.status.CANCELLED || e.code === grpc.status.PERMISSION_DENIED) resolve();
        else reject(e);
      });
    });
    process.stdout.write('Agent is healthy.\n');
    return 0;
  } catch (e) {
    let why = '';
    if (local?.running && local.status.attestation.state === 'attesting') why = ` (agent pid ${local.status.pid} is still attesting the node)`;
    else if (local && !local.running) why = ` (the agent that wrote ${socket}.health.json, pid ${local.status.pid}, is not running)`;
    process.stderr.write(`Agent is unhealthy: ${describeError(e)}${why}\n`);
    return 1;
  } finally {
    client.close();
  }
}

async function runAgent(args: string[]): Promise<number> {
  const flags = parseCommand('run', args, [{ name: 'config', type: 'string', usage: 'path to agent.yaml (required)', aliases: ['c'] }]);
  if (!flags) return 0;
  const file = str(flags, 'config');
  if (!file) throw new UsageError('run needs -c agent.yaml');
  const config = loadAgentConfig(file);
  // Loaded only for `run`: the api commands stay light, and the TPM stack loads only when configured.
  const { Agent } = await import('../agent/agent.js');
  const { default: pino } = await import('pino');
  // One logger (the configured level) for the agent and its TPM session.
  const logger = pino({ name: 'terroir-agent', level: config.logLevel });
  let tpm: TpmSession | undefined;
  if (config.nodeAttestor.tpm) {
    const { openTpmCredentialSource } = await import('../agent/tpm-session.js');
    tpm = await openTpmCredentialSource(config.nodeAttestor.tpm, { logger: logger.child({ component: 'tpm' }) });
  }
  // Traces: a process-wide provider, so it is set up here and not in the Agent (tests run several in one process).
  const tracing = config.tracing ? (await import('../api/tracing.js')).startTracing({ serviceName: 'terroir-agent', otlpEndpoint: config.tracing.otlpEndpoint }) : undefined;
  // Signals also end a start still waiting for the server to accept the node (it backs off meanwhile).
  const stop = new AbortController();
  const stopped = new Promise<void>((resolve) => {
    const onSignal = (): void => { stop.abort(); resolve(); };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  let agent: Awaited<ReturnType<typeof Agent.start>>;
  try {
    agent = await Agent.start(config, { logger, signal: stop.signal, ...(tpm ? { tpm } : {}) });
  } catch (e) {
    await tpm?.close();
    await tracing?.shutdown();
    if (stop.signal.aborted) return 0;
    throw e;
  }
  await stopped;
  await agent.stop();
  await tpm?.close();
  await tracing?.shutdown();
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const [cmd, sub, kind, ...rest] = argv;
  if (cmd === undefined || cmd === 'help' || cmd === '-h' || cmd === '--help') {
    process.stdout.write(HELP);
    return 0;
  }
  try {
    if (cmd === 'run') return await runAgent(argv.slice(1));
    if (cmd === 'healthcheck') return await healthcheck(argv.slice(1));
    if (cmd === 'api') {
      if (sub === 'fetch' && kind === 'x509') return await fetchX509(rest);
      if (sub === 'fetch' && kind === 'jwt') return await fetchJwt(rest);
      if (sub === 'validate' && kind === 'jwt') return await validateJwt(rest);
      if (sub === 'watch') return await watch(argv.slice(2));
      throw new UsageError(`unknown api command "${[sub, kind].filter(Boolean).join(' ')}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || e instanceof FlagError) {
      process.stderr.write(`terroir-agent: ${e.message}; run "terroir-agent help" for usage\n`);
      return 2;
    }
    if (e instanceof AgentConfigError) {
      process.stderr.write(`terroir-agent: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`terroir-agent: ${describeError(e)}\n`);
    return 1;
  }
  process.stderr.write(`terroir-agent: unknown command "${cmd}"; run "terroir-agent help" for the list\n`);
  return 2;
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
}, (e: unknown) => {
  process.stderr.write(`terroir-agent: ${(e as Error).message}\n`);
  process.exitCode = 1;
});
