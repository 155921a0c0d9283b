import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodePcrBlob, decodeQuoteString, encodePcrBlob, encodeQuoteString, type PcrBank } from '../../src/keylime/quote-string.js';
import { QuoteFormatError } from '../../src/keylime/errors.js';
import { parseTpm2bPublic, verifyQuote } from '../../src/tpm/index.js';
import { ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { AK_HANDLE, startTpm, type TestTpm } from './helpers/tpm.js';

const group = new ProcessGroup();
let tmp: { dir: string; cleanup: () => void };
let tpm: TestTpm;

beforeAll(async () => {
  tmp = tempDir('terroir-keylime-qs-');
  tpm = await startTpm(group, tmp.dir);
});
afterAll(async () => {
  await group.stopAll();
  tmp.cleanup();
});

/** Runs tpm2_quote and returns its three output files as written. */
async function toolsQuote(pcrList: string, nonceHex: string): Promise<{ msg: Buffer; sig: Buffer; pcrs: Buffer }> {
  await tpm.tools(['tpm2_quote', '-c', AK_HANDLE, '-l', pcrList, '-q', nonceHex, '-m', 'oracle.msg', '-s', 'oracle.sig', '-o', 'oracle.pcrs', '-g', 'sha256']);
  const read = (f: string): Buffer => fs.readFileSync(path.join(tmp.dir, f));
  return { msg: read('oracle.msg'), sig: read('oracle.sig'), pcrs: read('oracle.pcrs') };
}

describe('Keylime quote string against tpm2_quote output', () => {
  it('decodes the tpm2-tools PCR blob and re-encodes it byte for byte', async () => {
    await tpm.quoter.pcrExtend(23, crypto.createHash('sha256').update('x').digest());
    const q = await toolsQuote('sha256:0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,23', 'abcdef');
    const banks = decodePcrBlob(q.pcrs);
    expect(banks).toHaveLength(1);
    expect(banks[0]?.alg).toBe('sha256');
    expect([...(banks[0]?.values.keys() ?? [])]).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 23]);
    expect(Buffer.from(banks[0]?.values.get(23) ?? []).equals(Buffer.alloc(32))).toBe(false);
    expect(encodePcrBlob(banks).equals(q.pcrs)).toBe(true); // 18 PCRs: three digest lists
  });

  it('round-trips a quote string and the decoded quote verifies with the AK (src/tpm)', async () => {
    const nonce = 'n0nce1234567890abcdef';
    const q = await toolsQuote('sha256:0,7,16', Buffer.from(nonce).toString('hex'));
    const text = encodeQuoteString({ attest: q.msg, signature: q.sig, pcrs: decodePcrBlob(q.pcrs) });
    expect(text.startsWith('r')).toBe(true);
    expect(text.split(':')).toHaveLength(3);
    const back = decodeQuoteString(text);
    expect(Buffer.from(back.attest).equals(q.msg)).toBe(true);
    expect(Buffer.from(back.signature).equals(q.sig)).toBe(true);
    const info = verifyQuote({
      akPublic: parseTpm2bPublic(tpm.akPublic),
      attest: Buffer.from(back.attest),
      signature: Buffer.from(back.signature),
      pcrs: back.pcrs.map((b) => ({ alg: b.alg as 'sha256', values: new Map([...b.values].map(([k, v]) => [k, Buffer.from(v)])) })),
      expectedExtraData: Buffer.from(nonce),
    });
    expect(info.extraData.toString()).toBe(nonce);
  });

  it('tpm2_checkquote accepts the PCR blob this codec encodes', async () => {
    const q = await toolsQuote('sha256:1,16', '0011');
    const ours = encodePcrBlob(decodePcrBlob(q.pcrs));
    fs.writeFileSync(path.join(tmp.dir, 'ours.pcrs'), ours);
    const out = await tpm.tools(['tpm2_checkquote', '-u', 'ak.pub', '-m', 'oracle.msg', '-s', 'oracle.sig', '-f', 'ours.pcrs', '-g', 'sha256', '-q', '0011']);
    expect(out).toContain('sha256');
    // And it refuses when one PCR value in our blob is changed.
    const banks = decodePcrBlob(q.pcrs);
    const tampered: PcrBank[] = [{ alg: 'sha256', values: new Map([...(banks[0]?.values ?? new Map())].map(([k, v]) => [k, k === 1 ? Buffer.alloc(32, 1) : v])) }];
    fs.writeFileSync(path.join(tmp.dir, 'bad.pcrs'), encodePcrBlob(tampered));
    await expect(tpm.tools(['tpm2_checkquote', '-u', 'ak.pub', '-m', 'oracle.msg', '-s', 'oracle.sig', '-f', 'bad.pcrs', '-g', 'sha256', '-q', '0011'])).rejects.toThrow();
  });
});

