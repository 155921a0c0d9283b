import { TpmParseError } from './errors.js';

/**
 * A bounds-checked reader over TPM wire format (big-endian). Every read past the end throws
 * TpmParseError naming the structure and field, so malformed input never becomes an exception
 * of another kind or a silent short read.
 */
export class TpmReader {
  private off = 0;
  constructor(private readonly buf: Buffer, private readonly what: string) {}

  get offset(): number { return this.off; }
  get remaining(): number { return this.buf.length - this.off; }

  private need(n: number, field: string): void {
    if (this.buf.length - this.off < n) {
      throw new TpmParseError('truncated', `${this.what}: truncated at ${field} (need ${n} bytes at offset ${this.off}, have ${this.buf.length - this.off})`);
    }
  }

  u8(field: string): number { this.need(1, field); return this.buf.readUInt8(this.off++); }
  u16(field: string): number { this.need(2, field); const v = this.buf.readUInt16BE(this.off); this.off += 2; return v; }
  u32(field: string): number { this.need(4, field); const v = this.buf.readUInt32BE(this.off); this.off += 4; return v; }
  u64(field: string): bigint { this.need(8, field); const v = this.buf.readBigUInt64BE(this.off); this.off += 8; return v; }

  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }

  /** A TPM2B: UINT16 size then that many bytes, at most `max` (the structure's declared capacity). */
  tpm2b(field: string, max: number): Buffer {
    const size = this.u16(`${field}.size`);
    if (size > max) throw new TpmParseError('bad-size', `${this.what}: ${field} is ${size} bytes, more than its maximum ${max}`);
    return this.bytes(size, field);
  }

  /** Everything consumed so far, as a view. */
  consumed(from: number): Buffer { return this.buf.subarray(from, this.off); }

  rest(): Buffer { const v = this.buf.subarray(this.off); this.off = this.buf.length; return v; }

  end(): void {
    if (this.off !== this.buf.length) {
      throw new TpmParseError('trailing-bytes', `${this.what}: ${this.buf.length - this.off} unexpected bytes after the structure`);
    }
  }
}

/** Writes TPM wire format. */
export class TpmWriter {
  private readonly parts: Buffer[] = [];
  u8(v: number): this { const b = Buffer.alloc(1); b.writeUInt8(v); this.parts.push(b); return this; }
  u16(v: number): this { const b = Buffer.alloc(2); b.writeUInt16BE(v); this.parts.push(b); return this; }
  u32(v: number): this { const b = Buffer.alloc(4); b.writeUInt32BE(v >>> 0); this.parts.push(b); return this; }
  bytes(v: Buffer): this { this.parts.push(v); return this; }
  tpm2b(v: Buffer): this { return this.u16(v.length).bytes(v); }
  finish(): Buffer { return Buffer.concat(this.parts); }
}

export function tpm2b(v: Buffer): Buffer {
  return new TpmWriter().tpm2b(v).finish();
}
