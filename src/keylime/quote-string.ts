/**
 * The Keylime "quote string": `r<b64 TPMS_ATTEST>:<b64 TPMT_SIGNATURE>:<b64 PCR blob>`.
 *
 * The PCR blob is not a TPM wire structure: it is tpm2-tools' in-memory layout (what
 * `tpm2_quote -o FILE` writes), little-endian, which Keylime adopted:
 *
 *   u32 selectionCount; 16 × { u16 hashAlg; u8 sizeofSelect; u8 pcrSelect[4]; u8 pad }   (132 bytes)
 *   u32 digestListCount; N × { u32 count; 8 × { u16 size; u8 buffer[64] } }               (4 + N × 532)
 *
 * Digests follow the selection order: bank by bank, ascending PCR index; each list holds at most 8
 * (one TPM2_PCR_Read answer), so lists may be shorter than 8.
 */
import { QuoteFormatError } from './errors.js';

export type PcrHashAlg = 'sha1' | 'sha256' | 'sha384' | 'sha512' | 'sm3_256';

const ALG_IDS: Record<PcrHashAlg, number> = { sha1: 0x0004, sha256: 0x000b, sha384: 0x000c, sha512: 0x000d, sm3_256: 0x0012 };
const DIGEST_SIZES: Record<PcrHashAlg, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64, sm3_256: 32 };

export function pcrHashAlgId(alg: PcrHashAlg): number {
  return ALG_IDS[alg];
}

export function pcrHashAlgFromId(id: number): PcrHashAlg | undefined {
  for (const [name, value] of Object.entries(ALG_IDS)) if (value === id) return name as PcrHashAlg;
  return undefined;
}

export function digestSize(alg: PcrHashAlg): number {
  return DIGEST_SIZES[alg];
}

/** PCR values of one bank, keyed by PCR index (the same shape as src/tpm's PcrValues entries). */
export interface PcrBank {
  alg: PcrHashAlg;
  values: ReadonlyMap<number, Uint8Array>;
}

export interface KeylimeQuote {
  /** TPMS_ATTEST as signed by the TPM (TPM2B_ATTEST without its size prefix). */
  attest: Uint8Array;
  /** TPMT_SIGNATURE. */
  signature: Uint8Array;
  /** The PCR values the quote covers, in selection order. */
  pcrs: PcrBank[];
}

const MAX_BANKS = 16; // TPM2_NUM_PCR_BANKS in tpm2-tss
const SELECTION_ENTRY = 8;
const SELECTION_BLOCK = 4 + MAX_BANKS * SELECTION_ENTRY; // 132
const DIGESTS_PER_LIST = 8;
const DIGEST_ENTRY = 2 + 64; // u16 size + sizeof(TPMU_HA)
const DIGEST_LIST = 4 + DIGESTS_PER_LIST * DIGEST_ENTRY; // 532
const MAX_PCR_INDEX = 23; // sizeofSelect 3 covers PCR 0..23, the PC client PCR count
const MAX_LISTS = Math.ceil((MAX_BANKS * (MAX_PCR_INDEX + 1)) / DIGESTS_PER_LIST);

const TPM_GENERATED_VALUE = 0xff544347;
const TPM_ST_ATTEST_QUOTE = 0x8018;

/** Longest quote string accepted by default: a few KiB of attest/signature plus the largest blob. */
export const DEFAULT_MAX_QUOTE_STRING = 64 * 1024;

