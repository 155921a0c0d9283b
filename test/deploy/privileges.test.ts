// Least privilege in the images and the compose stack (issue 19): no Dockerfile target runs as root
// (numeric users; the agent's group is tss, the TPM device's), none carries gpsfake/gpsd-clients (GTK)
// or a compiler; every compose service runs read-only with its writable places listed, all
// capabilities dropped and no-new-privileges; certs-init, unprivileged, still hands each key to the
// one service that reads it.
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const tmp = tempDir('terroir-deploy-privileges-');
afterAll(() => tmp.cleanup());

interface Service {
  image?: string;
  build?: { target?: string };
  user?: string;
  read_only?: boolean;
  cap_drop?: string[];
  cap_add?: string[];
  security_opt?: string[];
  privileged?: boolean;
  tmpfs?: string[] | string;
  volumes?: string[];
  group_add?: string[];
  environment?: Record<string, string>;
}

interface Target { from: string; user?: string; installs: string[] }

/** Each Dockerfile stage: its base, its last USER, and the packages its apt-get install lines name. */
function dockerfileTargets(): Record<string, Target> {
  const out: Record<string, Target> = {};
  let cur: Target | undefined;
  const text = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  for (const line of text.split('\n')) {
    const from = /^FROM (\S+) AS (\S+)/.exec(line);
    if (from) {
      cur = { from: from[1] ?? '', installs: [] };
      out[from[2] ?? ''] = cur;
      continue;
    }
    if (cur === undefined) continue;
    const user = /^USER (\S+)/.exec(line);
    if (user) cur.user = user[1];
    const apt = /apt-get install ([^&]*)/.exec(line);
    if (apt) cur.installs.push(...(apt[1] ?? '').split(/\s+/).filter((w) => w && !w.startsWith('-')));
  }
  return out;
}

/** A target's packages, its bases' included (FROM another stage inherits them). */
function installsOf(targets: Record<string, Target>, name: string): string[] {
  const t = targets[name];
  if (t === undefined) return [];
  return [...t.installs, ...(t.from in targets && t.from !== name ? installsOf(targets, t.from) : [])];
}

/** A target's effective user: its own USER, else its base stage's. */
function userOf(targets: Record<string, Target>, name: string): string | undefined {
  const t = targets[name];
  if (t === undefined) return undefined;
  return t.user ?? (t.from in targets ? userOf(targets, t.from) : undefined);
}

let services: Record<string, Service>;
beforeAll(async () => {
  // Every service, the unified profile's included.
  const { stdout } = await run('docker-compose', ['-f', path.join(ROOT, 'docker-compose.yml'), '--project-directory', ROOT,
    '--env-file', path.join(ROOT, 'deploy', 'unified.env'), '--profile', 'unified', 'config'], { cwd: ROOT });
  services = (YAML.parse(stdout) as { services: Record<string, Service> }).services;
}, 30_000);

describe('Dockerfile', () => {
  it('runs no target as root: a numeric uid in every image compose uses, group tss only for the agent (the TPM device)', () => {
    const targets = dockerfileTargets();
    const used = [...new Set(Object.values(services).map((s) => s.build?.target).filter((t): t is string => t !== undefined))].sort();
    expect(used).toEqual(['agent', 'certs', 'gpsd', 'server', 'swtpm', 'workload']);
    const users = Object.fromEntries(used.map((t) => [t, userOf(targets, t)]));
    expect(users).toEqual({
      agent: '10005:tss', certs: '10004:10004', gpsd: '10003:10003', server: '10001:10001', swtpm: '10002:10002', workload: '65534:65534',
    });
    for (const [t, u] of Object.entries(users)) {
      const [uid, gid] = (u ?? '').split(':');
      expect(Number(uid), t).toBeGreaterThan(0);
      expect(gid === 'tss' ? t : Number(gid) > 0, t).toBe(gid === 'tss' ? 'agent' : true);
    }
  });

  it('puts no gpsfake / gpsd-clients (GTK), Python tooling or compiler in an image; production dependencies only', () => {
    // (tpm2-tools stays in the agent image: the operator's tool for the continuous-mode demo.)
    const targets = dockerfileTargets();
    for (const t of ['agent', 'certs', 'gpsd', 'gpsd-bin', 'server', 'swtpm', 'workload']) {
      const pkgs = installsOf(targets, t);
      expect(pkgs.filter((p) => /^(gpsd-clients|python3(-gps)?|g\+\+|gcc|make|build-essential|libgtk.*|gpsfake)$/.test(p)), t).toEqual([]);
    }
    // Debian's gpsd (which depends on python3, for ubxtool) is installed in gpsd-bin only; the gpsd image
    // gets the daemon and the libraries it links, and Node, on debian-slim (no dist/ or node_modules).
    expect(installsOf(targets, 'gpsd-bin')).toContain('gpsd');
    // The final Node images are debian-slim with the node binary; no stage of them is the build stage.
    const text = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    expect(text).toMatch(/^COPY --from=gpsd-bin \/out\/ \/$/m);
    expect(installsOf(targets, 'gpsd')).toEqual([]);
    expect(text).toMatch(/npm ci --omit=dev/);
    expect(targets.runtime?.from).toBe('${DEBIAN_IMAGE}');
    for (const t of ['certs', 'swtpm', 'gpsd', 'gpsd-bin']) expect(targets[t]?.from, t).toBe('${DEBIAN_IMAGE}');
    expect(text).toMatch(/COPY --from=node \/usr\/local\/bin\/node /);
    expect(text).not.toMatch(/COPY --from=build \/app\/node_modules/);
  });
});

