import { TpmEkCertificateError } from './errors.js';

/**
 * A minimal DER reader for the parts of an X.509 certificate the EK checks need (extensions, the
 * SubjectPublicKeyInfo, directoryName attributes). Strict: definite lengths only, every element
 * inside its parent, errors instead of exceptions of other kinds.
 */
export interface Tlv { tag: number; start: number; contentStart: number; end: number }

export function readTlv(buf: Buffer, off: number, limit = buf.length): Tlv {
  const bad = (why: string): never => { throw new TpmEkCertificateError('malformed-certificate', `certificate DER: ${why} at offset ${off}`); };
  if (off + 2 > limit) bad('truncated element');
  const tag = buf[off] as number;
  if ((tag & 0x1f) === 0x1f) bad('multi-byte tags are not used in certificates');
  let len = buf[off + 1] as number;
  let p = off + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) bad('unsupported length encoding');
    if (p + n > limit) bad('truncated length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[p + i] as number);
    p += n;
  }
  if (p + len > limit) bad('element runs past its container');
  return { tag, start: off, contentStart: p, end: p + len };
}

/** The children of a constructed element. */
export function children(buf: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let off = parent.contentStart; off < parent.end;) {
    const t = readTlv(buf, off, parent.end);
    out.push(t);
    off = t.end;
  }
  return out;
}

export function content(buf: Buffer, t: Tlv): Buffer { return buf.subarray(t.contentStart, t.end); }
export function whole(buf: Buffer, t: Tlv): Buffer { return buf.subarray(t.start, t.end); }

export function decodeOid(b: Buffer): string {
  const parts: number[] = [];
  let v = 0;
  for (const byte of b) {
    v = v * 128 + (byte & 0x7f);
    if ((byte & 0x80) === 0) { parts.push(v); v = 0; }
  }
  if (parts.length === 0) return '';
  const first = parts[0] as number;
  const head = first < 80 ? [Math.floor(first / 40), first % 40] : [2, first - 80];
  return [...head, ...parts.slice(1)].join('.');
}

export function encodeOid(oid: string): Buffer {
  const n = oid.split('.').map(Number);
  const arcs = [(n[0] as number) * 40 + (n[1] as number), ...n.slice(2)];
  const bytes: number[] = [];
  for (const a of arcs) {
    const tmp = [a & 0x7f];
    for (let x = Math.floor(a / 128); x > 0; x = Math.floor(x / 128)) tmp.unshift((x & 0x7f) | 0x80);
    bytes.push(...tmp);
  }
  return Buffer.from(bytes);
}

export function encodeTlv(tag: number, body: Buffer): Buffer {
  const len = body.length;
  let hdr: number[];
  if (len < 0x80) hdr = [tag, len];
  else if (len < 0x100) hdr = [tag, 0x81, len];
  else if (len < 0x10000) hdr = [tag, 0x82, len >> 8, len & 0xff];
  else hdr = [tag, 0x83, len >> 16, (len >> 8) & 0xff, len & 0xff];
  return Buffer.concat([Buffer.from(hdr), body]);
}
