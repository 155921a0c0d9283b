// SPIFFE ID and trust domain rules, with the vectors of the SPIFFE-ID standard and go-spiffe's
// spiffeid tests (strict parser generation).
import { describe, expect, it } from 'vitest';
import { SpiffeId, SpiffeIdError, TrustDomain } from '../../src/spiffe/index.js';

const TD_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789.-_';
const PATH_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SpiffeIdError);
    return (e as SpiffeIdError).code;
  }
  throw new Error('expected a SpiffeIdError');
}

describe('SpiffeId.parse', () => {
  it('accepts valid IDs and exposes trust domain and path', () => {
    const id = SpiffeId.parse('spiffe://trustdomain/path/element');
    expect(id.trustDomain.name).toBe('trustdomain');
    expect(id.path).toBe('/path/element');
    expect(id.toString()).toBe('spiffe://trustdomain/path/element');
    const root = SpiffeId.parse('spiffe://trustdomain');
    expect(root.path).toBe('');
    expect(root.toString()).toBe('spiffe://trustdomain');
    expect(SpiffeId.parse('spiffe://domain.test/spiffe/.../..a/a..').path).toBe('/spiffe/.../..a/a..');
  });

  it.each([
    ['', 'empty'],
    ['s', 'wrong-scheme'],
    ['spiffe', 'wrong-scheme'],
    ['spiffe:', 'wrong-scheme'],
    ['spiffe:/', 'wrong-scheme'],
    ['spiffe:path/element', 'wrong-scheme'],
    ['spiffe:/path/element', 'wrong-scheme'],
    ['SPIFFE://trustdomain/path', 'wrong-scheme'],
    ['Spiffe://trustdomain/path', 'wrong-scheme'],
    ['xspiffe://trustdomain/path', 'wrong-scheme'],
    ['http://trustdomain/path', 'wrong-scheme'],
    ['192.168.2.2:6688', 'wrong-scheme'],
    ['spiffe://', 'missing-trust-domain'],
    ['spiffe:///', 'missing-trust-domain'],
    ['spiffe:///path/element', 'missing-trust-domain'],
    ['spiffe://trustdomain/', 'trailing-slash'],
    ['spiffe://trustdomain/path/', 'trailing-slash'],
    ['spiffe://trustdomain//', 'empty-segment'],
    ['spiffe://trustdomain//path', 'empty-segment'],
    ['spiffe://trustdomain/path//', 'empty-segment'],
    ['spiffe://trustdomain/./other', 'dot-segment'],
    ['spiffe://trustdomain/../other', 'dot-segment'],
    ['spiffe://trustdomain/path/.', 'dot-segment'],
    ['spiffe://trustdomain/path/..', 'dot-segment'],
    ['spiffe://domain.test:8080/path/element', 'bad-trust-domain-char'],
    ['spiffe://domain.test:/path/element', 'bad-trust-domain-char'],
    ['spiffe://user:password@test.org/path/element', 'bad-trust-domain-char'],
    ['spiffe://Domain.test/path', 'bad-trust-domain-char'],
    ['spiffe://[::1]/service', 'bad-trust-domain-char'],
    ['spiffe://%F0%9F%A4%AF/path', 'bad-trust-domain-char'],
    ['spiffe://domain.test/path/element?query=1', 'bad-path-segment-char'],
    ['spiffe://domain.test/path/element#fragment-1', 'bad-path-segment-char'],
    ['spiffe://domain.test/path/element?#fragment-1', 'bad-path-segment-char'],
    ['spiffe://domain.test/path/elem%5uent', 'bad-path-segment-char'],
    ['spiffe://domain.test/path/elem%20ent', 'bad-path-segment-char'],
    ['spiffe://trustdomain/%F0%9F%A4%AF', 'bad-path-segment-char'],
    ['spiffe://domain.test/pa:th/element', 'bad-path-segment-char'],
    ['spiffe://domain.test/pa@th', 'bad-path-segment-char'],
    ['spiffe://domain.test/p!a$t&h', 'bad-path-segment-char'],
    ['spiffe://domain.test/path/elem[ent', 'bad-path-segment-char'],
  ])('rejects %j (%s)', (input, expected) => {
    expect(code(() => SpiffeId.parse(input))).toBe(expected);
  });

  it('allows exactly the specified trust domain characters', () => {
    for (let c = 0; c < 256; c++) {
      const ch = String.fromCharCode(c);
      if (ch === '/' ) continue; // a slash ends the trust domain
      const input = `spiffe://trust${ch}domain/path`;
      if (TD_CHARS.includes(ch)) expect(SpiffeId.parse(input).trustDomain.name).toBe(`trust${ch}domain`);
      else expect(code(() => SpiffeId.parse(input))).toBe('bad-trust-domain-char');
    }
  });

  it('allows exactly the specified path characters', () => {
    for (let c = 0; c < 256; c++) {
      const ch = String.fromCharCode(c);
      if (ch === '/') continue; // a slash separates segments
      const input = `spiffe://trustdomain/path${ch}element`;
      if (PATH_CHARS.includes(ch)) expect(SpiffeId.parse(input).path).toBe(`/path${ch}element`);
      else expect(code(() => SpiffeId.parse(input))).toBe('bad-path-segment-char');
    }
  });

  it('accepts IDs up to 2048 bytes and refuses longer ones', () => {
    const prefix = 'spiffe://example.org/';
    const ok = prefix + 'a'.repeat(2048 - prefix.length);
    expect(SpiffeId.parse(ok).toString()).toHaveLength(2048);
    expect(code(() => SpiffeId.parse(ok + 'a'))).toBe('too-long');
  });

  it('limits trust domain names to 255 bytes', () => {
    expect(SpiffeId.parse(`spiffe://${'a'.repeat(255)}/x`).trustDomain.name).toHaveLength(255);
    expect(code(() => SpiffeId.parse(`spiffe://${'a'.repeat(256)}/x`))).toBe('trust-domain-too-long');
    expect(code(() => TrustDomain.parse('a'.repeat(256)))).toBe('trust-domain-too-long');
  });

  it('gives messages that name the input and the rule', () => {
    expect(() => SpiffeId.parse('spiffe://trustdomain/path/')).toThrow('invalid SPIFFE ID "spiffe://trustdomain/path/": path cannot have a trailing slash');
  });
});

