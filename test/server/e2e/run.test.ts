// A whole server under real time: readiness follows the datastore, and CA rotation reaches agents
// over live TLS (bundle pushed, server SVID re-issued by the new CA, old CA still trusted).
import crypto from 'node:crypto';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import type { AgentEvent } from '../../../src/api/agent-api.js';
import { agentClient, attest, attestWithToken, createJoinToken, newKey, startTestServer } from './helpers.js';

describe('running server', () => {
  it('is not ready once its datastore is gone', async () => {
    const ts = await startTestServer();
    try {
      const url = `http://127.0.0.1:${ts.server.healthPort}/ready`;
      expect((await fetch(url)).status).toBe(200);
      await ts.server.store.close();
      const res = await fetch(url);
      expect(res.status).toBe(503);
      const body = await res.json() as { failures: Record<string, string> };
      expect(Object.keys(body.failures)).toEqual(['datastore']);
    } finally {
      await ts.stop();
    }
  });

  it('presents a server SVID with the configured DNS names and IP addresses', async () => {
    const ts = await startTestServer({ agentApi: { dnsNames: ['terroir.example.org'], ipAddresses: ['127.0.0.1', '::1'] } });
    try {
      const served = await new Promise<crypto.X509Certificate>((resolve, reject) => {
        const sock = tls.connect({
          host: '127.0.0.1', port: ts.server.agentApiPort, ALPNProtocols: ['h2'],
          ca: ts.server.ca.x509Roots().map((d) => new crypto.X509Certificate(d).toString()),
          // Host-name verification (Node's default check) against the IP SAN.
        }, () => { resolve(new crypto.X509Certificate(sock.getPeerCertificate().raw)); sock.end(); });
        sock.on('error', reject);
      });
      expect(served.subjectAltName).toBe('URI:spiffe://example.org/spire/server, DNS:terroir.example.org, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
      expect(served.checkIP('127.0.0.1')).toBe('127.0.0.1');
    } finally {
      await ts.stop();
    }
  });

  it('rotates its CA on schedule: agents are told, the server SVID moves to the new CA, old SVIDs stay valid', async () => {
    // CA TTL 12 s: prepare at ~6 s, activate at ~10 s (SVID TTL <= 2 s, CA TTL / 6).
    const ts = await startTestServer({ ca: { keyStore: 'memory', ttl: 12, x509SvidTtl: 2, jwtSvidTtl: 2 } });
    const rotated = ts.server.ca;
    // Housekeeping every 200 ms for this test.
    const timer = setInterval(() => void ts.server.tick(), 200);
    try {
      const firstCa = rotated.activeX509().id;
      const agent = await attestWithToken(ts.server);
      const c = agentClient(ts.server, agent);
      const events: AgentEvent[] = [];
      const call = (c.WatchAgent as (r: unknown) => grpc.ClientReadableStream<AgentEvent>).call(c, {});
      call.on('error', () => undefined);
      const bundleChanged = new Promise<AgentEvent>((resolve) => call.on('data', (e: AgentEvent) => { events.push(e); if (e.kind === 'BUNDLE_CHANGED') resolve(e); }));
      const ev = await bundleChanged;
      expect(ev.bundleSequence).toBe(Number(rotated.bundle().sequence));
      expect(rotated.x509Roots()).toHaveLength(2);
      expect(rotated.activeX509().id).toBe(firstCa);
      call.cancel();
      c.close();

      // Activation: the next CA signs, and the agent API presents a server SVID issued by it.
      const deadline = Date.now() + 8000;
      while (rotated.activeX509().id === firstCa && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      expect(rotated.activeX509().id).not.toBe(firstCa);
      await ts.server.tick();
      const c2 = agentClient(ts.server);
      const res = await attest(c2, { params: { joinToken: { token: await createJoinToken(ts.server) }, csr: newKey().csr } });
      c2.close();
      const leaf = new crypto.X509Certificate(res[0]!.result!.svidChain[0]!);
      const newCa = new crypto.X509Certificate(rotated.activeX509().certificateDer);
      expect(leaf.verify(newCa.publicKey)).toBe(true);
      // The TLS server certificate now comes from the new CA too.
      const served = await new Promise<Buffer>((resolve, reject) => {
        const sock = tls.connect({
          host: '127.0.0.1', port: ts.server.agentApiPort, ALPNProtocols: ['h2'],
          ca: rotated.x509Roots().map((d) => new crypto.X509Certificate(d).toString()),
          checkServerIdentity: (_h, cert) => (cert.subjectaltname?.includes('URI:spiffe://example.org/spire/server') ? undefined : new Error('not the server')),
        }, () => { resolve(sock.getPeerCertificate().raw); sock.end(); });
        sock.on('error', reject);
      });
      expect(new crypto.X509Certificate(served).verify(newCa.publicKey)).toBe(true);
      // The bundle still carries the old CA until it expires.
      const oldCa = rotated.authorities().x509.find((a) => a.id === firstCa);
      expect(oldCa?.status).toBe('old');
      expect(rotated.x509Roots().some((d) => d.equals(oldCa!.certificateDer))).toBe(true);
    } finally {
      clearInterval(timer);
      await ts.stop();
    }
  }, 30_000);
});