export function encodePcrBlob(banks: readonly PcrBank[]): Buffer {
  if (banks.length === 0) throw new QuoteFormatError('a PCR blob needs at least one bank');
  if (banks.length > MAX_BANKS) throw new QuoteFormatError(`at most ${MAX_BANKS} PCR banks, got ${banks.length}`);
  const seen = new Set<PcrHashAlg>();
  const digests: Uint8Array[] = [];
  const sel = Buffer.alloc(SELECTION_BLOCK);
  sel.writeUInt32LE(banks.length, 0);
  banks.forEach((bank, i) => {
    if (seen.has(bank.alg)) throw new QuoteFormatError(`PCR bank ${bank.alg} appears twice`);
    seen.add(bank.alg);
    const off = 4 + i * SELECTION_ENTRY;
    sel.writeUInt16LE(ALG_IDS[bank.alg], off);
    sel.writeUInt8(3, off + 2);
    const indices = [...bank.values.keys()].sort((a, b) => a - b);
    if (indices.length === 0) throw new QuoteFormatError(`PCR bank ${bank.alg} selects no PCRs`);
    for (const idx of indices) {
      if (!Number.isInteger(idx) || idx < 0 || idx > MAX_PCR_INDEX) throw new QuoteFormatError(`PCR index ${idx} out of range 0..${MAX_PCR_INDEX}`);
      const value = bank.values.get(idx) as Uint8Array;
      if (value.length !== DIGEST_SIZES[bank.alg]) {
        throw new QuoteFormatError(`PCR ${idx} in bank ${bank.alg} is ${value.length} bytes, expected ${DIGEST_SIZES[bank.alg]}`);
      }
      sel[off + 3 + (idx >> 3)] = (sel[off + 3 + (idx >> 3)] as number) | (1 << (idx & 7));
      digests.push(value);
    }
  });
  const lists = Math.ceil(digests.length / DIGESTS_PER_LIST);
  const out = Buffer.alloc(SELECTION_BLOCK + 4 + lists * DIGEST_LIST);
  sel.copy(out, 0);
  out.writeUInt32LE(lists, SELECTION_BLOCK);
  for (let l = 0; l < lists; l++) {
    const base = SELECTION_BLOCK + 4 + l * DIGEST_LIST;
    const chunk = digests.slice(l * DIGESTS_PER_LIST, (l + 1) * DIGESTS_PER_LIST);
    out.writeUInt32LE(chunk.length, base);
    chunk.forEach((d, j) => {
      const e = base + 4 + j * DIGEST_ENTRY;
      out.writeUInt16LE(d.length, e);
      Buffer.from(d).copy(out, e + 2);
    });
  }
  return out;
}

export function decodePcrBlob(blob: Uint8Array): PcrBank[] {
  const b = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  if (b.length < SELECTION_BLOCK + 4) throw new QuoteFormatError(`PCR blob is ${b.length} bytes, shorter than the ${SELECTION_BLOCK + 4}-byte header`);
  const count = b.readUInt32LE(0);
  if (count < 1 || count > MAX_BANKS) throw new QuoteFormatError(`PCR blob selects ${count} banks, expected 1..${MAX_BANKS}`);
  const slots: { alg: PcrHashAlg; index: number }[] = [];
  const seen = new Set<PcrHashAlg>();
  for (let i = 0; i < MAX_BANKS; i++) {
    const off = 4 + i * SELECTION_ENTRY;
    const entry = b.subarray(off, off + SELECTION_ENTRY);
    if (i >= count) {
      if (entry.some((x) => x !== 0)) throw new QuoteFormatError(`PCR blob selection entry ${i} is beyond the count (${count}) but not zero`);
      continue;
    }
    const algId = entry.readUInt16LE(0);
    const alg = pcrHashAlgFromId(algId);
    if (alg === undefined) throw new QuoteFormatError(`PCR blob selection ${i} has unknown hash algorithm 0x${algId.toString(16)}`);
    if (seen.has(alg)) throw new QuoteFormatError(`PCR blob selects bank ${alg} twice`);
    seen.add(alg);
    const sizeofSelect = entry[2] as number;
    if (sizeofSelect < 1 || sizeofSelect > 3) throw new QuoteFormatError(`PCR blob selection ${i} has sizeofSelect ${sizeofSelect}, expected 1..3`);
    for (let k = 3 + sizeofSelect; k < SELECTION_ENTRY; k++) {
      if (entry[k] !== 0) throw new QuoteFormatError(`PCR blob selection ${i} has non-zero bytes past sizeofSelect`);
    }
    let any = false;
    for (let idx = 0; idx < sizeofSelect * 8; idx++) {
      if (((entry[3 + (idx >> 3)] as number) >> (idx & 7)) & 1) {
        slots.push({ alg, index: idx });
        any = true;
      }
    }
    if (!any) throw new QuoteFormatError(`PCR blob selection ${i} (${alg}) selects no PCRs`);
  }
  const lists = b.readUInt32LE(SELECTION_BLOCK);
  if (lists < 1 || lists > MAX_LISTS) throw new QuoteFormatError(`PCR blob has ${lists} digest lists, expected 1..${MAX_LISTS}`);
  const expectedLength = SELECTION_BLOCK + 4 + lists * DIGEST_LIST;
  if (b.length !== expectedLength) throw new QuoteFormatError(`PCR blob is ${b.length} bytes; ${lists} digest lists need exactly ${expectedLength}`);
  const values: Uint8Array[] = [];
  for (let l = 0; l < lists; l++) {
    const base = SELECTION_BLOCK + 4 + l * DIGEST_LIST;
    const n = b.readUInt32LE(base);
    if (n < 1 || n > DIGESTS_PER_LIST) throw new QuoteFormatError(`PCR blob digest list ${l} holds ${n} digests, expected 1..${DIGESTS_PER_LIST}`);
    for (let j = 0; j < n; j++) {
      const e = base + 4 + j * DIGEST_ENTRY;
      const size = b.readUInt16LE(e);
      const slot = slots[values.length];
      if (slot === undefined) throw new QuoteFormatError(`PCR blob carries more digests than the ${slots.length} PCRs it selects`);
      if (size !== DIGEST_SIZES[slot.alg]) {
        throw new QuoteFormatError(`PCR blob digest for ${slot.alg} PCR ${slot.index} is ${size} bytes, expected ${DIGEST_SIZES[slot.alg]}`);
      }
      values.push(Uint8Array.from(b.subarray(e + 2, e + 2 + size)));
    }
  }
  if (values.length !== slots.length) throw new QuoteFormatError(`PCR blob selects ${slots.length} PCRs but carries ${values.length} digests`);
  const banks = new Map<PcrHashAlg, Map<number, Uint8Array>>();
  slots.forEach((slot, i) => {
    let bank = banks.get(slot.alg);
    if (bank === undefined) banks.set(slot.alg, (bank = new Map()));
    bank.set(slot.index, values[i] as Uint8Array);
  });
  return [...banks.entries()].map(([alg, vals]) => ({ alg, values: vals }));
}

