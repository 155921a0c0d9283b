// The operator's dashboard in a real browser: Debian's Chromium (driven by playwright-core) against a
// real server with Unified Identity on, one node attested in Paris (in policy) and one refused (New York,
// outside the EU). Checks what the operator sees (the map shades FR, both rows' facts, the refusal's
// reason, policy counts), that a revocation arrives over server-sent events without a reload, that the
// page asks nothing of any other origin, that no coordinate reaches any dashboard answer, that the
// listener is read-only, and that remote access is mTLS for the listed SPIFFE IDs only.
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeAttestationError } from '../../src/agent/node-attestor.js';
import { AdminClient } from '../../src/api/admin-api.js';
import { SvidIssuer } from '../../src/server/ca/issuer.js';
import { DashboardFeed, DashboardSvidSource, DashboardView, scrubReason, startDashboard, type DashboardServer } from '../../src/server/dashboard/index.js';
import { parseServerConfig, startServer, type RunningServer } from '../../src/server/index.js';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { expectNoCoordinates } from '../support/coordinates.js';
import { startGpsfake, type Gpsfake } from '../support/gpsfake.js';
import { freePort } from '../support/ports.js';
import { tempDir } from '../support/tmp.js';
import { POLICY_PCR, startUnifiedDeployment, TD, ZERO, type UnifiedDeployment } from '../unified-identity/fixture.js';
import { liveNmeaLog, NEW_YORK } from '../unified-identity/nmea.js';

const CHROMIUM = '/usr/bin/chromium';
// The flags the machine notes give: no sandbox as root, and nothing of Chromium's own that calls out.
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const PARIS = { lat: 48.8566, lon: 2.3522 };

let d: UnifiedDeployment;
let paris: Gpsfake;
let server: RunningServer;
let browser: Browser;
let page: Page;
let origin: string;
let accepted: string;
const shots = tempDir('terroir-dashboard-shots-');
const gpsDir = tempDir('terroir-dashboard-gps-');
const requests: string[] = [];

async function launchChromium(): Promise<Browser> {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: the dashboard test needs Debian's chromium package (bash scripts/setup.sh installs it)`);
  }
  // playwright's launch() gives Chromium a fresh, empty --user-data-dir of its own (removed on close).
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
}

beforeAll(async () => {
  // Fail, not skip, without a browser: checked before the heavier deployment starts.
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: the dashboard test needs Debian's chromium package (bash scripts/setup.sh installs it)`);
  // The deployment (swtpm, Keylime test verifier, gpsd), the Paris gpsd and Chromium start together.
  const started = await Promise.allSettled([
    startUnifiedDeployment(),
    startGpsfake(liveNmeaLog(gpsDir.dir, 'paris.nmea', PARIS, 1200, 0.3), 0.1),
    launchChromium(),
  ]);
  if (started[0].status === 'fulfilled') d = started[0].value;
  if (started[1].status === 'fulfilled') paris = started[1].value;
  if (started[2].status === 'fulfilled') browser = started[2].value;
  for (const r of started) if (r.status === 'rejected') throw r.reason;
  const cfg = parseServerConfig({
    trustDomain: TD,
    dataDir: path.join(d.dir, 'dashboard-server'),
    logLevel: 'silent',
    dataStore: { type: 'sqlite', path: path.join(d.dir, 'dashboard-server', 'ds.sqlite3') },
    ca: { keyStore: 'memory', ttl: '1d', x509SvidTtl: '1h' },
    agentApi: { bindAddress: '127.0.0.1', port: await freePort(), watchIntervalMs: 100, attestationRateLimit: { perSecond: 100, burst: 1000 } },
    health: { enabled: false },
    dashboard: { enabled: true, bindAddress: '127.0.0.1', port: await freePort() },
    nodeAttestation: { joinToken: { enabled: false }, tpm: { enabled: true, manufacturerCaFiles: [d.swtpm.caFile] } },
    keylime: {
      verifierUrl: `https://localhost:${d.verifier.port}`,
      caFile: d.pki.files.serverCa, certFile: d.pki.files.clientCert, keyFile: d.pki.files.clientKey,
      allowDevelopmentStandIn: true, mode: 'oneshot', requestTimeoutMs: 1000,
    },
    unifiedIdentity: {
      locationPolicies: { file: path.join(d.dir, 'policies.yaml') },
      defaultPolicy: 'eu-only',
      pcrs: [0, 7, POLICY_PCR],
      tpmPolicy: { [String(POLICY_PCR)]: [ZERO] },
      reattestInterval: '1h',
    },
  }, d.dir, { UNIFIED_IDENTITY_ENABLED: 'true' });
  server = await startServer(cfg, { logger: d.logger });
  expect(server.dashboardPort).toBeGreaterThan(0);
  origin = `http://127.0.0.1:${server.dashboardPort}`;

  // One swtpm, so one node identity: refused first (New York; no claims to withdraw yet), then accepted
  // (Paris) — a refusal after the acceptance would withdraw the node's claims.
  const refused = await d.attest(server, d.provider(d.newYork)).then(() => undefined, (e: unknown) => e);
  expect(refused).toBeInstanceOf(NodeAttestationError);
  accepted = (await d.attest(server, d.provider(paris))).spiffeId;

  page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(`${origin}/`);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 15_000 });
}, 90_000);

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await paris?.stop();
  await d?.stop();
  gpsDir.cleanup();
  // The screenshots stay for a look (their directory is printed); the OS tmp cleaner removes them.
});

