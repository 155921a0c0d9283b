import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TpmDevice, TpmDeviceError, type AkHandle } from '../../src/tpm/device.js';
import { Tss2LibraryError, loadLibrary } from '../../native/tss2.js';
import {
  checkAkAttributes, ekPublicMatchesCertificate, makeCredential, parseTpm2bPublic, publicKeyFromTpmPublic,
  verifyEkCertificate, verifyQuote, type PcrSelection, type PcrValues,
} from '../../src/tpm/index.js';
import { freePortPair } from '../support/ports.js';
import { startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';
import { fixture } from './fixtures.js';

let sw: Swtpm;
let dev: TpmDevice;
let work: { dir: string; cleanup: () => void };
let eccAk: AkHandle;
let rsaAk: AkHandle;

/** Runs a tpm2-tools command against the test's swtpm, in the work dir; returns stdout. */
function tool(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, {
    cwd: work.dir,
    env: { ...process.env, TPM2TOOLS_TCTI: sw.tcti, TSS2_LOG: 'all+NONE' },
    stdio: ['ignore', 'pipe', 'pipe'],
  }).toString();
}

/** Like tool(), but reports the exit status instead of throwing. */
function toolStatus(cmd: string, args: string[]): number {
  try {
    tool(cmd, args);
    return 0;
  } catch (err) {
    if (process.env.TPM_TEST_DEBUG) console.error((err as { stderr: Buffer }).stderr.toString());
    return (err as { status: number }).status;
  }
}

const file = (name: string): string => path.join(work.dir, name);

/** tpm2-tools (without a resource manager) leave transient objects loaded: flush them between steps. */
function flushToolObjects(): void {
  tool('tpm2_flushcontext', ['-t']);
}

const SEL: PcrSelection[] = [{ alg: 'sha256', pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 10, 16] }];
/** tpm2_checkquote 5.4 fails ("Failed to hash PCR values") on value files of 8 or more PCRs: give it 7. */
const CHECKQUOTE_SEL: PcrSelection[] = [{ alg: 'sha256', pcrs: [0, 1, 2, 3, 7, 10, 16] }];
const pcrFileFor = (pcrs: PcrValues, sel: PcrSelection[]): Buffer =>
  Buffer.concat(sel.flatMap((s) => s.pcrs.map((p) => pcrs.find((b) => b.alg === s.alg)?.values.get(p) as Buffer)));
const pcrListArg = (sel: PcrSelection[]): string => sel.map((s) => `${s.alg}:${s.pcrs.join(',')}`).join('+');

beforeAll(async () => {
  work = tempDir('terroir-tpm-tools-');
  sw = await startSwtpm();
  dev = await TpmDevice.open(sw.tcti);
  // Persistent AKs, so tpm2-tools flushing every transient object between steps cannot remove them.
  eccAk = await dev.createAk('ecc-p256', { persistentHandle: 0x81000100 });
  rsaAk = await dev.createAk('rsa2048', { persistentHandle: 0x81000101 });
});

afterAll(async () => {
  await dev?.close();
  await sw?.stop();
  work?.cleanup();
});

