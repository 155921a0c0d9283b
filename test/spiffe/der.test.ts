// The DER encoder and strict reader that minting and certificate parsing build on.
import { describe, expect, it } from 'vitest';
import {
  children, DerError, encodeLength, oid, oidToString, readTlv, readWhole, seq, smallInt, time, uintFromBytes,
} from '../../src/spiffe/der.js';
import { derToPem, pemToDer } from '../../src/spiffe/pem.js';

const hex = (b: Buffer): string => b.toString('hex');

describe('DER encoding', () => {
  it('encodes lengths in short and long form', () => {
    expect(hex(encodeLength(0x7f))).toBe('7f');
    expect(hex(encodeLength(0x80))).toBe('8180');
    expect(hex(encodeLength(0x1234))).toBe('821234');
    expect(hex(encodeLength(0x123456))).toBe('83123456');
    expect(hex(seq(Buffer.alloc(200)).subarray(0, 3))).toBe('3081c8');
  });

  it('encodes OIDs, including large arcs, and decodes them back', () => {
    expect(hex(oid('1.2.840.10045.4.3.2'))).toBe('06082a8648ce3d040302');
    expect(hex(oid('2.5.29.17'))).toBe('0603551d11');
    const big = '2.25.250341728606082657925786220697128205103';
    expect(oidToString(oid(big).subarray(2))).toBe(big);
    expect(oidToString(Buffer.from('2a8648ce3d040302', 'hex'))).toBe('1.2.840.10045.4.3.2');
    expect(() => oid('1.40.1')).toThrow(RangeError);
    expect(() => oid('3.1')).toThrow(RangeError);
    expect(() => oidToString(Buffer.from('2a86', 'hex'))).toThrow(DerError);
    expect(() => oidToString(Buffer.from('2a8001', 'hex'))).toThrow(DerError);
  });

  it('encodes non-negative integers minimally', () => {
    expect(hex(uintFromBytes(Buffer.from('0000ff', 'hex')))).toBe('020200ff');
    expect(hex(uintFromBytes(Buffer.from('7f', 'hex')))).toBe('02017f');
    expect(hex(uintFromBytes(Buffer.alloc(0)))).toBe('020100');
    expect(hex(smallInt(0))).toBe('020100');
    expect(hex(smallInt(256))).toBe('02020100');
  });

  it('uses UTCTime through 2049 and GeneralizedTime from 2050', () => {
    expect(time(new Date('2049-12-31T23:59:59Z')).toString('latin1')).toBe('\x17\x0d491231235959Z');
    expect(time(new Date('2050-01-01T00:00:00Z')).toString('latin1')).toBe('\x18\x0f20500101000000Z');
  });
});

describe('DER reader', () => {
  it('reads nested elements', () => {
    const der = seq(smallInt(1), seq(smallInt(2)));
    const top = readWhole(der, 0x30, 'test');
    const [a, b] = children(der, top);
    expect(a?.tag).toBe(0x02);
    expect(children(der, b!)).toHaveLength(1);
  });

  it.each([
    ['indefinite length', '3080'],
    ['non-minimal long form', '30810100'],
    ['leading zero in length', '3082000100'],
    ['value past the end', '300500'],
    ['missing length', '30'],
    ['multi-byte tag', '1f0100'],
  ])('refuses %s', (_what, h) => {
    expect(() => readTlv(Buffer.from(h, 'hex'), 0)).toThrow(DerError);
  });

  it('refuses trailing bytes and a wrong outer tag', () => {
    expect(() => readWhole(Buffer.from('300000', 'hex'), 0x30, 'x')).toThrow(/trailing/);
    expect(() => readWhole(Buffer.from('3100', 'hex'), 0x30, 'x')).toThrow(/unexpected ASN\.1 tag/);
  });
});

describe('PEM', () => {
  it('round-trips and is strict about labels and stray text', () => {
    const der = Buffer.from('3003020101', 'hex');
    const pem = derToPem(der) + derToPem(der);
    expect(pemToDer(pem)).toEqual([der, der]);
    expect(() => pemToDer(derToPem(der, 'PRIVATE KEY'))).toThrow(/unexpected PEM block/);
    expect(() => pemToDer(`junk\n${derToPem(der)}`)).toThrow(/unexpected text/);
    expect(() => pemToDer('')).toThrow(/no "CERTIFICATE" PEM block/);
    expect(() => pemToDer('-----BEGIN CERTIFICATE-----\nA===\n-----END CERTIFICATE-----\n')).toThrow(/malformed base64/);
  });
});
