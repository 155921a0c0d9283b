// Regression: node-attestation attacks terroir already refuses (docs/security.md). One swtpm, the
// Keylime stand-in and a flag-on server (test/unified-identity/fixture.ts); every attack is a real
// AttestAgent exchange whose TPM side or evidence an attacker altered. Each must end in its precise
// error with no agent SVID issued (the node's serial unchanged) and Keylime never asked. Attacks
// refused before the TPM is proven change nothing at all; those refused after it (the quote checks)
// only withdraw the node's earlier claims, as documented in docs/unified-identity.md.
import crypto, { webcrypto } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeAttestationError, type TpmCredentialSource, type UnifiedIdentityProvider } from '../../src/agent/node-attestor.js';
import type { TpmAttestation, UnifiedIdentityEvidence } from '../../src/api/agent-api.js';
import { canonicalClaims } from '../../src/geo/index.js';
import type { RunningServer } from '../../src/server/index.js';
import { parseTpm2bPublic, publicKeyFromTpmPublic, TPM_ALG } from '../../src/tpm/index.js';
import { forgeCert, forgeKey, KU, x509, type ForgedKey } from '../spiffe/helpers/forge.js';
import { POLICY_PCR, startUnifiedDeployment, ZERO, type UnifiedDeployment } from '../unified-identity/fixture.js';

let d: UnifiedDeployment;
let on: RunningServer;
let berlin: UnifiedIdentityProvider;
let nodeId: string;
/** The evidence of the node's first, accepted attestation: what a replay sends again. */
let previous: UnifiedIdentityEvidence;

beforeAll(async () => {
  d = await startUnifiedDeployment();
  on = await d.startServer({ flag: true, keylime: true });
  berlin = d.provider(d.berlin);
  const ok = await d.attest(on, { evidence: async (nonce, pcrs) => (previous = await berlin.evidence(nonce, pcrs)) });
  nodeId = ok.spiffeId;
  expect((await on.store.getNode(nodeId))?.claims).toMatchObject({ region: 'EU' });
}, 60_000);
afterAll(async () => {
  await d?.stop();
});

/** Runs an attack; checks the refusal, that Keylime was never asked and that no agent SVID was issued. Returns the node after. */
async function refused(attack: Promise<unknown>, code: grpc.status, message: RegExp) {
  const before = await on.store.getNode(nodeId);
  const keylimeChecks = d.verifier.counters.evidenceChecks;
  const err = await attack.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(NodeAttestationError);
  expect(err).toMatchObject({ grpcCode: code, message: expect.stringMatching(message) });
  expect(d.verifier.counters.evidenceChecks).toBe(keylimeChecks);
  const after = await on.store.getNode(nodeId);
  expect(after?.serialNumber).toBe(before?.serialNumber);
  expect(after?.expiresAt).toEqual(before?.expiresAt);
  return { before, after };
}

/** The node's real TPM, with the first message (EK certificate, EK public, AK public) altered by the attacker. */
function tpmSending(alter: (a: TpmAttestation) => Promise<TpmAttestation> | TpmAttestation): TpmCredentialSource {
  return {
    attestationData: async () => alter(await d.tpm.attestationData()),
    activateCredential: (blob, secret) => d.tpm.activateCredential(blob, secret),
  };
}

/** The node's real evidence for this challenge, altered by the attacker before it is sent. */
function evidenceAltered(alter: (e: UnifiedIdentityEvidence) => UnifiedIdentityEvidence): UnifiedIdentityProvider {
  return { evidence: async (nonce, pcrs) => alter(await berlin.evidence(nonce, pcrs)) };
}

