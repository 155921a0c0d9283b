// The operator's dashboard listener: a read-only page and the JSON and server-sent-event endpoints it
// reads. GET and HEAD only; a strict Content-Security-Policy (scripts and styles from this origin only,
// no inline code, no connection anywhere else); every answer bounded (pages of nodes, capped lists).
// Loopback listeners speak plain HTTP and refuse foreign Host headers (a web page elsewhere cannot use
// DNS rebinding to read the fleet); any other listener speaks mTLS with the server's own SVID and
// admits only the configured SPIFFE IDs.
import http from 'node:http';
import type https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { createSpiffeHttpsServer, type ServerTlsIdentity } from '../spiffe-https.js';
import { isLoopbackAddress } from './config.js';
import type { DashboardEvent, DashboardFeed } from './feed.js';
import { worldMapBody } from './map.js';
import { PAGE_CSS, PAGE_HTML, PAGE_JS } from './page.js';
import { DashboardView, MAX_PAGE } from './view.js';

/** The server's own SVID and bundles (ServerSvidSource), for the remote listener's mTLS. */
export type DashboardIdentity = ServerTlsIdentity;

export interface DashboardOptions {
  host: string;
  port: number;
  view: DashboardView;
  feed: DashboardFeed;
  /** Required unless `host` is a loopback address. */
  remote?: { identity: DashboardIdentity; allowedSpiffeIds: readonly string[] };
  logger?: Logger;
  /** Most concurrent event streams (each is an open connection). */
  maxEventStreams?: number;
  /** Keep-alive comment period on event streams. */
  heartbeatMs?: number;
}

export interface DashboardServer {
  readonly port: number;
  /** http or https */
  readonly scheme: string;
  close(): Promise<void>;
}

export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const COMMON_HEADERS: Record<string, string> = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'x-frame-options': 'DENY',
  'cache-control': 'no-store',
};

const STATIC: Record<string, { type: string; body: Buffer }> = {
  '/': { type: 'text/html; charset=utf-8', body: Buffer.from(PAGE_HTML) },
  '/static/app.js': { type: 'text/javascript; charset=utf-8', body: Buffer.from(PAGE_JS) },
  '/static/app.css': { type: 'text/css; charset=utf-8', body: Buffer.from(PAGE_CSS) },
};

const MAX_REFUSALS_ANSWER = 200;

function intParam(v: string | null, dflt: number): number {
  if (v === null || !/^\d{1,9}$/.test(v)) return dflt;
  return Number(v);
}