describe('dashboard in Chromium', () => {
  it('shades the node\'s country, lists the node with its coarse claims, the refusal with its reason, and the policies', async () => {
    const fr = page.locator('#map path[data-code="FR"]');
    expect(await fr.getAttribute('data-nodes')).toBe('1');
    expect(await fr.getAttribute('fill')).toMatch(/^rgba\(/);
    expect(await fr.getAttribute('class')).toContain('attested');
    // Nothing attested in the US or Germany: their countries stay the plain land colour.
    expect(await page.locator('#map path[data-code="US"]').getAttribute('fill')).toBeNull();
    expect(await page.locator('#map path[data-code="DE"]').getAttribute('fill')).toBeNull();

    const row = page.locator(`#nodes tbody tr[data-spiffe-id="${accepted}"]`);
    await expect.poll(() => row.count()).toBe(1);
    const cells = await row.locator('td').allTextContents();
    expect(cells[0]).toBe(accepted);
    expect(cells[1]).toBe('tpm');
    expect(cells[2]).toBe('active');
    expect(cells[3]).toMatch(/verified/);
    expect(cells[5]).toBe('FR');
    expect(cells[6]).toBe('EU');
    expect(cells[7]).toBe('eu-only, fr-only');
    expect(cells[8]).toBe('self-reported');

    const refusal = page.locator('#refusals li[data-kind="refused"]').first();
    const text = await refusal.textContent();
    expect(text).toMatch(/location policy eu-only denied/);
    expect(text).toMatch(/outside the allowed area \(in US\)/);

    // The events so far (loaded with the page): the refusal, then the acceptance.
    expect(await page.locator('#events li').evaluateAll((els) => els.map((e) => e.getAttribute('data-kind')))).toEqual(['attested', 'refused']);
    expect(await page.locator('#events li[data-kind="attested"] .who').textContent()).toBe(accepted);

    expect(await page.locator('#policies tr[data-policy="eu-only"] td').allTextContents()).toEqual(['eu-onlydefault', '1']);
    expect(await page.locator('#policies tr[data-policy="fr-only"] td').allTextContents()).toEqual(['fr-only', '1']);
    await expect.poll(() => page.locator('#live').getAttribute('data-state')).toBe('live');
    const shot = path.join(shots.dir, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    console.log(`dashboard screenshot: ${shot}`);
    expect(fs.statSync(shot).size).toBeGreaterThan(10_000);
  });

  it('shows a revocation and a new refusal live, over server-sent events, without a reload', async () => {
    await page.evaluate(() => { (globalThis as unknown as { marker: string }).marker = 'same page'; });
    const admin = new AdminClient(server.adminSocketPath as string);
    try {
      await admin.call('BanAgent', { spiffeId: accepted });
    } finally {
      admin.close();
    }
    await page.waitForSelector('#events li[data-kind="revoked"]', { timeout: 10_000 });
    expect(await page.locator('#events li[data-kind="revoked"] .who').first().textContent()).toBe(accepted);
    const row = page.locator(`#nodes tbody tr[data-spiffe-id="${accepted}"]`);
    await expect.poll(() => row.getAttribute('data-status'), { timeout: 10_000 }).toBe('banned');
    // A banned node no longer counts for its country.
    await expect.poll(() => page.locator('#map path[data-code="FR"]').getAttribute('data-nodes'), { timeout: 10_000 }).toBeNull();

    const before = await page.locator('#refusals li').count();
    await d.attest(server, d.provider(d.newYork)).catch(() => undefined);
    await expect.poll(() => page.locator('#refusals li').count(), { timeout: 10_000 }).toBeGreaterThan(before);
    expect(await page.evaluate(() => (globalThis as unknown as { marker?: string }).marker)).toBe('same page');
    await page.screenshot({ path: path.join(shots.dir, 'dashboard-after-revocation.png'), fullPage: true });
  });

  it('asks nothing of any other origin, under a strict Content-Security-Policy', async () => {
    expect(requests.length).toBeGreaterThanOrEqual(6); // page, script, style, map, summary, nodes, refusals, events
    for (const u of requests) expect(new URL(u).origin, u).toBe(origin);
    const res = await fetch(`${origin}/`);
    const csp = res.headers.get('content-security-policy') ?? '';
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).not.toContain('unsafe-inline');
    expect(await res.text()).not.toMatch(/<script>(?!<)|\son[a-z]+=/); // no inline script or handlers
  });
});

describe('dashboard answers', () => {
  it('carry no coordinates, although the audit records of these attestations hold the precise readings', async () => {
    const bodies: unknown[] = [];
    for (const p of ['/', '/static/app.js', '/api/summary', '/api/policies', '/api/nodes?limit=500', '/api/refusals?limit=200', '/api/events?limit=200', '/api/map']) {
      const res = await fetch(`${origin}${p}`);
      expect(res.status, p).toBe(200);
      bodies.push(await res.text());
    }
    bodies.push(await eventStreamText(0));
    for (const b of bodies) {
      expectNoCoordinates(b, PARIS);
      expectNoCoordinates(b, NEW_YORK);
    }
  });

  it('the audit tee keeps only coarse fields: readings in details and coordinates in a reason never come out', () => {
    const feed = new DashboardFeed();
    feed.record({
      action: 'attest_agent', caller: 'ipv4:127.0.0.1:5000', subject: `spiffe://${TD}/agent/x`, result: 'ok',
      details: { method: 'tpm', unifiedIdentity: { readings: [{ lat: PARIS.lat, lon: PARIS.lon, horizontalErrorM: 5 }], keylime: { valid: true } } },
    });
    feed.record({ action: 'attest_agent', caller: 'ipv4:127.0.0.1:5001', result: 'denied', reason: `fix at 48.8566, 2.3522 (lat=48.8566 lon: 2.3522) is outside`, details: { readings: [PARIS] } });
    const out = [...feed.eventsAfter(0), ...feed.lastRefusals()];
    expect(out.map((e) => e.kind)).toEqual(['attested', 'refused', 'refused']);
    expectNoCoordinates(out, PARIS);
    expect(scrubReason('a 1.5 s delay, 3 readings')).toBe('a 1.5 s delay, 3 readings');
    expect(feed.factsFor(`spiffe://${TD}/agent/x`)?.keylime).toBe('verified');
  });

  it('is read-only, bounded, and refuses a Host that is not loopback', async () => {
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH']) {
      const res = await fetch(`${origin}/api/nodes`, { method });
      expect(res.status, method).toBe(405);
      expect(res.headers.get('allow')).toBe('GET, HEAD');
    }
    const page1 = await (await fetch(`${origin}/api/nodes?limit=100000`)).json() as { limit: number };
    expect(page1.limit).toBe(500);
    const rebound = await rawGet(server.dashboardPort as number, '/api/nodes', 'attacker.example');
    expect(rebound).toBe(421);
  });

  it('configuration: off by default; a non-loopback bind without remote mTLS is refused', () => {
    const base = { trustDomain: TD, dataStore: { type: 'sqlite', path: 'x.db' } };
    expect(parseServerConfig(base, d.dir, {}).dashboard).toMatchObject({ enabled: false, bindAddress: '127.0.0.1' });
    expect(() => parseServerConfig({ ...base, dashboard: { enabled: true, bindAddress: '0.0.0.0' } }, d.dir, {})).toThrow(/remote access requires mTLS/);
    expect(() => parseServerConfig({ ...base, dashboard: { enabled: true, bindAddress: '0.0.0.0', remote: { allowedSpiffeIds: ['not an id'] } } }, d.dir, {})).toThrow(/SPIFFE ID/);
    const remote = parseServerConfig({ ...base, dashboard: { enabled: true, bindAddress: '0.0.0.0', remote: { allowedSpiffeIds: [`spiffe://${TD}/ops/alice`] } } }, d.dir, {});
    expect(remote.dashboard.remote?.allowedSpiffeIds).toEqual([`spiffe://${TD}/ops/alice`]);
  });

  it('over mTLS (non-loopback deployments): only the listed SPIFFE IDs get in', async () => {
    const issuer = new SvidIssuer({ ca: server.ca, maxTtlSeconds: 3600 });
    // Named like a browser would reach it, so the ordinary host-name check passes.
    const identity = new DashboardSvidSource(issuer, server.ca, { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] }, 3600);
    const feed = new DashboardFeed();
    const td = TrustDomain.parse(TD);
    const allowedId = SpiffeId.fromPath(td, '/ops/alice');
    let db: DashboardServer | undefined;
    try {
      db = await startDashboard({
        host: '127.0.0.1', port: 0, feed, view: new DashboardView({ store: server.store, trustDomain: TD, feed }),
        remote: { identity, allowedSpiffeIds: [allowedId.toString()] },
      });
      expect(db.scheme).toBe('https');
      const client = (id: SpiffeId): { cert: string; key: string } => {
        const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
        const m = issuer.mintX509(id, publicKey, 600);
        return { cert: m.certChain.map((c) => new crypto.X509Certificate(c).toString()).join(''), key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
      };
      const ca = server.ca.x509Roots().map((r) => new crypto.X509Certificate(r).toString()).join('');
      expect(await httpsGet(db.port, ca, client(allowedId))).toBe(200);
      await expect(httpsGet(db.port, ca, client(SpiffeId.fromPath(td, '/ops/mallory')))).rejects.toThrow();
      await expect(httpsGet(db.port, ca, undefined)).rejects.toThrow();
    } finally {
      await db?.close();
      identity.close();
    }
  });
});

