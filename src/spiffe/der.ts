// Minimal DER (X.690) encoding and a strict TLV reader. The encoder is what makes certificate minting
// fast (prepared byte templates instead of an object model); the reader only slices out raw fields
// (TBSCertificate, names, SPKI) whose exact bytes matter for signatures and name chaining. Structured
// decoding of extensions is left to @peculiar/x509.

/** Raised by the reader on anything that is not well-formed DER. Callers wrap it in their own error. */
export class DerError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DerError';
  }
}

export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

export function encodeLength(n: number): Buffer {
  const out = Buffer.allocUnsafe(lengthOfLength(n));
  writeLength(out, 0, n);
  return out;
}

function lengthOfLength(n: number): number {
  if (n < 0x80) return 1;
  if (n < 0x100) return 2;
  if (n < 0x10000) return 3;
  if (n < 0x1000000) return 4;
  throw new RangeError('DER value too large');
}

function writeLength(out: Buffer, at: number, n: number): number {
  if (n < 0x80) {
    out[at] = n;
    return at + 1;
  }
  const bytes = lengthOfLength(n) - 1;
  out[at] = 0x80 | bytes;
  for (let i = bytes; i >= 1; i--) out[at + i] = (n >> (8 * (bytes - i))) & 0xff;
  return at + 1 + bytes;
}

/** One TLV around the concatenation of `parts`, built with a single allocation (minting hot path). */
export function tlvOf(tag: number, parts: readonly Buffer[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  const out = Buffer.allocUnsafe(1 + lengthOfLength(len) + len);
  out[0] = tag;
  let at = writeLength(out, 1, len);
  for (const p of parts) {
    p.copy(out, at);
    at += p.length;
  }
  return out;
}

export function tlv(tag: number, content: Buffer): Buffer {
  return tlvOf(tag, [content]);
}

export function seq(...parts: Buffer[]): Buffer {
  return tlvOf(TAG.SEQUENCE, parts);
}

export function set(...parts: Buffer[]): Buffer {
  return tlvOf(TAG.SET, parts);
}

/** Context-specific constructed tag [n] (EXPLICIT, or IMPLICIT of a constructed type). */
export function ctxConstructed(n: number, content: Buffer): Buffer {
  return tlv(0xa0 | n, content);
}

/** Context-specific primitive tag [n] (IMPLICIT of a primitive type, e.g. GeneralName uniformResourceIdentifier). */
export function ctxPrimitive(n: number, content: Buffer): Buffer {
  return tlv(0x80 | n, content);
}

/** A non-negative INTEGER from big-endian magnitude bytes (leading zeros stripped, sign byte added). */
export function uintFromBytes(bytes: Buffer): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  let mag = bytes.subarray(i);
  if (mag.length === 0) mag = Buffer.from([0]);
  if ((mag[0] as number) & 0x80) mag = Buffer.concat([Buffer.from([0]), mag]);
  return tlv(TAG.INTEGER, mag);
}

export function smallInt(n: number): Buffer {
  if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) throw new RangeError('integer out of range');
  const bytes: number[] = [];
  let v = n;
  do {
    bytes.unshift(v & 0xff);
    v = Math.floor(v / 256);
  } while (v > 0);
  return uintFromBytes(Buffer.from(bytes));
}

export function bool(v: boolean): Buffer {
  return Buffer.from([TAG.BOOLEAN, 1, v ? 0xff : 0x00]);
}

export function octetString(content: Buffer): Buffer {
  return tlv(TAG.OCTET_STRING, content);
}

export function bitString(content: Buffer, unusedBits = 0): Buffer {
  return tlvOf(TAG.BIT_STRING, [Buffer.from([unusedBits]), content]);
}

export const NULL = Buffer.from([TAG.NULL, 0]);

const OID_RE = /^[0-2](\.(0|[1-9][0-9]*))+$/;

export function isOidString(s: string): boolean {
  if (!OID_RE.test(s)) return false;
  const arcs = s.split('.');
  return !(Number(arcs[0]) < 2 && Number(arcs[1]) > 39);
}

const oidCache = new Map<string, Buffer>();

/** Encodes a dotted OID string; arcs may be arbitrarily large (e.g. the 2.25.<uuid> form). Memoized. */
export function oid(dotted: string): Buffer {
  let enc = oidCache.get(dotted);
  if (enc === undefined) {
    enc = encodeOid(dotted);
    if (oidCache.size < 1024) oidCache.set(dotted, enc);
  }
  return enc;
}

