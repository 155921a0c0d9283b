// Regression: JWT-SVID algorithm confusion, which validateJwtSvid already refuses (docs/security.md).
// The bundle holds an EC P-256 and an RSA-2048 authority; the attacker knows both public keys and
// picks the token's alg: HMAC keyed with a public key, "none", or the other key family's algorithm.
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Bundle, BundleSet, JwtSvidError, SpiffeId, TrustDomain, mintJwtSvid, validateJwtSvid } from '../../src/spiffe/index.js';

const td = TrustDomain.parse('example.org');
const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const bundle = new Bundle(td);
bundle.addJwtAuthority('ec-1', ec.publicKey);
bundle.addJwtAuthority('rsa-1', rsa.publicKey);
const bundles = new BundleSet(bundle);

const b64 = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url');
const now = Math.floor(Date.now() / 1000);
const claims = b64({ sub: 'spiffe://example.org/admin', aud: 'db', exp: now + 300, iat: now });
const input = (header: Record<string, unknown>): string => `${b64({ typ: 'JWT', ...header })}.${claims}`;

async function refusal(token: string): Promise<JwtSvidError> {
  const err = await validateJwtSvid(token, bundles, 'db').then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(JwtSvidError);
  return err as JwtSvidError;
}

describe('attack: JWT alg confusion', () => {
  it('control: a token the EC authority signed is accepted', async () => {
    const token = await mintJwtSvid({ id: SpiffeId.parse('spiffe://example.org/admin'), audience: ['db'], ttlSeconds: 300, key: { kid: 'ec-1', privateKey: ec.privateKey, alg: 'ES256' } });
    await expect(validateJwtSvid(token, bundles, 'db')).resolves.toMatchObject({ claims: { sub: 'spiffe://example.org/admin' } });
  });

  it('HS256 with a bundle public key (SPKI DER or PEM) as the HMAC secret is refused', async () => {
    for (const [kid, secret] of [['ec-1', ec.publicKey.export({ type: 'spki', format: 'der' })], ['rsa-1', rsa.publicKey.export({ type: 'spki', format: 'pem' })]] as const) {
      const signing = input({ alg: 'HS256', kid });
      const err = await refusal(`${signing}.${crypto.createHmac('sha256', secret).update(signing).digest('base64url')}`);
      expect(err).toMatchObject({ code: 'unsupported-algorithm', message: expect.stringMatching(/JWT alg "HS256" is not allowed/) });
    }
  });

  it('alg none is refused, with or without a signature part', async () => {
    for (const signature of ['', 'AAAA']) {
      const err = await refusal(`${input({ alg: 'none', kid: 'ec-1' })}.${signature}`);
      expect(err).toMatchObject({ code: 'unsupported-algorithm', message: expect.stringMatching(/JWT alg "none" is not allowed/) });
    }
  });

  it('RS/ES mix: an RSA alg on the EC authority\'s kid, an EC alg on the RSA authority\'s kid, a curve mismatch are refused', async () => {
    const cases = [
      { header: { alg: 'RS256', kid: 'ec-1' }, key: rsa.privateKey, hash: 'sha256', dsa: {} },
      { header: { alg: 'ES256', kid: 'rsa-1' }, key: ec.privateKey, hash: 'sha256', dsa: { dsaEncoding: 'ieee-p1363' as const } },
      { header: { alg: 'ES384', kid: 'ec-1' }, key: ec.privateKey, hash: 'sha384', dsa: { dsaEncoding: 'ieee-p1363' as const } },
    ];
    for (const c of cases) {
      const signing = input(c.header);
      const sig = crypto.sign(c.hash, Buffer.from(signing), { key: c.key, ...c.dsa }).toString('base64url');
      const err = await refusal(`${signing}.${sig}`);
      expect(err).toMatchObject({ code: 'key-algorithm-mismatch', message: expect.stringContaining(`JWT authority "${c.header.kid}" cannot be used with ${c.header.alg}`) });
    }
  });
});
