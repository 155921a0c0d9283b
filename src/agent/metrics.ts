// Prometheus metrics of the agent, served on its optional health listener (GET /metrics, GET /live;
// loopback unless configured otherwise). Counters the agent keeps anyway (AgentStats) and the cache
// are read when Prometheus scrapes; Workload API calls are counted by wrapping the gRPC handlers.
// Labels are RPC names and gRPC status names only: no workload selectors, SPIFFE IDs or paths.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { Counter, Gauge, Registry } from 'prom-client';
import type { IdentityCache } from './cache.js';
import type { AgentStats } from './context.js';

export interface AgentMetricsSources {
  stats: AgentStats;
  cache: IdentityCache;
  /** Expiry (ms since the epoch) of the agent's own SVID, once it has one. */
  agentSvidNotAfter(): number | undefined;
  /** Whether the agent's watch stream to the server is open (the server answered READY). */
  serverReachable(): boolean;
}

const STATUS_NAMES = new Set(Object.keys(grpc.status).filter((k) => Number.isNaN(Number(k))));

export class AgentMetrics {
  readonly registry = new Registry();
  private readonly calls: Counter<'rpc' | 'code'>;
  private sources: AgentMetricsSources | undefined;

  constructor() {
    const registers = [this.registry];
    const self = (): AgentMetrics => this;
    this.calls = new Counter({
      name: 'terroir_agent_workload_api_calls_total', help: 'Workload API calls by RPC and gRPC status code (a stream counts once, when it opens or is refused).',
      labelNames: ['rpc', 'code'], registers,
    });
    const fromStats = (name: string, help: string, field: keyof AgentStats): void => {
      new Counter({
        name, help, registers,
        collect() {
          this.reset();
          const v = self().sources?.stats[field];
          if (v !== undefined) this.inc(v);
        },
      });
    };
    fromStats('terroir_agent_node_attestations_total', 'Node attestations this agent process completed (first, after a drop, after expiry; TPM renewals are attestations too).', 'attestations');
    fromStats('terroir_agent_syncs_total', 'Sync passes with the server (bundles, entries, SVID signing) started.', 'syncs');
    fromStats('terroir_agent_svids_signed_total', 'Workload SVIDs the server signed for this agent.', 'svidsSigned');
    fromStats('terroir_agent_keylime_revocations_total', 'Keylime revocation notifications about this node the agent acted on.', 'revocations');
    new Gauge({
      name: 'terroir_agent_cache_entries', help: 'Registration entries in the agent\'s cache.', registers,
      collect() { this.set(self().sources?.cache.entryList().length ?? 0); },
    });
    new Gauge({
      name: 'terroir_agent_cache_svids', help: 'Workload SVIDs in the agent\'s cache.', registers,
      collect() { this.set(self().sources?.cache.svidCount() ?? 0); },
    });
    new Gauge({
      name: 'terroir_agent_svid_expiry_seconds', help: 'Seconds until the earliest SVID the agent holds (its own or a workload\'s) expires; negative once expired.', registers,
      collect() {
        this.reset();
        const earliest = self().earliestExpiry();
        if (earliest !== undefined) this.set((earliest - Date.now()) / 1000);
      },
    });
    new Gauge({
      name: 'terroir_agent_server_reachable', help: '1 while the agent\'s watch stream to the server is open, 0 otherwise.', registers,
      collect() { this.set(self().sources?.serverReachable() ? 1 : 0); },
    });
  }

  bind(sources: AgentMetricsSources): void {
    this.sources = sources;
  }

  /** One Workload API call's outcome. */
  observeRpc(rpc: string, code: number): void {
    const name = grpc.status[code];
    this.calls.inc({ rpc, code: name !== undefined && STATUS_NAMES.has(name) ? name : 'UNKNOWN' });
  }

  /**
   * Wraps the Workload API handlers: unary calls are counted at their callback, streams when their
   * first message goes out (OK) or when they end with an error before that.
   */
  instrumentHandlers(handlers: grpc.UntypedServiceImplementation): grpc.UntypedServiceImplementation {
    const out: grpc.UntypedServiceImplementation = {};
    for (const [rpc, handler] of Object.entries(handlers)) {
      const h = handler as (...args: unknown[]) => void;
      if (h.length >= 2) {
        out[rpc] = ((call: unknown, cb: grpc.sendUnaryData<unknown>) => h(call, (err: grpc.ServiceError | null, value?: unknown) => {
          this.observeRpc(rpc, err ? (err.code ?? grpc.status.UNKNOWN) : grpc.status.OK);
          cb(err, value);
        })) as grpc.UntypedHandleCall;
      } else {
        out[rpc] = ((call: grpc.ServerWritableStream<unknown, unknown>) => {
          let counted = false;
          const count = (code: number): void => { if (!counted) { counted = true; this.observeRpc(rpc, code); } };
          const emit = call.emit.bind(call);
          call.emit = ((event: string | symbol, ...args: unknown[]) => {
            if (event === 'error') count((args[0] as { code?: number } | undefined)?.code ?? grpc.status.UNKNOWN);
            return emit(event, ...args);
          }) as typeof call.emit;
          const write = call.write.bind(call) as (...a: unknown[]) => boolean;
          call.write = ((...a: unknown[]) => { count(grpc.status.OK); return write(...a); }) as typeof call.write;
          h(call);
        }) as grpc.UntypedHandleCall;
      }
    }
    return out;
  }

  async scrape(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  private earliestExpiry(): number | undefined {
    const s = this.sources;
    if (!s) return undefined;
    let earliest = s.agentSvidNotAfter();
    for (const e of s.cache.entryList()) {
      const svid = s.cache.svid(e.id);
      if (svid && (earliest === undefined || svid.notAfter < earliest)) earliest = svid.notAfter;
    }
    return earliest;
  }
}

export interface AgentHealthListener {
  readonly port: number;
  close(): Promise<void>;
}

/** GET /live (200 while the process serves) and GET /metrics, for the agent (health section of its config). */
export async function startAgentHealthListener(host: string, port: number, metrics: AgentMetrics): Promise<AgentHealthListener> {
  const server = http.createServer((req, res) => {
    const send = (status: number, type: string, body: string): void => {
      res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'application/json', '{"error":"only GET"}');
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/live') return send(200, 'application/json', '{"live":true}');
    if (url === '/metrics') {
      metrics.scrape().then((m) => send(200, m.contentType, m.body), (err: unknown) => send(500, 'text/plain', `metrics failed: ${String(err)}`));
      return;
    }
    send(404, 'application/json', '{"error":"not found; use /live or /metrics"}');
  });
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => { server.off('error', reject); resolve(); });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
