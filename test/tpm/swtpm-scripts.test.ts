import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { TpmDevice } from '../../src/tpm/device.js';
import { verifyEkCertificate, verifyQuote } from '../../src/tpm/index.js';
import { startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const script = (name: string): string => path.resolve(import.meta.dirname, '../../swtpm', name);
const alive = (pid: number): boolean => {
  try {
    return !fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^\d+ \(.*?\) /, '').startsWith('Z');
  } catch {
    return false;
  }
};

const started: Swtpm[] = [];
const dirs: { cleanup: () => void }[] = [];
afterAll(async () => {
  for (const s of started) await s.stop();
  for (const d of dirs) d.cleanup();
});

describe('swtpm scripts', () => {
  it('restart keeps the state and the clock safe flag; stop ends exactly its own instance', async () => {
    const state = tempDir('terroir-swtpm-state-');
    const ca = tempDir('terroir-swtpm-ca-');
    dirs.push(state, ca);
    const a = await startSwtpm({ stateDir: state.dir, caDir: ca.dir });
    const b = await startSwtpm({ caDir: ca.dir });
    started.push(b);
    // Two TPMs provisioned against one CA directory chain to the same manufacturer CA.
    expect(b.manufacturerCaDer).toEqual(a.manufacturerCaDer);
    let dev = await TpmDevice.open(a.tcti);
    const ak = await dev.createAk('ecc-p256', { persistentHandle: 0x81000300 });
    const cert = await dev.readEkCertificate('rsa2048');
    await dev.close();
    await a.stop();
    expect(alive(a.pid)).toBe(false);
    expect(alive(b.pid)).toBe(true);

    const again = await startSwtpm({ stateDir: state.dir, caDir: ca.dir });
    started.push(again);
    dev = await TpmDevice.open(again.tcti);
    try {
      expect(await dev.readEkCertificate('rsa2048')).toEqual(cert);
      verifyEkCertificate(cert as Buffer, again.manufacturerCaDer);
      const loaded = await dev.loadPersistentAk(0x81000300);
      expect(loaded.name).toEqual(ak.name);
      const nonce = crypto.randomBytes(32);
      const q = await dev.quote(loaded, [{ alg: 'sha256', pcrs: [0] }], nonce);
      const info = verifyQuote({ akPublic: loaded.tpmPublic, attest: q.attest, signature: q.signature, pcrs: q.pcrs, expectedExtraData: nonce, requireSafeClock: true });
      expect(info.clockInfo.safe).toBe(true);
      expect(info.clockInfo.resetCount).toBeGreaterThan(0);
    } finally {
      await dev.close();
    }
  });

  it('refuses a second start on a running state dir and bad arguments', async () => {
    const s = await startSwtpm();
    started.push(s);
    await expect(run(script('start.sh'), [s.stateDir, String(s.port + 10)])).rejects.toThrow(/already running/);
    await expect(run(script('start.sh'), [s.stateDir, 'x'])).rejects.toThrow(/PORT must be/);
    await expect(run(script('start.sh'), [])).rejects.toThrow(/usage/);
    // A stale pid file naming some other process is not acted on.
    const fake = tempDir();
    dirs.push(fake);
    fs.writeFileSync(path.join(fake.dir, 'swtpm.pid'), String(process.pid));
    const { stderr } = await run(script('stop.sh'), [fake.dir]);
    expect(stderr).toMatch(/not the swtpm/);
    expect(alive(process.pid)).toBe(true);
  });
});
