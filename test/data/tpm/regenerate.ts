/**
 * Regenerates the TPM fixtures in this directory from a fresh swtpm (run: npx tsx test/data/tpm/regenerate.ts).
 * The fixtures are real TPM output: the pure verifier tests and the parser fuzzing start from them.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSwtpm } from '../../support/swtpm.js';
import { TpmDevice } from '../../../src/tpm/device.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const sw = await startSwtpm();
try {
  const dev = await TpmDevice.open(sw.tcti);
  const w = (name: string, data: Buffer | string): void => fs.writeFileSync(path.join(here, name), data);
  w('manufacturer-ca.pem', fs.readFileSync(sw.caFile));
  w('ek-rsa2048.crt', (await dev.readEkCertificate('rsa2048')) as Buffer);
  w('ek-p384.crt', (await dev.readEkCertificate('ecc-p384')) as Buffer);
  w('ek-rsa2048.pub', await dev.ekPublic('rsa2048'));
  w('ek-p384.pub', await dev.ekPublic('ecc-p384'));
  const sel = [{ alg: 'sha256' as const, pcrs: [0, 1, 2, 3, 4, 5, 6, 7, 16] }, { alg: 'sha1' as const, pcrs: [0, 16] }];
  await dev.pcrExtend(16, 'sha256', Buffer.alloc(32, 0xab));
  await dev.pcrExtend(16, 'sha1', Buffer.alloc(20, 0xcd));
  for (const alg of ['ecc-p256', 'rsa2048'] as const) {
    const ak = await dev.createAk(alg);
    const nonce = Buffer.from(`terroir-fixture-nonce-${alg}`.padEnd(32, '.'));
    const q = await dev.quote(ak, sel, nonce);
    w(`ak-${alg}.pub`, ak.public);
    w(`quote-${alg}.attest`, q.attest);
    w(`quote-${alg}.sig`, q.signature);
    w(`quote-${alg}.json`, JSON.stringify({
      nonce: nonce.toString('hex'),
      pcrs: q.pcrs.map((b) => ({ alg: b.alg, values: Object.fromEntries([...b.values].map(([k, v]) => [k, v.toString('hex')])) })),
    }, null, 2) + '\n');
    await dev.releaseAk(ak);
  }
  await dev.close();
} finally {
  await sw.stop();
}