/** A copy of the node's EK certificate (same key, same TPM identity), issued by the attacker's CA under the real CA's name. */
async function foreignEkCertificate(real: TpmAttestation): Promise<Buffer> {
  const genuine = new x509.X509Certificate(real.ekCertificate);
  const ek = publicKeyFromTpmPublic(parseTpm2bPublic(real.ekPublic));
  const ekCrypto = await webcrypto.subtle.importKey('spki', ek.export({ type: 'spki', format: 'der' }), { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, ['verify']);
  const caKey = await forgeKey();
  const ca = await forgeCert({ key: caKey, ca: true, subject: genuine.issuer });
  // Only the subject's public key is used; the EK's private key never leaves the TPM.
  const subject = { keys: { publicKey: ekCrypto, privateKey: caKey.keys.privateKey }, publicKey: ek, privateKey: caKey.privateKey } as ForgedKey;
  return (await forgeCert({ key: subject, issuer: { cert: ca.cert, key: caKey }, subject: '', keyUsage: KU.keyEncipherment, extra: genuine.extensions.filter((e) => e.type === '2.5.29.17') })).der;
}

describe('attack: a TPM or key the server must not trust (refused before the challenge; nothing changes)', () => {
  it('EK certificate from a foreign CA (the manufacturer CA\'s name, another key) is refused', async () => {
    const { before, after } = await refused(
      d.attest(on, berlin, { tpm: tpmSending(async (a) => ({ ...a, ekCertificate: await foreignEkCertificate(a) })) }),
      grpc.status.PERMISSION_DENIED, /EK not trusted: EK certificate: no chain to a configured manufacturer CA/);
    expect(after).toEqual(before);
  });

  it('non-restricted AK (could sign a forged TPMS_ATTEST) is refused', async () => {
    const unrestricted = (a: TpmAttestation): TpmAttestation => {
      const ak = Buffer.from(a.akPublic); // TPM2B_PUBLIC: size(2) type(2) nameAlg(2) objectAttributes(4); restricted is bit 16
      ak.writeUInt32BE((ak.readUInt32BE(6) & ~(1 << 16)) >>> 0, 6);
      return { ...a, akPublic: ak };
    };
    const { before, after } = await refused(d.attest(on, berlin, { tpm: tpmSending(unrestricted) }), grpc.status.PERMISSION_DENIED, /AK refused: .*restricted is not set/);
    expect(after).toEqual(before);
  });
});

describe('attack: evidence that is not this TPM\'s answer to this challenge (refused by the local quote check)', () => {
  it('replayed quote (the previous challenge response, validly signed by the same AK) is refused', async () => {
    const { after } = await refused(d.attest(on, { evidence: async () => previous }), grpc.status.PERMISSION_DENIED,
      /quote verification failed \(extra-data-mismatch\): .*replayed quote/);
    expect(after?.claims).toBeUndefined();
  });

  it('claims document changed after the quote (Berlin quoted, Paris sent) is refused', async () => {
    const paris = evidenceAltered((e) => {
      const doc = JSON.parse(e.claimsDocument.toString()) as { readings: { lat: number; lon: number }[] };
      Object.assign(doc.readings[0]!, { lat: 48.8566, lon: 2.3522 });
      return { ...e, claimsDocument: canonicalClaims(doc) };
    });
    await refused(d.attest(on, paris), grpc.status.PERMISSION_DENIED, /quote verification failed \(extra-data-mismatch\): .*claims changed after quoting/);
  });

  it('tampered PCR value (PCR 23 extended, its golden value sent instead) is refused', async () => {
    const quoter = d.tpm.quoter!();
    await quoter.pcrExtend(POLICY_PCR, crypto.createHash('sha256').update('rootkit').digest());
    try {
      const golden = evidenceAltered((e) => ({ ...e, quote: { ...e.quote!, pcrs: { ...e.quote!.pcrs, [String(POLICY_PCR)]: Buffer.from(ZERO, 'hex') } } }));
      await refused(d.attest(on, golden), grpc.status.PERMISSION_DENIED, /quote verification failed \(pcr-digest-mismatch\)/);
    } finally {
      await quoter.pcrReset(POLICY_PCR);
    }
  });

  it('re-signed quote (the TPM\'s attest data signed by another key) is refused', async () => {
    const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const resigned = evidenceAltered((e) => {
      const rs = crypto.sign('sha256', e.quote!.attest, { key: other, dsaEncoding: 'ieee-p1363' });
      const head = Buffer.alloc(4); // TPMT_SIGNATURE: sigAlg, hashAlg, then TPM2B r and s
      head.writeUInt16BE(TPM_ALG.ECDSA, 0);
      head.writeUInt16BE(TPM_ALG.SHA256, 2);
      const signature = Buffer.concat([head, Buffer.from([0, 32]), rs.subarray(0, 32), Buffer.from([0, 32]), rs.subarray(32)]);
      return { ...e, quote: { ...e.quote!, signature } };
    });
    await refused(d.attest(on, resigned), grpc.status.PERMISSION_DENIED, /quote verification failed \(bad-signature\): .*does not verify with the AK/);
  });

  it('control: the same node, untampered, is accepted again', async () => {
    await d.attest(on, berlin);
    expect((await on.store.getNode(nodeId))?.claims).toMatchObject({ region: 'EU' });
  });
});
