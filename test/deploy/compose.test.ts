// docker-compose.yml must stay valid (`docker-compose config`, the Debian package, no engine needed)
// and consistent with what the native tests run: every terroir service's entrypoint is a deploy/
// script, the Keylime services name files that deploy/certs-init.sh makes, and the flag comes from
// the env file. Two stacks, as the README starts them: the plain one (deploy/.env.example, no profile:
// no Keylime, no gpsd, nothing waiting on them) and the `unified` profile (deploy/unified.env).
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const tmp = tempDir('terroir-deploy-compose-');
afterAll(() => tmp.cleanup());

interface Service {
  image?: string;
  build?: { target?: string };
  entrypoint?: string[];
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  user?: string;
  pid?: string;
  network_mode?: string;
  ports?: unknown[];
  healthcheck?: { test: string[] };
  networks?: string[] | Record<string, unknown>;
  init?: boolean;
  group_add?: string[];
  depends_on?: Record<string, { condition: string }>;
  profiles?: string[];
}
interface Compose { services: Record<string, Service>; volumes: Record<string, unknown> }

/** The README's two commands, minus `up -d --build`: what the tests render with `config`. */
export const PLAIN_ARGS = ['--env-file', 'deploy/.env.example'];
export const UNIFIED_ARGS = ['--env-file', 'deploy/unified.env', '--profile', 'unified'];

/** The profiles a command activates: its --profile options, else COMPOSE_PROFILES from its env file (as compose does). */
function activeProfiles(args: string[]): string[] {
  const cli = args.flatMap((a, i) => (args[i - 1] === '--profile' ? [a] : []));
  if (cli.length > 0) return cli;
  const envFile = args[args.indexOf('--env-file') + 1] ?? '';
  const line = fs.readFileSync(path.resolve(ROOT, envFile), 'utf8').split('\n').find((l) => l.startsWith('COMPOSE_PROFILES='));
  return (line?.slice('COMPOSE_PROFILES='.length) ?? '').split(',').map((p) => p.trim()).filter(Boolean);
}

/**
 * `docker-compose ARGS config`, keeping the services the active profiles enable (a service without
 * `profiles` always; docker-compose 1.29's `config` prints them all, `up` starts only these). Fails naming
 * the Debian package when the tool is absent.
 */
async function composeConfig(args: string[]): Promise<Compose> {
  if (spawnSync('sh', ['-c', 'command -v docker-compose']).status !== 0) {
    throw new Error('docker-compose is not installed: apt-get install --no-install-recommends docker-compose (Debian package docker-compose)');
  }
  const envFile = args[args.indexOf('--env-file') + 1] ?? '';
  const rest = args.filter((_, i) => i !== args.indexOf('--env-file') && i !== args.indexOf('--env-file') + 1);
  const { stdout } = await run('docker-compose', ['-f', path.join(ROOT, 'docker-compose.yml'), '--project-directory', ROOT, '--env-file', path.resolve(ROOT, envFile), ...rest, 'config'], { cwd: ROOT });
  const all = YAML.parse(stdout) as Compose;
  const active = activeProfiles(args);
  const services = Object.fromEntries(Object.entries(all.services).filter(([, s]) => s.profiles === undefined || s.profiles.some((p) => active.includes(p))));
  return { ...all, services };
}

/** A service that must exist (a missing one fails the test with its name). */
function svc(c: Compose, name: string): Service {
  const found = c.services[name];
  if (found === undefined) throw new Error(`docker-compose.yml has no service ${name}`);
  return found;
}

/** A service's networks, whether the config lists them or maps them. */
function networksOf(s: Service): string[] {
  return Array.isArray(s.networks) ? s.networks : Object.keys(s.networks ?? {});
}

/** The networks a service is on: its own, or those of the service whose namespace it joins (network_mode: service:X). */
function reachableOn(c: Compose, s: Service): string[] {
  const joined = /^service:(.+)$/.exec(s.network_mode ?? '')?.[1];
  return joined === undefined ? networksOf(s) : networksOf(svc(c, joined));
}

let compose: Compose;
let unified: Compose;
beforeAll(async () => {
  compose = await composeConfig(PLAIN_ARGS);
  unified = await composeConfig(UNIFIED_ARGS);
}, 30_000);

