// docker-compose.yml must stay valid (`docker-compose config`, the Debian package, no engine needed)
// and consistent with what the native tests run: every terroir service's entrypoint is a deploy/
// script, the Keylime services name files that deploy/certs-init.sh makes, and the flag comes from
// the env file.
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
  healthcheck?: { test: string[] };
  init?: boolean;
  depends_on?: Record<string, { condition: string }>;
}
interface Compose { services: Record<string, Service>; volumes: Record<string, unknown> }

/** `docker-compose config` with an env file; fails naming the Debian package when the tool is absent. */
async function composeConfig(envFile: string): Promise<Compose> {
  if (spawnSync('sh', ['-c', 'command -v docker-compose']).status !== 0) {
    throw new Error('docker-compose is not installed: apt-get install --no-install-recommends docker-compose (Debian package docker-compose)');
  }
  const { stdout } = await run('docker-compose', ['-f', path.join(ROOT, 'docker-compose.yml'), '--project-directory', ROOT, '--env-file', envFile, 'config'], { cwd: ROOT });
  return YAML.parse(stdout) as Compose;
}

/** A service that must exist (a missing one fails the test with its name). */
function svc(c: Compose, name: string): Service {
  const found = c.services[name];
  if (found === undefined) throw new Error(`docker-compose.yml has no service ${name}`);
  return found;
}

let compose: Compose;
beforeAll(async () => {
  compose = await composeConfig(path.join(ROOT, 'deploy', '.env.example'));
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
  it('passes docker-compose config with deploy/.env.example and has every service of the deployment', () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      'certs-init', 'gpsd', 'keylime-registrar', 'keylime-verifier', 'register', 'swtpm', 'terroir-agent', 'terroir-server', 'workload-client', 'workload-consumer',
    ]);
    expect(svc(compose, 'keylime-verifier').image).toBe('quay.io/keylime/keylime_verifier:v7.14.3');
    expect(svc(compose, 'keylime-registrar').image).toBe('quay.io/keylime/keylime_registrar:v7.14.3');
    expect(svc(compose, 'terroir-server').volumes).toContainEqual(expect.stringMatching(/^server-data:\/var\/lib\/terroir\/server/));
  });

  it('takes UNIFIED_IDENTITY_ENABLED (and the trust domain) from the env file, for server and agent', async () => {
    for (const s of ['terroir-server', 'terroir-agent']) expect(svc(compose, s).environment?.UNIFIED_IDENTITY_ENABLED).toBe('false');
    const env = path.join(tmp.dir, 'on.env');
    fs.writeFileSync(env, 'UNIFIED_IDENTITY_ENABLED=true\nTERROIR_TRUST_DOMAIN=edge.example\n');
    const on = await composeConfig(env);
    for (const s of ['terroir-server', 'terroir-agent']) {
      expect(svc(on, s).environment?.UNIFIED_IDENTITY_ENABLED).toBe('true');
      expect(svc(on, s).environment?.TERROIR_TRUST_DOMAIN).toBe('edge.example');
    }
    expect(svc(on, 'register').environment?.TERROIR_TRUST_DOMAIN).toBe('edge.example');
  }, 30_000);

  it('runs every terroir service through a deploy/ script that exists (the scripts test/deploy runs natively)', () => {
    const entrypoints = dockerfileEntrypoints();
    const scripts = new Set<string>();
    for (const [name, service] of Object.entries(compose.services)) {
      if (service.image?.startsWith('quay.io/keylime/')) continue;
      const target = service.build?.target;
      expect(target, `${name} has a build target`).toBeDefined();
      const ep = service.entrypoint?.[0] ?? entrypoints[target as string];
      expect(ep, `${name}: entrypoint`).toMatch(/^\/(app\/deploy|usr\/local\/bin)\/[a-z-]+\.sh$/);
      const script = path.join(ROOT, 'deploy', path.basename(ep as string));
      expect(fs.existsSync(script), `${name}: ${script}`).toBe(true);
      scripts.add(path.basename(script));
    }
    expect([...scripts].sort()).toEqual(['agent.sh', 'certs-init.sh', 'gpsd.sh', 'register.sh', 'server.sh', 'swtpm.sh', 'workload.sh']);
  });

  it('configures Keylime for mTLS with files deploy/certs-init.sh makes', async () => {
    const out = path.join(tmp.dir, 'pki');
    await run('bash', [path.join(ROOT, 'deploy', 'certs-init.sh'), out]);
    const certsVolume = svc(compose, 'certs-init').volumes?.find((v) => v.startsWith('pki:'))?.split(':')[1];
    expect(certsVolume).toBe('/pki');
    for (const [name, prefix] of [['keylime-verifier', 'KEYLIME_VERIFIER_'], ['keylime-registrar', 'KEYLIME_REGISTRAR_']] as const) {
      const env = svc(compose, name).environment ?? {};
      const tlsDir = env[`${prefix}TLS_DIR`];
      // The pki volume is mounted read-only at /etc/terroir/pki; certs-init writes keylime/ in it.
      expect(svc(compose, name).volumes).toContain('pki:/etc/terroir/pki:ro');
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