function encodeOid(dotted: string): Buffer {
  if (!isOidString(dotted)) throw new RangeError(`not an object identifier: ${dotted}`);
  const arcs = dotted.split('.').map((a) => BigInt(a));
  const first = (arcs[0] as bigint) * 40n + (arcs[1] as bigint);
  const out: number[] = [];
  for (const arc of [first, ...arcs.slice(2)]) {
    const chunk: number[] = [];
    let v = arc;
    do {
      chunk.unshift(Number(v & 0x7fn));
      v >>= 7n;
    } while (v > 0n);
    for (let i = 0; i < chunk.length - 1; i++) chunk[i] = (chunk[i] as number) | 0x80;
    out.push(...chunk);
  }
  return tlv(TAG.OID, Buffer.from(out));
}

/** Decodes the content bytes of an OID to dotted form. */
export function oidToString(content: Buffer): string {
  if (content.length === 0) throw new DerError('empty OBJECT IDENTIFIER');
  const arcs: bigint[] = [];
  let v = 0n;
  let started = false;
  for (let i = 0; i < content.length; i++) {
    const b = content[i] as number;
    if (!started && b === 0x80) throw new DerError('non-minimal OBJECT IDENTIFIER arc');
    started = true;
    v = (v << 7n) | BigInt(b & 0x7f);
    if ((b & 0x80) === 0) {
      arcs.push(v);
      v = 0n;
      started = false;
    } else if (i === content.length - 1) {
      throw new DerError('truncated OBJECT IDENTIFIER');
    }
  }
  const first = arcs[0] as bigint;
  const head = first < 40n ? [0n, first] : first < 80n ? [1n, first - 40n] : [2n, first - 80n];
  return [...head, ...arcs.slice(1)].join('.');
}

export function utf8String(s: string): Buffer {
  return tlv(TAG.UTF8_STRING, Buffer.from(s, 'utf8'));
}

export function printableString(s: string): Buffer {
  return tlv(TAG.PRINTABLE_STRING, Buffer.from(s, 'latin1'));
}

export function ia5String(s: string): Buffer {
  return tlv(TAG.IA5_STRING, Buffer.from(s, 'latin1'));
}

const pad2 = (n: number): string => (n < 10 ? '0' : '') + n;

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; always UTC, whole seconds. */
export function time(d: Date): Buffer {
  const y = d.getUTCFullYear();
  const rest = pad2(d.getUTCMonth() + 1) + pad2(d.getUTCDate()) + pad2(d.getUTCHours()) +
    pad2(d.getUTCMinutes()) + pad2(d.getUTCSeconds()) + 'Z';
  if (y >= 1950 && y < 2050) return tlv(TAG.UTC_TIME, Buffer.from(pad2(y % 100) + rest, 'latin1'));
  if (y < 0 || y > 9999) throw new RangeError('date out of X.509 range');
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(String(y).padStart(4, '0') + rest, 'latin1'));
}

/** One decoded TLV: `tag`, and the byte ranges of the whole element and of its content in `buf`. */
export interface Tlv {
  tag: number;
  start: number;
  contentStart: number;
  end: number;
}

/** Reads one DER TLV at `offset`, refusing indefinite or non-minimal lengths and overruns of `limit`. */
export function readTlv(buf: Buffer, offset: number, limit = buf.length): Tlv {
  if (offset + 2 > limit) throw new DerError('truncated DER: missing tag or length');
  const tag = buf[offset] as number;
  if ((tag & 0x1f) === 0x1f) throw new DerError('multi-byte DER tags are not supported');
  let len = buf[offset + 1] as number;
  let p = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0) throw new DerError('indefinite length is not DER');
    if (n > 4) throw new DerError('DER length too large');
    if (p + n > limit) throw new DerError('truncated DER length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[p + i] as number);
    if (buf[p] === 0 || len < 0x80) throw new DerError('non-minimal DER length');
    p += n;
  }
  if (p + len > limit) throw new DerError('truncated DER: value runs past its container');
  return { tag, start: offset, contentStart: p, end: p + len };
}

/** The child TLVs of a constructed element. */
export function children(buf: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  let p = parent.contentStart;
  while (p < parent.end) {
    const t = readTlv(buf, p, parent.end);
    out.push(t);
    p = t.end;
  }
  return out;
}

/** Reads exactly one top-level element spanning all of `buf` (no trailing bytes). */
export function readWhole(buf: Buffer, expectTag: number, what: string): Tlv {
  const t = readTlv(buf, 0);
  if (t.tag !== expectTag) throw new DerError(`${what}: unexpected ASN.1 tag 0x${t.tag.toString(16)}`);
  if (t.end !== buf.length) throw new DerError(`${what}: ${buf.length - t.end} trailing bytes after the DER value`);
  return t;
}

export function slice(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.start, t.end);
}

export function content(buf: Buffer, t: Tlv): Buffer {
  return buf.subarray(t.contentStart, t.end);
}