describe('EK', () => {
  it('reads the EK certificates from NV, byte-identical to tpm2_nvread, chaining to the manufacturer CA', async () => {
    const rsa = await dev.readEkCertificate('rsa2048');
    tool('tpm2_nvread', ['0x01c00002', '-C', '0x01c00002', '-o', file('ekcert.der')]);
    const viaTools = fs.readFileSync(file('ekcert.der'));
    expect(rsa).toBeDefined();
    expect(viaTools.subarray(0, (rsa as Buffer).length)).toEqual(rsa);
    const p384 = await dev.readEkCertificate('ecc-p384');
    for (const [kind, cert] of [['rsa2048', rsa], ['ecc-p384', p384]] as const) {
      const info = verifyEkCertificate(cert as Buffer, sw.manufacturerCaDer);
      expect(info.model).toBe('swtpm');
      expect(ekPublicMatchesCertificate(parseTpm2bPublic(await dev.ekPublic(kind)), cert as Buffer)).toBe(true);
    }
    expect(await dev.readEkCertificate('ecc-p256')).toBeUndefined();
  });

  it('returns the EK public exactly as tpm2_readpublic does, and recreates EKs from the TCG templates as tpm2_createek does', async () => {
    tool('tpm2_readpublic', ['-c', '0x81010001', '-o', file('ekrsa.pub')]);
    expect(await dev.ekPublic('rsa2048')).toEqual(fs.readFileSync(file('ekrsa.pub')));
    // No persistent P-256 EK on swtpm: ours comes from template L-2, like tpm2_createek's.
    tool('tpm2_createek', ['-G', 'ecc', '-c', file('ek256.ctx'), '-u', file('ek256.pub')]);
    flushToolObjects();
    expect(await dev.ekPublic('ecc-p256')).toEqual(fs.readFileSync(file('ek256.pub')));
  });
});

