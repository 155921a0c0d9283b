// The Kubernetes workload attestor against a kubelet double over real TLS (its own CA, bearer tokens
// checked as the kubelet does), with /proc/<pid>/cgroup fixtures of containerd, CRI-O and Docker
// under cgroup v1 and v2. The /pods answer (test/data/k8s/pods.json) has the shape of the kubelet's
// core/v1 PodList; see test/data/k8s/README.md for its sources.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { K8sAttestor, K8sAttestationError, UnixAndK8sAttestor, parseCgroup, type K8sAttestorOptions } from '../../src/agent/attestor/k8s.js';
import { UnixAttestor } from '../../src/agent/attestor/unix.js';
import { Agent } from '../../src/agent/agent.js';
import { AgentStartError } from '../../src/agent/context.js';
import { parseAgentConfig, AgentConfigError } from '../../src/agent/config.js';
import { KubeletDouble, mintKubeletPki, type KubeletPki } from '../doubles/kubelet.js';
import { stopChild } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';

const DATA = path.resolve(import.meta.dirname, '../data/k8s');
const fixture = (name: string): string => fs.readFileSync(path.join(DATA, 'cgroup', `${name}.cgroup`), 'latin1');
const podsJson = (): { kind: string; apiVersion: string; items: Record<string, unknown>[] } =>
  JSON.parse(fs.readFileSync(path.join(DATA, 'pods.json'), 'utf8')) as { kind: string; apiVersion: string; items: Record<string, unknown>[] };

const TOKEN = 'eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.agent-token-1.sig';
const FORBIDDEN_TOKEN = 'eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.no-rbac.sig';

const sorted = (sel: { type: string; value: string }[]): string[] => sel.map((s) => `${s.type}:${s.value}`).sort();

describe('cgroup → pod and container', () => {
  const cases: [string, string, string][] = [
    ['containerd-v2-systemd', '6a3b1f2c-9d4e-4b7a-8c21-5f0e9d3a7b64', '3f1c9a7e5b2d4c6a8e0f1b3d5c7a9e2f4b6d8c0a1e3f5b7d9c2a4e6f8b0d1c3a'],
    ['containerd-v1-cgroupfs', '0e5d2c7a-41b3-4f8e-9a6d-2c1b7e3f9a05', '9b2e4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b'],
    ['containerd-v2-kind', '6a3b1f2c-9d4e-4b7a-8c21-5f0e9d3a7b64', '3f1c9a7e5b2d4c6a8e0f1b3d5c7a9e2f4b6d8c0a1e3f5b7d9c2a4e6f8b0d1c3a'],
    ['crio-v1-systemd', '4c8e1a3f-7b2d-4e9c-a5f1-8d3b6e0c2a97', '7d3f5b1e9c2a4d6f8b0e1c3a5f7d9b2e4c6a8f0d1b3e5c7a9f2d4b6e8c0a1f3d'],
    ['crio-v2-systemd', '8f2a6c4e-1d3b-4a5c-9e7f-0b2d4f6a8c1e', '1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a3c'],
    ['docker-v1-cgroupfs', '2b7d9f1a-3c5e-4d7f-8b9a-1c3e5f7a9b2d', '5e7a9c1b3d5f7e9a2c4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a5c7e9b2d4f6a8c'],
    ['docker-v2-systemd', '2b7d9f1a-3c5e-4d7f-8b9a-1c3e5f7a9b2d', '5e7a9c1b3d5f7e9a2c4b6d8f0a1c3e5b7d9f2a4c6e8b0d1f3a5c7e9b2d4f6a8c'],
  ];
  for (const [name, podUid, containerId] of cases) {
    it(`reads ${name}`, () => {
      expect(parseCgroup(fixture(name))).toEqual({ podUid, containerId });
    });
  }

  it('finds no container for processes outside a pod container', () => {
    expect(parseCgroup(fixture('host-session-v2'))).toBeNull();
    expect(parseCgroup(fixture('pod-slice-only-v2'))).toBeNull();
    // CRI-O's conmon monitors the container from its own scope; it is not the container.
    expect(parseCgroup(fixture('crio-v2-conmon'))).toBeNull();
    expect(parseCgroup('0::/\n')).toBeNull();
    expect(parseCgroup('')).toBeNull();
  });

  it('refuses cgroup v1 hierarchies naming different containers', () => {
    expect(() => parseCgroup(fixture('conflict-v1'))).toThrow(/hierarchies disagree/);
  });

  it('does not take a look-alike path outside kubepods', () => {
    expect(parseCgroup('0::/system.slice/pod6a3b1f2c-9d4e-4b7a-8c21-5f0e9d3a7b64/3f1c9a7e5b2d4c6a8e0f1b3d5c7a9e2f4b6d8c0a1e3f5b7d9c2a4e6f8b0d1c3a\n')).toBeNull();
  });
});

