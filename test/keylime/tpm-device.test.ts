// The Keylime pieces on quotes from src/tpm's TpmDevice (ESAPI through koffi) against swtpm:
// the quote string codec (cross-checked with tpm2_checkquote), one-shot verification, and the
// quote endpoint backed by the device, pulled by the test verifier.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeylimeVerifierClient } from '../../src/keylime/client.js';
import { verifyEvidence } from '../../src/keylime/evidence.js';
import { ContinuousAttestationMonitor } from '../../src/keylime/monitor.js';
import { startQuoteEndpoint, type QuoteEndpoint } from '../../src/keylime/quote-endpoint.js';
import { decodeQuoteString, encodePcrBlob, encodeQuoteString } from '../../src/keylime/quote-string.js';
import { KeylimeTenant } from '../../src/keylime/tenant.js';
import { tpmDeviceQuoter } from '../../src/keylime/tpm-quoter.js';
import { TpmDevice, type AkHandle } from '../../src/tpm/device.js';
import type { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { clientFor, createPki, startVerifier, type KeylimePki } from './helpers/fixture.js';
import { startTpm, type TestTpm } from './helpers/tpm.js';

const group = new ProcessGroup();
let tmp: { dir: string; cleanup: () => void };
let pki: KeylimePki;
let tpm: TestTpm;
let device: TpmDevice;
let ak: AkHandle;
let verifier: TestKeylimeVerifier;
let client: KeylimeVerifierClient;

beforeAll(async () => {
  tmp = tempDir('terroir-keylime-device-');
  pki = await createPki(tmp.dir);
  tpm = await startTpm(group, tmp.dir);
  device = await TpmDevice.open(tpm.tcti);
  ak = await device.createAk('ecc-p256');
  verifier = await startVerifier(pki, { quoteIntervalMs: 200 });
  client = clientFor(pki, verifier);
});
afterAll(async () => {
  await client?.close();
  await verifier?.close();
  await device?.close();
  await group.stopAll();
  tmp.cleanup();
});

async function checkWithTools(q: { attest: Uint8Array; signature: Uint8Array; pcrs: Parameters<typeof encodePcrBlob>[0] }, akPublic: Buffer, nonceHex: string): Promise<string> {
  const files = { msg: 'dev.msg', sig: 'dev.sig', pcrs: 'dev.pcrs', ak: 'dev-ak.pub' };
  fs.writeFileSync(path.join(tmp.dir, files.msg), q.attest);
  fs.writeFileSync(path.join(tmp.dir, files.sig), q.signature);
  fs.writeFileSync(path.join(tmp.dir, files.pcrs), encodePcrBlob(q.pcrs));
  fs.writeFileSync(path.join(tmp.dir, files.ak), akPublic);
  return tpm.tools(['tpm2_checkquote', '-u', files.ak, '-m', files.msg, '-s', files.sig, '-f', files.pcrs, '-g', 'sha256', '-q', nonceHex]);
}

describe('quotes from TpmDevice', () => {
  it('ECC AK: the quote string round-trips and tpm2_checkquote accepts the encoded PCR blob', async () => {
    const quoter = tpmDeviceQuoter(device, ak);
    const nonce = 'DeviceNonce42';
    const q = await quoter.quote([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16], Buffer.from(nonce));
    const back = decodeQuoteString(encodeQuoteString(q));
    expect(back.pcrs[0]?.values.size).toBe(11);
    expect(await checkWithTools(back, ak.public, Buffer.from(nonce).toString('hex'))).toContain('sha256');
  });

  it('RSA AK: likewise, and one-shot verification accepts it', async () => {
    const rsa = await device.createAk('rsa2048');
    try {
      const quoter = tpmDeviceQuoter(device, rsa);
      const nonce = 'RsaNonce0001';
      const q = await quoter.quote([0, 16], Buffer.from(nonce));
      const quote = encodeQuoteString(q);
      expect(await checkWithTools(decodeQuoteString(quote), rsa.public, Buffer.from(nonce).toString('hex'))).toContain('sha256');
      const pcr0 = Buffer.from(q.pcrs[0]?.values.get(0) ?? []).toString('hex');
      const ekPublic = await device.ekPublic('rsa2048');
      const verdict = await verifyEvidence(client, { quote, nonce, akPublic: rsa.public, ekPublic, hashAlg: 'sha256', tpmPolicy: { 0: [pcr0] } });
      expect(verdict).toMatchObject({ valid: true, failures: [] });
      expect(verdict.apiVersion).toMatch(/^2\.\d+$/);
    } finally {
      await device.releaseAk(rsa);
    }
  });

  it('the quote endpoint backed by TpmDevice passes continuous attestation; a PCR extend fails it', async () => {
    const nk = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    let endpoint: QuoteEndpoint | undefined;
    const tenant = new KeylimeTenant(client);
    const monitor = new ContinuousAttestationMonitor(tenant, { pollIntervalMs: 100, maxAttestationAgeMs: 5000 });
    try {
      endpoint = await startQuoteEndpoint({
        quoter: tpmDeviceQuoter(device, ak), pubkeyPem: nk, encAlg: 'ecc', signAlg: 'ecdsa',
        cert: pki.node.certPem, key: pki.node.keyPem, clientCa: pki.pullCa.certPem,
      });
      await tenant.enrollAgent('dev-node', {
        akPublic: ak.public, tpmPolicy: { 14: ['00'.repeat(32)] }, quoteEndpoint: { ip: '127.0.0.1', port: endpoint.port }, quoteEndpointCert: pki.node.certPem,
      });
      const passed = new Promise<void>((resolve) => monitor.once('pass', () => resolve()));
      monitor.watch('dev-node');
      monitor.start();
      await passed;
      const failed = new Promise<string | undefined>((resolve) => monitor.once('fail', (_id, f) => resolve(f.lastEventId)));
      await device.pcrExtend(14, 'sha256', crypto.createHash('sha256').update('changed').digest());
      expect(await failed).toBe('pcr_validation.invalid_pcr_14');
    } finally {
      await monitor.stop();
      await endpoint?.close();
    }
  });
});