/** ENTRYPOINT of each Dockerfile target, e.g. { server: '/app/deploy/server.sh' }. */
function dockerfileEntrypoints(): Record<string, string> {
  const out: Record<string, string> = {};
  let target = '';
  for (const line of fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').split('\n')) {
    const from = /^FROM \S+ AS (\S+)/.exec(line);
    if (from) target = from[1] ?? '';
    const ep = /^ENTRYPOINT \["([^"]+)"/.exec(line);
    if (ep?.[1] !== undefined) out[target] = ep[1];
  }
  return out;
}

describe('docker-compose.yml', () => {
  it('the README starts the plain stack and the unified profile with exactly the commands tested here', () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    expect(readme).toContain(`docker-compose ${PLAIN_ARGS.join(' ')} up -d --build`);
    expect(readme).toContain(`docker-compose ${UNIFIED_ARGS.join(' ')} up -d --build`);
    const docs = fs.readFileSync(path.join(ROOT, 'docs', 'deployment.md'), 'utf8');
    expect(docs).toContain(`docker-compose ${UNIFIED_ARGS.join(' ')} up -d --build`);
  });

  it('the plain stack (deploy/.env.example, no profile) has no Keylime and no gpsd, and nothing depends on them', () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      'certs-init', 'node', 'register', 'swtpm', 'terroir-agent', 'terroir-server', 'workload-client', 'workload-consumer',
    ]);
    for (const [name, s] of Object.entries(compose.services)) {
      // Every dependency and every joined namespace is a service this stack starts (compose refuses the rest).
      for (const dep of Object.keys(s.depends_on ?? {})) expect(Object.keys(compose.services), `${name} depends on ${dep}`).toContain(dep);
      expect(Object.keys(s.depends_on ?? {}).filter((d) => /^(keylime|gpsd)/.test(d)), name).toEqual([]);
      const joined = /^service:(.+)$/.exec(s.network_mode ?? s.pid ?? '')?.[1];
      if (joined !== undefined) expect(Object.keys(compose.services), name).toContain(joined);
      expect(s.image ?? '', name).not.toMatch(/keylime|gpsd/);
      expect(s.environment?.UNIFIED_IDENTITY_ENABLED ?? 'false', name).toBe('false');
    }
    expect(activeProfiles(PLAIN_ARGS)).toEqual([]);
    expect(svc(compose, 'terroir-server').volumes).toContainEqual(expect.stringMatching(/^server-data:\/var\/lib\/terroir\/server/));
  });

  it('the unified profile (deploy/unified.env, --profile unified) adds Keylime and gpsd and turns the flag on everywhere', () => {
    expect(Object.keys(unified.services).sort()).toEqual([
      'certs-init', 'gpsd', 'keylime-registrar', 'keylime-verifier', 'node', 'register', 'swtpm', 'terroir-agent', 'terroir-server', 'workload-client', 'workload-consumer',
    ]);
    expect(svc(unified, 'keylime-verifier').image).toBe('quay.io/keylime/keylime_verifier:v7.14.3');
    expect(svc(unified, 'keylime-registrar').image).toBe('quay.io/keylime/keylime_registrar:v7.14.3');
    for (const s of ['terroir-server', 'terroir-agent', 'workload-consumer']) expect(svc(unified, s).environment?.UNIFIED_IDENTITY_ENABLED, s).toBe('true');
    for (const [name, s] of Object.entries(unified.services)) {
      for (const dep of Object.keys(s.depends_on ?? {})) expect(Object.keys(unified.services), `${name} depends on ${dep}`).toContain(dep);
    }
    // Only Keylime and gpsd are in the profile; the same terroir services run in both stacks.
    expect(Object.entries(unified.services).filter(([, s]) => s.profiles !== undefined).map(([n]) => n).sort()).toEqual(['gpsd', 'keylime-registrar', 'keylime-verifier']);
    // The env file carries the profile too (a command that forgets --profile still starts what the flag needs).
    expect(activeProfiles(['--env-file', 'deploy/unified.env'])).toEqual(['unified']);
    // unified.env is .env.example with the flag on and the profile: nothing else differs.
    const settings = (f: string): string[] => fs.readFileSync(path.join(ROOT, 'deploy', f), 'utf8').split('\n').filter((l) => /^[A-Z_]+=/.test(l));
    const plain = settings('.env.example');
    const on = settings('unified.env');
    expect(on.filter((l) => !plain.includes(l)).sort()).toEqual(['COMPOSE_PROFILES=unified', 'UNIFIED_IDENTITY_ENABLED=true']);
    expect(plain.filter((l) => !on.includes(l)).sort()).toEqual(['COMPOSE_PROFILES=', 'UNIFIED_IDENTITY_ENABLED=false']);
  });

  it('takes UNIFIED_IDENTITY_ENABLED (and the trust domain) from the env file, for server and agent', async () => {
    for (const s of ['terroir-server', 'terroir-agent']) expect(svc(compose, s).environment?.UNIFIED_IDENTITY_ENABLED).toBe('false');
    const env = path.join(tmp.dir, 'on.env');
    fs.writeFileSync(env, 'UNIFIED_IDENTITY_ENABLED=true\nTERROIR_TRUST_DOMAIN=edge.example\n');
    const on = await composeConfig(['--env-file', env]);
    for (const s of ['terroir-server', 'terroir-agent']) {
      expect(svc(on, s).environment?.UNIFIED_IDENTITY_ENABLED).toBe('true');
      expect(svc(on, s).environment?.TERROIR_TRUST_DOMAIN).toBe('edge.example');
    }
    expect(svc(on, 'register').environment?.TERROIR_TRUST_DOMAIN).toBe('edge.example');
  }, 30_000);

  it('runs every terroir service through a deploy/ script that exists (the scripts test/deploy runs natively)', () => {
    const entrypoints = dockerfileEntrypoints();
    const scripts = new Set<string>();
    for (const [name, service] of Object.entries(unified.services)) {
      if (service.image?.startsWith('quay.io/keylime/')) continue;
      const target = service.build?.target;
      expect(target, `${name} has a build target`).toBeDefined();
      const ep = service.entrypoint?.[0] ?? entrypoints[target as string];
      expect(ep, `${name}: entrypoint`).toMatch(/^\/(app\/deploy|usr\/local\/bin)\/[a-z-]+\.sh$/);
      const script = path.join(ROOT, 'deploy', path.basename(ep as string));
      expect(fs.existsSync(script), `${name}: ${script}`).toBe(true);
      scripts.add(path.basename(script));
    }
    expect([...scripts].sort()).toEqual(['agent.sh', 'certs-init.sh', 'gpsd.sh', 'node-net.sh', 'register.sh', 'server.sh', 'swtpm.sh', 'workload.sh']);
  });

  it('configures Keylime for mTLS with files deploy/certs-init.sh makes', async () => {
    const out = path.join(tmp.dir, 'pki');
    await run('bash', [path.join(ROOT, 'deploy', 'certs-init.sh'), out]);
    const certsVolume = svc(unified, 'certs-init').volumes?.find((v) => v.startsWith('pki:'))?.split(':')[1];
    expect(certsVolume).toBe('/pki');
    for (const [name, prefix] of [['keylime-verifier', 'KEYLIME_VERIFIER_'], ['keylime-registrar', 'KEYLIME_REGISTRAR_']] as const) {
      const env = svc(unified, name).environment ?? {};
      const tlsDir = env[`${prefix}TLS_DIR`];
      // The pki volume is mounted read-only at /etc/terroir/pki; certs-init writes keylime/ in it.
      expect(svc(unified, name).volumes).toContain('pki:/etc/terroir/pki:ro');
      expect(tlsDir).toBe('/etc/terroir/pki/keylime');
      const files = Object.entries(env).filter(([k]) => /_(SERVER|CLIENT)_(KEY|CERT)$/.test(k)).map(([, v]) => v);
      files.push(...Object.entries(env).filter(([k]) => k.endsWith('_CA')).flatMap(([, v]) => JSON.parse(v) as string[]));
      expect(files.length).toBeGreaterThanOrEqual(name === 'keylime-verifier' ? 6 : 3);
      for (const f of files) expect(fs.existsSync(path.join(out, 'keylime', f)), `${name}: ${f}`).toBe(true);
      expect(env[`${prefix}TRUSTED_CLIENT_CA`]).toBe('["ca.crt"]');
    }
  }, 30_000);

  it('wires server, agent and workloads the way the scripts expect', () => {
        // deploy/server.sh puts the admin socket at $TERROIR_DATA_DIR/admin/api.sock.
    const adminSocket = `${svc(compose, 'terroir-server').environment?.TERROIR_DATA_DIR}/admin/api.sock`;
    expect(svc(compose, 'terroir-server').healthcheck?.test).toContain(adminSocket);
    expect(svc(compose, 'register').environment?.TERROIR_ADMIN_SOCKET).toBe(adminSocket);
    // The bundle register.sh writes is the one the agent reads, through the shared volume.
    expect(svc(compose, 'register').environment?.TERROIR_BUNDLE_OUT).toBe(svc(compose, 'terroir-agent').environment?.TERROIR_BOOTSTRAP_BUNDLE);
    expect(svc(compose, 'terroir-agent').volumes).toContain('bootstrap:/var/lib/terroir/bootstrap:ro');
    // The agent's PID namespace hosts the workloads' processes too: an init reaps orphans there.
    expect(svc(compose, 'terroir-agent').init).toBe(true);
    // Workloads: their uid is what their entries select, they share the agent's PID namespace
    // (SO_PEERCRED pids) and its socket.
    const socket = `unix://${svc(compose, 'terroir-agent').environment?.TERROIR_AGENT_SOCKET_DIR}/api.sock`;
    for (const [w, sel] of [['workload-consumer', 'TERROIR_CONSUMER_SELECTOR'], ['workload-client', 'TERROIR_CLIENT_SELECTOR']] as const) {
      expect(svc(compose, w).pid).toBe('service:terroir-agent');
      expect(svc(compose, w).environment?.SPIFFE_ENDPOINT_SOCKET).toBe(socket);
      expect(svc(compose, 'register').environment?.[sel]).toBe(`unix:uid:${svc(compose, w).user?.split(':')[0]}`);
    }
    expect(svc(compose, 'terroir-agent').depends_on?.register?.condition).toBe('service_completed_successfully');
    expect(svc(compose, 'terroir-server').depends_on?.['certs-init']?.condition).toBe('service_completed_successfully');
  });

  it('wires Unified Identity: the server to the real Keylime verifier with certs-init\'s PKI, the agent to gpsd, the consumer to its policy', async () => {
    const server = svc(unified, 'terroir-server');
    const env = server.environment ?? {};
    // The verifier is the Keylime service on its own port, reached over the keylime network.
    const verifierPort = svc(unified, 'keylime-verifier').environment?.KEYLIME_VERIFIER_PORT;
    expect(env.TERROIR_KEYLIME_URL).toBe(`https://keylime-verifier:${verifierPort}`);
    expect(networksOf(server)).toContain('keylime');
    // No depends_on on Keylime (the plain stack must start without it): server.sh waits for the verifier.
    expect(server.depends_on?.['keylime-verifier']).toBeUndefined();
    // The CA and client certificate are files certs-init makes, in the pki volume the server mounts.
    const out = path.join(tmp.dir, 'pki-ui');
    await run('bash', [path.join(ROOT, 'deploy', 'certs-init.sh'), out]);
    expect(server.volumes).toContain('pki:/etc/terroir/pki:ro');
    for (const k of ['TERROIR_KEYLIME_CA', 'TERROIR_KEYLIME_CERT', 'TERROIR_KEYLIME_KEY']) {
      const f = env[k] ?? '';
      expect(f, k).toMatch(/^\/etc\/terroir\/pki\//);
      expect(fs.existsSync(path.join(out, path.relative('/etc/terroir/pki', f))), `${k}: ${f}`).toBe(true);
    }
    // certs-init hands the client key to the server's group (it runs unprivileged, a member of that group).
    expect(svc(unified, 'certs-init').environment?.TERROIR_GID).toBe('10001');
    expect(svc(unified, 'certs-init').group_add).toContain('10001');
    expect(env.TERROIR_KEYLIME_MODE).toBe('oneshot');
    // The location policies ship in the image (COPY deploy), and the default policy is one of them.
    expect(env.TERROIR_LOCATION_POLICIES).toBe('/app/deploy/location-policies.yaml');
    const policies = YAML.parse(fs.readFileSync(path.join(ROOT, 'deploy', 'location-policies.yaml'), 'utf8')) as { policies: Record<string, unknown> };
    expect(Object.keys(policies.policies)).toContain(env.TERROIR_DEFAULT_POLICY);
    // Compose runs the real Keylime images: the development stand-in is never allowed.
    for (const [name, service] of Object.entries(unified.services)) {
      expect(Object.keys(service.environment ?? {}), name).not.toContain('TERROIR_KEYLIME_ALLOW_DEV_STANDIN');
      expect(Object.keys(service.environment ?? {}), name).not.toContain('CONSUMER_ALLOW_DEV_STANDIN');
    }
    // The agent reads gpsd on loopback: both join the node's network namespace, gpsd listens on loopback
    // only, and no other service is on it (issue 13: any peer reaching gpsd could answer as the receiver).
    const agent = svc(unified, 'terroir-agent');
    const gpsd = svc(unified, 'gpsd');
    expect(agent.environment?.TERROIR_GPSD_HOST).toBe('127.0.0.1');
    expect(agent.environment?.TERROIR_GPSD_ALLOW_REMOTE).toBeUndefined();
    expect(agent.environment?.TERROIR_GPSD_PORT).toBe(gpsd.environment?.GPSD_PORT);
    expect(agent.network_mode).toBe('service:node');
    expect(gpsd.network_mode).toBe('service:node');
    expect(gpsd.environment?.GPSD_LISTEN_ALL).toBe('0');
    expect(gpsd.networks).toBeUndefined();
    expect(gpsd.ports).toBeUndefined();
    expect(Object.entries(unified.services).filter(([, s]) => s.network_mode === 'service:node').map(([n]) => n).sort()).toEqual(['gpsd', 'terroir-agent']);
    expect(Object.entries(unified.services).filter(([, s]) => s.network_mode === 'service:gpsd' || s.network_mode === 'service:terroir-agent')).toEqual([]);
    // The namespace's holder only waits, and keeps the agent's name on the default network.
    const node = svc(unified, 'node');
    expect(node.entrypoint).toEqual(['/app/deploy/node-net.sh']);
    expect(node.ports).toBeUndefined();
    expect(networksOf(node).sort()).toEqual(['default', 'tpm']);
    expect((node.networks as Record<string, { aliases?: string[] }>).default?.aliases).toEqual(['terroir-agent']);
    // No depends_on on gpsd (the plain stack must start without it): agent.sh waits for it with the flag on.
    expect(agent.depends_on?.gpsd).toBeUndefined();
    expect(svc(unified, 'gpsd').environment).toMatchObject({ GPS_LAT: '48.8566', GPS_LON: '2.3522' });
    // The consumer gets the flag and its requirement from the env file.
    expect(svc(unified, 'workload-consumer').environment).toMatchObject({ UNIFIED_IDENTITY_ENABLED: 'true', CONSUMER_REQUIRE_REGION: 'EU', CONSUMER_REQUIRE_POLICY: 'eu' });
  }, 30_000);

  it('wires Keylime continuous mode: one mode for server and agent, the agent\'s quote endpoint reachable by the verifier with certs-init\'s material', async () => {
    const envFile = path.join(tmp.dir, 'continuous.env');
    fs.writeFileSync(envFile, 'UNIFIED_IDENTITY_ENABLED=true\nTERROIR_KEYLIME_MODE=continuous\n');
    const c = await composeConfig(['--env-file', envFile, '--profile', 'unified']);
    const [server, agent, verifier, init] = (['terroir-server', 'terroir-agent', 'keylime-verifier', 'certs-init'] as const).map((n) => svc(c, n));
    // The env file switches both: a server enrolling nodes whose agents serve no endpoint would refuse them all.
    expect(server?.environment?.TERROIR_KEYLIME_MODE).toBe('continuous');
    expect(agent?.environment?.TERROIR_KEYLIME_MODE).toBe('continuous');
    expect(agent?.environment?.TERROIR_KEYLIME_QUOTE_PORT).toMatch(/^\d+$/);
    expect(server?.environment?.TERROIR_KEYLIME_QUOTE_PORT).toBe(agent?.environment?.TERROIR_KEYLIME_QUOTE_PORT);

    // The verifier dials the address the agent attested from: the one network agent and server share,
    // which the verifier must be on too.
    expect(server?.environment?.TERROIR_KEYLIME_QUOTE_ADDRESS).toBe('source');
    const shared = reachableOn(c, agent as Service).filter((n) => networksOf(server as Service).includes(n));
    expect(shared).toHaveLength(1);
    expect(networksOf(verifier as Service)).toContain(shared[0]);
    expect(agent?.environment?.TERROIR_KEYLIME_QUOTE_BIND).toBe('0.0.0.0');
    expect(agent?.environment?.TERROIR_KEYLIME_QUOTE_ADVERTISE).toBe('terroir-agent');

    // The agent's files come from certs-init through the agent-pki volume; the agent never mounts the
    // pki volume (it runs as root and would read the Keylime CA key).
    expect(init?.volumes).toContain('agent-pki:/pki/agent:rw');
    expect(agent?.volumes).toContain('agent-pki:/etc/terroir/agent-pki:ro');
    expect(agent?.volumes?.some((v) => v.startsWith('pki:'))).toBe(false);
    expect(agent?.depends_on?.['certs-init']?.condition).toBe('service_completed_successfully');
    const out = path.join(tmp.dir, 'pki-continuous');
    await run('bash', [path.join(ROOT, 'deploy', 'certs-init.sh'), out], { env: { ...process.env, ...init?.environment } });
    const inAgentPki = (k: string): string => {
      const f = agent?.environment?.[k] ?? '';
      expect(f, k).toMatch(/^\/etc\/terroir\/agent-pki\//);
      return path.join(out, 'agent', path.relative('/etc/terroir/agent-pki', f));
    };
    const [cert, key, clientCa] = ['TERROIR_KEYLIME_QUOTE_CERT', 'TERROIR_KEYLIME_QUOTE_KEY', 'TERROIR_KEYLIME_QUOTE_CLIENT_CA'].map(inAgentPki) as [string, string, string];
    for (const f of [cert, key, clientCa]) expect(fs.existsSync(f), f).toBe(true);
    expect(fs.readdirSync(path.join(out, 'agent')).sort()).toEqual(['quote-endpoint.crt', 'quote-endpoint.key', 'verifier-client-ca.crt']);
    // The endpoint's certificate names the service, and the verifier's client certificate (what it pulls
    // quotes with, agent mTLS on) is issued by the CA the endpoint accepts.
    expect(spawnSync('openssl', ['x509', '-in', cert, '-noout', '-ext', 'subjectAltName']).stdout.toString()).toContain('DNS:terroir-agent');
    const venv = verifier?.environment ?? {};
    expect(venv.KEYLIME_VERIFIER_ENABLE_AGENT_MTLS).toBe('True');
    const pull = path.join(out, 'keylime', venv.KEYLIME_VERIFIER_CLIENT_CERT ?? '');
    const v = spawnSync('openssl', ['verify', '-CAfile', clientCa, pull]);
    expect(v.stdout.toString().trim(), v.stderr.toString()).toBe(`${pull}: OK`);
  }, 30_000);

  it('the env file turns Unified Identity on for server, agent and consumer together, and sets the place and the policy', async () => {
    const envFile = path.join(tmp.dir, 'ui.env');
    fs.writeFileSync(envFile, 'UNIFIED_IDENTITY_ENABLED=true\nTERROIR_DEFAULT_POLICY=fr\nGPS_LAT=52.52\nGPS_LON=13.405\nCONSUMER_REQUIRE_COUNTRY=DE\n');
    const on = await composeConfig(['--env-file', envFile, '--profile', 'unified']);
    for (const s of ['terroir-server', 'terroir-agent', 'workload-consumer']) expect(svc(on, s).environment?.UNIFIED_IDENTITY_ENABLED, s).toBe('true');
    expect(svc(on, 'terroir-server').environment?.TERROIR_DEFAULT_POLICY).toBe('fr');
    expect(svc(on, 'gpsd').environment).toMatchObject({ GPS_LAT: '52.52', GPS_LON: '13.405' });
    expect(svc(on, 'workload-consumer').environment?.CONSUMER_REQUIRE_COUNTRY).toBe('DE');
  }, 30_000);

  it('says nothing is pending any more: no "issue 8" left in the compose file, the env file, the Dockerfile or deploy/', () => {
    const files = ['docker-compose.yml', 'Dockerfile', 'deploy/.env.example', ...fs.readdirSync(path.join(ROOT, 'deploy'), { recursive: true, encoding: 'utf8' })
      .map((f) => path.join('deploy', f)).filter((f) => fs.statSync(path.join(ROOT, f)).isFile())];
    for (const f of files) expect(fs.readFileSync(path.join(ROOT, f), 'utf8'), f).not.toMatch(/issue 8|pending/i);
  });

  it('the Dockerfile only copies paths that exist and that .dockerignore lets through', () => {
    const ignored = fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    const copies = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').split('\n')
      .filter((l) => l.startsWith('COPY ') && !l.includes('--from='))
      .flatMap((l) => l.split(/\s+/).slice(1, -1));
    expect(copies).toEqual(expect.arrayContaining(['package.json', 'package-lock.json', 'src', 'native', 'feature-flags', 'proto', 'deploy', 'swtpm']));
    for (const src of copies) {
      expect(fs.existsSync(path.join(ROOT, src)), src).toBe(true);
      expect(ignored, `${src} is excluded by .dockerignore`).not.toContain(src);
    }
    // Local state and keys never enter the build context.
    expect(ignored).toEqual(expect.arrayContaining(['node_modules', 'dist', '.git', '**/*.key']));
  });
});
