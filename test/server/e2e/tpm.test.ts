// TPM node attestation against a real swtpm (EK certificates from its local manufacturer CA), with
// src/tpm's TpmDevice playing the agent side over the real TLS gRPC agent API.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AttestAgentRequest, AttestAgentResponse } from '../../../src/api/agent-api.js';
import { TpmDevice, type AkHandle } from '../../../src/tpm/device.js';
import { ekHash, parseTpm2bPublic } from '../../../src/tpm/index.js';
import { TpmAttestor } from '../../../src/server/attestation/tpm.js';
import { TrustDomain } from '../../../src/spiffe/id.js';
import { Bundle, BundleSet } from '../../../src/spiffe/bundle.js';
import { verifyX509Svid } from '../../../src/spiffe/x509svid.js';
import { startSwtpm, type Swtpm } from '../../support/swtpm.js';
import { agentClient, attest, newKey, startTestServer, TD, unary, type AgentClient, type TestServer } from './helpers.js';

let swtpm: Swtpm;
let tpm: TpmDevice;
let ts: TestServer;
let ekCert: Buffer;
let ekPub: Buffer;
let hash: string;
const clients: AgentClient[] = [];
const client = (s: TestServer, id?: Parameters<typeof agentClient>[1]): AgentClient => { const c = agentClient(s.server, id); clients.push(c); return c; };

beforeAll(async () => {
  swtpm = await startSwtpm();
  tpm = await TpmDevice.open(swtpm.tcti);
  ekCert = (await tpm.readEkCertificate('rsa2048')) as Buffer;
  ekPub = await tpm.ekPublic('rsa2048');
  hash = ekHash(parseTpm2bPublic(ekPub));
  ts = await startTestServer({ nodeAttestation: { tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile] } } });
});

afterAll(async () => {
  for (const c of clients) c.close();
  await ts?.stop();
  await tpm?.close();
  // swtpm/stop.sh can exit non-zero when swtpm ends on its own between its liveness check and its
  // kill (a race in the script); what matters is that the process is gone.
  await swtpm?.stop().catch((err: unknown) => {
    let alive = true;
    try { process.kill(swtpm.pid, 0); } catch { alive = false; }
    if (alive) throw err;
  });
});

/** The agent side: EK + fresh AK, then ActivateCredential on the challenge (or a tampered answer). */
async function tpmAttest(
  s: TestServer,
  opts: { sendCert?: boolean; ekPublic?: Buffer; mutateAk?: (akPublic: Buffer) => Buffer; answer?: (secret: Buffer) => Buffer; delayMs?: number; csr?: Buffer } = {},
): Promise<{ responses: AttestAgentResponse[]; key: crypto.KeyObject }> {
  const ak: AkHandle = await tpm.createAk('ecc-p256');
  const k = newKey();
  try {
    const akPublic = opts.mutateAk ? opts.mutateAk(Buffer.from(ak.public)) : ak.public;
    const first: AttestAgentRequest = { params: { tpm: { ekCertificate: opts.sendCert === false ? Buffer.alloc(0) : ekCert, ekIntermediates: [], ekPublic: opts.ekPublic ?? ekPub, akPublic }, csr: opts.csr ?? k.csr } };
    const responses = await attest(client(s), first, async (r) => {
      const ch = r.challenge!;
      expect(ch.nonce).toHaveLength(32);
      const secret = await tpm.activateCredential(ak, 'rsa2048', ch.credentialBlob, ch.encryptedSecret);
      if (opts.delayMs) await new Promise((res) => setTimeout(res, opts.delayMs));
      return { challengeResponse: { activatedSecret: opts.answer ? opts.answer(secret) : secret } };
    });
    return { responses, key: k.privateKey };
  } finally {
    await tpm.releaseAk(ak);
  }
}