export function encodeQuoteString(quote: KeylimeQuote): string {
  checkAttest(quote.attest);
  checkSignature(quote.signature);
  return `r${b64(quote.attest)}:${b64(quote.signature)}:${b64(encodePcrBlob(quote.pcrs))}`;
}

export function decodeQuoteString(text: string, maxLength = DEFAULT_MAX_QUOTE_STRING): KeylimeQuote {
  if (typeof text !== 'string') throw new QuoteFormatError('quote must be a string');
  if (text.length > maxLength) throw new QuoteFormatError(`quote string is ${text.length} characters, limit ${maxLength}`);
  if (!text.startsWith('r')) throw new QuoteFormatError(`quote string must start with "r" (TPM 2.0 quote), got ${JSON.stringify(text.slice(0, 1))}`);
  const parts = text.slice(1).split(':');
  if (parts.length !== 3) throw new QuoteFormatError(`quote string must have 3 ":"-separated parts (attest, signature, PCR blob), got ${parts.length}`);
  const [a, s, p] = parts as [string, string, string];
  const attest = strictBase64(a, 'TPMS_ATTEST');
  const signature = strictBase64(s, 'TPMT_SIGNATURE');
  const blob = strictBase64(p, 'PCR blob');
  checkAttest(attest);
  checkSignature(signature);
  return { attest, signature, pcrs: decodePcrBlob(blob) };
}

function checkAttest(attest: Uint8Array): void {
  if (attest.length < 6) throw new QuoteFormatError(`TPMS_ATTEST is ${attest.length} bytes, too short`);
  const v = Buffer.from(attest.buffer, attest.byteOffset, attest.byteLength);
  if (v.readUInt32BE(0) !== TPM_GENERATED_VALUE) throw new QuoteFormatError('TPMS_ATTEST does not start with TPM_GENERATED_VALUE: not produced by a TPM');
  if (v.readUInt16BE(4) !== TPM_ST_ATTEST_QUOTE) throw new QuoteFormatError(`TPMS_ATTEST type is 0x${v.readUInt16BE(4).toString(16)}, expected TPM_ST_ATTEST_QUOTE (0x8018)`);
}

function checkSignature(sig: Uint8Array): void {
  // sigAlg + hashAlg + at least one sized field; the full parse belongs to the quote verifier.
  if (sig.length < 6) throw new QuoteFormatError(`TPMT_SIGNATURE is ${sig.length} bytes, too short`);
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

function strictBase64(text: string, what: string): Buffer {
  if (text.length === 0) throw new QuoteFormatError(`${what} part of the quote string is empty`);
  if (!B64.test(text)) throw new QuoteFormatError(`${what} part of the quote string is not canonical base64`);
  const buf = Buffer.from(text, 'base64');
  // Reject non-canonical padding bits, so one byte string has exactly one encoding.
  if (buf.toString('base64') !== text) throw new QuoteFormatError(`${what} part of the quote string is not canonical base64`);
  return buf;
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}