describe('quotes: the project and tpm2-tools verify each other', () => {
  it('the project verifies an RSAPSS quote from tpm2-tools', () => {
    const nonce = crypto.randomBytes(32);
    tool('tpm2_createak', ['-C', '0x81010001', '-c', file('pss.ctx'), '-G', 'rsa', '-s', 'rsapss', '-g', 'sha256', '-u', file('pss.pub')]);
    flushToolObjects();
    tool('tpm2_quote', ['-c', file('pss.ctx'), '--scheme', 'rsapss', '-l', 'sha256:0,16', '-q', nonce.toString('hex'), '-m', file('pss.msg'), '-s', file('pss.sig'), '-o', file('pss.pcrs'), '-F', 'values', '-g', 'sha256']);
    flushToolObjects();
    const akPublic = parseTpm2bPublic(fs.readFileSync(file('pss.pub')));
    expect(akPublic.parameters.scheme?.alg).toBe('rsapss');
    const raw = fs.readFileSync(file('pss.pcrs'));
    const pcrs: PcrValues = [{ alg: 'sha256', values: new Map([[0, raw.subarray(0, 32)], [16, raw.subarray(32, 64)]]) }];
    const signature = fs.readFileSync(file('pss.sig'));
    expect(verifyQuote({ akPublic, attest: fs.readFileSync(file('pss.msg')), signature, pcrs, expectedExtraData: nonce }).hashAlg).toBe('sha256');
    const attest = fs.readFileSync(file('pss.msg'));
    attest[attest.length - 3] = (attest[attest.length - 3] as number) ^ 0x40;
    expect(() => verifyQuote({ akPublic, attest, signature, pcrs, expectedExtraData: nonce })).toThrow(expect.objectContaining({ code: 'bad-signature' }));
  });

  for (const which of ['ecc', 'rsa'] as const) {
    it(`tpm2_checkquote accepts the project's ${which} quote, and rejects it with another nonce`, async () => {
      const ak = which === 'ecc' ? eccAk : rsaAk;
      const nonce = crypto.randomBytes(32);
      const q = await dev.quote(ak, CHECKQUOTE_SEL, nonce);
      expect(verifyQuote({ akPublic: ak.tpmPublic, attest: q.attest, signature: q.signature, pcrs: q.pcrs, expectedExtraData: nonce, requireSafeClock: true }).extraData).toEqual(nonce);
      fs.writeFileSync(file('ak.pem'), publicKeyFromTpmPublic(ak.tpmPublic).export({ type: 'spki', format: 'pem' }));
      fs.writeFileSync(file('msg.bin'), q.attest);
      fs.writeFileSync(file('sig.bin'), q.signature);
      fs.writeFileSync(file('pcrs.bin'), pcrFileFor(q.pcrs, CHECKQUOTE_SEL));
      const args = ['-u', file('ak.pem'), '-m', file('msg.bin'), '-s', file('sig.bin'), '-f', file('pcrs.bin'), '-l', pcrListArg(CHECKQUOTE_SEL), '-g', 'sha256'];
      expect(toolStatus('tpm2_checkquote', [...args, '-q', nonce.toString('hex')])).toBe(0);
      expect(toolStatus('tpm2_checkquote', [...args, '-q', crypto.randomBytes(32).toString('hex')])).not.toBe(0);
    });

    it(`the project verifies tpm2_quote output (${which} AK from tpm2_createak), and rejects a wrong nonce and PCR value`, () => {
      const nonce = crypto.randomBytes(32);
      const alg = which === 'ecc' ? ['-G', 'ecc', '-s', 'ecdsa'] : ['-G', 'rsa', '-s', 'rsassa'];
      tool('tpm2_createak', ['-C', '0x81010001', '-c', file('tak.ctx'), ...alg, '-g', 'sha256', '-u', file('tak.pub'), '-n', file('tak.name')]);
      flushToolObjects();
      tool('tpm2_quote', ['-c', file('tak.ctx'), '-l', pcrListArg(SEL), '-q', nonce.toString('hex'), '-m', file('tq.msg'), '-s', file('tq.sig'), '-o', file('tq.pcrs'), '-F', 'values', '-g', 'sha256']);
      flushToolObjects();
      const akPublic = parseTpm2bPublic(fs.readFileSync(file('tak.pub')));
      checkAkAttributes(akPublic);
      const raw = fs.readFileSync(file('tq.pcrs'));
      const values = new Map<number, Buffer>();
      SEL[0]?.pcrs.forEach((p, i) => values.set(p, raw.subarray(i * 32, i * 32 + 32)));
      const opts = { akPublic, attest: fs.readFileSync(file('tq.msg')), signature: fs.readFileSync(file('tq.sig')), pcrs: [{ alg: 'sha256' as const, values }], expectedExtraData: nonce };
      expect(verifyQuote(opts).pcrSelection).toEqual(SEL);
      expect(() => verifyQuote({ ...opts, expectedExtraData: crypto.randomBytes(32) })).toThrow(expect.objectContaining({ code: 'extra-data-mismatch' }));
      const wrong = new Map(values);
      wrong.set(16, crypto.randomBytes(32));
      expect(() => verifyQuote({ ...opts, pcrs: [{ alg: 'sha256', values: wrong }] })).toThrow(expect.objectContaining({ code: 'pcr-digest-mismatch' }));
    });
  }

  it('rejects, by attributes, a real TPM signing key that is not restricted', () => {
    tool('tpm2_createprimary', ['-C', 'e', '-G', 'ecc256:ecdsa-sha256', '-a', 'fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign', '-c', file('unr.ctx')]);
    tool('tpm2_readpublic', ['-c', file('unr.ctx'), '-o', file('unr.pub')]);
    flushToolObjects();
    expect(() => checkAkAttributes(parseTpm2bPublic(fs.readFileSync(file('unr.pub'))))).toThrow(/restricted is not set/);
  });
});