describe('TPM attestation (swtpm)', () => {
  it('attests with the EK certificate chain and credential activation', async () => {
    const { responses, key } = await tpmAttest(ts);
    expect(responses.map((r) => r.step)).toEqual(['challenge', 'result']);
    const r = responses[1]!.result!;
    expect(r.spiffeId).toBe(`spiffe://${TD}/agent/tpm/${hash}`);
    expect(r.canRenew).toBe(false);
    const sel = r.selectors.map((s) => `${s.type}:${s.value}`);
    expect(sel).toContain(`tpm:ek_hash:${hash}`);
    expect(sel).toContain('tpm:ek_manufacturer:id:00001014');
    expect(sel.some((s) => s.startsWith('tpm:ek_issuer:'))).toBe(true);
    const bundles = new BundleSet(Bundle.parse(TrustDomain.parse(TD), r.bundle));
    expect(verifyX509Svid(r.svidChain, bundles).id.toString()).toBe(r.spiffeId);
    const node = await ts.server.store.getNode(r.spiffeId);
    expect(node?.attestationType).toBe('tpm');
    expect(node?.attestationData).toMatchObject({ ekHash: hash, manufacturer: 'id:00001014' });
    // TPM nodes do not renew without proving the TPM again.
    await expect(unary(client(ts, { chain: r.svidChain, key }), 'RenewAgent', { csr: newKey().csr }))
      .rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION, details: expect.stringMatching(/re?-?attest|attesting again/) });
    expect(ts.audit.some((a) => a.action === 'attest_agent' && a.result === 'ok' && a.subject === r.spiffeId)).toBe(true);
  });

  it('refuses an EK certificate from a CA that is not configured', async () => {
    const dir = fs.mkdtempSync(path.join(ts.dir, 'otherca-'));
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', path.join(dir, 'k.pem'),
      '-out', path.join(dir, 'ca.pem'), '-days', '2', '-subj', '/CN=Other TPM Maker', '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: 'ignore' });
    const other = await startTestServer({ nodeAttestation: { tpm: { enabled: true, manufacturerCaFiles: [path.join(dir, 'ca.pem')] } } });
    try {
      await expect(tpmAttest(other)).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/EK not trusted: .*no chain to a configured manufacturer CA/) });
      expect(await other.server.store.listNodes()).toHaveLength(0);
      expect(other.audit.some((a) => a.action === 'attest_agent' && a.result === 'denied')).toBe(true);
    } finally {
      await other.stop();
    }
  });

  it('accepts an enrolled EK hash without a certificate, and refuses an unenrolled one', async () => {
    await expect(tpmAttest(ts, { sendCert: false })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/is not enrolled/) });
    const enrolled = await startTestServer({ nodeAttestation: { tpm: { enabled: true, enrolledEkHashes: [hash] } } });
    try {
      const { responses } = await tpmAttest(enrolled, { sendCert: false });
      expect(responses[1]?.result?.spiffeId).toBe(`spiffe://${TD}/agent/tpm/${hash}`);
    } finally {
      await enrolled.stop();
    }
  });

  it('refuses an EK public that does not match the EK certificate', async () => {
    const otherEk = await tpm.ekPublic('ecc-p384');
    await expect(tpmAttest(ts, { ekPublic: otherEk })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/does not match the key certified/) });
  });

  it('refuses an AK that is not a restricted signing key, and malformed TPM structures', async () => {
    const clearRestricted = (pub: Buffer): Buffer => {
      // TPM2B_PUBLIC: size(2) type(2) nameAlg(2) objectAttributes(4); restricted is bit 16.
      pub.writeUInt32BE(pub.readUInt32BE(6) & ~(1 << 16), 6);
      return pub;
    };
    await expect(tpmAttest(ts, { mutateAk: clearRestricted })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/AK refused: .*restricted is not set/) });
    await expect(tpmAttest(ts, { mutateAk: (p) => p.subarray(0, 20) })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/ak_public is not a valid TPM2B_PUBLIC/) });
  });

  it('refuses a wrong activated secret, and a nonce past its expiry', async () => {
    await expect(tpmAttest(ts, { answer: (s) => Buffer.from(s.map((b) => b ^ 1)) })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/activated secret does not match/) });
    await expect(tpmAttest(ts, { answer: () => Buffer.alloc(5) })).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/must be 32 bytes/) });
    const quick = await startTestServer({ nodeAttestation: { challengeTtl: 1, tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile] } } });
    try {
      await expect(tpmAttest(quick, { delayMs: 1300 })).rejects.toMatchObject({ code: grpc.status.DEADLINE_EXCEEDED, details: expect.stringMatching(/challenge response did not arrive within 1 s/) });
      expect(await quick.server.store.listNodes()).toHaveLength(0);
    } finally {
      await quick.stop();
    }
  });

  it('consumes the nonce once: a replayed answer to the same challenge is refused', async () => {
    const attestor = new TpmAttestor({ trustDomain: TrustDomain.parse(TD), manufacturerCasDer: swtpm.manufacturerCaDer, enrolledEkHashes: [], challengeTtlSeconds: 60, store: ts.server.store });
    const ak = await tpm.createAk('ecc-p256');
    try {
      const pending = attestor.begin({ ekCertificate: ekCert, ekIntermediates: [], ekPublic: ekPub, akPublic: ak.public });
      const secret = await tpm.activateCredential(ak, 'rsa2048', pending.challenge.credentialBlob, pending.challenge.encryptedSecret);
      await expect(attestor.finish(pending, secret)).resolves.toMatchObject({ attestationType: 'tpm' });
      await expect(attestor.finish(pending, secret)).rejects.toThrow(/nonce already used \(replay\)/);
      // Past the expiry the answer is refused even before the nonce is looked at.
      const late = new TpmAttestor({ trustDomain: TrustDomain.parse(TD), manufacturerCasDer: swtpm.manufacturerCaDer, enrolledEkHashes: [], challengeTtlSeconds: 60, store: ts.server.store, now: () => new Date(Date.now() + 61_000) });
      await expect(late.finish(pending, secret)).rejects.toThrow(/challenge expired/);
    } finally {
      await tpm.releaseAk(ak);
    }
  });

  it('refuses a banned TPM node; an evicted one may attest again', async () => {
    const id = `spiffe://${TD}/agent/tpm/${hash}`;
    await tpmAttest(ts);
    await ts.server.store.banNode(id);
    await expect(tpmAttest(ts)).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/is banned/) });
    await ts.server.store.deleteNode(id);
    const { responses } = await tpmAttest(ts);
    expect(responses[1]?.result?.spiffeId).toBe(id);
    expect((await ts.server.store.getNode(id))?.banned).toBe(false);
  });
});
