// deploy/kubernetes/ (issue 19, part 4): each overlay rendered by kustomize (`kubectl kustomize`,
// which scripts/setup.sh installs), every object checked offline against the Kubernetes API schemas
// (kubernetes-models' compiled validators, plus unknown fields, as `kubectl --validate=strict` would
// refuse them), the security properties the manifests claim, and the ConfigMaps' server.yaml and
// agent.yaml loaded with terroir's own config loaders, every file they name provided by a mount.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import YAML from 'yaml';
import { AgentConfigError, loadAgentConfig, type AgentConfig } from '../../src/agent/config.js';
import { parsePolicies } from '../../src/geo/policy.js';
import { ConfigError, loadServerConfig, type ServerConfig } from '../../src/server/config.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const K8S = path.join(ROOT, 'deploy', 'kubernetes');
const tmp = tempDir('terroir-deploy-k8s-');
afterAll(() => tmp.cleanup());
afterEach(() => {
  vi.restoreAllMocks();
});

const OVERLAYS = ['plain', 'unified', 'postgres-ha'] as const;
type Overlay = typeof OVERLAYS[number];

type Json = Record<string, unknown>;
interface Meta { name: string; namespace?: string; labels?: Record<string, string> }
interface K8sObject extends Json { apiVersion: string; kind: string; metadata: Meta }

interface KeyPath { key: string; path: string }
interface Volume {
  name: string;
  configMap?: { name: string; items?: KeyPath[] };
  secret?: { secretName: string; items?: KeyPath[]; defaultMode?: number };
  emptyDir?: Json;
  hostPath?: { path: string; type?: string };
  persistentVolumeClaim?: Json;
}
interface VolumeMount { name: string; mountPath: string; readOnly?: boolean }
interface EnvVar { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { name: string; key: string } } }
interface Probe { httpGet?: { path: string; port: string | number }; exec?: { command: string[] }; tcpSocket?: { port: string | number } }
interface SecurityContext {
  runAsNonRoot?: boolean; runAsUser?: number; runAsGroup?: number; privileged?: boolean; allowPrivilegeEscalation?: boolean;
  readOnlyRootFilesystem?: boolean; capabilities?: { drop?: string[]; add?: string[] }; seccompProfile?: { type: string };
}
interface Container {
  name: string; image: string; command?: string[]; env?: EnvVar[]; restartPolicy?: string;
  ports?: { name?: string; containerPort: number }[];
  startupProbe?: Probe; livenessProbe?: Probe; readinessProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: SecurityContext; volumeMounts?: VolumeMount[];
}
interface PodSpec {
  serviceAccountName?: string; automountServiceAccountToken?: boolean;
  hostPID?: boolean; hostNetwork?: boolean; hostIPC?: boolean;
  securityContext?: SecurityContext & { fsGroup?: number; fsGroupChangePolicy?: string };
  initContainers?: Container[]; containers: Container[]; volumes?: Volume[];
}
interface Workload extends K8sObject {
  spec: { replicas?: number; template: { metadata: Meta; spec: PodSpec }; volumeClaimTemplates?: { metadata: { name: string } }[] };
}

// ---- rendering ---------------------------------------------------------------------------------------

const KUBECTL = process.env['TERROIR_KUBECTL'] ?? 'kubectl';

async function kustomize(dir: string): Promise<K8sObject[]> {
  let stdout: string;
  try {
    ({ stdout } = await run(KUBECTL, ['kustomize', dir], { maxBuffer: 16 * 1024 * 1024 }));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new Error(`${KUBECTL} not found: scripts/setup.sh installs kubectl (its built-in kustomize renders deploy/kubernetes/)`, { cause: e });
    }
    throw e;
  }
  return YAML.parseAllDocuments(stdout).map((d) => d.toJS() as K8sObject);
}

const rendered = {} as Record<Overlay, K8sObject[]>;
beforeAll(async () => {
  const all = await Promise.all(OVERLAYS.map((o) => kustomize(path.join(K8S, 'overlays', o))));
  OVERLAYS.forEach((o, i) => { rendered[o] = all[i] ?? []; });
}, 30_000);

function find<T extends K8sObject = K8sObject>(o: Overlay, kind: string, name: string): T {
  const hit = rendered[o].find((x) => x.kind === kind && x.metadata.name === name);
  if (!hit) throw new Error(`${o}: no ${kind} ${name}`);
  return hit as T;
}
const workloads = (o: Overlay): Workload[] => rendered[o].filter((x): x is Workload => ['StatefulSet', 'DaemonSet', 'Deployment'].includes(x.kind));
const allContainers = (p: PodSpec): Container[] => [...p.initContainers ?? [], ...p.containers];
const container = (w: Workload, name: string): Container => {
  const c = allContainers(w.spec.template.spec).find((x) => x.name === name);
  if (!c) throw new Error(`${w.metadata.name}: no container ${name}`);
  return c;
};