describe('docker-compose.yml', () => {
  it('runs every service read-only, with all capabilities dropped, no-new-privileges, unprivileged', () => {
    // Eleven services, and Prometheus in the monitoring profile: every one of them is checked below.
    expect(Object.keys(services).length).toBe(12);
    for (const [name, s] of Object.entries(services)) {
      expect(s.read_only, `${name}: read_only`).toBe(true);
      expect(s.cap_drop, `${name}: cap_drop`).toEqual(['ALL']);
      // Nothing is added back: no service needs a capability (certs-init hands keys over by group).
      expect(s.cap_add, `${name}: cap_add`).toBeUndefined();
      expect(s.security_opt, `${name}: security_opt`).toContain('no-new-privileges:true');
      expect(s.privileged, name).toBeUndefined();
      if (s.user !== undefined) expect(Number(s.user.split(':')[0]), `${name}: user`).toBeGreaterThan(0);
      const tmpfs = Array.isArray(s.tmpfs) ? s.tmpfs : [s.tmpfs ?? ''];
      expect(tmpfs.some((t) => t.startsWith('/tmp')), `${name}: a tmpfs /tmp`).toBe(true);
    }
  });

  it('gives each service a volume for every place its script writes, and nothing else writable', () => {
    /** Writable mount points of a service (named volumes not :ro). */
    const writable = (n: string): string[] => (services[n]?.volumes ?? []).filter((v) => !v.endsWith(':ro')).map((v) => v.split(':')[1] ?? '');
    const expected: Record<string, string[]> = {
      'certs-init': ['/pki', '/pki/agent'],
      'keylime-registrar': ['/var/lib/keylime'],
      'keylime-verifier': ['/var/lib/keylime'],
      swtpm: ['/var/lib/terroir/swtpm/state', '/var/lib/terroir/swtpm/ca'],
      'terroir-server': ['/var/lib/terroir/server'],
      register: ['/var/lib/terroir/server', '/var/lib/terroir/bootstrap'],
      'terroir-agent': ['/var/lib/terroir/agent', '/run/terroir'],
      node: [], gpsd: [], 'workload-consumer': [], 'workload-client': [],
    };
    for (const [n, dirs] of Object.entries(expected)) expect(writable(n).sort(), n).toEqual([...dirs].sort());
    // The scripts' data directories are those volumes.
    expect(services['terroir-server']?.environment?.TERROIR_DATA_DIR).toBe('/var/lib/terroir/server');
    expect(services['terroir-agent']?.environment?.TERROIR_AGENT_SOCKET_DIR).toBe('/run/terroir');
    // The image creates each terroir mount point owned by its user, so a fresh named volume is theirs.
    const text = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
    for (const [n, dirs] of Object.entries(expected)) {
      if (n.startsWith('keylime')) continue;
      for (const d of dirs) expect(text.split(/\s+/), `${n}: the Dockerfile makes ${d}`).toContain(d);
    }
  });

  it('the agent is in group 10005, whose members alone (with certs-init) read the quote endpoint key', () => {
    expect(services['terroir-agent']?.group_add).toEqual(['10005']);
    expect(services['certs-init']?.group_add?.sort()).toEqual(['10001', '10005']);
    expect(services['certs-init']?.environment).toMatchObject({ TERROIR_GID: '10001', TERROIR_AGENT_GID: '10005' });
  });
});

describe('deploy/certs-init.sh unprivileged (as compose runs it)', () => {
  it('as uid 10004 in groups 10001 and 10005: the server\'s group reads its client key, the agent\'s its endpoint key, nobody else any key', () => {
    if (process.getuid?.() !== 0) return; // setpriv to other uids needs root (the tests run as root here and in CI)
    const out = path.join(tmp.dir, 'pki');
    fs.mkdirSync(out);
    fs.chownSync(out, 10004, 10004);
    fs.chmodSync(tmp.dir, 0o755);
    const r = spawnSync('setpriv', ['--reuid', '10004', '--regid', '10004', '--groups', '10001,10005', 'env', 'TERROIR_GID=10001', 'TERROIR_AGENT_GID=10005',
      'bash', path.join(ROOT, 'deploy', 'certs-init.sh'), out]);
    expect(r.status, r.stderr.toString()).toBe(0);
    const canRead = (uid: number, gid: number, f: string): boolean =>
      spawnSync('setpriv', ['--reuid', String(uid), '--regid', String(gid), '--clear-groups', 'cat', path.join(out, f)]).status === 0;
    expect(canRead(10001, 10001, 'keylime/terroir-client.key')).toBe(true);
    expect(canRead(10001, 10001, 'keylime/ca.key')).toBe(false);
    expect(canRead(10001, 10001, 'agent/quote-endpoint.key')).toBe(false);
    expect(canRead(10005, 10005, 'agent/quote-endpoint.key')).toBe(true);
    expect(canRead(10005, 10005, 'keylime/terroir-client.key')).toBe(false);
    expect(canRead(10005, 10005, 'keylime/ca.key')).toBe(false);
    expect(canRead(65534, 65534, 'keylime/verifier.key')).toBe(false);
    expect(canRead(65534, 65534, 'keylime/ca.crt')).toBe(true);
    // Run again (a restarted init container): the material is kept and the groups still hold.
    const again = spawnSync('setpriv', ['--reuid', '10004', '--regid', '10004', '--groups', '10001,10005', 'env', 'TERROIR_GID=10001', 'TERROIR_AGENT_GID=10005',
      'bash', path.join(ROOT, 'deploy', 'certs-init.sh'), out]);
    expect(again.status, again.stderr.toString()).toBe(0);
    expect(canRead(10005, 10005, 'agent/quote-endpoint.key')).toBe(true);
  }, 60_000);
});
