// Federation: the bundle endpoint in both profiles, and the fetcher authenticating https_spiffe
// endpoints against the previously known bundle of THAT trust domain (never our own).
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BundleFetcher, FederationError } from '../../../src/server/federation/fetcher.js';
import { startBundleEndpoint } from '../../../src/server/federation/endpoint.js';
import { startTestServer, TD, type TestServer } from './helpers.js';

let a: TestServer;
let b: TestServer;
let webDir: string;

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore' });
}

beforeAll(async () => {
  a = await startTestServer();
  b = await startTestServer({ trustDomain: 'partner.org', federation: { bundleEndpoint: { enabled: true, bindAddress: '127.0.0.1', port: 0, profile: 'https_spiffe' } } });
  // A web PKI for https_web: a private CA and a certificate for 127.0.0.1/localhost.
  webDir = fs.mkdtempSync(path.join(a.dir, 'web-'));
  const p = (f: string): string => path.join(webDir, f);
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '2', '-subj', '/CN=Web Test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', p('web.key'), '-out', p('web.csr'), '-subj', '/CN=localhost']);
  fs.writeFileSync(p('ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', p('web.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial', '-out', p('web.pem'), '-days', '1', '-extfile', p('ext.cnf')]);
});

afterAll(async () => {
  await b?.stop();
  await a?.stop();
});

const fetcherFor = (s: TestServer, webCas?: Map<string, Buffer>): BundleFetcher => new BundleFetcher({ store: s.server.store, ownTrustDomain: s.server.trustDomain, defaultRefreshSeconds: 300, webCas });

describe('bundle endpoint', () => {
  it('serves the current bundle as application/json over https_spiffe without client auth', async () => {
    const res = await new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
      // Verified against B's own bundle roots, as a federated peer would after bootstrap.
      https.get(`https://127.0.0.1:${b.server.bundleEndpointPort}/`, {
        ca: b.server.ca.x509Roots().map((d) => `-----BEGIN CERTIFICATE-----\n${d.toString('base64')}\n-----END CERTIFICATE-----\n`),
        checkServerIdentity: (_h, cert) => (cert.subjectaltname?.includes('URI:spiffe://partner.org/spire/server') ? undefined : new Error('wrong SPIFFE ID')),
      }, (r) => {
        let body = '';
        r.on('data', (c: Buffer) => { body += c.toString(); });
        r.on('end', () => resolve({ status: r.statusCode ?? 0, type: String(r.headers['content-type']), body }));
      }).on('error', reject);
    });
    expect(res.status).toBe(200);
    expect(res.type).toBe('application/json');
    expect(res.body).toBe(b.server.ca.bundle().bundleJson);
  });
});

