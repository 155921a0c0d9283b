// The Kubernetes workload attestor: from a caller's pid to its pod and container, as SPIRE's k8s
// workload attestor does. /proc/<pid>/cgroup gives the pod UID and container ID (cgroup v1 and v2,
// cgroupfs and systemd drivers, containerd, CRI-O and Docker); the kubelet's own pod list
// (GET https://<node>:10250/pods, TLS verified against the kubelet CA, the agent's service account
// token as bearer) gives the pod's namespace, service account, labels and the container's name and
// image. Selectors use SPIRE's names: k8s:ns, k8s:sa, k8s:pod-label:<k>:<v>, k8s:pod-name,
// k8s:pod-uid, k8s:node-name, k8s:container-name, k8s:container-image.
import fs from 'node:fs';
import https from 'node:https';
import { z } from 'zod';
import type { PeerCredentials } from '../../../native/peercred.js';
import type { Selector } from '../selectors.js';
import { WorkloadAttestationError, type ProcessSnapshot, type UnixAttestor } from './unix.js';

export type K8sFailure =
  | 'cgroup_unreadable' | 'cgroup_conflict' | 'kubelet_unreachable' | 'kubelet_refused'
  | 'kubelet_answer_invalid' | 'kubelet_answer_too_large' | 'container_not_found' | 'pod_mismatch';

/** A k8s attestation failure; the Workload API passes its message on (PermissionDenied). */
export class K8sAttestationError extends WorkloadAttestationError {
  constructor(readonly reason: K8sFailure, message: string) {
    super('unreadable', `k8s attestor: ${message}`);
    this.name = 'K8sAttestationError';
  }
}

/** Where a process runs, from its cgroup paths. */
export interface PodContainer {
  /** The pod UID with dashes (systemd slices write it with underscores). */
  podUid: string;
  /** The 64-hex container ID, as the runtime reports it (without "containerd://"). */
  containerId: string;
}

const UID = '[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}';
// A pod's cgroup directory: "pod<uid>" (cgroupfs) or "[kubelet-]kubepods[-qos]-pod<uid_>.slice" (systemd).
const POD_SEGMENT = new RegExp(`^(?:[a-z0-9]+-)*pod(${UID})(?:\\.slice)?$`);
// A container's cgroup directory: "<id>" (cgroupfs), "<runtime>-<id>.scope" (systemd) or
// "cri-containerd:<id>" / "crio:<id>" (systemd-slice names some tools print).
const CONTAINER_SEGMENT = /^(?:(?:cri-containerd|crio|docker|containerd)[-:])?([0-9a-f]{64})(?:\.scope)?$/;

/**
 * The pod and container of one /proc/<pid>/cgroup text, or null when the process is not in a
 * Kubernetes pod container (no "kubepods" path with a pod and a container directory). Paths of
 * different hierarchies (cgroup v1) naming different pods or containers are refused.
 */
export function parseCgroup(text: string): PodContainer | null {
  let found: PodContainer | null = null;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    // "<hierarchy-id>:<controllers>:<path>"; the path may itself contain ':'.
    const first = line.indexOf(':');
    const second = line.indexOf(':', first + 1);
    if (first < 0 || second < 0) continue;
    const path = line.slice(second + 1);
    if (!path.includes('kubepods')) continue;
    const segs = path.split('/').filter((s) => s !== '');
    // The container is the last segment and its pod the one before it (conmon and pause scopes of
    // CRI-O, "crio-conmon-<id>.scope", do not match CONTAINER_SEGMENT and are skipped).
    const last = segs.at(-1);
    const parent = segs.at(-2);
    if (last === undefined || parent === undefined) continue;
    const c = CONTAINER_SEGMENT.exec(last);
    const p = POD_SEGMENT.exec(parent);
    if (!c || !p) continue;
    const here: PodContainer = { podUid: (p[1] as string).replaceAll('_', '-'), containerId: c[1] as string };
    if (found && (found.podUid !== here.podUid || found.containerId !== here.containerId)) {
      throw new K8sAttestationError('cgroup_conflict',
        `cgroup hierarchies disagree about the container (${found.containerId} in pod ${found.podUid} vs ${here.containerId} in pod ${here.podUid})`);
    }
    found = here;
  }
  return found;
}

