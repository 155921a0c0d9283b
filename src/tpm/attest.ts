import { TPM_ALG, TPM_ST, algName, digestSize, hashAlgFromId, hashAlgId, type HashAlg } from './constants.js';
import { TpmParseError } from './errors.js';
import { TpmReader, TpmWriter } from './reader.js';

/** One PCR bank and the PCR indexes selected in it, ascending. */
export interface PcrSelection { alg: HashAlg; pcrs: number[] }

/** PCR values by bank: what a quote covers or PCR_Read returned. */
export type PcrValues = { alg: HashAlg; values: Map<number, Buffer> }[];

export interface ClockInfo { clock: bigint; resetCount: number; restartCount: number; safe: boolean }

export interface TpmsAttest {
  magic: number;
  /** TPM_ST_ATTEST_* value. */
  type: number;
  qualifiedSigner: Buffer;
  extraData: Buffer;
  clockInfo: ClockInfo;
  firmwareVersion: bigint;
  /** Present when type is TPM_ST_ATTEST_QUOTE. */
  quote?: { pcrSelection: PcrSelection[]; pcrDigest: Buffer };
  /** Present when type is TPM_ST_ATTEST_CERTIFY. */
  certify?: { name: Buffer; qualifiedName: Buffer };
  /** The TPMU_ATTEST bytes, for types not decoded here. */
  attested: Buffer;
  raw: Buffer;
}

export type TpmtSignature =
  | { sigAlg: 'rsassa' | 'rsapss'; hashAlg: HashAlg; sig: Buffer; raw: Buffer }
  | { sigAlg: 'ecdsa' | 'ecdaa' | 'sm2' | 'ecschnorr'; hashAlg: HashAlg; r: Buffer; s: Buffer; raw: Buffer }
  | { sigAlg: 'hmac'; hashAlg: HashAlg; digest: Buffer; raw: Buffer }
  | { sigAlg: 'null'; raw: Buffer };

const MAX_DIGEST = 64;
const MAX_NAME = 2 + MAX_DIGEST;
/** sizeof(TPMT_HA): the capacity of TPM2B_DATA. */
const MAX_DATA = 2 + MAX_DIGEST;
const MAX_PCR_SELECT = 4;
const MAX_BANKS = 16;
/** Upper bound of sizeof(TPMS_ATTEST) for the reference implementation, with margin. */
export const MAX_ATTEST = 1024;

export function readPcrSelectionList(r: TpmReader): PcrSelection[] {
  const count = r.u32('TPML_PCR_SELECTION.count');
  if (count > MAX_BANKS) throw new TpmParseError('bad-size', `TPML_PCR_SELECTION: ${count} banks, more than ${MAX_BANKS}`);
  const out: PcrSelection[] = [];
  for (let i = 0; i < count; i++) {
    const id = r.u16(`pcrSelections[${i}].hash`);
    const alg = hashAlgFromId(id);
    if (alg === undefined) throw new TpmParseError('unsupported-algorithm', `TPML_PCR_SELECTION: bank ${algName(id)} is not a supported hash`);
    const size = r.u8(`pcrSelections[${i}].sizeofSelect`);
    if (size > MAX_PCR_SELECT) throw new TpmParseError('bad-size', `TPML_PCR_SELECTION: sizeofSelect ${size} is more than ${MAX_PCR_SELECT}`);
    const bits = r.bytes(size, `pcrSelections[${i}].pcrSelect`);
    const pcrs: number[] = [];
    for (let b = 0; b < size * 8; b++) if (((bits[b >> 3] ?? 0) & (1 << (b & 7))) !== 0) pcrs.push(b);
    out.push({ alg, pcrs });
  }
  return out;
}

/** TPML_PCR_SELECTION wire bytes (3-byte bitmaps, enough for PCRs 0..23; larger indexes widen it). */
export function marshalPcrSelectionList(sel: PcrSelection[]): Buffer {
  const w = new TpmWriter().u32(sel.length);
  for (const s of sel) {
    const max = s.pcrs.reduce((m, p) => Math.max(m, p), 0);
    const size = Math.max(3, (max >> 3) + 1);
    const bits = Buffer.alloc(size);
    for (const p of s.pcrs) {
      if (!Number.isInteger(p) || p < 0 || p >= MAX_PCR_SELECT * 8) throw new RangeError(`PCR index ${p} is out of range 0..${MAX_PCR_SELECT * 8 - 1}`);
      bits[p >> 3] = (bits[p >> 3] ?? 0) | (1 << (p & 7));
    }
    w.u16(hashAlgId(s.alg)).u8(size).bytes(bits);
  }
  return w.finish();
}