describe('federated bundle fetcher', () => {
  it('https_spiffe: authenticates the endpoint with the known bundle of that trust domain and stores it apart', async () => {
    const ownBefore = (await a.server.store.getBundle(TD))?.bundleJson;
    const rel = { trustDomain: 'partner.org', bundleEndpointUrl: `https://127.0.0.1:${b.server.bundleEndpointPort}/`, profile: 'https_spiffe' as const, endpointSpiffeId: 'spiffe://partner.org/spire/server' };
    await expect(fetcherFor(a).fetchOnce(rel)).rejects.toMatchObject({ code: 'no_bootstrap_bundle' });
    // Bootstrap with B's bundle (what an operator does with "bundle set").
    const bb = b.server.ca.bundle();
    await a.server.store.setBundle({ trustDomain: 'partner.org', bundleJson: bb.bundleJson, sequence: bb.sequence });
    const got = await fetcherFor(a).fetchOnce(rel);
    expect(got.trustDomain.name).toBe('partner.org');
    expect(got.x509Authorities().map((d) => d.toString('base64'))).toEqual(b.server.ca.x509Roots().map((d) => d.toString('base64')));
    expect((await a.server.store.getBundle(TD))?.bundleJson).toBe(ownBefore);
    await expect(fetcherFor(a).fetchOnce({ ...rel, endpointSpiffeId: 'spiffe://partner.org/not-the-server' }))
      .rejects.toMatchObject({ code: 'endpoint_untrusted', message: expect.stringMatching(/expected spiffe:\/\/partner\.org\/not-the-server/) });
  });

  it('https_spiffe: an endpoint whose SVID does not chain to that trust domain bundle is refused', async () => {
    // C claims to be "third.org" but A's known bundle for third.org is A's own CA, which did not sign B's SVID.
    const own = a.server.ca.bundle();
    await a.server.store.setBundle({ trustDomain: 'third.org', bundleJson: own.bundleJson, sequence: 1n });
    const rel = { trustDomain: 'third.org', bundleEndpointUrl: `https://127.0.0.1:${b.server.bundleEndpointPort}/`, profile: 'https_spiffe' as const, endpointSpiffeId: 'spiffe://partner.org/spire/server' };
    const err = await fetcherFor(a).fetchOnce(rel).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FederationError);
    expect((err as FederationError).code).toBe('endpoint_untrusted');
    expect((await a.server.store.getBundle('third.org'))?.bundleJson).toBe(own.bundleJson);
  });

  it('https_web: verifies the endpoint with web PKI roots (plus a configured CA) and refuses bad documents', async () => {
    const served = { body: b.server.ca.bundle().bundleJson };
    const ep = await startBundleEndpoint({ host: '127.0.0.1', port: 0, profile: 'https_web', certFile: path.join(webDir, 'web.pem'), keyFile: path.join(webDir, 'web.key'), bundleJson: () => served.body });
    try {
      const rel = { trustDomain: 'web.example', bundleEndpointUrl: `https://localhost:${ep.port}/`, profile: 'https_web' as const };
      await expect(fetcherFor(a).fetchOnce(rel)).rejects.toMatchObject({ code: 'endpoint_untrusted' });
      const cas = new Map([['web.example', fs.readFileSync(path.join(webDir, 'ca.pem'))]]);
      const got = await fetcherFor(a, cas).fetchOnce(rel);
      expect(got.trustDomain.name).toBe('web.example');
      expect(await a.server.store.getBundle('web.example')).toBeDefined();
      served.body = '{"keys": [{"use": "x509-svid", "kty": "EC"}]}';
      await expect(fetcherFor(a, cas).fetchOnce(rel)).rejects.toMatchObject({ code: 'bad_bundle' });
      served.body = 'not json';
      await expect(fetcherFor(a, cas).fetchOnce(rel)).rejects.toMatchObject({ code: 'bad_bundle' });
      served.body = 'x'.repeat(1024 * 1024 + 10);
      await expect(fetcherFor(a, cas).fetchOnce(rel)).rejects.toMatchObject({ code: 'bad_response' });
      // The last good bundle stays.
      expect((await a.server.store.getBundle('web.example'))?.bundleJson).toBe(got.toJSON());
    } finally {
      await ep.close();
    }
  });

  it('refuses to federate with its own trust domain', async () => {
    await expect(fetcherFor(a).fetchOnce({ trustDomain: TD, bundleEndpointUrl: 'https://127.0.0.1:1/', profile: 'https_web' })).rejects.toMatchObject({ code: 'bad_bundle' });
  });
});

describe('health', () => {
  it('reports live and ready for a running server', async () => {
    const base = `http://127.0.0.1:${a.server.healthPort}`;
    expect((await fetch(`${base}/live`)).status).toBe(200);
    const ready = await fetch(`${base}/ready`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({
      ready: true,
      featureFlags: { UNIFIED_IDENTITY_ENABLED: { value: false, source: expect.stringMatching(/^(default|env|config)$/) } },
    });
  });
});

describe('federation from the config file', () => {
  it('seeds the bootstrap bundle and then fetches the partner bundle on its own', async () => {
    const boot = JSON.parse(b.server.ca.bundle().bundleJson) as Record<string, unknown>;
    boot.spiffe_sequence = 0;
    const bootFile = path.join(a.dir, 'partner-bootstrap.json');
    fs.writeFileSync(bootFile, JSON.stringify(boot));
    const c = await startTestServer({ federation: { federatesWith: [{
      trustDomain: 'partner.org', bundleEndpointUrl: `https://127.0.0.1:${b.server.bundleEndpointPort}/`, profile: 'https_spiffe',
      endpointSpiffeId: 'spiffe://partner.org/spire/server', bootstrapBundleFile: bootFile,
    }] } });
    try {
      expect(await c.server.store.getFederationRelationship('partner.org')).toMatchObject({ profile: 'https_spiffe' });
      const deadline = Date.now() + 5000;
      let stored = await c.server.store.getBundle('partner.org');
      while (stored?.sequence === 0n && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100));
        stored = await c.server.store.getBundle('partner.org');
      }
      expect(stored?.sequence).toBe(b.server.ca.bundle().sequence);
      expect(c.audit.some((r) => r.action === 'federation_refresh' && r.result === 'ok' && r.subject === 'partner.org')).toBe(true);
    } finally {
      await c.stop();
    }
  });
});