/** tpm2-tools credential file: 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
function writeToolsCredential(p: string, blob: Buffer, secret: Buffer): void {
  fs.writeFileSync(p, Buffer.concat([Buffer.from([0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]), blob, secret]));
}
function readToolsCredential(p: string): { blob: Buffer; secret: Buffer } {
  const b = fs.readFileSync(p);
  expect(b.readUInt32BE(0)).toBe(0xbadcc0de);
  const blobEnd = 8 + 2 + b.readUInt16BE(8);
  return { blob: b.subarray(8, blobEnd), secret: b.subarray(blobEnd) };
}

describe('credential activation: the project and tpm2-tools activate each other', () => {
  for (const [kind, handle] of [['rsa2048', '0x81010001'], ['ecc-p384', '0x81010016']] as const) {
    it(`tpm2_activatecredential recovers the project's MakeCredential secret (${kind} EK)`, async () => {
      tool('tpm2_createak', ['-C', '0x81010001', '-c', file('cak.ctx'), '-G', 'ecc', '-g', 'sha256', '-s', 'ecdsa', '-n', file('cak.name')]);
      flushToolObjects();
      const secret = crypto.randomBytes(32);
      const ek = parseTpm2bPublic(await dev.ekPublic(kind));
      const cred = makeCredential(ek, fs.readFileSync(file('cak.name')), secret);
      writeToolsCredential(file('cred.bin'), cred.credentialBlob, cred.encryptedSecret);
      const auth: string[] = [];
      if (kind === 'rsa2048') {
        tool('tpm2_startauthsession', ['--policy-session', '-S', file('s.ctx')]);
        tool('tpm2_policysecret', ['-S', file('s.ctx'), '-c', 'e']);
        auth.push('-P', `session:${file('s.ctx')}`);
      }
      tool('tpm2_activatecredential', ['-c', file('cak.ctx'), '-C', handle, '-i', file('cred.bin'), '-o', file('out.bin'), ...auth]);
      if (kind === 'rsa2048') tool('tpm2_flushcontext', [file('s.ctx')]);
      flushToolObjects();
      expect(fs.readFileSync(file('out.bin'))).toEqual(secret);
    });

    it(`the project's ActivateCredential recovers tpm2_makecredential's secret (${kind} EK)`, async () => {
      const secret = crypto.randomBytes(32);
      fs.writeFileSync(file('ek.pub'), await dev.ekPublic(kind));
      fs.writeFileSync(file('secret.bin'), secret);
      tool('tpm2_makecredential', ['-T', 'none', '-u', file('ek.pub'), '-s', file('secret.bin'), '-n', eccAk.name.toString('hex'), '-o', file('tcred.bin')]);
      const { blob, secret: enc } = readToolsCredential(file('tcred.bin'));
      expect(await dev.activateCredential(eccAk, kind, blob, enc)).toEqual(secret);
    });
  }

  it('refuses a credential made for another AK, and a tampered credential', async () => {
    const ek = parseTpm2bPublic(await dev.ekPublic('rsa2048'));
    const forRsaAk = makeCredential(ek, rsaAk.name, crypto.randomBytes(32));
    await expect(dev.activateCredential(eccAk, 'rsa2048', forRsaAk.credentialBlob, forRsaAk.encryptedSecret)).rejects.toThrow(/ActivateCredential failed.*integrity/i);
    const good = makeCredential(ek, eccAk.name, crypto.randomBytes(32));
    const tampered = Buffer.from(good.credentialBlob);
    tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 1;
    await expect(dev.activateCredential(eccAk, 'rsa2048', tampered, good.encryptedSecret)).rejects.toBeInstanceOf(TpmDeviceError);
    // A credential made for another TPM's EK (a fixture from another swtpm) cannot be activated here.
    const otherEk = parseTpm2bPublic(fixture('ek-rsa2048.pub'));
    expect(otherEk.raw.equals(ek.raw)).toBe(false);
    const forOther = makeCredential(otherEk, eccAk.name, crypto.randomBytes(32));
    await expect(dev.activateCredential(eccAk, 'rsa2048', forOther.credentialBlob, forOther.encryptedSecret)).rejects.toBeInstanceOf(TpmDeviceError);
    // Still works afterwards: the failures changed nothing.
    const secret = crypto.randomBytes(32);
    const ok = makeCredential(ek, eccAk.name, secret);
    const got = await dev.activateCredential(eccAk, 'rsa2048', ok.credentialBlob, ok.encryptedSecret);
    expect(crypto.timingSafeEqual(got, secret)).toBe(true);
    expect(got.equals(crypto.randomBytes(32))).toBe(false);
  });
});

describe('PCRs', () => {
  it('reads more than 8 PCRs across banks, as tpm2_pcrread does', async () => {
    const sel: PcrSelection[] = [{ alg: 'sha256', pcrs: Array.from({ length: 24 }, (_, i) => i) }, { alg: 'sha1', pcrs: [0, 16, 23] }];
    const pcrs = await dev.pcrRead(sel);
    expect(pcrs[0]?.values.size).toBe(24);
    tool('tpm2_pcrread', ['sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23+sha1:0,16,23', '-o', file('pcrs.bin')]);
    expect(fs.readFileSync(file('pcrs.bin'))).toEqual(pcrFileFor(pcrs, sel));
  });

  it('extends and resets PCR 16, and a quote over many PCRs verifies', async () => {
    await dev.pcrReset(16);
    const [before] = await dev.pcrRead([{ alg: 'sha256', pcrs: [16] }]);
    expect(before?.values.get(16)).toEqual(Buffer.alloc(32));
    const d = crypto.randomBytes(32);
    await dev.pcrExtend(16, 'sha256', d);
    const [after] = await dev.pcrRead([{ alg: 'sha256', pcrs: [16] }]);
    expect(after?.values.get(16)).toEqual(crypto.createHash('sha256').update(Buffer.alloc(32)).update(d).digest());
    const sel: PcrSelection[] = [{ alg: 'sha256', pcrs: Array.from({ length: 24 }, (_, i) => i) }, { alg: 'sha1', pcrs: [16] }];
    const nonce = crypto.randomBytes(20);
    const q = await dev.quote(eccAk, sel, nonce);
    expect(verifyQuote({ akPublic: eccAk.tpmPublic, attest: q.attest, signature: q.signature, pcrs: q.pcrs, expectedExtraData: nonce }).pcrSelection).toEqual(sel);
    await dev.pcrReset(16);
    const [reset] = await dev.pcrRead([{ alg: 'sha256', pcrs: [16] }]);
    expect(reset?.values.get(16)).toEqual(Buffer.alloc(32));
  });

  it('rejects bad arguments before touching the TPM', async () => {
    await expect(dev.quote(eccAk, SEL, Buffer.alloc(65))).rejects.toThrow(/at most 64/);
    await expect(dev.pcrExtend(16, 'sha256', Buffer.alloc(20))).rejects.toThrow(/32 bytes/);
    await expect(dev.pcrReset(24)).rejects.toThrow(/out of range/);
    await expect(dev.pcrRead([{ alg: 'sha256', pcrs: [24] }])).rejects.toThrow(/PCR 24 is out of range/);
    await expect(dev.pcrRead([{ alg: 'md5' as 'sha1', pcrs: [0] }])).rejects.toThrow(/not one of/);
    await expect(dev.quote(eccAk, [], Buffer.alloc(0))).rejects.toThrow(/empty/);
    await expect(dev.quote(eccAk, [{ alg: 'sha256', pcrs: [1, 1] }], Buffer.alloc(0))).rejects.toThrow(/twice/);
  });

  it('a non-resettable PCR gives a decoded TPM error', async () => {
    await expect(dev.pcrReset(0)).rejects.toThrow(/PCR_Reset\(0\) failed.*locality/i);
  });
});

describe('device behaviour', () => {
  it('serializes concurrent calls and keeps the event loop free during slow TPM work', async () => {
    let ticks = 0;
    const timer = setInterval(() => { ticks++; }, 5);
    const started = Date.now();
    const nonces = Array.from({ length: 6 }, () => crypto.randomBytes(32));
    const [rsa, ...quotes] = await Promise.all([dev.createAk('rsa2048'), ...nonces.map((n) => dev.quote(eccAk, SEL, n))]);
    clearInterval(timer);
    const elapsed = Date.now() - started;
    quotes.forEach((q, i) => verifyQuote({ akPublic: eccAk.tpmPublic, attest: (q as { attest: Buffer }).attest, signature: (q as { signature: Buffer }).signature, pcrs: (q as { pcrs: PcrValues }).pcrs, expectedExtraData: nonces[i] as Buffer }));
    expect(ticks).toBeGreaterThanOrEqual(Math.floor(elapsed / 5 / 4));
    await dev.releaseAk(rsa as AkHandle);
  });

  it('keeps a persistent AK across reopen, and flushes transient objects a previous process left behind', async () => {
    const leaky = await TpmDevice.open(sw.tcti);
    await leaky.createAk('ecc-p256');
    await leaky.createAk('ecc-p256');
    // "crash": the handle is never closed, its two objects stay in swtpm's three slots.
    const logged: unknown[] = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => { logged.push(JSON.parse(line)); } });
    const fresh = await TpmDevice.open(sw.tcti, { logger });
    expect(logged).toContainEqual(expect.objectContaining({ flushed: 2, msg: 'flushed transient objects left in the TPM' }));
    try {
      const aks = [await fresh.createAk('ecc-p256'), await fresh.createAk('ecc-p256'), await fresh.createAk('ecc-p256')];
      expect(new Set(aks.map((a) => a.name.toString('hex'))).size).toBe(3);
      for (const a of aks) await fresh.releaseAk(a);
      const again = await fresh.loadPersistentAk(0x81000100);
      expect(again.name).toEqual(eccAk.name);
      const nonce = crypto.randomBytes(32);
      const q = await fresh.quote(again, SEL, nonce);
      verifyQuote({ akPublic: eccAk.tpmPublic, attest: q.attest, signature: q.signature, pcrs: q.pcrs, expectedExtraData: nonce });
      const temp = await fresh.createAk('ecc-p256', { persistentHandle: 0x81000102 });
      await fresh.evictPersistentAk(temp);
      await expect(fresh.loadPersistentAk(0x81000102)).rejects.toBeInstanceOf(TpmDeviceError);
    } finally {
      await fresh.close();
    }
  });

  it('reports an unreachable TPM and a closed device clearly', async () => {
    const port = await freePortPair();
    await expect(TpmDevice.open(`swtpm:host=127.0.0.1,port=${port}`)).rejects.toThrow(/cannot open TPM|cannot initialise ESAPI|failed on/);
    const d = await TpmDevice.open(sw.tcti);
    await d.close();
    await expect(d.pcrRead(SEL)).rejects.toThrow(/closed/);
  });

  it('names the Debian package when a TSS library is missing', () => {
    expect(() => loadLibrary('libtss2-nonexistent.so.0', 'libtss2-nonexistent0')).toThrow(Tss2LibraryError);
    expect(() => loadLibrary('libtss2-nonexistent.so.0', 'libtss2-nonexistent0')).toThrow(/apt-get install libtss2-nonexistent0/);
  });

  it('reads an event log file when present, undefined otherwise', () => {
    fs.writeFileSync(file('log.bin'), Buffer.from([1, 2, 3]));
    expect(dev.readEventLog(file('log.bin'))).toEqual(Buffer.from([1, 2, 3]));
    expect(dev.readEventLog(file('missing.bin'))).toBeUndefined();
  });

  it('recreates the provisioned RSA EK from the TCG template when it is not persistent', async () => {
    const persisted = await dev.ekPublic('rsa2048');
    tool('tpm2_evictcontrol', ['-C', 'o', '-c', '0x81010001']);
    const d = await TpmDevice.open(sw.tcti);
    try {
      expect(await d.ekPublic('rsa2048')).toEqual(persisted);
      const secret = crypto.randomBytes(32);
      const cred = makeCredential(parseTpm2bPublic(persisted), eccAk.name, secret);
      expect(await d.activateCredential(await d.loadPersistentAk(0x81000100), 'rsa2048', cred.credentialBlob, cred.encryptedSecret)).toEqual(secret);
    } finally {
      await d.close();
    }
  });
});