// The fields of the kubelet's /pods answer (a core/v1 PodList) that attestation uses; everything
// else the kubelet sends is ignored, but these must have the types the Kubernetes API gives them.
const containerStatus = z.object({
  name: z.string().min(1),
  image: z.string(),
  imageID: z.string().optional(),
  /** "<runtime>://<id>", absent while the container is being created. */
  containerID: z.string().optional(),
});
const pod = z.object({
  metadata: z.object({
    name: z.string().min(1),
    namespace: z.string().min(1),
    uid: z.string().min(1),
    labels: z.record(z.string(), z.string()).optional(),
  }),
  spec: z.object({
    serviceAccountName: z.string().optional(),
    nodeName: z.string().optional(),
  }),
  status: z.object({
    containerStatuses: z.array(containerStatus).optional(),
    initContainerStatuses: z.array(containerStatus).optional(),
    ephemeralContainerStatuses: z.array(containerStatus).optional(),
  }).optional(),
});
const podList = z.object({
  kind: z.literal('PodList'),
  apiVersion: z.literal('v1'),
  items: z.array(pod).nullable(),
});
type Pod = z.infer<typeof pod>;
type ContainerStatus = z.infer<typeof containerStatus>;

export interface K8sAttestorOptions {
  /** The kubelet's pod list endpoint base, e.g. https://node-1:10250 (default https://<nodeName>:10250). */
  kubeletUrl?: string;
  /** The node this agent runs on; pods naming another node are refused. */
  nodeName?: string;
  /** PEM CA(s) the kubelet's serving certificate must chain to (read once at start). */
  caFile: string;
  /** The agent's service account token, read for every request (projected tokens rotate). */
  tokenFile: string;
  /** How long a pod list is used for containers it contains (ms); default 5000. */
  cacheTtlMs?: number;
  /** At most one kubelet request per this interval for containers not in the list (ms); default 500. */
  minRefreshIntervalMs?: number;
  /** Larger answers are refused (bytes); default 32 MiB. */
  maxResponseBytes?: number;
  /** One kubelet request's time limit (ms); default 5000. */
  requestTimeoutMs?: number;
  procRoot?: string;
}

interface PodListSnapshot {
  at: number;
  /** container ID → its pod and status. */
  byContainer: Map<string, { pod: Pod; status: ContainerStatus }>;
}

/** The outcome of looking a pid up: selectors, or why it has none. */
export type K8sInspection =
  | { inPod: true; pod: PodContainer; selectors: Selector[] }
  | { inPod: false; reason: string };

export class K8sAttestor {
  private readonly url: URL;
  private readonly ca: Buffer;
  private readonly agent: https.Agent;
  private readonly ttl: number;
  private readonly minInterval: number;
  private readonly maxBytes: number;
  private readonly timeoutMs: number;
  private readonly procRoot: string;
  private list: PodListSnapshot | undefined;
  private inflight: Promise<PodListSnapshot> | undefined;
  /** Requests sent to the kubelet (for tests and the benchmark). */
  fetches = 0;