export async function startDashboard(o: DashboardOptions): Promise<DashboardServer> {
  const loopback = isLoopbackAddress(o.host);
  if (!loopback && o.remote === undefined) {
    throw new Error(`dashboard: ${o.host} is not a loopback address; remote access needs mTLS (dashboard.remote.allowedSpiffeIds)`);
  }
  const log = o.logger;
  // Built now (a few hundred ms with the border map) rather than on the first page load.
  worldMapBody();
  // And the first snapshot of the fleet, so the first visitor does not wait for the datastore scan.
  o.view.current().catch((err: unknown) => log?.warn({ err }, 'dashboard: first snapshot failed'));
  const streams = new Set<http.ServerResponse>();
  const maxStreams = o.maxEventStreams ?? 64;
  const heartbeatMs = o.heartbeatMs ?? 15_000;

  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const send = (status: number, type: string, body: Buffer | string, extra: Record<string, string> = {}): void => {
      const b = typeof body === 'string' ? Buffer.from(body) : body;
      res.writeHead(status, { ...COMMON_HEADERS, 'content-type': type, 'content-length': String(b.length), ...extra });
      res.end(req.method === 'HEAD' ? undefined : b);
    };
    const json = (status: number, value: unknown): void => send(status, 'application/json; charset=utf-8', JSON.stringify(value));
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return send(405, 'application/json; charset=utf-8', JSON.stringify({ error: 'the dashboard is read-only: GET only' }), { allow: 'GET, HEAD' });
    }
    if (loopback && o.remote === undefined) {
      // DNS rebinding guard: a browser sends the name it resolved; only loopback names are ours.
      const host = (req.headers.host ?? '').replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
      if (!isLoopbackAddress(host)) return json(421, { error: `Host ${host.slice(0, 64)} is not this dashboard's; open it as http://127.0.0.1:<port>/` });
    }
    let url: URL;
    try {
      url = new URL(req.url ?? '/', 'http://dashboard.invalid');
    } catch {
      return json(400, { error: 'bad request target' });
    }
    const path = url.pathname;
    const st = STATIC[path];
    if (st !== undefined) return send(200, st.type, st.body);
    const fail = (err: unknown): void => {
      log?.error({ err }, 'dashboard request failed');
      if (!res.headersSent) json(500, { error: 'internal error; see the server log' });
    };
    switch (path) {
      case '/api/summary':
        o.view.current().then((s) => json(200, s.summary), fail);
        return;
      case '/api/policies':
        o.view.current().then((s) => json(200, { policies: s.summary.policies }), fail);
        return;
      case '/api/nodes': {
        const p = url.searchParams;
        const country = p.get('country') ?? undefined;
        const q = p.get('q') ?? undefined;
        o.view.page({
          offset: intParam(p.get('offset'), 0),
          limit: intParam(p.get('limit'), 100),
          ...(q !== undefined ? { q: q.slice(0, 256) } : {}),
          ...(country !== undefined ? { country: country.slice(0, 8) } : {}),
        }).then((page) => json(200, { ...page, maxLimit: MAX_PAGE }), fail);
        return;
      }
      case '/api/refusals': {
        const limit = Math.min(MAX_REFUSALS_ANSWER, Math.max(1, intParam(url.searchParams.get('limit'), 50)));
        return json(200, { refusals: o.feed.lastRefusals(limit) });
      }
      case '/api/map': {
        const body = worldMapBody();
        const gz = /\bgzip\b/.test(String(req.headers['accept-encoding'] ?? ''));
        // The map never changes while the process runs: let the browser keep it for the session.
        return send(200, 'application/json; charset=utf-8', gz ? body.gzip : body.json, {
          'cache-control': 'private, max-age=3600', vary: 'accept-encoding', ...(gz ? { 'content-encoding': 'gzip' } : {}),
        });
      }
      case '/api/events': {
        const limit = Math.min(MAX_REFUSALS_ANSWER, Math.max(1, intParam(url.searchParams.get('limit'), 50)));
        return json(200, { events: o.feed.recentEvents(limit) });
      }
      case '/events':
        return openStream(req, res);
      case '/favicon.ico':
        // Browsers ask for it unprompted; no icon, and no 404 in the operator's console.
        res.writeHead(204, COMMON_HEADERS);
        res.end();
        return;
      default:
        return json(404, { error: `no ${path.slice(0, 64)} here` });
    }
  };

  const openStream = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    if (streams.size >= maxStreams) {
      res.writeHead(503, { ...COMMON_HEADERS, 'content-type': 'application/json', 'retry-after': '10' });
      res.end(JSON.stringify({ error: `too many open event streams (${maxStreams})` }));
      return;
    }
    res.writeHead(200, { ...COMMON_HEADERS, 'content-type': 'text/event-stream; charset=utf-8', connection: 'keep-alive' });
    if (req.method === 'HEAD') { res.end(); return; }
    const write = (e: DashboardEvent): void => { res.write(`id: ${e.id}\nevent: ${e.kind}\ndata: ${JSON.stringify(e)}\n\n`); };
    res.write('retry: 2000\n\n');
    // A reconnecting EventSource says what it saw last (Last-Event-ID), a page that just loaded the
    // lists says it with ?after=: replay what it missed (bounded by the feed's ring).
    const afterParam = new URL(req.url ?? '/', 'http://dashboard.invalid').searchParams.get('after');
    const lastText = String(req.headers['last-event-id'] ?? afterParam ?? '');
    const last = /^\d{1,15}$/.test(lastText) ? Number(lastText) : -1;
    if (last >= 0) for (const e of o.feed.eventsAfter(last)) write(e);
    const unsubscribe = o.feed.subscribe(write);
    const beat = setInterval(() => res.write(': keep-alive\n\n'), heartbeatMs);
    beat.unref();
    streams.add(res);
    const done = (): void => {
      unsubscribe();
      clearInterval(beat);
      streams.delete(res);
    };
    res.on('close', done);
    req.on('close', done);
  };

  let server: http.Server | https.Server;
  let stopRefresh = (): void => undefined;
  if (o.remote !== undefined) {
    const allowed = new Set(o.remote.allowedSpiffeIds);
    const created = createSpiffeHttpsServer(o.remote.identity,
      (id) => (allowed.has(id.toString()) ? undefined : `${id.toString()} is not in dashboard.remote.allowedSpiffeIds`), handler, log, 'dashboard');
    stopRefresh = created.stopRefresh;
    server = created.server;
  } else {
    server = http.createServer(handler);
  }
  server.headersTimeout = 10_000;
  server.requestTimeout = 0; // event streams stay open
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  log?.info({ host: o.host, port, mtls: o.remote !== undefined }, 'dashboard listening');
  return {
    port,
    scheme: o.remote !== undefined ? 'https' : 'http',
    async close() {
      stopRefresh();
      for (const r of streams) r.destroy();
      streams.clear();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
