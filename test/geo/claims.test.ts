import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { canonicalClaims, claimsDigest, ClaimsError, readingFromJson, readingToJson } from '../../src/geo/index.js';

describe('canonical claims (RFC 8785)', () => {
  const claims = { country: 'DE', region: 'EU', policy: 'eu-gnss', sensorKinds: ['gnss', 'mobile'], readingTime: '2026-11-22T12:00:00.000Z' };

  it('sorts keys, drops whitespace and is independent of insertion order', () => {
    const reordered = { sensorKinds: ['gnss', 'mobile'], readingTime: '2026-11-22T12:00:00.000Z', policy: 'eu-gnss', region: 'EU', country: 'DE' };
    const text = canonicalClaims(claims).toString('utf8');
    expect(text).toBe('{"country":"DE","policy":"eu-gnss","readingTime":"2026-11-22T12:00:00.000Z","region":"EU","sensorKinds":["gnss","mobile"]}');
    expect(canonicalClaims(reordered).equals(canonicalClaims(claims))).toBe(true);
  });

  it('follows the RFC 8785 number and string rules', () => {
    // ES6 number serialisation and sorting by UTF-16 code units (RFC 8785 §3.2.2.3, §3.2.3).
    expect(canonicalClaims({ b: 1e21, a: 0.1 + 0.2, c: -0, '€': 1, '\u0080': 2, é: 3 }).toString()).toBe('{"a":0.30000000000000004,"b":1e+21,"c":0,"\u0080":2,"é":3,"€":1}');
    expect(canonicalClaims({ s: 'line\nbreak "quoted" \u001f' }).toString()).toBe('{"s":"line\\nbreak \\"quoted\\" \\u001f"}');
  });

  it('has a SHA-256 digest that is stable across processes', () => {
    const digest = claimsDigest(claims);
    expect(digest).toEqual(createHash('sha256').update(canonicalClaims(claims)).digest());
    // Recompute in a fresh Node process: same bytes, same digest.
    const script = `import('${new URL('../../src/geo/claims.ts', import.meta.url).pathname}').then(m => process.stdout.write(m.claimsDigest(${JSON.stringify(claims)}).toString('hex')))`;
    const other = execFileSync(process.execPath, ['--import', 'tsx', '-e', script], { encoding: 'utf8' });
    expect(other).toBe(digest.toString('hex'));
    // Golden value (sha256sum of the canonical text above), so a library change cannot drift it.
    expect(digest.toString('hex')).toBe('6baac4a1382833e143aa2b93c320bb383cc3c782c6b9f8a6d11f5ee073019e2b');
  });

  it.each([
    ['NaN', { lat: Number.NaN }, /claims \$\.lat: NaN is not a JSON number/],
    ['Infinity', { a: [1, Number.POSITIVE_INFINITY] }, /claims \$\.a\[1\]: Infinity is not a JSON number/],
    ['undefined', { a: undefined }, /claims \$\.a: undefined is not a JSON value/],
    ['a function', { f: () => 1 }, /claims \$\.f: function is not a JSON value/],
    ['a bigint', { n: 10n }, /claims \$\.n: bigint is not a JSON value/],
    ['a Date', { t: new Date(0) }, /claims \$\.t: Date is not a plain JSON object; convert it first/],
    ['a lone surrogate', { s: 'a\uD800b' }, /claims \$\.s: string contains a lone UTF-16 surrogate/],
    ['a Map', { m: new Map() }, /Map is not a plain JSON object/],
  ])('refuses %s, naming where it is', (_what, value, re) => {
    expect(() => canonicalClaims(value)).toThrow(ClaimsError);
    expect(() => canonicalClaims(value)).toThrow(re);
  });

  it('refuses cycles', () => {
    const a: Record<string, unknown> = { x: 1 };
    a.self = a;
    expect(() => claimsDigest(a)).toThrow(/circular reference/);
  });
});

describe('readings as JSON', () => {
  const r = { kind: 'gnss' as const, sensorId: 'gps0', time: new Date('2026-11-22T12:00:00.250Z'), lat: 47.697, lon: 8.69, horizontalErrorM: 4.5, attested: true, evidence: { mode: 3 } };

  it('round-trips through canonical JSON with a stable digest', () => {
    const json = readingToJson(r);
    expect(json.time).toBe('2026-11-22T12:00:00.250Z');
    const back = readingFromJson(JSON.parse(canonicalClaims(json).toString('utf8')));
    expect(back).toEqual(r);
    expect(claimsDigest(readingToJson(back))).toEqual(claimsDigest(json));
  });

  it.each([
    ['not an object', [], /must be a JSON object/],
    ['an unknown field', { ...readingToJson(r), extra: 1 }, /unknown field "extra"/],
    ['a time without zone', { ...readingToJson(r), time: '2026-11-22T12:00:00' }, /ISO 8601 UTC time like/],
    ['a time with an offset', { ...readingToJson(r), time: '2026-11-22T13:00:00.000+01:00' }, /ISO 8601 UTC time like/],
    ['an impossible date', { ...readingToJson(r), time: '2026-02-30T12:00:00.000Z' }, /not a valid calendar time/],
    ['a latitude string', { ...readingToJson(r), lat: '47.697' }, /latitude must be a finite number/],
    ['attested as a string', { ...readingToJson(r), attested: 'yes' }, /attested must be a boolean/],
  ])('refuses %s', (_what, value, re) => {
    expect(() => readingFromJson(value)).toThrow(re);
  });
});
