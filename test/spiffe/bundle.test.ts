// SPIFFE bundle JSON both ways, bundle/bundle-set behaviour, and malformed documents giving BundleError.
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Bundle, BundleError, BundleSet, mintCaCertificate, TrustDomain } from '../../src/spiffe/index.js';

const td = TrustDomain.parse('example.org');
const caKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const ca = mintCaCertificate({ trustDomain: td, publicKey: caKeys.publicKey, selfSignKey: caKeys.privateKey, ttlSeconds: 3600 });
const rsaKeys = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const rsaCa = mintCaCertificate({ trustDomain: td, publicKey: rsaKeys.publicKey, selfSignKey: rsaKeys.privateKey, ttlSeconds: 3600 });
const jwtKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey;

function fullBundle(): Bundle {
  const b = new Bundle(td);
  b.addX509Authority(ca.der);
  b.addX509Authority(rsaCa.der);
  b.addJwtAuthority('jwt-1', jwtKey);
  b.addJwtAuthority('jwt-rsa', rsaKeys.publicKey);
  b.sequenceNumber = 42n;
  b.refreshHintSeconds = 300;
  return b;
}

function failCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(BundleError);
    return (e as BundleError).code;
  }
  throw new Error('expected a BundleError');
}

describe('Bundle JSON', () => {
  it('writes the SPIFFE bundle format', () => {
    const doc = JSON.parse(fullBundle().toJSON()) as { keys: Record<string, unknown>[]; spiffe_sequence: number; spiffe_refresh_hint: number };
    expect(doc.spiffe_sequence).toBe(42);
    expect(doc.spiffe_refresh_hint).toBe(300);
    expect(doc.keys).toHaveLength(4);
    const [x1, x2, j1, j2] = doc.keys as [Record<string, unknown>, Record<string, unknown>, Record<string, unknown>, Record<string, unknown>];
    expect(x1).toMatchObject({ use: 'x509-svid', kty: 'EC', crv: 'P-256', x5c: [ca.der.toString('base64')] });
    expect(x1).not.toHaveProperty('kid');
    expect(x2).toMatchObject({ use: 'x509-svid', kty: 'RSA', e: 'AQAB', x5c: [rsaCa.der.toString('base64')] });
    expect(j1).toEqual({ use: 'jwt-svid', kid: 'jwt-1', ...jwtKey.export({ format: 'jwk' }) });
    expect(j2).toMatchObject({ use: 'jwt-svid', kid: 'jwt-rsa', kty: 'RSA' });
  });

  it('round-trips, including sequence numbers beyond 2^53', () => {
    const b = fullBundle();
    const back = Bundle.parse(td, b.toJSON());
    expect(back.equals(b)).toBe(true);
    expect(back.x509Authorities()).toEqual([ca.der, rsaCa.der]);
    expect(back.jwtAuthorities().get('jwt-1')?.equals(jwtKey)).toBe(true);
    b.sequenceNumber = (1n << 64n) - 1n;
    expect(b.toJSON()).toContain('"spiffe_sequence":18446744073709551615');
    expect(Bundle.parse(td, Buffer.from(b.toJSON())).sequenceNumber).toBe((1n << 64n) - 1n);
    const minimal = Bundle.parse(td, '{"keys":[]}');
    expect(minimal.sequenceNumber).toBe(0n);
    expect(minimal.refreshHintSeconds).toBeUndefined();
  });

  it('ignores unknown use and unknown kty, as consumers must', () => {
    const doc = JSON.parse(fullBundle().toJSON()) as { keys: unknown[] };
    doc.keys.push({ use: 'future-svid', kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA' });
    doc.keys.push({ use: 'jwt-svid', kty: 'PQC', kid: 'pq-1', pub: 'AAAA' });
    doc.keys.push({ use: 'jwt-svid', kty: 'OKP', kid: 'ed-1', crv: 'Ed25519', x: 'AAAA' });
    doc.keys.push({ use: 'x509-svid', kty: 'PQC', x5c: ['AAAA'] });
    const b = Bundle.parse(td, JSON.stringify(doc));
    expect(b.x509Authorities()).toHaveLength(2);
    expect([...b.jwtAuthorities().keys()]).toEqual(['jwt-1', 'jwt-rsa']);
  });

  it.each([
    ['not JSON', '{keys:[]}', 'malformed-json'],
    ['truncated', '{"keys":[', 'malformed-json'],
    ['an array', '[]', 'malformed-bundle'],
    ['null', 'null', 'malformed-bundle'],
    ['no keys', '{}', 'malformed-bundle'],
    ['keys not an array', '{"keys":{}}', 'malformed-bundle'],
    ['a key that is not an object', '{"keys":[1]}', 'malformed-bundle'],
    ['a key without use', '{"keys":[{"kty":"EC"}]}', 'malformed-bundle'],
    ['a key without kty', '{"keys":[{"use":"jwt-svid","kid":"a"}]}', 'malformed-bundle'],
    ['a negative sequence', '{"keys":[],"spiffe_sequence":-1}', 'malformed-bundle'],
    ['a fractional sequence', '{"keys":[],"spiffe_sequence":1.5}', 'malformed-bundle'],
    ['a string sequence', '{"keys":[],"spiffe_sequence":"1"}', 'malformed-bundle'],
    ['a sequence beyond 64 bits', '{"keys":[],"spiffe_sequence":18446744073709551616}', 'malformed-bundle'],
    ['a bad refresh hint', '{"keys":[],"spiffe_refresh_hint":"5m"}', 'malformed-bundle'],
    ['a jwt key without kid', '{"keys":[{"use":"jwt-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}', 'bad-jwt-authority'],
    ['a jwt key with bad coordinates', '{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}', 'bad-jwt-authority'],
    ['a jwt key with private material', '{"keys":[{"use":"jwt-svid","kid":"a","kty":"EC","crv":"P-256","x":"AA","y":"AA","d":"AA"}]}', 'malformed-bundle'],
    ['an x509 key without x5c', '{"keys":[{"use":"x509-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}', 'bad-x509-authority'],
    ['an x509 key with garbage x5c', '{"keys":[{"use":"x509-svid","kty":"EC","crv":"P-256","x":"AA","y":"AA","x5c":["MIIB"]}]}', 'bad-x509-authority'],
    ['an x509 key with non-base64 x5c', '{"keys":[{"use":"x509-svid","kty":"EC","x5c":["!!!!"]}]}', 'bad-x509-authority'],
  ])('refuses %s', (_what, json, code) => {
    expect(failCode(() => Bundle.parse(td, json))).toBe(code);
  });

  it('refuses x509-svid entries that break the rules: kid, two certificates, a JWK that is not the certificate key', () => {
    const entry = JSON.parse(fullBundle().toJSON()).keys[0] as Record<string, unknown>;
    const parse = (e: Record<string, unknown>): string => failCode(() => Bundle.parse(td, JSON.stringify({ keys: [e] })));
    expect(parse({ ...entry, kid: 'x' })).toBe('bad-x509-authority');
    expect(parse({ ...entry, x5c: [ca.der.toString('base64'), ca.der.toString('base64')] })).toBe('bad-x509-authority');
    const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' });
    expect(parse({ ...entry, x: other.x, y: other.y })).toBe('bad-x509-authority');
  });

  it('refuses duplicate kids, oversized documents and invalid UTF-8', () => {
    const j = JSON.parse(fullBundle().toJSON()).keys[2] as Record<string, unknown>;
    expect(failCode(() => Bundle.parse(td, JSON.stringify({ keys: [j, j] })))).toBe('duplicate-kid');
    expect(failCode(() => Bundle.parse(td, ' '.repeat(1024 * 1024 + 1)))).toBe('too-large');
    expect(failCode(() => Bundle.parse(td, Buffer.from([0x7b, 0xff, 0x7d])))).toBe('malformed-json');
    expect(failCode(() => Bundle.parse(td, JSON.stringify({ keys: new Array(1001).fill({ use: 'x', kty: 'x' }) })))).toBe('malformed-bundle');
  });

  it('turns random and truncated documents into BundleError, never another exception', () => {
    const good = fullBundle().toJSON();
    for (let n = 0; n < good.length; n += 11) expect(() => Bundle.parse(td, good.slice(0, n))).toThrow(BundleError);
    let seed = 7;
    const rnd = (): number => { seed = (seed * 1103515245 + 12345) & 0x7fffffff; return seed; };
    const alphabet = '{}[]":,0123456789abcdefkeysusekidx5c-_ \\';
    for (let i = 0; i < 500; i++) {
      let s = '';
      const len = rnd() % 80;
      for (let j = 0; j < len; j++) s += alphabet[rnd() % alphabet.length];
      try {
        Bundle.parse(td, s);
      } catch (e) {
        expect(e).toBeInstanceOf(BundleError);
      }
    }
    // Mutated real documents: replace one character.
    for (let i = 0; i < 150; i++) {
      const pos = rnd() % good.length;
      const s = good.slice(0, pos) + alphabet[rnd() % alphabet.length] + good.slice(pos + 1);
      try {
        Bundle.parse(td, s);
      } catch (e) {
        expect(e).toBeInstanceOf(BundleError);
      }
    }
  });
});

describe('Bundle operations', () => {
  it('adds, removes, clones and compares', () => {
    const b = fullBundle();
    const c = b.clone();
    expect(c.equals(b)).toBe(true);
    c.removeX509Authority(rsaCa.der);
    c.removeJwtAuthority('jwt-rsa');
    expect(c.equals(b)).toBe(false);
    expect(b.x509Authorities()).toHaveLength(2);
    expect(c.x509Authorities()).toEqual([ca.der]);
    c.addX509Authority(ca.der); // no duplicates
    expect(c.x509Authorities()).toHaveLength(1);
    expect(c.x509AuthoritiesPem()).toBe(ca.pem);
    const d = b.clone();
    d.sequenceNumber += 1n;
    expect(d.equals(b)).toBe(false);
    expect(failCode(() => b.addX509Authority(Buffer.from('not a cert')))).toBe('bad-x509-authority');
    expect(failCode(() => b.addJwtAuthority('', jwtKey))).toBe('invalid-argument');
    expect(failCode(() => b.addJwtAuthority('k', caKeys.privateKey))).toBe('invalid-argument');
    expect(failCode(() => b.addJwtAuthority('k', crypto.generateKeyPairSync('ed25519').publicKey))).toBe('invalid-argument');
  });

  it('BundleSet keeps trust domains apart', () => {
    const other = new Bundle(TrustDomain.parse('other.test'));
    const set = new BundleSet(fullBundle(), other);
    expect(set.trustDomains().map((t) => t.name).sort()).toEqual(['example.org', 'other.test']);
    expect(set.getX509BundleForTrustDomain(td)?.x509Authorities()).toHaveLength(2);
    expect(set.getJwtBundleForTrustDomain(TrustDomain.parse('other.test'))).toBe(other);
    expect(set.get(TrustDomain.parse('third.test'))).toBeUndefined();
    const replacement = new Bundle(td);
    set.set(replacement);
    expect(set.get(td)).toBe(replacement);
    expect(set.delete(td)).toBe(true);
    expect(set.has(td)).toBe(false);
  });
});