// ---- schema validation ---------------------------------------------------------------------------------

interface SchemaError { instancePath: string; keyword: string; params: Json }
interface CompiledSchema { (data: unknown): boolean; errors?: SchemaError[] | null }

/** apiVersion/kind → its definition in the Kubernetes OpenAPI (kubernetes-models' _schemas module). */
const SCHEMAS: Record<string, string> = {
  'v1/Namespace': 'IoK8sApiCoreV1Namespace',
  'v1/ServiceAccount': 'IoK8sApiCoreV1ServiceAccount',
  'v1/ConfigMap': 'IoK8sApiCoreV1ConfigMap',
  'v1/Service': 'IoK8sApiCoreV1Service',
  'apps/v1/StatefulSet': 'IoK8sApiAppsV1StatefulSet',
  'apps/v1/DaemonSet': 'IoK8sApiAppsV1DaemonSet',
  'apps/v1/Deployment': 'IoK8sApiAppsV1Deployment',
  'rbac.authorization.k8s.io/v1/ClusterRole': 'IoK8sApiRbacV1ClusterRole',
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': 'IoK8sApiRbacV1ClusterRoleBinding',
  'networking.k8s.io/v1/NetworkPolicy': 'IoK8sApiNetworkingV1NetworkPolicy',
  'policy/v1/PodDisruptionBudget': 'IoK8sApiPolicyV1PodDisruptionBudget',
};

async function schemaFor(obj: { apiVersion: string; kind: string }): Promise<CompiledSchema> {
  const name = SCHEMAS[`${obj.apiVersion}/${obj.kind}`];
  if (name === undefined) throw new Error(`no schema known for ${obj.apiVersion} ${obj.kind}: add it to SCHEMAS`);
  return ((await import(`kubernetes-models/_schemas/${name}`)) as { validate: CompiledSchema }).validate;
}

/**
 * What the schema finds wrong with obj (types, required fields, formats, enums), plus every field it
 * does not define. The compiled validators read each property their schema defines (and every entry
 * of a map), so a key of the object that the validator never read is one the API does not know and
 * would drop or refuse (`kubectl apply --validate=strict`).
 */