describe('k8s workload attestor against a kubelet double', () => {
  let dir: { dir: string; cleanup: () => void };
  let pki: KubeletPki;
  let otherPki: KubeletPki;
  let kubelet: KubeletDouble;
  let tokenFile: string;
  const attestors: K8sAttestor[] = [];

  /** A fake /proc with one pid whose cgroup is the named fixture. */
  function procWith(pid: number, cgroup: string): string {
    const root = fs.mkdtempSync(path.join(dir.dir, 'proc-'));
    fs.mkdirSync(path.join(root, String(pid)));
    fs.writeFileSync(path.join(root, String(pid), 'cgroup'), cgroup);
    return root;
  }

  function attestor(extra: Partial<K8sAttestorOptions> = {}, url = kubelet.url): K8sAttestor {
    const a = new K8sAttestor({ kubeletUrl: url, nodeName: 'edge-node-1', caFile: pki.caFile, tokenFile, ...extra });
    attestors.push(a);
    return a;
  }

  beforeAll(async () => {
    dir = tempDir('terroir-k8s-');
    pki = mintKubeletPki(dir.dir);
    otherPki = mintKubeletPki(dir.dir, 'impostor');
    tokenFile = path.join(dir.dir, 'token');
    fs.writeFileSync(tokenFile, `${TOKEN}\n`);
    kubelet = await KubeletDouble.start({ pki, tokens: new Map([[TOKEN, true], [FORBIDDEN_TOKEN, false]]), pods: podsJson() });
  });
  afterEach(() => {
    for (const a of attestors.splice(0)) a.close();
    fs.writeFileSync(tokenFile, `${TOKEN}\n`);
    kubelet.setPods(podsJson());
  });
  afterAll(async () => {
    await kubelet.stop();
    dir.cleanup();
  });

  describe('the double refuses what a kubelet refuses', () => {
    const get = (headers: Record<string, string>): Promise<number> => fetchStatus(kubelet.url, pki.caFile, headers);
    it('no token, an unknown token → 401; a token without nodes/proxy → 403; the agent token → 200', async () => {
      expect(await get({})).toBe(401);
      expect(await get({ authorization: 'Bearer not-a-token' })).toBe(401);
      expect(await get({ authorization: `Basic ${Buffer.from('admin:admin').toString('base64')}` })).toBe(401);
      expect(await get({ authorization: `Bearer ${FORBIDDEN_TOKEN}` })).toBe(403);
      expect(await get({ authorization: `Bearer ${TOKEN}` })).toBe(200);
    });
  });

  it('gives SPIRE-named selectors for a containerd pod (cgroup v2, systemd slices)', async () => {
    const a = attestor({ procRoot: procWith(4242, fixture('containerd-v2-systemd')) });
    expect(sorted(await a.attest(4242))).toEqual([
      'k8s:container-image:registry.example.com/payments/api:1.8.2',
      'k8s:container-image:registry.example.com/payments/api@sha256:5b0f3c2a9e1d4b7c6a8f0e2d4c6b8a0f1e3d5c7b9a2f4e6d8c0b1a3f5e7d9c2b',
      'k8s:container-name:api',
      'k8s:node-name:edge-node-1',
      'k8s:ns:payments',
      'k8s:pod-label:app:payments-api',
      'k8s:pod-label:pod-template-hash:7c9d8b6f5',
      'k8s:pod-label:tier:backend',
      'k8s:pod-name:payments-api-7c9d8b6f5-x2k4p',
      'k8s:pod-uid:6a3b1f2c-9d4e-4b7a-8c21-5f0e9d3a7b64',
      'k8s:sa:payments-api',
    ]);
  });

  it('finds CRI-O, Docker and cgroup v1 containers, and init containers', async () => {
    const want: [string, string[]][] = [
      ['crio-v1-systemd', ['k8s:ns:sensors', 'k8s:sa:gps-reader', 'k8s:container-name:reader']],
      ['crio-v2-systemd', ['k8s:ns:sensors', 'k8s:sa:tpm-exporter', 'k8s:container-name:exporter']],
      ['docker-v1-cgroupfs', ['k8s:ns:legacy', 'k8s:pod-name:report-gen-5f7d9b-qk2lm', 'k8s:container-name:gen',
        'k8s:container-image:docker-pullable://docker.io/library/report-gen@sha256:4444444444444444444444444444444444444444444444444444444444444444']],
      ['docker-v2-systemd', ['k8s:ns:legacy', 'k8s:container-name:gen']],
      ['containerd-v1-cgroupfs', ['k8s:ns:default', 'k8s:sa:default', 'k8s:pod-label:statefulset.kubernetes.io/pod-name:batch-runner-0']],
    ];
    for (const [name, sel] of want) {
      const a = attestor({ procRoot: procWith(7, fixture(name)) });
      const got = sorted(await a.attest(7));
      for (const s of sel) expect(got, name).toContain(s);
    }
    const init = 'containerd://d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2'.slice('containerd://'.length);
    const a = attestor({ procRoot: procWith(8, `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6a3b1f2c_9d4e_4b7a_8c21_5f0e9d3a7b64.slice/cri-containerd-${init}.scope\n`) });
    expect(sorted(await a.attest(8))).toContain('k8s:container-name:migrate');
  });

  it('gives a pid that is not in a pod no k8s selectors, with the reason', async () => {
    const a = attestor({ procRoot: procWith(9, fixture('host-session-v2')) });
    const r = await a.inspect(9);
    expect(r).toEqual({ inPod: false, reason: expect.stringMatching(/not in a Kubernetes pod container/) });
    expect(await a.attest(9)).toEqual([]);
    expect(a.fetches).toBe(0);
  });

  it('reads the real /proc: this test process is in no pod', async () => {
    const a = attestor();
    expect(await a.inspect(process.pid)).toMatchObject({ inPod: false });
    await expect(a.inspect(2 ** 22 + 1)).rejects.toMatchObject({ reason: 'cgroup_unreadable' });
  });

  it('refuses a kubelet whose certificate is not from the configured CA', async () => {
    const impostor = await KubeletDouble.start({ pki: otherPki, tokens: new Map([[TOKEN, true]]), pods: podsJson() });
    try {
      const a = attestor({ procRoot: procWith(10, fixture('containerd-v2-systemd')) }, impostor.url);
      const err = await a.attest(10).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(K8sAttestationError);
      expect((err as K8sAttestationError).reason).toBe('kubelet_unreachable');
      expect((err as Error).message).toMatch(/self[- ]signed|unable to verify|certificate/i);
      expect(impostor.served + impostor.unauthorized).toBe(0);
      // The same kubelet verified against its own CA answers: the refusal was the CA.
      const b = attestor({ procRoot: procWith(10, fixture('containerd-v2-systemd')), caFile: otherPki.caFile }, impostor.url);
      expect(sorted(await b.attest(10))).toContain('k8s:ns:payments');
    } finally {
      await impostor.stop();
    }
  });

  it('refuses a kubelet URL whose name the certificate does not carry', async () => {
    const url = kubelet.url.replace('127.0.0.1', '127.0.0.2');
    const a = attestor({ procRoot: procWith(10, fixture('containerd-v2-systemd')) }, url);
    await expect(a.attest(10)).rejects.toMatchObject({ reason: 'kubelet_unreachable' });
  });

  it('sends the token file as bearer, follows its rotation, and says when it is refused', async () => {
    const a = attestor({ procRoot: procWith(11, fixture('containerd-v2-systemd')), cacheTtlMs: 0 });
    await a.attest(11);
    fs.writeFileSync(tokenFile, 'rotated-but-unknown');
    const before = kubelet.unauthorized;
    await expect(a.attest(11)).rejects.toMatchObject({ reason: 'kubelet_refused', message: expect.stringMatching(/401/) });
    expect(kubelet.unauthorized).toBe(before + 1);
    fs.writeFileSync(tokenFile, FORBIDDEN_TOKEN);
    await expect(a.attest(11)).rejects.toMatchObject({ message: expect.stringMatching(/403.*nodes\/proxy/) });
    fs.writeFileSync(tokenFile, TOKEN);
    expect(sorted(await a.attest(11))).toContain('k8s:ns:payments');
    fs.rmSync(tokenFile);
    await expect(a.attest(11)).rejects.toMatchObject({ message: expect.stringMatching(/cannot read the service account token/) });
  });

  it('refuses oversized answers, declared or streamed', async () => {
    const a = attestor({ procRoot: procWith(12, fixture('containerd-v2-systemd')), maxResponseBytes: 16 * 1024 });
    await expect(a.attest(12)).rejects.toMatchObject({ reason: 'kubelet_answer_too_large' });
    const chunked = await KubeletDouble.start({ pki, tokens: new Map([[TOKEN, true]]), pods: podsJson(), chunked: true });
    try {
      const b = attestor({ procRoot: procWith(12, fixture('containerd-v2-systemd')), maxResponseBytes: 16 * 1024 }, chunked.url);
      await expect(b.attest(12)).rejects.toMatchObject({ reason: 'kubelet_answer_too_large', message: expect.stringMatching(/exceeds/) });
      const c = attestor({ procRoot: procWith(12, fixture('containerd-v2-systemd')) }, chunked.url);
      expect(sorted(await c.attest(12))).toContain('k8s:ns:payments');
    } finally {
      await chunked.stop();
    }
  });

  it('refuses malformed answers', async () => {
    const bad: [unknown, RegExp][] = [
      [Buffer.from('<html>oops</html>'), /not JSON/],
      [{ kind: 'Status', apiVersion: 'v1', status: 'Failure' }, /not a v1 PodList: kind/],
      [{ ...podsJson(), items: 'none' }, /items/],
      [(() => { const p = podsJson(); (p.items[0] as { metadata: { namespace: unknown } }).metadata.namespace = 7; return p; })(), /items\.0\.metadata\.namespace/],
      [(() => { const p = podsJson(); (p.items[0] as { metadata: { labels: unknown } }).metadata.labels = { app: ['x'] }; return p; })(), /labels/],
      [(() => { const p = podsJson(); (p.items[0] as { status: { containerStatuses: unknown } }).status.containerStatuses = [{ name: 'api' }]; return p; })(), /image/],
    ];
    for (const [body, why] of bad) {
      kubelet.setPods(body);
      const a = attestor({ procRoot: procWith(13, fixture('containerd-v2-systemd')) });
      await expect(a.attest(13)).rejects.toMatchObject({ reason: 'kubelet_answer_invalid', message: expect.stringMatching(why) });
    }
  });

  it('refuses a container the kubelet puts in another pod than its cgroup does', async () => {
    const wrongPod = fixture('containerd-v2-systemd').replace('6a3b1f2c_9d4e_4b7a_8c21_5f0e9d3a7b64', '0e5d2c7a_41b3_4f8e_9a6d_2c1b7e3f9a05');
    const a = attestor({ procRoot: procWith(14, wrongPod) });
    await expect(a.attest(14)).rejects.toMatchObject({ reason: 'pod_mismatch' });
  });

  it('refuses a pod of another node', async () => {
    const a = attestor({ procRoot: procWith(14, fixture('containerd-v2-systemd')), nodeName: 'edge-node-2' });
    await expect(a.attest(14)).rejects.toMatchObject({ reason: 'pod_mismatch', message: expect.stringMatching(/edge-node-1, not on edge-node-2/) });
  });

  it('uses the cached pod list, and refreshes it for an unknown container at a bounded rate', async () => {
    const procRoot = procWith(15, fixture('containerd-v2-systemd'));
    fs.mkdirSync(path.join(procRoot, '16'));
    const newId = 'ab'.repeat(32);
    fs.writeFileSync(path.join(procRoot, '16', 'cgroup'),
      `0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod7b9d1f3a_5c7e_4f9a_8b1d_3f5a7c9e1b3d.slice/cri-containerd-${newId}.scope\n`);
    const a = attestor({ procRoot, cacheTtlMs: 60_000, minRefreshIntervalMs: 200 });
    const served = kubelet.served;
    // Concurrent first calls share one request; later calls use the cache.
    await Promise.all([a.attest(15), a.attest(15), a.attest(15)]);
    for (let i = 0; i < 20; i++) await a.attest(15);
    expect(kubelet.served - served).toBe(1);
    // pid 16's container is still being created (no containerID in the list): refused with the reason.
    await expect(a.attest(16)).rejects.toMatchObject({ reason: 'container_not_found', message: expect.stringMatching(/retry shortly/) });
    // Asking again at once does not hit the kubelet (bounded rate)...
    await expect(a.attest(16)).rejects.toMatchObject({ reason: 'container_not_found' });
    expect(kubelet.served - served).toBe(1);
    // ...after the interval it does, and sees the container once the kubelet lists it.
    const p = podsJson();
    const web = p.items.find((i) => (i as { metadata: { name: string } }).metadata.name.startsWith('web-')) as { status: { containerStatuses: Record<string, unknown>[] } };
    Object.assign(web.status.containerStatuses[0] as object, { containerID: `containerd://${newId}`, imageID: 'docker.io/library/nginx@sha256:' + '5'.repeat(64) });
    kubelet.setPods(p);
    await new Promise((r) => setTimeout(r, 250));
    expect(sorted(await a.attest(16))).toContain('k8s:container-name:nginx');
    expect(kubelet.served - served).toBe(2);
    // A known container does not trigger a refresh before the TTL.
    await a.attest(15);
    expect(kubelet.served - served).toBe(2);
  });

  it('refreshes after the TTL', async () => {
    const a = attestor({ procRoot: procWith(17, fixture('containerd-v2-systemd')), cacheTtlMs: 100 });
    const served = kubelet.served;
    await a.attest(17);
    await a.attest(17);
    expect(kubelet.served - served).toBe(1);
    const p = podsJson();
    (p.items[0] as { metadata: { labels: Record<string, string> } }).metadata.labels['release'] = 'canary';
    kubelet.setPods(p);
    await new Promise((r) => setTimeout(r, 150));
    expect(sorted(await a.attest(17))).toContain('k8s:pod-label:release:canary');
    expect(kubelet.served - served).toBe(2);
  });

  describe('joined with the unix attestor', () => {
    let child: ChildProcess | undefined;
    afterEach(async () => {
      if (child) await stopChild(child, 500);
      child = undefined;
    });

    it('a real process gets its unix selectors and its pod\'s k8s selectors', async () => {
      child = spawn('/bin/sleep', ['30'], { stdio: 'ignore' });
      const pid = child.pid!;
      const unix = new UnixAttestor({ sha256: false });
      const both = new UnixAndK8sAttestor(unix, attestor({ procRoot: procWith(pid, fixture('crio-v2-systemd')) }));
      const snap = both.snapshot(pid);
      const got = sorted(await both.attest({ pid, uid: process.getuid!(), gid: process.getgid!() }, snap));
      expect(got).toContain(`unix:uid:${process.getuid!()}`);
      expect(got).toContain('k8s:ns:sensors');
      expect(got).toContain('k8s:sa:tpm-exporter');
    });

    it('a process that exits after its cgroup was read is refused (pid reuse guard)', async () => {
      child = spawn('/bin/sleep', ['30'], { stdio: 'ignore' });
      const pid = child.pid!;
      const unix = new UnixAttestor({ sha256: false });
      const both = new UnixAndK8sAttestor(unix, attestor({ procRoot: procWith(pid, fixture('crio-v2-systemd')), cacheTtlMs: 0 }));
      const snap = both.snapshot(pid);
      const c = child;
      child = undefined;
      await stopChild(c, 500);
      await expect(both.attest({ pid, uid: process.getuid!(), gid: process.getgid!() }, snap)).rejects.toMatchObject({ code: 'process_gone' });
    });
  });
});

