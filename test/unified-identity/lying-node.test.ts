// A node that lies about where it is, with its real TPM (swtpm), the real server and the Keylime
// stand-in (issue 13's attacks). The quote proves which node wrote the claims document, not that the
// document is true: readings no agent can produce are refused, what a node can say stays "its word"
// (assurance self-reported) in every SVID, and the flag off is no way around an entry's location policy.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCsr, generateKeyPair, pkcs8Der } from '../../src/agent/csr.js';
import { NodeAttestationError, type UnifiedIdentityProvider } from '../../src/agent/node-attestor.js';
import { connectToServer, unaryCall } from '../../src/agent/server-conn.js';
import { unifiedIdentityQualifyingData } from '../../src/api/agent-api.js';
import { canonicalClaims } from '../../src/geo/index.js';
import type { RunningServer } from '../../src/server/index.js';
import { SpiffeId } from '../../src/spiffe/id.js';
import { unifiedIdentityFromCertificate } from '../../src/spiffe/unified-identity.js';
import { authorizeUnifiedIdentity } from '../../src/workload/index.js';
import { startUnifiedDeployment, TD, type UnifiedDeployment } from './fixture.js';

let d: UnifiedDeployment;
let on: RunningServer;
const PARIS = { lat: 48.8566, lon: 2.3522 };

beforeAll(async () => {
  d = await startUnifiedDeployment();
  on = await d.startServer({ flag: true, keylime: true });
}, 60_000);
afterAll(async () => {
  await d?.stop();
});

/** A provider that quotes, with the node's real TPM, whatever document the attacker wrote. */
function lying(readings: Record<string, unknown>[]): UnifiedIdentityProvider {
  return {
    async evidence(nonce, pcrs) {
      const doc = canonicalClaims({ v: 1, readings });
      const q = await d.tpm.quote!(pcrs, unifiedIdentityQualifyingData(nonce, doc));
      const wire: Record<string, Buffer> = {};
      for (const [i, v] of q.pcrs) wire[String(i)] = v;
      return { quote: { attest: q.attest, signature: q.signature, pcrs: wire }, claimsDocument: doc };
    },
  };
}

const fresh = (): string => new Date(Date.now() - 2000).toISOString();
const gnss = (at = PARIS): Record<string, unknown> => ({ kind: 'gnss', sensorId: 'gps0', time: fresh(), ...at, horizontalErrorM: 5, attested: true });

async function refusal(p: Promise<unknown>): Promise<NodeAttestationError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(NodeAttestationError);
  return err as NodeAttestationError;
}

describe('a node inventing sensors', () => {
  it('a document with mobile and attested static readings (Paris) is refused, whatever the TPM quote', async () => {
    const invented = [
      gnss(),
      { kind: 'mobile', sensorId: 'operator', time: fresh(), ...PARIS, horizontalErrorM: 50, attested: true },
      { kind: 'static', sensorId: 'rack-label', time: fresh(), ...PARIS, horizontalErrorM: 1, attested: true },
    ];
    const checks = d.verifier.counters.evidenceChecks;
    const err = await refusal(d.attest(on, lying(invented)));
    expect(err.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.message).toMatch(/readings\[1\] \(sensor operator\): a mobile-network reading cannot come from a node/);
    // Refused before Keylime is even asked.
    expect(d.verifier.counters.evidenceChecks).toBe(checks);
  });

  it('an attested static reading alone is refused too', async () => {
    const err = await refusal(d.attest(on, lying([{ kind: 'static', sensorId: 'cfg', time: fresh(), ...PARIS, horizontalErrorM: 1, attested: true }])));
    expect(err.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.message).toMatch(/a static \(configured\) position is never attested/);
  });
});

describe('a node whose own GNSS says Paris', () => {
  it('gets claims that say they rest on its word: self-reported, witnessed by node:gnss only; a relying party can demand more', async () => {
    const res = await d.attest(on, lying([gnss()]));
    const leaf = res.svidChain[0]!;
    const claims = unifiedIdentityFromCertificate(leaf)!;
    expect(claims).toMatchObject({ country: 'FR', region: 'EU', assurance: 'self-reported', witnesses: ['node:gnss'], sensorKinds: ['gnss'] });
    const peer = { id: SpiffeId.parse(res.spiffeId), x509Chain: [leaf] };
    expect(() => authorizeUnifiedIdentity({ trustDomain: TD, regions: ['EU'], allowDevelopmentStandIn: true })(peer)).not.toThrow();
    expect(() => authorizeUnifiedIdentity({ trustDomain: TD, regions: ['EU'], minAssurance: 'operator-witnessed', allowDevelopmentStandIn: true })(peer))
      .toThrow(/location is self-reported; operator-witnessed or better is required/);
    expect(() => authorizeUnifiedIdentity({ trustDomain: TD, regions: ['EU'], requireWitnesses: ['operator'], allowDevelopmentStandIn: true })(peer))
      .toThrow(/not witnessed by operator/);
  });
});

describe('flag off is not a bypass', () => {
  it('an entry naming a location policy is never signed for a node without location evidence', async () => {
    const off = await d.startServer({ flag: false, keylime: true });
    const keys = generateKeyPair();
    const res = await d.attest(off, undefined, { csr: createCsr(keys) });
    const euId = `spiffe://${TD}/workload/eu-only-app`;
    const plainId = `spiffe://${TD}/workload/plain-app`;
    const made = await off.store.createEntries([
      { spiffeId: euId, parentId: res.spiffeId, selectors: [{ type: 'unix', value: 'uid:1000' }], federatesWith: [], locationPolicy: 'eu-only' },
      { spiffeId: plainId, parentId: res.spiffeId, selectors: [{ type: 'unix', value: 'uid:1001' }], federatesWith: [] },
    ]);
    expect(made.every((m) => m.ok)).toBe(true);
    const entries = await off.store.listEntries();
    const eu = entries.find((e) => e.spiffeId === euId)!;
    const plain = entries.find((e) => e.spiffeId === plainId)!;
    const conn = connectToServer({
      address: '127.0.0.1', port: off.agentApiPort, trustDomain: TD, roots: off.ca.x509Roots(),
      identity: { chain: res.svidChain, key: pkcs8Der(keys.privateKey) },
    });
    try {
      const x509 = await unaryCall(conn, 'BatchNewX509Svid', { params: [{ entryId: eu.id, csr: createCsr(generateKeyPair(), euId) }, { entryId: plain.id, csr: createCsr(generateKeyPair(), plainId) }] }) as
        { results: { entryId: string; errorCode: number; errorMessage: string; svid: unknown }[] };
      const [euResult, plainResult] = x509.results;
      expect(euResult).toMatchObject({ entryId: eu.id, errorCode: grpc.status.PERMISSION_DENIED, svid: null });
      expect(euResult!.errorMessage).toMatch(/names location policy eu-only but Unified Identity is off on this server \(UNIFIED_IDENTITY_ENABLED\)/);
      expect(plainResult).toMatchObject({ entryId: plain.id, errorCode: 0 });
      await expect(unaryCall(conn, 'NewJwtSvid', { entryId: eu.id, audience: ['db'] })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    } finally {
      conn.close();
    }
  });
});
