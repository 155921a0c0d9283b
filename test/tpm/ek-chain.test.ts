// The EK certificate chain in the TCG chain NV indices (0x01C00100..0x01C001FF), read by TpmDevice
// from a real swtpm; tpm2-tools define and write the indices and read them back as the oracle.
import { execFileSync } from 'node:child_process';
import crypto, { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { TpmDevice } from '../../src/tpm/device.js';
import { splitDerCertificates, verifyEkCertificate } from '../../src/tpm/index.js';
import { pemBundleToDer, startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';

let sw: Swtpm;
let dev: TpmDevice;
let work: { dir: string; cleanup: () => void };
let intermediate: Buffer;
let certA: Buffer;
let certB: Buffer;
const warnings: string[] = [];
const defined = new Set<number>();

function tool(cmd: string, args: string[]): Buffer {
  return execFileSync(cmd, args, { cwd: work.dir, env: { ...process.env, TPM2TOOLS_TCTI: sw.tcti, TSS2_LOG: 'all+NONE' }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** Defines a chain index the way platform firmware does (platform hierarchy) and writes `data` into it. */
function nvWrite(index: number, data: Buffer, size = data.length, read = 'ownerread|authread'): void {
  const h = `0x${index.toString(16)}`;
  tool('tpm2_nvdefine', [h, '-C', 'p', '-s', String(size), '-a', `ppwrite|ppread|${read}|no_da|platformcreate`]);
  defined.add(index);
  if (data.length > 0) {
    const file = path.join(work.dir, `nv-${h}.bin`);
    fs.writeFileSync(file, data);
    tool('tpm2_nvwrite', [h, '-C', 'p', '-i', file]);
  }
}

/** A small self-signed EC certificate (so two fit in one swtpm NV index, whose maximum is 2048 bytes). */
function selfSigned(cn: string): Buffer {
  const key = path.join(work.dir, `${cn}.key`);
  const out = path.join(work.dir, `${cn}.der`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-outform', 'DER', '-out', out,
    '-days', '2', '-subj', `/CN=${cn}`, '-addext', 'basicConstraints=critical,CA:TRUE'], { stdio: 'ignore' });
  return fs.readFileSync(out);
}

beforeAll(async () => {
  work = tempDir('terroir-ekchain-');
  sw = await startSwtpm();
  const logger = pino({ level: 'warn' }, { write: (line: string) => { warnings.push(String(JSON.parse(line).msg)); } });
  dev = await TpmDevice.open(sw.tcti, { logger });
  // swtpm/start.sh's CA file: the local root, then the intermediate that signed the EK certificates.
  intermediate = pemBundleToDer(fs.readFileSync(sw.caFile, 'utf8'))[1] as Buffer;
  certA = selfSigned('Chain Test A');
  certB = selfSigned('Chain Test B');
});

afterEach(() => {
  for (const index of defined) tool('tpm2_nvundefine', [`0x${index.toString(16)}`, '-C', 'p']);
  defined.clear();
  warnings.length = 0;
});

afterAll(async () => {
  await dev?.close();
  await sw?.stop();
  work?.cleanup();
});

describe('TpmDevice.readEkCertificateChain (swtpm, tpm2-tools)', () => {
  it('returns nothing when no chain index is defined', async () => {
    expect(await dev.readEkCertificateChain()).toEqual({ certificates: [], problems: [] });
    expect(warnings).toEqual([]);
  });

  it('reads the intermediate from 0x01C00100, byte-identical to tpm2_nvread, and it completes the EK chain to the root alone', async () => {
    nvWrite(0x01c00100, intermediate);
    const chain = await dev.readEkCertificateChain();
    expect(chain.problems).toEqual([]);
    expect(chain.certificates).toHaveLength(1);
    expect(chain.certificates[0]!.equals(tool('tpm2_nvread', ['0x1c00100', '-C', 'o']))).toBe(true);
    const ekCert = (await dev.readEkCertificate('rsa2048')) as Buffer;
    const root = sw.manufacturerCaDer[0] as Buffer;
    expect(() => verifyEkCertificate(ekCert, [root])).toThrow(/no chain to a configured manufacturer CA/);
    expect(verifyEkCertificate(ekCert, [root], { intermediatesDer: chain.certificates }).issuer).toMatch(/swtpm/);
  });

  it('splits concatenated certificates in stored order, ignoring the padding of a larger NV area', async () => {
    nvWrite(0x01c00100, Buffer.concat([certB, certA]), certA.length + certB.length + 40);
    const chain = await dev.readEkCertificateChain();
    expect(chain.problems).toEqual([]);
    expect(chain.certificates.map((c) => c.toString('hex'))).toEqual([certB.toString('hex'), certA.toString('hex')]);
  });

  it('reads several indices in index order, not definition order (with the owner\'s auth where the index has no authread)', async () => {
    nvWrite(0x01c00180, certA);
    nvWrite(0x01c00100, certB);
    nvWrite(0x01c00101, intermediate, intermediate.length, 'ownerread');
    const chain = await dev.readEkCertificateChain();
    expect(chain.problems).toEqual([]);
    expect(chain.certificates.map((c) => c.toString('hex'))).toEqual([certB, intermediate, certA].map((c) => c.toString('hex')));
  });

  it('keeps only whole certificates from damaged indices, and says what was wrong with each', async () => {
    nvWrite(0x01c00100, Buffer.from('not a certificate at all'));
    nvWrite(0x01c00101, Buffer.concat([certA, certB.subarray(0, certB.length - 10)]));
    nvWrite(0x01c00102, Buffer.concat([certB, Buffer.from([0x02, 0x01, 0x00])]));
    nvWrite(0x01c00103, Buffer.alloc(0), 64); // defined, never written
    nvWrite(0x01c00104, certA, certA.length, 'policyread'); // readable only through a policy (and the platform)
    const chain = await dev.readEkCertificateChain();
    expect(chain.certificates.map((c) => c.toString('hex'))).toEqual([certA.toString('hex'), certB.toString('hex')]);
    expect(chain.problems.map((p) => p.index)).toEqual([0x01c00100, 0x01c00101, 0x01c00102, 0x01c00103, 0x01c00104]);
    expect(chain.problems[0]!.message).toMatch(/0x01c00100 at byte 0: expected a DER SEQUENCE \(0x30\), found 0x6e/);
    expect(chain.problems[1]!.message).toMatch(new RegExp(`0x01c00101 at byte ${certA.length}: .*runs past its container.*kept the 1 whole certificate`));
    expect(chain.problems[2]!.message).toMatch(new RegExp(`0x01c00102 at byte ${certB.length}: expected a DER SEQUENCE.*found 0x02`));
    expect(chain.problems[3]!.message).toMatch(/0x01c00103 has never been written/);
    expect(chain.problems[4]!.message).toMatch(/0x01c00104 is readable neither with its own auth nor the owner's/);
    expect(warnings).toHaveLength(5);
    expect(warnings.every((w) => w.startsWith('EK certificate chain: '))).toBe(true);
  });

  it('reads at most 16 indices', async () => {
    for (let i = 0; i < 17; i++) nvWrite(0x01c00100 + i, Buffer.alloc(0), 8);
    const chain = await dev.readEkCertificateChain();
    expect(chain.certificates).toEqual([]);
    expect(chain.problems[0]).toEqual({ message: 'more than 16 chain indices are defined; only the first 16 are read' });
    expect(chain.problems.slice(1).map((p) => p.index)).toEqual(Array.from({ length: 16 }, (_, i) => 0x01c00100 + i));
  });
});

describe('splitDerCertificates', () => {
  it('splits, and refuses what is not a whole X.509 certificate', () => {
    expect(splitDerCertificates(Buffer.concat([certA, certB, Buffer.alloc(7)]))).toEqual({ certificates: [certA, certB] });
    expect(splitDerCertificates(Buffer.alloc(0))).toEqual({ certificates: [] });
    // A SEQUENCE that is not SEQUENCE { SEQUENCE, SEQUENCE, BIT STRING }.
    expect(splitDerCertificates(Buffer.from([0x30, 0x03, 0x02, 0x01, 0x00])).problem).toMatch(/at byte 0: not an X.509 certificate/);
    // Right shape, wrong contents: X.509 parsing refuses it.
    const fake = Buffer.from([0x30, 0x09, 0x30, 0x02, 0x05, 0x00, 0x30, 0x00, 0x03, 0x01, 0x00]);
    const r = splitDerCertificates(Buffer.concat([certA, fake]));
    expect(r.certificates).toEqual([certA]);
    expect(r.problem).toMatch(new RegExp(`^at byte ${certA.length}: `));
    // Indefinite and over-long length encodings.
    expect(splitDerCertificates(Buffer.from([0x30, 0x80, 0x00, 0x00])).problem).toMatch(/unsupported length encoding/);
    expect(splitDerCertificates(Buffer.from([0x30, 0x85, 1, 0, 0, 0, 0])).problem).toMatch(/unsupported length encoding/);
    // Padding only counts when it is uniform.
    expect(splitDerCertificates(Buffer.concat([certA, Buffer.from([0xff, 0x00])])).problem).toMatch(/found 0xff/);
  });

  it('never throws on mutated input, and returns only whole certificates that are a prefix of it', () => {
    const base = Buffer.concat([certA, certB]);
    for (let i = 0; i < 1500; i++) {
      const buf = Buffer.from(i % 3 === 0 ? base.subarray(0, crypto.randomInt(base.length + 1)) : base);
      for (let k = crypto.randomInt(1, 4); k > 0 && buf.length > 0; k--) buf[crypto.randomInt(buf.length)] = crypto.randomInt(256);
      const r = splitDerCertificates(buf);
      let off = 0;
      for (const c of r.certificates) {
        expect(c.equals(buf.subarray(off, off + c.length))).toBe(true);
        expect(() => new X509Certificate(c)).not.toThrow();
        off += c.length;
      }
      if (r.problem === undefined) {
        const tail = buf.subarray(off);
        expect(tail.length === 0 || tail.every((b) => b === tail[0]) && (tail[0] === 0 || tail[0] === 0xff)).toBe(true);
      }
    }
  });
});