describe('a server configured with dashboard.remote', () => {
  it('serves the dashboard over mTLS with its own SVID, named for the host, to the listed IDs only', async () => {
    const port = await freePort();
    const cfg = parseServerConfig({
      trustDomain: TD,
      dataDir: path.join(d.dir, 'remote-server'),
      logLevel: 'silent',
      dataStore: { type: 'sqlite', path: path.join(d.dir, 'remote-server', 'ds.sqlite3') },
      ca: { keyStore: 'memory' },
      agentApi: { bindAddress: '127.0.0.1', port: await freePort(), dnsNames: ['localhost'] },
      health: { enabled: false },
      dashboard: { enabled: true, bindAddress: '127.0.0.1', port, remote: { allowedSpiffeIds: [`spiffe://${TD}/ops/alice`] } },
    }, d.dir, {});
    const remote = await startServer(cfg, { logger: d.logger });
    try {
      const issuer = new SvidIssuer({ ca: remote.ca, maxTtlSeconds: 3600 });
      const client = (id: string): { cert: string; key: string } => {
        const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
        const m = issuer.mintX509(SpiffeId.parse(id), publicKey, 600);
        return { cert: m.certChain.map((c) => new crypto.X509Certificate(c).toString()).join(''), key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
      };
      const ca = remote.ca.x509Roots().map((r) => new crypto.X509Certificate(r).toString()).join('');
      // The ordinary host-name check (localhost, from agentApi.dnsNames) passes.
      expect(await httpsGet(port, ca, client(`spiffe://${TD}/ops/alice`), 'localhost')).toBe(200);
      await expect(httpsGet(port, ca, client(`spiffe://${TD}/ops/mallory`), 'localhost')).rejects.toThrow();
      await expect(fetch(`http://127.0.0.1:${port}/api/summary`)).rejects.toThrow();
    } finally {
      await remote.stop();
    }
  });
});

/** The event stream's text from `lastEventId` on (replayed from the feed's ring), read for a moment. */
async function eventStreamText(lastEventId: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(`${origin}/events`, { headers: { 'last-event-id': String(lastEventId) } }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      setTimeout(() => { req.destroy(); resolve(text); }, 300);
    });
    req.on('error', (e) => (e.message.includes('socket hang up') ? undefined : reject(e)));
  });
}

async function rawGet(port: number, p: string, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, headers: { host } }, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
    req.on('error', reject);
  });
}

async function httpsGet(port: number, ca: string, id: { cert: string; key: string } | undefined, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = https.get({
      host, port, path: '/api/summary', ca, ...(id ?? {}), agent: false,
    }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('error', reject);
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
  });
}
