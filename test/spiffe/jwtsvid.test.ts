// JWT-SVID minting and validation: alg and header allow-lists, kid, sub, aud, exp, the bundle of the
// subject's trust domain, and malformed tokens giving JwtSvidError.
import crypto, { type KeyObject } from 'node:crypto';
import { compactVerify, decodeProtectedHeader, importJWK } from 'jose';
import { describe, expect, it } from 'vitest';
import {
  Bundle, BundleSet, JwtSvidError, mintJwtSvid, SpiffeId, TrustDomain, validateJwtSvid, type JwtAuthorityKey,
} from '../../src/spiffe/index.js';

const td = TrustDomain.parse('example.org');
const id = SpiffeId.parse('spiffe://example.org/ns/prod/sa/api');
const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const key: JwtAuthorityKey = { kid: 'kid-1', privateKey: ec.privateKey, alg: 'ES256' };
const bundle = new Bundle(td);
bundle.addJwtAuthority('kid-1', ec.publicKey);
const bundles = new BundleSet(bundle);

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');

/** A token with arbitrary header and claims, ES256-signed by `signer` (for tokens our minting refuses to make). */
function handmade(header: Record<string, unknown>, claims: Record<string, unknown>, signer: KeyObject = ec.privateKey): string {
  const input = `${b64(header)}.${b64(claims)}`;
  const sig = crypto.sign('sha256', Buffer.from(input), { key: signer, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}

const nowS = (): number => Math.floor(Date.now() / 1000);
const goodClaims = (): Record<string, unknown> => ({ sub: id.toString(), aud: 'svc', exp: nowS() + 300, iat: nowS() });

async function failCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(JwtSvidError);
    return (e as JwtSvidError).code;
  }
  throw new Error('expected a JwtSvidError');
}

describe('mintJwtSvid', () => {
  it('emits alg, kid and typ JWT and the standard claims; jose verifies it independently', async () => {
    const now = new Date();
    const token = await mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 300, key, now, extraClaims: { unified_identity: { country: 'DE' } } });
    expect(decodeProtectedHeader(token)).toEqual({ alg: 'ES256', kid: 'kid-1', typ: 'JWT' });
    const jwk = ec.publicKey.export({ format: 'jwk' });
    const { payload } = await compactVerify(token, await importJWK(jwk, 'ES256'));
    const claims = JSON.parse(Buffer.from(payload).toString()) as Record<string, unknown>;
    const iat = Math.floor(now.getTime() / 1000);
    expect(claims).toEqual({ sub: id.toString(), aud: 'svc', iat, exp: iat + 300, unified_identity: { country: 'DE' } });

    const v = await validateJwtSvid(token, bundles, 'svc');
    expect(v.id.equals(id)).toBe(true);
    expect(v.audience).toEqual(['svc']);
    expect(v.expiry.getTime()).toBe((iat + 300) * 1000);
    expect(v.claims['unified_identity']).toEqual({ country: 'DE' });
  });

  it('mints and validates every supported algorithm, with several audiences', async () => {
    const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const p384 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
    const cases: JwtAuthorityKey[] = [
      { kid: 'es256', privateKey: ec.privateKey, alg: 'ES256' },
      { kid: 'es384', privateKey: p384.privateKey, alg: 'ES384' },
      { kid: 'rs256', privateKey: rsa.privateKey, alg: 'RS256' },
      { kid: 'ps256', privateKey: rsa.privateKey, alg: 'PS256' },
    ];
    const b = new Bundle(td);
    b.addJwtAuthority('es256', ec.publicKey);
    b.addJwtAuthority('es384', p384.publicKey);
    b.addJwtAuthority('rs256', rsa.publicKey);
    b.addJwtAuthority('ps256', rsa.publicKey);
    const set = new BundleSet(b);
    for (const k of cases) {
      const token = await mintJwtSvid({ id, audience: ['a', 'b'], ttlSeconds: 60, key: k });
      const v = await validateJwtSvid(token, set, 'b');
      expect(v.audience).toEqual(['a', 'b']);
      expect(decodeProtectedHeader(token).alg).toBe(k.alg);
    }
  });

  it('refuses bad minting requests', async () => {
    await expect(failCode(mintJwtSvid({ id, audience: [], ttlSeconds: 60, key }))).resolves.toBe('invalid-argument');
    await expect(failCode(mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 0, key }))).resolves.toBe('invalid-argument');
    await expect(failCode(mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 60, key: { ...key, kid: '' } }))).resolves.toBe('invalid-argument');
    await expect(failCode(mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 60, key: { ...key, alg: 'HS256' as 'ES256' } }))).resolves.toBe('invalid-argument');
    await expect(failCode(mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 60, key: { ...key, alg: 'ES384' } }))).resolves.toBe('unsupported-key');
    await expect(failCode(mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 60, key, extraClaims: { sub: 'x' } }))).resolves.toBe('invalid-argument');
  });
});

