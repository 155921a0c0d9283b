// Liveness and readiness over plain HTTP, for orchestrators: GET /live answers 200 while the process
// serves requests; GET /ready answers 200 only when every readiness check passes (datastore reachable,
// CA active) and 503 with the failing checks otherwise.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type ReadinessCheck = () => Promise<void>;

export interface HealthServer {
  readonly port: number;
  close(): Promise<void>;
}

/** Runs every check (each bounded by timeoutMs); returns the failures by name. */
export async function runReadinessChecks(checks: Record<string, ReadinessCheck>, timeoutMs = 2000): Promise<Record<string, string>> {
  const failures: Record<string, string> = {};
  await Promise.all(Object.entries(checks).map(async ([name, check]) => {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        check(),
        new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs); }),
      ]);
    } catch (err) {
      failures[name] = err instanceof Error ? err.message : String(err);
    } finally {
      clearTimeout(timer);
    }
  }));
  return failures;
}

export async function startHealthServer(
  host: string,
  port: number,
  checks: Record<string, ReadinessCheck>,
  /** Feature flags, shown on /ready in the body (`featureFlags`) and the `terroir-feature-flags` header (JSON). */
  featureFlags?: Record<string, { value: boolean; source: string }>,
  /** Prometheus exposition for GET /metrics (absent: 404, metrics are off). */
  metrics?: () => Promise<{ contentType: string; body: string }>,
): Promise<HealthServer> {
  // Also a header, so probes that only look at the status and headers (HEAD) see the flags too.
  const flagsHeader = featureFlags === undefined ? undefined : JSON.stringify(featureFlags);
  const server = http.createServer((req, res) => {
    const reply = (status: number, body: unknown, extra: Record<string, string> = {}): void => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...extra });
      res.end(text);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, { error: 'only GET' });
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/live') return reply(200, { live: true });
    if (url === '/ready') {
      runReadinessChecks(checks).then(
        (failures) => {
          const ok = Object.keys(failures).length === 0;
          const flags = featureFlags === undefined ? {} : { featureFlags };
          reply(ok ? 200 : 503, ok ? { ready: true, ...flags } : { ready: false, failures, ...flags }, flagsHeader ? { 'terroir-feature-flags': flagsHeader } : {});
        },
        (err: unknown) => reply(503, { ready: false, failures: { internal: String(err) }, ...(featureFlags === undefined ? {} : { featureFlags }) },
          flagsHeader ? { 'terroir-feature-flags': flagsHeader } : {}),
      );
      return;
    }
    if (url === '/metrics' && metrics) {
      metrics().then(
        (m) => {
          res.writeHead(200, { 'content-type': m.contentType, 'content-length': Buffer.byteLength(m.body), 'cache-control': 'no-store' });
          res.end(req.method === 'HEAD' ? undefined : m.body);
        },
        (err: unknown) => reply(500, { error: `metrics failed: ${err instanceof Error ? err.message : String(err)}` }),
      );
      return;
    }
    reply(404, { error: metrics ? 'not found; use /live, /ready or /metrics' : 'not found; use /live or /ready' });
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