describe('Keylime quote string: strict decoding', () => {
  const attest = Buffer.concat([Buffer.from('ff54434780180000', 'hex'), Buffer.alloc(16)]);
  const sig = Buffer.from('0018000b00020102000203 04'.replace(/ /g, ''), 'hex');
  const bank: PcrBank = { alg: 'sha256', values: new Map([[0, Buffer.alloc(32, 7)], [16, Buffer.alloc(32, 9)]]) };
  const good = encodeQuoteString({ attest, signature: sig, pcrs: [bank] });
  const [a, s, p] = good.slice(1).split(':') as [string, string, string];
  const blob = Buffer.from(p, 'base64');

  it('encodes two banks and decodes them back', () => {
    const sha1: PcrBank = { alg: 'sha1', values: new Map([[3, Buffer.alloc(20, 3)]]) };
    const decoded = decodePcrBlob(encodePcrBlob([sha1, bank]));
    expect(decoded.map((b) => b.alg)).toEqual(['sha1', 'sha256']);
    expect(Buffer.from(decoded[0]?.values.get(3) ?? []).equals(Buffer.alloc(20, 3))).toBe(true);
  });

  const bad: [string, string][] = [
    ['no r prefix', good.slice(1)],
    ['wrong prefix', `q${good.slice(1)}`],
    ['two parts', `r${a}:${s}`],
    ['four parts', `${good}:${p}`],
    ['non-canonical base64', `r${a}:${s}:${p.slice(0, -2)}B=`],
    ['not base64', `r${a}:${s}:${p.replace(/[A-Z]/, '!')}`],
    ['empty part', `r:${s}:${p}`],
    ['wrong magic', `r${Buffer.concat([Buffer.from('00000000', 'hex'), attest.subarray(4)]).toString('base64')}:${s}:${p}`],
    ['wrong attest type', `r${Buffer.concat([attest.subarray(0, 4), Buffer.from('8017', 'hex'), attest.subarray(6)]).toString('base64')}:${s}:${p}`],
    ['oversized', `r${'A'.repeat(70_000)}:${s}:${p}`],
  ];
  it.each(bad)('rejects %s', (_name, text) => {
    expect(() => decodeQuoteString(text)).toThrow(QuoteFormatError);
  });

  const mutate = (f: (b: Buffer) => Buffer): Buffer => f(Buffer.from(blob));
  const badBlobs: [string, Buffer][] = [
    ['truncated', blob.subarray(0, blob.length - 1)],
    ['trailing byte', Buffer.concat([blob, Buffer.alloc(1)])],
    ['zero banks', mutate((b) => { b.writeUInt32LE(0, 0); return b; })],
    ['17 banks', mutate((b) => { b.writeUInt32LE(17, 0); return b; })],
    ['unknown hash', mutate((b) => { b.writeUInt16LE(0x0099, 4); return b; })],
    ['sizeofSelect 4', mutate((b) => { b[6] = 4; return b; })],
    ['selection bytes beyond sizeofSelect', mutate((b) => { b[10] = 1; return b; })],
    ['unused selection entry not zero', mutate((b) => { b[12] = 1; return b; })],
    ['digest size wrong', mutate((b) => { b.writeUInt16LE(20, 136 + 4); return b; })],
    ['more digests than selected', mutate((b) => { b.writeUInt32LE(3, 136); return b; })],
    ['fewer digests than selected', mutate((b) => { b.writeUInt32LE(1, 136); return b; })],
    ['no digest lists', mutate((b) => { b.writeUInt32LE(0, 132); return b; })],
  ];
  it.each(badBlobs)('rejects a PCR blob with %s', (_name, b) => {
    expect(() => decodePcrBlob(b)).toThrow(QuoteFormatError);
  });

  it('refuses to encode a digest of the wrong size or a PCR out of range', () => {
    expect(() => encodePcrBlob([{ alg: 'sha256', values: new Map([[0, Buffer.alloc(20)]]) }])).toThrow(QuoteFormatError);
    expect(() => encodePcrBlob([{ alg: 'sha256', values: new Map([[24, Buffer.alloc(32)]]) }])).toThrow(QuoteFormatError);
    expect(() => encodePcrBlob([])).toThrow(QuoteFormatError);
  });
});
