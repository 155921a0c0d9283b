// Regression: what an attested agent already cannot get signed (docs/security.md). A real server and
// two join-token agents over mTLS (test/server/e2e/helpers.ts): one asks for the other's entry, one
// asks for a CA certificate in its workload CSR.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchNewX509SvidResponse, SyncEntriesResponse } from '../../src/api/agent-api.js';
import { Bundle, BundleSet, parseCertificate, TrustDomain, verifyX509Svid, X509SvidError } from '../../src/spiffe/index.js';
import { agentClient, attestWithToken, newKey, startTestServer, TD, unary, type AgentClient, type TestServer } from '../server/e2e/helpers.js';
import { EC_P256, forgeCert, forgeKey, KU, x509 } from '../spiffe/helpers/forge.js';

let ts: TestServer;
let alice: { c: AgentClient; id: string };
let mallory: { c: AgentClient; id: string };
let aliceEntry: { id: string; spiffeId: string };
let malloryEntry: { id: string; spiffeId: string };

async function agentWithEntry(name: string): Promise<[{ c: AgentClient; id: string }, { id: string; spiffeId: string }]> {
  const agent = await attestWithToken(ts.server);
  const spiffeId = `spiffe://${TD}/w/${name}`;
  const [r] = await ts.server.store.createEntries([{ spiffeId, parentId: agent.id, selectors: [{ type: 'unix', value: 'uid:1000' }], federatesWith: [] }]);
  return [{ c: agentClient(ts.server, agent), id: agent.id }, { id: (r as { ok: true; value: { id: string } }).value.id, spiffeId }];
}

beforeAll(async () => {
  ts = await startTestServer({ agentApi: { attestationRateLimit: { perSecond: 100, burst: 100 } } });
  [alice, aliceEntry] = await agentWithEntry('alice-db');
  [mallory, malloryEntry] = await agentWithEntry('mallory-app');
});
afterAll(async () => {
  alice?.c.close();
  mallory?.c.close();
  await ts?.stop();
});

describe('attack: an agent asking for another agent\'s entry', () => {
  it('is refused for X.509 and JWT alike, nothing is signed, the entry is not even listed, and the denial is audited', async () => {
    const notAuthorized = `entry "${aliceEntry.id}" is not authorized for ${mallory.id}`;
    const x = await unary<BatchNewX509SvidResponse>(mallory.c, 'BatchNewX509Svid', { params: [{ entryId: aliceEntry.id, csr: newKey().csr }] });
    expect(x.results).toEqual([{ entryId: aliceEntry.id, svid: null, errorCode: grpc.status.PERMISSION_DENIED, errorMessage: notAuthorized }]);
    await expect(unary(mallory.c, 'NewJwtSvid', { entryId: aliceEntry.id, audience: ['db'] }))
      .rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: notAuthorized });
    const sync = await unary<SyncEntriesResponse>(mallory.c, 'SyncEntries', { knownRevision: '' });
    expect(sync.entries.map((e) => e.id)).toEqual([malloryEntry.id]);
    const mine = ts.audit.filter((a) => a.caller === mallory.id && String(a.action).startsWith('sign_'));
    expect(mine).toEqual([
      expect.objectContaining({ action: 'sign_x509_svid', result: 'denied', details: expect.objectContaining({ issued: 0, denied: [aliceEntry.id] }) }),
      expect.objectContaining({ action: 'sign_jwt_svid', result: 'denied', subject: aliceEntry.id }),
    ]);
  });
});

describe('attack: CA:TRUE and keyCertSign requested in a workload CSR', () => {
  it('are not granted: the SVID is a leaf (cA false, digitalSignature only), and a certificate signed with its key is refused', async () => {
    const key = await forgeKey();
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: 'CN=workload', keys: key.keys, signingAlgorithm: EC_P256,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(KU.keyCertSign | KU.cRLSign | KU.digitalSignature, true),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: malloryEntry.spiffeId }]),
      ],
    });
    const x = await unary<BatchNewX509SvidResponse>(mallory.c, 'BatchNewX509Svid', { params: [{ entryId: malloryEntry.id, csr: Buffer.from(csr.rawData) }] });
    const chain = x.results[0]!.svid!.certChain;
    const leaf = parseCertificate(chain[0]!);
    expect(leaf.basicConstraints).toEqual({ ca: false });
    expect(leaf.keyUsage).toBe(KU.digitalSignature);
    // Using it as a CA anyway: an SVID for another workload, signed with the leaf's key, fails path validation.
    const bundles = new BundleSet(Bundle.parse(TrustDomain.parse(TD), ts.server.ca.bundle().bundleJson));
    const forged = await forgeCert({ key: await forgeKey(), issuer: { cert: new x509.X509Certificate(chain[0]!), key }, uris: [aliceEntry.spiffeId] });
    const err = (() => { try { verifyX509Svid([forged.der, ...chain], bundles); } catch (e) { return e; } return undefined; })();
    expect(err).toBeInstanceOf(X509SvidError);
    expect(err).toMatchObject({ code: 'issuer-not-ca', message: expect.stringContaining('is not a CA (basicConstraints cA is not true)') });
  });
});