  constructor(private readonly opts: K8sAttestorOptions) {
    const base = opts.kubeletUrl ?? (opts.nodeName ? `https://${opts.nodeName}:10250` : undefined);
    if (!base) throw new Error('k8s attestor: set kubeletUrl or nodeName');
    this.url = new URL('/pods', base);
    if (this.url.protocol !== 'https:') throw new Error(`k8s attestor: kubeletUrl must be https (got ${this.url.protocol})`);
    try {
      this.ca = fs.readFileSync(opts.caFile);
    } catch (e) {
      throw new Error(`k8s attestor: cannot read the kubelet CA file ${opts.caFile}: ${(e as Error).message}`, { cause: e });
    }
    // The pod list is fetched often; keep one TLS connection. rejectUnauthorized is always true.
    this.agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: this.ca, rejectUnauthorized: true });
    this.ttl = opts.cacheTtlMs ?? 5000;
    this.minInterval = opts.minRefreshIntervalMs ?? 500;
    this.maxBytes = opts.maxResponseBytes ?? 32 * 1024 * 1024;
    this.timeoutMs = opts.requestTimeoutMs ?? 5000;
    this.procRoot = opts.procRoot ?? '/proc';
  }

  close(): void {
    this.agent.destroy();
  }

  /** The pod and container of a pid from its cgroup, or null (not in a pod). */
  locate(pid: number): PodContainer | null {
    let text: string;
    try {
      text = fs.readFileSync(`${this.procRoot}/${pid}/cgroup`, 'latin1');
    } catch {
      throw new K8sAttestationError('cgroup_unreadable', `cannot read /proc/${pid}/cgroup (process gone?)`);
    }
    return parseCgroup(text);
  }

  /** Selectors for a pid, or why it has none (not in a pod); throws when the kubelet cannot say. */
  async inspect(pid: number): Promise<K8sInspection> {
    const where = this.locate(pid);
    if (!where) return { inPod: false, reason: `process ${pid} is not in a Kubernetes pod container (no kubepods cgroup with a pod and container)` };
    let list = this.list;
    const now = Date.now();
    if (!list || now - list.at >= this.ttl) {
      list = await this.refresh();
    } else if (!list.byContainer.has(where.containerId) && now - list.at >= this.minInterval) {
      // A container started after the list was fetched: look again, at a bounded rate.
      list = await this.refresh();
    }
    const hit = list.byContainer.get(where.containerId);
    if (!hit) {
      throw new K8sAttestationError('container_not_found',
        `container ${where.containerId} (pod ${where.podUid}) is not in the kubelet's pod list (starting or not of this node); retry shortly`);
    }
    if (hit.pod.metadata.uid !== where.podUid) {
      throw new K8sAttestationError('pod_mismatch',
        `container ${where.containerId} is in pod ${where.podUid} by its cgroup but in pod ${hit.pod.metadata.uid} by the kubelet`);
    }
    if (this.opts.nodeName && hit.pod.spec.nodeName && hit.pod.spec.nodeName !== this.opts.nodeName) {
      throw new K8sAttestationError('pod_mismatch', `pod ${hit.pod.metadata.uid} runs on node ${hit.pod.spec.nodeName}, not on ${this.opts.nodeName}`);
    }
    return { inPod: true, pod: where, selectors: selectorsOf(hit.pod, hit.status) };
  }

  /** Selectors for a pid; [] when it is not in a pod. */
  async attest(pid: number): Promise<Selector[]> {
    const r = await this.inspect(pid);
    return r.inPod ? r.selectors : [];
  }

  /** One kubelet request at a time; callers arriving meanwhile share its answer. */
  private refresh(): Promise<PodListSnapshot> {
    this.inflight ??= this.fetchPods().then((l) => {
      this.list = l;
      return l;
    }).finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private readToken(): string {
    let token: string;
    try {
      token = fs.readFileSync(this.opts.tokenFile, 'utf8').trim();
    } catch (e) {
      throw new K8sAttestationError('kubelet_refused', `cannot read the service account token ${this.opts.tokenFile}: ${(e as Error).message}`);
    }
    if (token === '' || /[\s]/.test(token)) throw new K8sAttestationError('kubelet_refused', `service account token file ${this.opts.tokenFile} is empty or malformed`);
    return token;
  }

  private async fetchPods(): Promise<PodListSnapshot> {
    const token = this.readToken();
    this.fetches++;
    const body = await new Promise<Buffer>((resolve, reject) => {
      const req = https.request(this.url, {
        method: 'GET',
        agent: this.agent,
        ca: this.ca,
        rejectUnauthorized: true,
        headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
        timeout: this.timeoutMs,
      }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          const why = res.statusCode === 401 ? ' (token not accepted)' : res.statusCode === 403 ? ' (the service account may not get nodes/proxy)' : '';
          reject(new K8sAttestationError('kubelet_refused', `kubelet answered ${res.statusCode ?? '?'} to GET /pods${why}`));
          return;
        }
        const declared = Number(res.headers['content-length']);
        if (Number.isFinite(declared) && declared > this.maxBytes) {
          res.destroy();
          reject(new K8sAttestationError('kubelet_answer_too_large', `kubelet pod list of ${declared} bytes exceeds the limit of ${this.maxBytes}`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > this.maxBytes) {
            res.destroy();
            reject(new K8sAttestationError('kubelet_answer_too_large', `kubelet pod list exceeds the limit of ${this.maxBytes} bytes`));
            return;
          }
          chunks.push(c);
        });
        res.on('end', () => resolve(Buffer.concat(chunks)));
        res.on('error', (e) => reject(new K8sAttestationError('kubelet_unreachable', `kubelet answer broken: ${e.message}`)));
      });
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      req.on('error', (e) => reject(e instanceof K8sAttestationError ? e
        : new K8sAttestationError('kubelet_unreachable', `GET ${this.url.href} failed: ${e.message}`)));
      req.end();
    });
    let json: unknown;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch {
      throw new K8sAttestationError('kubelet_answer_invalid', 'kubelet pod list is not JSON');
    }
    const parsed = podList.safeParse(json);
    if (!parsed.success) {
      const i = parsed.error.issues[0];
      throw new K8sAttestationError('kubelet_answer_invalid',
        `kubelet answer is not a v1 PodList: ${i ? `${i.path.join('.') || '(top level)'}: ${i.message}` : 'unknown shape'}`);
    }
    const byContainer = new Map<string, { pod: Pod; status: ContainerStatus }>();
    for (const p of parsed.data.items ?? []) {
      const st = p.status;
      for (const s of [...st?.containerStatuses ?? [], ...st?.initContainerStatuses ?? [], ...st?.ephemeralContainerStatuses ?? []]) {
        if (!s.containerID) continue;
        const m = /^[a-z0-9-]+:\/\/([0-9a-f]{64})$/.exec(s.containerID);
        if (m) byContainer.set(m[1] as string, { pod: p, status: s });
      }
    }
    return { at: Date.now(), byContainer };
  }
}

