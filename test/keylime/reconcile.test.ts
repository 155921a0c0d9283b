// Enrollment hygiene (KeylimeGate.reconcile): the verifier keeps polling every agent it holds until
// someone deletes it. terroir removes the enrollments it made for its own trust domain whose node is
// gone, banned or silent for keylime.removeAfter, and never touches anyone else's.
import crypto from 'node:crypto';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeylimeTenant } from '../../src/keylime/tenant.js';
import type { KeylimeVerifierClient } from '../../src/keylime/client.js';
import type { AuditRecord } from '../../src/server/audit.js';
import { KeylimeGate, type KeylimeSettings } from '../../src/server/attestation/keylime.js';
import { openDataStore, type DataStore } from '../../src/server/datastore/index.js';
import type { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { clientFor, createPki, startVerifier, type KeylimePki } from './helpers/fixture.js';
import { startTpm, type TestTpm } from './helpers/tpm.js';

const TD = 'example.org';
const REMOVE_AFTER_S = 7200;
const group = new ProcessGroup();
let tmp: { dir: string; cleanup: () => void };
let pki: KeylimePki;
let verifier: TestKeylimeVerifier;
let client: KeylimeVerifierClient;
let tenant: KeylimeTenant;
let tpm: TestTpm;
let store: DataStore;

beforeAll(async () => {
  tmp = tempDir('terroir-keylime-reconcile-');
  pki = await createPki(tmp.dir);
  [verifier, tpm] = await Promise.all([startVerifier(pki), startTpm(group, tmp.dir)]);
  client = clientFor(pki, verifier);
  tenant = new KeylimeTenant(client);
  store = await openDataStore({ type: 'sqlite', path: path.join(tmp.dir, 'ds.sqlite3') });
});
afterAll(async () => {
  await store?.close();
  await client?.close();
  await verifier?.close();
  await group.stopAll();
  tmp?.cleanup();
});

const hex = (): string => crypto.randomBytes(32).toString('hex');
const nodeId = (id: string, td = TD): string => `spiffe://${td}/agent/tpm/${id}`;
const longAgo = new Date(Date.now() - 86_400_000).toISOString();

async function enroll(id: string, metadata: Record<string, unknown>): Promise<void> {
  // Nothing listens on port 9: the double's polls fail, which does not matter here.
  await tenant.enrollAgent(id, { akPublic: tpm.akPublic, tpmPolicy: { 15: ['00'.repeat(32)] }, quoteEndpoint: { ip: '127.0.0.1', port: 9 }, quoteEndpointCert: pki.node.certPem, metadata });
}

async function addNode(id: string, banned = false): Promise<void> {
  await store.createNode({
    spiffeId: nodeId(id), attestationType: 'tpm', selectors: [{ type: 'tpm', value: `ek_hash:${id}` }],
    serialNumber: '01', expiresAt: new Date(Date.now() + 3_600_000), attestationData: { ekHash: id },
  });
  if (banned) await store.updateNode(nodeId(id), { banned: true });
}

function gate(now: () => Date, audit: AuditRecord[]): KeylimeGate {
  const settings: KeylimeSettings = {
    verifierUrl: verifier.url, caFile: pki.files.serverCa, certFile: pki.files.clientCert, keyFile: pki.files.clientKey,
    mode: 'continuous', pollIntervalMs: 1000, maxAttestationAge: 30, enrollTimeout: 30, removeAfter: REMOVE_AFTER_S,
    requestTimeoutMs: 3000, tpmPolicy: { 15: ['00'.repeat(32)] }, policies: [], quoteEndpointAddress: 'source', allowDevelopmentStandIn: true,
    maxConcurrentRequests: 16, maxQueuedRequests: 64,
  };
  return new KeylimeGate({
    settings, trustDomain: TD, store, now, logger: pino({ level: 'silent' }),
    auditor: { record: (r) => audit.push(r) }, onUntrusted: () => undefined,
  });
}

describe('KeylimeGate.reconcile: enrollment hygiene', () => {
  it('removes terroir\'s enrollments of vanished, banned and silent nodes; keeps live ones and everyone else\'s', async () => {
    const live = hex(), banned = hex(), vanished = hex(), justEnrolled = hex();
    const foreignNoMeta = hex(), otherDomain = hex(), spoofed = hex(), spoofTarget = hex();
    await addNode(live);
    await addNode(banned, true);
    await enroll(live, { terroir_agent: nodeId(live), terroir_enrolled_at: longAgo });
    await enroll(banned, { terroir_agent: nodeId(banned), terroir_enrolled_at: longAgo });
    await enroll(vanished, { terroir_agent: nodeId(vanished), terroir_enrolled_at: longAgo });
    // Another server sharing the datastore may be admitting this one right now (not stored yet).
    await enroll(justEnrolled, { terroir_agent: nodeId(justEnrolled), terroir_enrolled_at: new Date().toISOString() });
    // Not terroir's, or not this trust domain's, or metadata naming another node than its own id.
    await enroll(foreignNoMeta, { owner: 'keylime_tenant' });
    await enroll(otherDomain, { terroir_agent: nodeId(otherDomain, 'other.example'), terroir_enrolled_at: longAgo });
    await enroll(spoofed, { terroir_agent: nodeId(spoofTarget), terroir_enrolled_at: longAgo });
    await enroll('not-an-ek-hash', { terroir_agent: nodeId(live), terroir_enrolled_at: longAgo });

    let clock = Date.now();
    const audit: AuditRecord[] = [];
    const g = gate(() => new Date(clock), audit);
    try {
      const first = await g.reconcile();
      expect(first.removed.sort()).toEqual([nodeId(banned), nodeId(vanished)].sort());
      expect(first.ours).toBe(4);
      expect([...verifier.agents.keys()].sort()).toEqual([live, justEnrolled, foreignNoMeta, otherDomain, spoofed, 'not-an-ek-hash'].sort());
      expect(audit.map((r) => [r.subject, r.result, r.reason])).toEqual(expect.arrayContaining([
        [nodeId(banned), 'ok', 'removed from the Keylime verifier: the node is banned'],
        [nodeId(vanished), 'ok', expect.stringMatching(/removed from the Keylime verifier: the node is not in the datastore/)],
      ]));

      // removeAfter later, the live node has not attested since: it is removed too.
      clock += (REMOVE_AFTER_S + 5) * 1000;
      const second = await g.reconcile();
      expect(second.removed).toContain(nodeId(live));
      expect(audit.find((r) => r.subject === nodeId(live))?.reason).toMatch(/has not attested for \d+ s \(keylime\.removeAfter 7200 s\)/);
      // Enrolled "just now" a moment ago is now old enough to judge: not in the datastore, removed.
      expect(second.removed).toContain(nodeId(justEnrolled));
      expect([...verifier.agents.keys()].sort()).toEqual([foreignNoMeta, otherDomain, spoofed, 'not-an-ek-hash'].sort());
    } finally {
      await g.close();
    }
  });

  it('start() reconciles at once', async () => {
    const gone = hex();
    await enroll(gone, { terroir_agent: nodeId(gone), terroir_enrolled_at: longAgo });
    const audit: AuditRecord[] = [];
    const g = gate(() => new Date(), audit);
    try {
      g.start();
      const deadline = Date.now() + 5000;
      while (verifier.agents.has(gone) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(verifier.agents.has(gone)).toBe(false);
      expect(audit.some((r) => r.subject === nodeId(gone) && r.action === 'keylime' && r.result === 'ok')).toBe(true);
    } finally {
      await g.close();
    }
  });

  it('a verifier that lists garbage makes reconcile fail without removing anything', async () => {
    const before = verifier.agents.size;
    verifier.fault = { mode: 'wrong-shape' };
    const g = gate(() => new Date(), []);
    try {
      await expect(g.reconcile()).rejects.toMatchObject({ code: 'KEYLIME_MALFORMED' });
    } finally {
      verifier.fault = { mode: 'none' };
      await g.close();
    }
    expect(verifier.agents.size).toBe(before);
  });
});