/** Parses a TPMS_ATTEST (as signed; the TPM2B_ATTEST size prefix removed). */
export function parseTpmsAttest(buf: Buffer): TpmsAttest {
  if (buf.length > MAX_ATTEST) throw new TpmParseError('bad-size', `TPMS_ATTEST: ${buf.length} bytes is larger than any TPM produces (${MAX_ATTEST})`);
  const r = new TpmReader(buf, 'TPMS_ATTEST');
  const magic = r.u32('magic');
  const type = r.u16('type');
  const qualifiedSigner = r.tpm2b('qualifiedSigner', MAX_NAME);
  const extraData = r.tpm2b('extraData', MAX_DATA);
  const clockInfo: ClockInfo = {
    clock: r.u64('clockInfo.clock'),
    resetCount: r.u32('clockInfo.resetCount'),
    restartCount: r.u32('clockInfo.restartCount'),
    safe: false,
  };
  const safe = r.u8('clockInfo.safe');
  if (safe > 1) throw new TpmParseError('bad-value', `TPMS_ATTEST: clockInfo.safe is ${safe}, not a TPMI_YES_NO`);
  clockInfo.safe = safe === 1;
  const firmwareVersion = r.u64('firmwareVersion');
  const attestedStart = r.offset;
  const out: TpmsAttest = { magic, type, qualifiedSigner, extraData, clockInfo, firmwareVersion, attested: Buffer.alloc(0), raw: buf };
  if (type === TPM_ST.ATTEST_QUOTE) {
    const pcrSelection = readPcrSelectionList(r);
    const pcrDigest = r.tpm2b('quote.pcrDigest', MAX_DIGEST);
    out.quote = { pcrSelection, pcrDigest };
    r.end();
  } else if (type === TPM_ST.ATTEST_CERTIFY) {
    out.certify = { name: r.tpm2b('certify.name', MAX_NAME), qualifiedName: r.tpm2b('certify.qualifiedName', MAX_NAME) };
    r.end();
  } else {
    r.rest();
  }
  out.attested = buf.subarray(attestedStart);
  return out;
}

const SIG_NAMES: Record<number, string> = {
  [TPM_ALG.RSASSA]: 'rsassa', [TPM_ALG.RSAPSS]: 'rsapss', [TPM_ALG.ECDSA]: 'ecdsa', [TPM_ALG.ECDAA]: 'ecdaa',
  [TPM_ALG.SM2]: 'sm2', [TPM_ALG.ECSCHNORR]: 'ecschnorr', [TPM_ALG.HMAC]: 'hmac', [TPM_ALG.NULL]: 'null',
};

/** Parses a TPMT_SIGNATURE (RSASSA, RSAPSS, the ECC family, HMAC, NULL). */
export function parseTpmtSignature(buf: Buffer): TpmtSignature {
  const r = new TpmReader(buf, 'TPMT_SIGNATURE');
  const id = r.u16('sigAlg');
  const name = SIG_NAMES[id];
  if (name === undefined) throw new TpmParseError('unsupported-algorithm', `TPMT_SIGNATURE: signature algorithm ${algName(id)} is not supported`);
  if (name === 'null') { r.end(); return { sigAlg: 'null', raw: buf }; }
  const hid = r.u16('signature.hash');
  const hashAlg = hashAlgFromId(hid);
  if (hashAlg === undefined) throw new TpmParseError('unsupported-algorithm', `TPMT_SIGNATURE: hash ${algName(hid)} is not supported`);
  let sig: TpmtSignature;
  if (name === 'rsassa' || name === 'rsapss') {
    sig = { sigAlg: name, hashAlg, sig: r.tpm2b('signature.sig', 512), raw: buf };
  } else if (name === 'hmac') {
    sig = { sigAlg: 'hmac', hashAlg, digest: r.bytes(digestSize(hashAlg), 'signature.digest'), raw: buf };
  } else {
    const rr = r.tpm2b('signature.signatureR', 128);
    const ss = r.tpm2b('signature.signatureS', 128);
    sig = { sigAlg: name as 'ecdsa' | 'ecdaa' | 'sm2' | 'ecschnorr', hashAlg, r: rr, s: ss, raw: buf };
  }
  r.end();
  return sig;
}
