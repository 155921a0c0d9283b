// The Unified Identity claims codec: round trips through a real certificate (read back by OpenSSL
// too), and every malformed encoding is a clear error.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { tlv } from '../../src/spiffe/der.js';
import {
  canonicalUnifiedIdentity, decodeUnifiedIdentityExtension, MAX_UNIFIED_IDENTITY_BYTES, UNIFIED_IDENTITY_OID,
  unifiedIdentityExtension, unifiedIdentityFromCertificate, unifiedIdentityFromJwtClaims, UnifiedIdentityError,
} from '../../src/spiffe/unified-identity.js';
import { makeDomain } from './fixtures.js';

const claims = { country: 'DE', region: 'EU', policy: 'eu-only', sensorKinds: ['gnss', 'mobile'], readingTime: '2026-11-22T10:00:00Z' };
const utf8 = (s: string): Buffer => tlv(0x0c, Buffer.from(s, 'utf8'));

describe('Unified Identity claims codec', () => {
  it('round-trips through a minted X.509-SVID, as canonical JSON OpenSSL can read', () => {
    const d = makeDomain('example.org');
    const svid = d.svid('/web', { claims });
    expect(unifiedIdentityFromCertificate(svid.chain[0]!)).toEqual(claims);
    const text = new crypto.X509Certificate(svid.chain[0]!).toString();
    const dump = execFileSync('openssl', ['x509', '-noout', '-text'], { input: text }).toString();
    expect(dump).toContain(UNIFIED_IDENTITY_OID);
    // Canonical JSON: members sorted by name, no whitespace.
    expect(dump).toContain('{"country":"DE","policy":"eu-only","readingTime":"2026-11-22T10:00:00Z","region":"EU","sensorKinds":["gnss","mobile"]}');
    expect(unifiedIdentityExtension(claims).critical).toBe(false);
  });

  it('a certificate without the extension has no claims', () => {
    expect(unifiedIdentityFromCertificate(makeDomain('example.org').svid('/plain').chain[0]!)).toBeUndefined();
  });

  it.each([
    ['an OCTET STRING instead of a UTF8String', tlv(0x04, Buffer.from('{}')), 'malformed-extension'],
    ['trailing bytes', Buffer.concat([utf8('{"country":"DE"}'), Buffer.from([0])]), 'malformed-extension'],
    ['a truncated length', Buffer.from([0x0c, 0x20, 0x7b]), 'malformed-extension'],
    ['invalid UTF-8', tlv(0x0c, Buffer.from([0x7b, 0xff, 0x7d])), 'malformed-extension'],
    ['not JSON', utf8('country=DE'), 'invalid-claims'],
    ['a JSON array', utf8('["DE"]'), 'invalid-claims'],
    ['non-canonical JSON', utf8('{"region":"EU","country":"DE"}'), 'not-canonical'],
    ['a lower-case country', utf8('{"country":"de"}'), 'invalid-claims'],
    ['sensorKinds not strings', utf8('{"sensorKinds":[1]}'), 'invalid-claims'],
    ['too deep', utf8('{"a":{"b":{"c":{"d":{"e":1}}}}}'), 'invalid-claims'],
    ['too large', utf8(JSON.stringify({ x: 'a'.repeat(MAX_UNIFIED_IDENTITY_BYTES + 10) })), 'too-large'],
  ])('rejects %s', (_what, value, code) => {
    expect(() => decodeUnifiedIdentityExtension(value)).toThrow(UnifiedIdentityError);
    try {
      decodeUnifiedIdentityExtension(value);
    } catch (e) {
      expect((e as UnifiedIdentityError).code).toBe(code);
    }
  });

  it('a certificate with a malformed extension throws instead of reading as "no claims"', () => {
    const d = makeDomain('example.org');
    const svid = d.svid('/bad', { extensions: [{ oid: UNIFIED_IDENTITY_OID, critical: false, value: utf8('{"country":"Germany"}') }] });
    expect(() => unifiedIdentityFromCertificate(svid.chain[0]!)).toThrow(/alpha-2/);
  });

  it('bytes that are not a certificate are a clear error', () => {
    expect(() => unifiedIdentityFromCertificate(Buffer.from('30030201', 'hex'))).toThrow(expect.objectContaining({ code: 'malformed-extension' }));
    const der = makeDomain('example.org').svid('/x', { claims }).chain[0]!;
    expect(() => unifiedIdentityFromCertificate(der.subarray(0, der.length - 1))).toThrow(UnifiedIdentityError);
    expect(() => unifiedIdentityFromCertificate(Buffer.concat([der, Buffer.from([0])]))).toThrow(/trailing/);
  });

  it('refuses to encode what it would refuse to decode', () => {
    expect(() => canonicalUnifiedIdentity({ country: 'DEU' })).toThrow(UnifiedIdentityError);
    expect(() => canonicalUnifiedIdentity({ t: Number.NaN })).toThrow(/finite/);
    expect(() => canonicalUnifiedIdentity([] as never)).toThrow(/object/);
  });

  it('reads the JWT claim strictly', () => {
    expect(unifiedIdentityFromJwtClaims({ sub: 'x', unified_identity: claims })).toEqual(claims);
    expect(unifiedIdentityFromJwtClaims({ sub: 'x' })).toBeUndefined();
    expect(() => unifiedIdentityFromJwtClaims({ unified_identity: 'DE' })).toThrow(UnifiedIdentityError);
    expect(() => unifiedIdentityFromJwtClaims({ unified_identity: { region: 5 } })).toThrow(/region/);
  });
});