describe('SpiffeId construction and comparison', () => {
  const td = TrustDomain.parse('domain.test');

  it('fromSegments joins segments and validates each', () => {
    expect(SpiffeId.fromSegments(td, 'path', 'element').toString()).toBe('spiffe://domain.test/path/element');
    expect(SpiffeId.fromSegments(td).toString()).toBe('spiffe://domain.test');
    expect(code(() => SpiffeId.fromSegments(td, ''))).toBe('empty-segment');
    expect(code(() => SpiffeId.fromSegments(td, 'a/b'))).toBe('bad-path-segment-char');
    expect(code(() => SpiffeId.fromSegments(td, '..'))).toBe('dot-segment');
    expect(code(() => SpiffeId.fromSegments(td, 'pa:th'))).toBe('bad-path-segment-char');
  });

  it('fromPath validates the path', () => {
    expect(SpiffeId.fromPath(td, '/a/b').path).toBe('/a/b');
    expect(SpiffeId.fromPath(td, '').toString()).toBe('spiffe://domain.test');
    expect(code(() => SpiffeId.fromPath(td, 'a/b'))).toBe('no-leading-slash');
    expect(code(() => SpiffeId.fromPath(td, '/a/'))).toBe('trailing-slash');
    expect(code(() => SpiffeId.fromPath(td, '/a//b'))).toBe('empty-segment');
    expect(code(() => SpiffeId.fromPath(td, '/./b'))).toBe('dot-segment');
    expect(code(() => SpiffeId.fromPath(td, '/%41'))).toBe('bad-path-segment-char');
  });

  it('equals and memberOf', () => {
    const a = SpiffeId.parse('spiffe://domain.test/path/element');
    expect(a.equals(SpiffeId.fromSegments(td, 'path', 'element'))).toBe(true);
    expect(a.equals(SpiffeId.parse('spiffe://domain.test/path/Element'))).toBe(false);
    expect(a.memberOf(td)).toBe(true);
    expect(SpiffeId.parse('spiffe://domain.test').memberOf(td)).toBe(true);
    expect(SpiffeId.parse('spiffe://other.domain.test/path').memberOf(td)).toBe(false);
    expect(JSON.stringify({ a })).toBe('{"a":"spiffe://domain.test/path/element"}');
  });
});

describe('TrustDomain', () => {
  it('parses names and SPIFFE IDs, like go-spiffe', () => {
    const td = TrustDomain.parse('domain.test');
    expect(td.name).toBe('domain.test');
    expect(td.toString()).toBe('domain.test');
    expect(td.idString()).toBe('spiffe://domain.test');
    expect(TrustDomain.parse('spiffe://domain.test/path/element').equals(td)).toBe(true);
    expect(TrustDomain.parse('spiffe://domain.test').equals(td)).toBe(true);
    expect(td.equals(TrustDomain.parse('other.test'))).toBe(false);
  });

  it.each([
    ['', 'missing-trust-domain'],
    ['spiffe://', 'missing-trust-domain'],
    ['Domain.test', 'bad-trust-domain-char'],
    ['domain.test:8080', 'bad-trust-domain-char'],
    ['user@domain.test', 'bad-trust-domain-char'],
    ['domain test', 'bad-trust-domain-char'],
    ['spiffe://domain.test/', 'trailing-slash'],
    ['http://domain.test', 'wrong-scheme'],
  ])('rejects %j (%s)', (input, expected) => {
    expect(code(() => TrustDomain.parse(input))).toBe(expected);
  });
});

describe('presentation', () => {
  it('serializes and inspects as the ID string', async () => {
    const { inspect } = await import('node:util');
    const id = SpiffeId.parse('spiffe://domain.test/a');
    expect(inspect(id)).toBe('SpiffeId(spiffe://domain.test/a)');
    expect(inspect(id.trustDomain)).toBe('TrustDomain(domain.test)');
    expect(JSON.stringify({ td: id.trustDomain })).toBe('{"td":"domain.test"}');
  });
});