async function schemaProblems(obj: Json & { apiVersion: string; kind: string }): Promise<string[]> {
  const validate = await schemaFor(obj);
  const read = new WeakMap<object, Set<PropertyKey>>();
  const proxies = new WeakMap<object, object>();
  const watch = (v: unknown): unknown => {
    if (v === null || typeof v !== 'object') return v;
    let p = proxies.get(v);
    if (p === undefined) {
      const seen = new Set<PropertyKey>();
      read.set(v, seen);
      p = new Proxy(v, { get: (t, k, r) => { seen.add(k); return watch(Reflect.get(t, k, r)); } });
      proxies.set(v, p);
    }
    return p;
  };
  const problems = validate(watch(obj)) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath || '/'}: ${e.keyword} ${JSON.stringify(e.params)}`);
  const unknown = (v: unknown, at: string): void => {
    if (v === null || typeof v !== 'object') return;
    if (Array.isArray(v)) { v.forEach((x, i) => unknown(x, `${at}/${i}`)); return; }
    const seen = read.get(v);
    for (const [k, x] of Object.entries(v)) {
      if (!seen?.has(k)) problems.push(`${at}/${k}: not a field of the Kubernetes API`);
      else unknown(x, `${at}/${k}`);
    }
  };
  unknown(obj, '');
  return problems;
}

// ---- what a pod's containers see -------------------------------------------------------------------------

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';
interface Mounted { at: string; writable: boolean; files?: string[]; source: string }

/** The filesystem a container gets from its volumes: files (ConfigMap/Secret keys) and writable directories. */
function mountsOf(o: Overlay, w: Workload, c: Container): Mounted[] {
  const pod = w.spec.template.spec;
  const claims = new Set((w.spec.volumeClaimTemplates ?? []).map((t) => t.metadata.name));
  const out: Mounted[] = (c.volumeMounts ?? []).map((m) => {
    const v = pod.volumes?.find((x) => x.name === m.name);
    if (v === undefined && claims.has(m.name)) return { at: m.mountPath, writable: !m.readOnly, source: `pvc ${m.name}` };
    if (v === undefined) throw new Error(`${w.metadata.name}/${c.name}: volumeMount ${m.name} has no volume`);
    if (v.configMap) {
      // Generated ConfigMaps are in the render (their keys are the files); others are the operator's and must list items.
      const cm = rendered[o].find((x) => x.kind === 'ConfigMap' && x.metadata.name === v.configMap?.name) as (K8sObject & { data?: Json }) | undefined;
      const files = v.configMap.items?.map((i) => i.path) ?? (cm ? Object.keys(cm.data ?? {}) : undefined);
      if (files === undefined) throw new Error(`${w.metadata.name}: ConfigMap ${v.configMap.name} is not generated here and its volume lists no items`);
      return { at: m.mountPath, writable: false, files, source: `configMap ${v.configMap.name}` };
    }
    if (v.secret) {
      if (!v.secret.items) throw new Error(`${w.metadata.name}: Secret volume ${v.name} must list its items`);
      return { at: m.mountPath, writable: false, files: v.secret.items.map((i) => i.path), source: `secret ${v.secret.secretName}` };
    }
    if (v.emptyDir || v.hostPath || v.persistentVolumeClaim) return { at: m.mountPath, writable: !m.readOnly, source: v.name };
    throw new Error(`${w.metadata.name}: volume ${v.name} of an unexpected type`);
  });
  if (pod.automountServiceAccountToken !== false) out.push({ at: SA_DIR, writable: false, files: ['token', 'ca.crt', 'namespace'], source: 'service account' });
  return out;
}
const provides = (mounts: Mounted[], file: string): boolean => mounts.some((m) => m.files?.some((f) => path.posix.join(m.at, f) === file));
const writableDir = (mounts: Mounted[], dir: string): boolean => mounts.some((m) => m.writable && (dir === m.at || dir.startsWith(`${m.at}/`)));

/** A container's environment as its process sees it: the image's ENV (Dockerfile `runtime`), then env:. */
function envOf(c: Container): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { NODE_ENV: 'production' };
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.secretKeyRef) env[e.name] = `secret:${e.valueFrom.secretKeyRef.name}/${e.valueFrom.secretKeyRef.key}`;
    else if (e.valueFrom?.fieldRef) env[e.name] = `field:${e.valueFrom.fieldRef.fieldPath}`;
  }
  return env;
}

/** The text of one key of the ConfigMap a volume of w names (after kustomize's renaming). */
function configMapText(o: Overlay, w: Workload, volume: string, key: string): string {
  const name = w.spec.template.spec.volumes?.find((v) => v.name === volume)?.configMap?.name;
  const text = (find(o, 'ConfigMap', name ?? '') as K8sObject & { data: Record<string, string> }).data[key];
  if (text === undefined) throw new Error(`${o}: ConfigMap ${name} has no ${key}`);
  return text;
}

/** The value of `-c FILE` in a container's command. */
function configArg(c: Container): string {
  const cmd = c.command ?? [];
  return cmd[cmd.indexOf('-c') + 1] ?? '';
}

/**
 * server.yaml of an overlay, loaded by terroir-server's own loader with the container's environment;
 * a file the config names is readable only if one of the container's mounts provides it.
 */
function loadServer(o: Overlay, mutate?: (text: string) => string): { config: ServerConfig; mounts: Mounted[] } {
  const sts = find<Workload>(o, 'StatefulSet', 'terroir-server');
  const c = container(sts, 'terroir-server');
  const mounts = mountsOf(o, sts, c);
  const file = configArg(c);
  expect(provides(mounts, file), `${o}: ${file} is mounted`).toBe(true);
  const text = configMapText(o, sts, 'config', path.posix.basename(file));
  const local = path.join(tmp.dir, `${o}-server.yaml`);
  fs.writeFileSync(local, mutate ? mutate(text) : text);
  vi.spyOn(fs, 'accessSync').mockImplementation((p) => {
    if (!provides(mounts, String(p))) throw Object.assign(new Error(`ENOENT: no mount of the pod provides ${String(p)}`), { code: 'ENOENT' });
  });
  try {
    return { config: loadServerConfig(local, envOf(c)), mounts };
  } finally {
    vi.restoreAllMocks();
  }
}

/**
 * agent.yaml of an overlay: the init container `config` run as is (its own shell script, on this
 * machine) on the ConfigMap's template with a node's name and address, then loaded by
 * terroir-agent's own loader with the agent container's environment.
 */
async function loadAgent(o: Overlay, hostIp = '10.0.0.7', template?: string): Promise<{ config: AgentConfig; mounts: Mounted[] }> {
  const ds = find<Workload>(o, 'DaemonSet', 'terroir-agent');
  const init = container(ds, 'config');
  const agent = container(ds, 'terroir-agent');
  const env = envOf(init);
  const src = env['TEMPLATE'] ?? '';
  const dst = env['CONFIG'] ?? '';
  expect(provides(mountsOf(o, ds, init), src), `${o}: the template ${src} is mounted`).toBe(true);
  expect(dst).toBe(configArg(agent));
  // The init container writes into the volume the agent reads its config from.
  const volAt = (c: Container, file: string): string | undefined =>
    c.volumeMounts?.find((m) => file.startsWith(`${m.mountPath}/`))?.name;
  expect(volAt(init, dst)).toBeDefined();
  expect(volAt(agent, dst)).toBe(volAt(init, dst));
  const dir = fs.mkdtempSync(path.join(tmp.dir, `${o}-agent-`));
  const localSrc = path.join(dir, 'template.yaml');
  const localDst = path.join(dir, 'agent.yaml');
  fs.writeFileSync(localSrc, template ?? configMapText(o, ds, 'config-template', path.posix.basename(src)));
  const script = init.command ?? [];
  expect(script.slice(0, 2)).toEqual(['/bin/sh', '-ec']);
  await run('/bin/sh', ['-ec', script[2] ?? '', 'config'], {
    env: { PATH: process.env['PATH'], NODE_NAME: 'edge-node-1', HOST_IP: hostIp, TEMPLATE: localSrc, CONFIG: localDst },
  });
  return { config: loadAgentConfig(localDst, envOf(agent)), mounts: mountsOf(o, ds, agent) };
}

// ---- the Dockerfile and compose, which name the images ---------------------------------------------------

/** Compose's image names → the uid of their Dockerfile target's USER. */
function imageUsers(): Record<string, number> {
  const users: Record<string, string> = {};
  let target = '';
  for (const line of fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8').split('\n')) {
    const from = /^FROM \S+ AS (\S+)/.exec(line);
    if (from) target = from[1] ?? '';
    const user = /^USER (\S+)/.exec(line);
    if (user) users[target] = user[1] ?? '';
  }
  const compose = YAML.parse(fs.readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8')) as
    { services: Record<string, { image?: string; build?: { target?: string } }> };
  const out: Record<string, number> = {};
  for (const s of Object.values(compose.services)) {
    const t = s.build?.target;
    if (s.image !== undefined && t !== undefined) out[s.image] = Number((users[t] ?? '').split(':')[0]);
  }
  return out;
}

// ---- the tests ----------------------------------------------------------------------------------------------

describe('kustomize renders every overlay', () => {
  it('with the objects each variant needs, all in namespace terroir', () => {
    const inventory = (o: Overlay): string[] => rendered[o].map((x) => `${x.kind}/${x.metadata.name.replace(/-[a-z0-9]{10}$/, '-<hash>')}`).sort();
    const base = [
      'ClusterRole/terroir-agent-kubelet', 'ClusterRoleBinding/terroir-agent-kubelet',
      'ConfigMap/terroir-agent-config-<hash>', 'ConfigMap/terroir-server-config-<hash>',
      'DaemonSet/terroir-agent', 'Namespace/terroir',
      'NetworkPolicy/default-deny-ingress', 'NetworkPolicy/terroir-server',
      'Service/terroir-server', 'Service/terroir-server-headless',
      'ServiceAccount/terroir-agent', 'ServiceAccount/terroir-server', 'StatefulSet/terroir-server',
    ];
    expect(inventory('plain')).toEqual(base);
    expect(inventory('unified')).toEqual([...base,
      'ConfigMap/terroir-location-policies-<hash>',
      'Deployment/keylime-registrar', 'Deployment/keylime-verifier',
      'NetworkPolicy/keylime-registrar', 'NetworkPolicy/keylime-verifier',
      'Service/keylime-registrar', 'Service/keylime-verifier',
    ].sort());
    expect(inventory('postgres-ha')).toEqual([...base, 'PodDisruptionBudget/terroir-server'].sort());
    for (const o of OVERLAYS) {
      for (const x of rendered[o]) {
        const clusterScoped = ['Namespace', 'ClusterRole', 'ClusterRoleBinding'].includes(x.kind);
        expect(x.metadata.namespace, `${o}: ${x.kind}/${x.metadata.name}`).toBe(clusterScoped ? undefined : 'terroir');
      }
    }
    expect(find<Workload>('plain', 'StatefulSet', 'terroir-server').spec.replicas).toBe(1);
    expect(find<Workload>('postgres-ha', 'StatefulSet', 'terroir-server').spec.replicas).toBe(2);
  });

  it.each(OVERLAYS)('%s: every object is valid against the Kubernetes API schemas, with no field the API does not define', async (o) => {
    for (const x of rendered[o]) expect(await schemaProblems(x), `${o}: ${x.kind}/${x.metadata.name}`).toEqual([]);
  });
});

describe('the schema check can fail', () => {
  const agent = (): Workload => structuredClone(find<Workload>('plain', 'DaemonSet', 'terroir-agent'));

  it('refuses a field of the wrong type', async () => {
    const ds = agent();
    (ds.spec.template.spec.securityContext as Json)['runAsNonRoot'] = 'yes';
    expect(await schemaProblems(ds)).toEqual([expect.stringMatching(/^\/spec\/template\/spec\/securityContext\/runAsNonRoot: type .*boolean/)]);
  });

  it('refuses a misspelled field, which the API server would drop or refuse', async () => {
    const ds = agent();
    const sc = ds.spec.template.spec.containers[0]?.securityContext as Json;
    sc['readOnlyRootFileSystem'] = sc['readOnlyRootFilesystem'];
    delete sc['readOnlyRootFilesystem'];
    expect(await schemaProblems(ds)).toEqual(['/spec/template/spec/containers/0/securityContext/readOnlyRootFileSystem: not a field of the Kubernetes API']);
  });

  it('refuses a missing required field and an object of a kind it has no schema for', async () => {
    const ds = agent();
    delete (ds.spec.template.spec.containers[0] as Partial<Container>).name;
    expect(await schemaProblems(ds)).toEqual([expect.stringMatching(/^\/spec\/template\/spec\/containers\/0: required .*"name"/)]);
    await expect(schemaProblems({ apiVersion: 'v1', kind: 'Pod' })).rejects.toThrow(/no schema known for v1 Pod/);
  });
});

describe('security', () => {
  const users = imageUsers();

  it.each(OVERLAYS)('%s: no privileged container, nothing escalates, read-only root filesystems, every capability dropped', (o) => {
    for (const w of workloads(o)) {
      const pod = w.spec.template.spec;
      expect(pod.securityContext?.seccompProfile?.type, w.metadata.name).toBe('RuntimeDefault');
      expect(pod.hostNetwork ?? false, w.metadata.name).toBe(false);
      expect(pod.hostIPC ?? false, w.metadata.name).toBe(false);
      // hostPID: the agent alone (it reads callers' /proc/<pid>/cgroup).
      expect(pod.hostPID ?? false, w.metadata.name).toBe(w.metadata.name === 'terroir-agent');
      for (const c of allContainers(pod)) {
        const at = `${o}: ${w.metadata.name}/${c.name}`;
        expect(c.securityContext?.privileged ?? false, at).toBe(false);
        expect(c.securityContext?.allowPrivilegeEscalation, at).toBe(false);
        expect(c.securityContext?.readOnlyRootFilesystem, at).toBe(true);
        expect(c.securityContext?.capabilities?.drop, at).toEqual(['ALL']);
        // One capability comes back, in one place: CHOWN for the init container that hands the
        // socket's hostPath directory to the agent's user (base/agent/daemonset.yaml).
        const added = c.securityContext?.capabilities?.add ?? [];
        expect(added, at).toEqual(w.metadata.name === 'terroir-agent' && c.name === 'socket-dir' ? ['CHOWN'] : []);
      }
    }
  });

  it.each(OVERLAYS)('%s: terroir runs as the images\' non-root users; root only in socket-dir, Keylime as its image defines', (o) => {
    for (const w of workloads(o)) {
      const pod = w.spec.template.spec;
      for (const c of allContainers(pod)) {
        const at = `${o}: ${w.metadata.name}/${c.name}`;
        const nonRoot = c.securityContext?.runAsNonRoot ?? pod.securityContext?.runAsNonRoot;
        const uid = c.securityContext?.runAsUser ?? pod.securityContext?.runAsUser;
        if (c.image.startsWith('quay.io/keylime/')) {
          // Keylime's images: their own user, which terroir does not claim is non-root (docs/kubernetes.md).
          expect(uid, at).toBeUndefined();
          expect(nonRoot, at).toBeUndefined();
          continue;
        }
        expect(Object.keys(users), `${at}: ${c.image} is a compose image (a Dockerfile target)`).toContain(c.image);
        if (w.metadata.name === 'terroir-agent' && c.name === 'socket-dir') {
          expect([uid, nonRoot], at).toEqual([0, false]);
          expect(c.command?.[0], at).toBe('chown');
          continue;
        }
        expect(nonRoot, at).toBe(true);
        expect(uid, at).toBe(users[c.image]);
        expect(uid, at).toBeGreaterThan(0);
      }
    }
  });

  it.each(OVERLAYS)('%s: only the agent holds a hostPath (the Workload API socket directory) and a service account token', (o) => {
    for (const w of workloads(o)) {
      const pod = w.spec.template.spec;
      const hostPaths = (pod.volumes ?? []).filter((v) => v.hostPath).map((v) => v.hostPath);
      const isAgent = w.metadata.name === 'terroir-agent';
      expect(hostPaths, w.metadata.name).toEqual(isAgent ? [{ path: '/run/terroir', type: 'DirectoryOrCreate' }] : []);
      expect(pod.automountServiceAccountToken, w.metadata.name).toBe(isAgent);
    }
    for (const sa of rendered[o].filter((x) => x.kind === 'ServiceAccount')) {
      expect((sa as Json)['automountServiceAccountToken'], sa.metadata.name).toBe(sa.metadata.name === 'terroir-agent');
    }
    // The TPM comes from a device plugin, not a hostPath (which would not pass the device cgroup).
    const agent = container(find<Workload>(o, 'DaemonSet', 'terroir-agent'), 'terroir-agent');
    expect(agent.resources?.limits?.['squat.ai/tpm']).toBe('1');
  });

  it.each(OVERLAYS)('%s: every long-running container has a memory limit and health probes', (o) => {
    for (const w of workloads(o)) {
      for (const c of allContainers(w.spec.template.spec)) {
        const at = `${o}: ${w.metadata.name}/${c.name}`;
        // Init containers run once and exit, except sidecars (restartPolicy: Always).
        if (w.spec.template.spec.initContainers?.includes(c) && c.restartPolicy !== 'Always') continue;
        expect(c.resources?.limits?.['memory'], at).toBeDefined();
        expect(c.livenessProbe, at).toBeDefined();
        expect(c.readinessProbe ?? c.startupProbe, at).toBeDefined();
      }
    }
  });

  it.each(OVERLAYS)('%s: RBAC is the kubelet\'s pod list for the agent, nothing more', (o) => {
    const roles = rendered[o].filter((x) => ['Role', 'ClusterRole'].includes(x.kind));
    expect(roles.map((r) => r.metadata.name)).toEqual(['terroir-agent-kubelet']);
    expect((roles[0] as Json)['rules']).toEqual([{ apiGroups: [''], resources: ['nodes/proxy'], verbs: ['get'] }]);
    const bindings = rendered[o].filter((x) => ['RoleBinding', 'ClusterRoleBinding'].includes(x.kind)) as (K8sObject & { roleRef: Json; subjects: Json[] })[];
    expect(bindings.map((b) => [b.metadata.name, b.roleRef, b.subjects])).toEqual([[
      'terroir-agent-kubelet',
      { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'terroir-agent-kubelet' },
      [{ kind: 'ServiceAccount', name: 'terroir-agent', namespace: 'terroir' }],
    ]]);
    expect(find<Workload>(o, 'DaemonSet', 'terroir-agent').spec.template.spec.serviceAccountName).toBe('terroir-agent');
  });

  it.each(OVERLAYS)('%s: NetworkPolicies: nothing reachable by default; the server\'s agent API from the agents only', (o) => {
    type Policy = K8sObject & { spec: { podSelector: { matchLabels?: Record<string, string> }; policyTypes: string[]; ingress?: { from: Json[]; ports: Json[] }[] } };
    const policies = rendered[o].filter((x) => x.kind === 'NetworkPolicy') as Policy[];
    const deny = find<Policy>(o, 'NetworkPolicy', 'default-deny-ingress');
    expect(deny.spec).toEqual({ podSelector: {}, policyTypes: ['Ingress'] });
    const server = find<Workload>(o, 'StatefulSet', 'terroir-server');
    const agent = find<Workload>(o, 'DaemonSet', 'terroir-agent');
    const { config } = loadServer(o);
    const toServer = policies.filter((p) => Object.entries(p.spec.podSelector.matchLabels ?? {}).every(([k, v]) => server.spec.template.metadata.labels?.[k] === v) && p.spec.ingress);
    expect(toServer.map((p) => p.spec.ingress)).toEqual([[{
      from: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'terroir-agent' } } }],
      ports: [{ protocol: 'TCP', port: config.agentApi.port }],
    }]]);
    expect(agent.spec.template.metadata.labels?.['app.kubernetes.io/name']).toBe('terroir-agent');
    // The health port is the kubelet's alone: no policy opens it.
    for (const p of policies) for (const rule of p.spec.ingress ?? []) expect(rule.ports, p.metadata.name).not.toContainEqual(expect.objectContaining({ port: config.health.port }));
    // No policy admits anything to the agents.
    const toAgent = policies.filter((p) => p.spec.podSelector.matchLabels?.['app.kubernetes.io/name'] === 'terroir-agent');
    expect(toAgent).toEqual([]);
    if (o === 'unified') {
      expect(find<Policy>(o, 'NetworkPolicy', 'keylime-verifier').spec.ingress).toEqual([{
        from: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'terroir-server' } } }],
        ports: [{ protocol: 'TCP', port: Number(new URL(config.keylime?.verifierUrl ?? '').port) }],
      }]);
    }
  });
});

describe('the configs are real terroir configs', () => {
  it.each(OVERLAYS)('%s: server.yaml loads with the server\'s loader, and every file and directory it names is a mount', (o) => {
    const { config, mounts } = loadServer(o);
    expect(config.flags?.flags.unifiedIdentity).toBe(o === 'unified');
    const files = [
      ...config.nodeAttestation.tpm.manufacturerCaFiles,
      ...(config.keylime ? [config.keylime.caFile, config.keylime.certFile, config.keylime.keyFile] : []),
      ...(config.unifiedIdentity?.locationPolicies.file ? [config.unifiedIdentity.locationPolicies.file] : []),
    ];
    expect(files.length).toBeGreaterThan(0);
    for (const f of files) expect(provides(mounts, f), `${o}: ${f}`).toBe(true);
    const dirs = [config.dataDir, config.ca.keyDir ?? '', path.dirname(config.adminApi.socketPath),
      ...(config.dataStore.type === 'sqlite' ? [path.dirname(config.dataStore.path)] : [])];
    for (const d of dirs) expect(writableDir(mounts, d), `${o}: ${d} writable`).toBe(true);
    // The server chmods these 0700 (and refuses an admin socket directory others can write): they must
    // be directories it creates, below a volume's root, which belongs to the kubelet.
    for (const d of [config.ca.keyDir ?? '', path.dirname(config.adminApi.socketPath)]) {
      expect(mounts.some((m) => m.writable && d.startsWith(`${m.at}/`)), `${o}: ${d} below a volume`).toBe(true);
    }
    // The data directory is the replica's PVC: CA keys (and SQLite) survive a restart.
    expect(mounts.find((m) => m.at === config.dataDir)?.source).toBe('pvc data');
    expect(config.dataStore.type).toBe(o === 'postgres-ha' ? 'postgres' : 'sqlite');
    if (config.dataStore.type === 'postgres') expect(config.dataStore.connectionString).toBe('secret:terroir-postgres/connectionString');
  });

  it.each(OVERLAYS)('%s: the server\'s probes and Service reach what server.yaml configures', (o) => {
    const { config } = loadServer(o);
    const sts = find<Workload>(o, 'StatefulSet', 'terroir-server');
    const c = container(sts, 'terroir-server');
    const port = (name: string | number | undefined): number | undefined => c.ports?.find((p) => p.name === name)?.containerPort;
    expect(config.health.enabled).toBe(true);
    // The kubelet probes the pod's address, so the health listener cannot be on loopback.
    expect(config.health.bindAddress).toBe('0.0.0.0');
    expect([c.livenessProbe?.httpGet?.path, port(c.livenessProbe?.httpGet?.port)]).toEqual(['/live', config.health.port]);
    expect([c.startupProbe?.httpGet?.path, port(c.startupProbe?.httpGet?.port)]).toEqual(['/live', config.health.port]);
    expect([c.readinessProbe?.httpGet?.path, port(c.readinessProbe?.httpGet?.port)]).toEqual(['/ready', config.health.port]);
    type Svc = K8sObject & { spec: { ports: { port: number; targetPort: string }[] } };
    const svc = find<Svc>(o, 'Service', 'terroir-server');
    expect(svc.spec.ports.map((p) => [p.port, port(p.targetPort)])).toEqual([[config.agentApi.port, config.agentApi.port]]);
    expect((sts.spec as Json)['serviceName']).toBe('terroir-server-headless');
    // fsGroup re-owns only a new PVC: a recursive chmod would make the 0600 CA keys group-readable.
    expect(sts.spec.template.spec.securityContext?.fsGroupChangePolicy).toBe('OnRootMismatch');
  });

  it.each(OVERLAYS)('%s: agent.yaml, written by the init container, loads with the agent\'s loader and matches the server', async (o) => {
    const { config, mounts } = await loadAgent(o);
    const server = loadServer(o).config;
    expect(config.flags?.flags.unifiedIdentity).toBe(o === 'unified');
    expect(config.trustDomain).toBe(server.trustDomain);
    expect(config.serverAddress).toBe('terroir-server');
    expect(config.serverPort).toBe(server.agentApi.port);
    expect(config.nodeAttestor.tpm?.tcti).toBe('device:/dev/tpmrm0');
    const k8s = config.workloadAttestors.k8s;
    expect([k8s?.nodeName, k8s?.kubeletUrl]).toEqual(['edge-node-1', 'https://10.0.0.7:10250']);
    expect([k8s?.tokenFile, k8s?.caFile]).toEqual([`${SA_DIR}/token`, `${SA_DIR}/ca.crt`]);
    for (const f of [config.trustBundlePath ?? '', k8s?.caFile ?? '', k8s?.tokenFile ?? '']) expect(provides(mounts, f), `${o}: ${f}`).toBe(true);
    for (const d of [config.dataDir, path.dirname(config.socketPath)]) expect(writableDir(mounts, d), `${o}: ${d} writable`).toBe(true);
    // The agent chmods its data directory 0700: it must be one the agent creates, below a volume's
    // root (owned by the kubelet, which a non-root process cannot chmod).
    expect(mounts.some((m) => m.writable && config.dataDir.startsWith(`${m.at}/`)), `${o}: ${config.dataDir} below a volume`).toBe(true);
    // The socket is on the node, where workload pods mount it from.
    expect(mounts.find((m) => m.at === path.dirname(config.socketPath))?.source).toBe('sockets');
    // The agent's probes ask the agent at its socket.
    const c = container(find<Workload>(o, 'DaemonSet', 'terroir-agent'), 'terroir-agent');
    for (const p of [c.startupProbe, c.livenessProbe, c.readinessProbe]) {
      expect(p?.exec?.command).toEqual(['node', '/app/dist/src/cli/terroir-agent.js', 'healthcheck', '-socketPath', config.socketPath]);
    }
    if (o === 'unified') {
      expect(config.unifiedIdentity?.sensors).toEqual([expect.objectContaining({ type: 'gpsd', host: '127.0.0.1', port: 2947 })]);
      const gpsd = container(find<Workload>(o, 'DaemonSet', 'terroir-agent'), 'gpsd');
      expect([gpsd.restartPolicy, envOf(gpsd)['GPSD_PORT'], envOf(gpsd)['GPSD_LISTEN_ALL']]).toEqual(['Always', '2947', '0']);
    }
  });

  it('agent.yaml names an IPv6 node address in brackets', async () => {
    const { config } = await loadAgent('plain', 'fd00::7');
    expect(config.workloadAttestors.k8s?.kubeletUrl).toBe('https://[fd00::7]:10250');
  });

  it('unified: the location policies are deploy/location-policies.yaml and hold the default policy', () => {
    const own = fs.readFileSync(path.join(K8S, 'overlays', 'unified', 'location-policies.yaml'), 'utf8');
    expect(own).toBe(fs.readFileSync(path.join(ROOT, 'deploy', 'location-policies.yaml'), 'utf8'));
    const { config } = loadServer('unified');
    const sts = find<Workload>('unified', 'StatefulSet', 'terroir-server');
    const text = configMapText('unified', sts, 'location-policies', path.basename(config.unifiedIdentity?.locationPolicies.file ?? ''));
    expect(parsePolicies(text).names()).toContain(config.unifiedIdentity?.defaultPolicy);
  });

  it('the loaders refuse a bad key, a file no mount provides, and a template the init container did not fill in', async () => {
    expect(() => loadServer('plain', (t) => t.replace('keyStore: disk', 'keystore: disk'))).toThrow(ConfigError);
    expect(() => loadServer('unified', (t) => t.replace('/etc/terroir/keylime/ca.crt', '/etc/terroir/keylime/verifier-ca.crt')))
      .toThrow(/keylime.caFile: cannot read \/etc\/terroir\/keylime\/verifier-ca.crt: ENOENT: no mount of the pod provides/);
    const ds = find<Workload>('plain', 'DaemonSet', 'terroir-agent');
    const template = configMapText('plain', ds, 'config-template', 'agent.yaml');
    await expect(loadAgent('plain', '10.0.0.7', template.replaceAll('@NODE_NAME@', '@NODENAME@'))).rejects.toThrow(AgentConfigError);
  });
});

describe('docs/kubernetes.md', () => {
  it('installs each overlay and creates every ConfigMap and Secret the manifests expect from the operator', () => {
    const doc = fs.readFileSync(path.join(ROOT, 'docs', 'kubernetes.md'), 'utf8');
    for (const o of OVERLAYS) expect(doc).toContain(`kubectl apply -k deploy/kubernetes/overlays/${o}`);
    for (const o of OVERLAYS) {
      const generated = new Set(rendered[o].filter((x) => x.kind === 'ConfigMap').map((x) => x.metadata.name));
      for (const w of workloads(o)) {
        for (const c of allContainers(w.spec.template.spec)) {
          for (const e of c.env ?? []) {
            const ref = e.valueFrom?.secretKeyRef;
            if (ref) expect(doc, `${o}: Secret ${ref.name}`).toMatch(new RegExp(`kubectl -n terroir create secret generic ${ref.name} [^\\n]*${ref.key}`));
          }
        }
        for (const v of w.spec.template.spec.volumes ?? []) {
          if (v.configMap && !generated.has(v.configMap.name)) {
            for (const i of v.configMap.items ?? []) expect(doc, `${o}: ConfigMap ${v.configMap.name}`).toMatch(new RegExp(`kubectl -n terroir create configmap ${v.configMap.name} [^\\n]*${i.key}`));
          }
          if (v.secret) {
            for (const i of v.secret.items ?? []) expect(doc, `${o}: Secret ${v.secret.secretName}`).toMatch(new RegExp(`kubectl -n terroir create secret generic ${v.secret.secretName} [^\\n]*${i.key}`));
          }
        }
      }
    }
  });
});
