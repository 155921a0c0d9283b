// Keylime continuous attestation seen by the metrics: an evicted node removed from the verifier (the
// keylime event `ok`, a delete_agent request), and the same while the verifier fails (`error`, the
// failing requests by kind and result), against the verifier double over mTLS.
import crypto from 'node:crypto';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeylimeGate, type KeylimeSettings } from '../../src/server/attestation/keylime.js';
import { openDataStore, type DataStore } from '../../src/server/datastore/index.js';
import { ServerMetrics } from '../../src/server/metrics.js';
import type { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { createPki, startVerifier, type KeylimePki } from '../keylime/helpers/fixture.js';
import { tempDir } from '../support/tmp.js';
import { parseMetrics, sample } from './prom-text.js';

const TD = 'example.org';

describe('Keylime metrics (continuous mode, verifier double)', () => {
  const tmp = tempDir('terroir-keylime-metrics-');
  let pki: KeylimePki;
  let verifier: TestKeylimeVerifier;
  let store: DataStore;
  let gate: KeylimeGate;
  const metrics = new ServerMetrics();

  beforeAll(async () => {
    pki = await createPki(tmp.dir);
    verifier = await startVerifier(pki);
    store = await openDataStore({ type: 'sqlite', path: path.join(tmp.dir, 'ds.sqlite3') });
    const settings: KeylimeSettings = {
      verifierUrl: verifier.url, caFile: pki.files.serverCa, certFile: pki.files.clientCert, keyFile: pki.files.clientKey,
      mode: 'continuous', pollIntervalMs: 1000, maxAttestationAge: 30, enrollTimeout: 30, removeAfter: 7200,
      requestTimeoutMs: 1000, tpmPolicy: { 15: ['00'.repeat(32)] }, policies: [], quoteEndpointAddress: 'source', allowDevelopmentStandIn: true,
      maxConcurrentRequests: 16, maxQueuedRequests: 64,
    };
    gate = new KeylimeGate({
      settings, trustDomain: TD, store, logger: pino({ level: 'silent' }),
      auditor: metrics.auditor({ record: () => undefined }), onKeylimeRequest: metrics.keylimeRequest, onUntrusted: () => undefined,
    });
  });
  afterAll(async () => {
    await gate?.close();
    await store?.close();
    await verifier?.close();
    tmp.cleanup();
  });

  it('counts a node removed from the verifier, then one the failing verifier could not be told about', async () => {
    await gate.evict(`spiffe://${TD}/agent/tpm/${crypto.randomBytes(32).toString('hex')}`);
    let m = parseMetrics(await metrics.registry.metrics());
    expect(sample(m, 'terroir_server_keylime_events_total', { result: 'ok' })).toBe(1);
    expect(sample(m, 'terroir_server_keylime_requests_total', { kind: 'version', result: 'ok' })).toBe(1);
    expect(sample(m, 'terroir_server_keylime_requests_total', { kind: 'delete_agent', result: 'ok' })).toBe(1);
    verifier.fault = { mode: '5xx' };
    try {
      await gate.evict(`spiffe://${TD}/agent/tpm/${crypto.randomBytes(32).toString('hex')}`);
    } finally {
      verifier.fault = { mode: 'none' };
    }
    m = parseMetrics(await metrics.registry.metrics());
    expect(sample(m, 'terroir_server_keylime_events_total', { result: 'error' })).toBe(1);
    expect(sample(m, 'terroir_server_keylime_requests_total', { kind: 'delete_agent', result: 'http' })).toBe(1);
    expect(sample(m, 'terroir_server_keylime_request_duration_seconds_count', { kind: 'delete_agent' })).toBe(2);
    // The agent's identity is in the audit record only, never in the metrics.
    expect(await metrics.registry.metrics()).not.toContain('spiffe://');
  });
});