describe('workloadAttestors.k8s config', () => {
  const base = { trustDomain: 'example.org', serverAddress: 'server', dataDir: '/tmp/x', insecureBootstrap: true, nodeAttestor: { joinToken: { token: 't' } } };
  it('is absent unless configured; defaults and resolved paths when it is', () => {
    expect(parseAgentConfig(base, {}).workloadAttestors.k8s).toBeUndefined();
    const cfg = parseAgentConfig({ ...base, workloadAttestors: { k8s: { nodeName: 'edge-node-1', caFile: 'kubelet-ca.pem' } } }, {}, '/etc/terroir');
    expect(cfg.workloadAttestors.k8s).toEqual({
      nodeName: 'edge-node-1', caFile: '/etc/terroir/kubelet-ca.pem', tokenFile: '/var/run/secrets/kubernetes.io/serviceaccount/token',
      cacheTtlMs: 5000, minRefreshIntervalMs: 500, maxResponseBytes: 32 * 1024 * 1024,
    });
    expect(cfg.workloadAttestors.unix.sha256).toBe(true);
  });
  it('refuses what cannot work, naming the key', () => {
    const bad = (k8s: unknown): string => {
      try {
        parseAgentConfig({ ...base, workloadAttestors: { k8s } }, {});
      } catch (e) {
        expect(e).toBeInstanceOf(AgentConfigError);
        return (e as Error).message;
      }
      throw new Error('accepted');
    };
    expect(bad({ nodeName: 'n1' })).toMatch(/workloadAttestors\.k8s\.caFile/);
    expect(bad({ caFile: 'ca.pem' })).toMatch(/nodeName.*or kubeletUrl/);
    expect(bad({ kubeletUrl: 'http://n1:10255', caFile: 'ca.pem' })).toMatch(/kubeletUrl: the kubelet must be reached over https/);
    expect(bad({ nodeName: 'n1', caFile: 'ca.pem', skipKubeletVerification: true })).toMatch(/skipKubeletVerification/);
    expect(bad({ nodeName: 'Node_1', caFile: 'ca.pem' })).toMatch(/nodeName: a Kubernetes node name/);
  });
  it('an unreadable kubelet CA stops the agent before node attestation (no join token spent)', async () => {
    const tmp = tempDir('terroir-k8s-agent-');
    try {
      const cfg = parseAgentConfig({ ...base, serverAddress: '127.0.0.1', serverPort: 1, dataDir: path.join(tmp.dir, 'data'),
        socketPath: path.join(tmp.dir, 'sock', 'api.sock'), workloadAttestors: { k8s: { nodeName: 'n1', caFile: 'missing-ca.pem' } } }, {}, tmp.dir);
      const err = await Agent.start(cfg, { logger: (await import('pino')).default({ level: 'silent' }) }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentStartError);
      expect((err as Error).message).toMatch(/cannot read the kubelet CA file .*missing-ca\.pem/);
      expect(fs.existsSync(path.join(tmp.dir, 'data'))).toBe(false);
    } finally {
      tmp.cleanup();
    }
  });
});

async function fetchStatus(url: string, caFile: string, headers: Record<string, string>): Promise<number> {
  const https = await import('node:https');
  return new Promise((resolve, reject) => {
    const req = https.request(`${url}/pods`, { ca: fs.readFileSync(caFile), headers, agent: false }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end();
  });
}