function selectorsOf(p: Pod, c: ContainerStatus): Selector[] {
  const v = (value: string): Selector => ({ type: 'k8s', value });
  const out = [
    v(`ns:${p.metadata.namespace}`),
    v(`pod-name:${p.metadata.name}`),
    v(`pod-uid:${p.metadata.uid}`),
    v(`container-name:${c.name}`),
  ];
  if (p.spec.serviceAccountName) out.push(v(`sa:${p.spec.serviceAccountName}`));
  if (p.spec.nodeName) out.push(v(`node-name:${p.spec.nodeName}`));
  // SPIRE: the image as in the pod spec and the resolved image ID, both as container-image.
  if (c.image) out.push(v(`container-image:${c.image}`));
  if (c.imageID && c.imageID !== c.image) out.push(v(`container-image:${c.imageID}`));
  for (const [k, val] of Object.entries(p.metadata.labels ?? {})) out.push(v(`pod-label:${k}:${val}`));
  return out;
}

/**
 * The unix attestor plus the k8s one: a caller gets both attestors' selectors. The cgroup is read
 * first and the unix attestor checks the pid's start time afterwards, so a pid reused meanwhile is
 * refused rather than attested with another process's pod.
 */
export class UnixAndK8sAttestor {
  constructor(private readonly unix: UnixAttestor, private readonly k8s: K8sAttestor) {}

  snapshot(pid: number): ProcessSnapshot {
    return this.unix.snapshot(pid);
  }

  async attest(cred: PeerCredentials, snapshot: ProcessSnapshot): Promise<Selector[]> {
    const k8s = await this.k8s.attest(cred.pid);
    const unix = await this.unix.attest(cred, snapshot);
    return [...unix, ...k8s];
  }
}