describe('validateJwtSvid refuses', () => {
  it('control: a handmade token with valid fields is accepted', async () => {
    const v = await validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1', typ: 'JOSE' }, goodClaims()), bundles, 'svc');
    expect(v.id.equals(id)).toBe(true);
  });

  it('alg none, HS256 and other algorithms outside the allow-list', async () => {
    const claims = goodClaims();
    const none = `${b64({ alg: 'none', kid: 'kid-1' })}.${b64(claims)}.`;
    // Said for what it is (issue 14, finding 10), not "not three parts".
    await expect(failCode(validateJwtSvid(none, bundles, 'svc'))).resolves.toBe('unsupported-algorithm');
    await expect(validateJwtSvid(none, bundles, 'svc')).rejects.toThrow('JWT alg "none" is not allowed: an unsigned token proves nothing');
    const noneSigned = `${b64({ alg: 'none', kid: 'kid-1' })}.${b64(claims)}.AAAA`;
    await expect(failCode(validateJwtSvid(noneSigned, bundles, 'svc'))).resolves.toBe('unsupported-algorithm');
    // HS256 keyed with the public key bytes: the classic algorithm-confusion attack.
    const input = `${b64({ alg: 'HS256', kid: 'kid-1', typ: 'JWT' })}.${b64(claims)}`;
    const mac = crypto.createHmac('sha256', ec.publicKey.export({ type: 'spki', format: 'der' })).update(input).digest('base64url');
    await expect(failCode(validateJwtSvid(`${input}.${mac}`, bundles, 'svc'))).resolves.toBe('unsupported-algorithm');
    for (const alg of ['EdDSA', 'ES256K', 'es256', 'HS512', '']) {
      await expect(failCode(validateJwtSvid(handmade({ alg, kid: 'kid-1' }, claims), bundles, 'svc'))).resolves.toBe('unsupported-algorithm');
    }
  });

  it('a token without kid, with an unknown kid, or a key of the wrong type for alg', async () => {
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', typ: 'JWT' }, goodClaims()), bundles, 'svc'))).resolves.toBe('missing-kid');
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: '' }, goodClaims()), bundles, 'svc'))).resolves.toBe('missing-kid');
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-2' }, goodClaims()), bundles, 'svc'))).resolves.toBe('unknown-kid');
    await expect(failCode(validateJwtSvid(handmade({ alg: 'RS256', kid: 'kid-1' }, goodClaims()), bundles, 'svc'))).resolves.toBe('key-algorithm-mismatch');
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES384', kid: 'kid-1' }, goodClaims()), bundles, 'svc'))).resolves.toBe('key-algorithm-mismatch');
  });

  it('headers outside alg/kid/typ and a bad typ', async () => {
    for (const extra of [{ jku: 'https://evil.example/jwks' }, { jwk: { kty: 'EC' } }, { x5c: ['AAAA'] }, { crit: ['exp'] }, { cty: 'JWT' }]) {
      await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1', ...extra }, goodClaims()), bundles, 'svc'))).resolves.toBe('unexpected-header');
    }
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1', typ: 'at+jwt' }, goodClaims()), bundles, 'svc'))).resolves.toBe('bad-typ');
  });

  it('a wrong audience, a missing audience', async () => {
    const token = await mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 60, key });
    await expect(failCode(validateJwtSvid(token, bundles, 'other'))).resolves.toBe('audience-mismatch');
    const { aud: _aud, ...noAud } = goodClaims();
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1' }, noAud), bundles, 'svc'))).resolves.toBe('missing-audience');
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1' }, { ...goodClaims(), aud: [] }), bundles, 'svc'))).resolves.toBe('missing-audience');
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1' }, { ...goodClaims(), aud: [1] }), bundles, 'svc'))).resolves.toBe('missing-audience');
  });

  it('an expired token, one without exp, one not yet valid', async () => {
    const now = new Date('2030-01-01T00:00:00Z');
    const token = await mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 60, key, now });
    expect((await validateJwtSvid(token, bundles, 'svc', { now: new Date('2030-01-01T00:00:59Z') })).id.equals(id)).toBe(true);
    await expect(failCode(validateJwtSvid(token, bundles, 'svc', { now: new Date('2030-01-01T00:01:00Z') }))).resolves.toBe('expired');
    const { exp: _exp, ...noExp } = goodClaims();
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1' }, noExp), bundles, 'svc'))).resolves.toBe('missing-expiry');
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1' }, { ...goodClaims(), exp: '9999999999' }), bundles, 'svc'))).resolves.toBe('missing-expiry');
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1' }, { ...goodClaims(), nbf: nowS() + 600 }), bundles, 'svc'))).resolves.toBe('not-yet-valid');
  });

  it('a foreign trust domain, and a sub that is not a SPIFFE ID', async () => {
    const foreign = await mintJwtSvid({ id: SpiffeId.parse('spiffe://other.test/x'), audience: ['svc'], ttlSeconds: 60, key });
    // Signed by a key that example.org trusts, but other.test has no bundle here.
    await expect(failCode(validateJwtSvid(foreign, bundles, 'svc'))).resolves.toBe('no-bundle');
    // other.test has a bundle, without that kid: example.org's keys are never consulted for it.
    const withOther = new BundleSet(bundle, new Bundle(TrustDomain.parse('other.test')));
    await expect(failCode(validateJwtSvid(foreign, withOther, 'svc'))).resolves.toBe('unknown-kid');
    for (const sub of ['spiffe://example.org/a/', 'https://example.org/x', '']) {
      await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1' }, { ...goodClaims(), sub }), bundles, 'svc'))).resolves.toBe('invalid-subject');
    }
  });

  it('a forged or altered signature', async () => {
    const token = await mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 60, key });
    const [h, p] = token.split('.') as [string, string, string];
    const attacker = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    await expect(failCode(validateJwtSvid(handmade({ alg: 'ES256', kid: 'kid-1', typ: 'JWT' }, goodClaims(), attacker.privateKey), bundles, 'svc'))).resolves.toBe('bad-signature');
    const otherPayload = b64({ ...goodClaims(), sub: 'spiffe://example.org/admin' });
    await expect(failCode(validateJwtSvid(`${h}.${otherPayload}.${token.split('.')[2]}`, bundles, 'svc'))).resolves.toBe('bad-signature');
    await expect(failCode(validateJwtSvid(`${h}.${p}.AAAA`, bundles, 'svc'))).resolves.toBe('bad-signature');
  });

  it('malformed tokens with JwtSvidError, never another exception', async () => {
    const token = await mintJwtSvid({ id, audience: ['svc'], ttlSeconds: 60, key });
    const bad = ['', 'abc', 'a.b', 'a.b.c.d', '..', `${token}.`, `!${token}`, 'e30.e30.e30', 'W10.e30.AA', `${b64('str')}.${b64({})}.AA`,
      42 as unknown as string, 'x'.repeat(20_000)];
    for (let n = 0; n < token.length; n += 3) bad.push(token.slice(0, n));
    for (const t of bad) await expect(validateJwtSvid(t, bundles, 'svc')).rejects.toBeInstanceOf(JwtSvidError);
    await expect(failCode(validateJwtSvid('x'.repeat(20_000), bundles, 'svc'))).resolves.toBe('token-too-large');
  });
});
