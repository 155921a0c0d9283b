// EAT Attestation Results: the mapping from attestation records to AR4SI vectors (docs/ear.md's
// table, case by case), and the JWS a relying party verifies: round trip, and every refusal.
import crypto, { type KeyObject } from 'node:crypto';
import { CompactSign } from 'jose';
import { describe, expect, it } from 'vitest';
import {
  EAR_MEDIA_TYPE, EAR_PROFILE, EAR_VALUES, EarError, earFromAttestation, policyId, signEar, tierOf,
  verifyEar, worstTier, type EarClaims, type EarOptions, type TrustworthinessVector,
} from '../../src/evidence/ear.js';
import type { AttestationRecord, RecordedUnifiedEvidence } from '../../src/evidence/record.js';

const EK_HASH = 'a3'.repeat(32);
const AGENT = `spiffe://example.org/agent/tpm/${EK_HASH}`;
const POLICY_SHA = '5e'.repeat(32);
const ISSUED = new Date('2026-12-08T01:00:00.000Z');
const OPTS: EarOptions = { logIndex: 41, logOrigin: 'terroir.example/evidence', issuedAt: ISSUED, verifierBuild: 'terroir-server 0.1.0' };
const { privateKey: KEY, publicKey: PUB } = crypto.generateKeyPairSync('ed25519');

function unified(over: Partial<RecordedUnifiedEvidence> = {}, claims: Record<string, unknown> = {}): RecordedUnifiedEvidence {
  return {
    quote: { attest: 'AAAA', signature: 'BBBB', pcrs: { '7': '00'.repeat(32), '0': '11'.repeat(32) } },
    claimsDocument: Buffer.from('{"readings":[],"v":1}').toString('base64'),
    keylime: { verifier: 'keylime', valid: true, failures: [], apiVersion: '2.6' },
    policy: { record: 3, sha256: POLICY_SHA, name: 'eu-only' },
    decision: { decision: 'allow', reasons: ['gnss sensor g0: inside the allowed area (in DE)'] },
    claims: {
      country: 'DE', region: 'EU', policy: 'eu-only', sensorKinds: ['gnss'], assurance: 'latency-bounded',
      witnesses: ['node:gnss', 'latency'], latency: [{ landmark: 'spiffe://example.org/landmark/fra', radiusKm: 41.3, strength: 'tpm' }],
      verifier: 'keylime', pcrDigest: 'cd'.repeat(32), ...claims,
    },
    ...over,
  };
}

function record(over: Partial<AttestationRecord> = {}): AttestationRecord {
  return {
    v: 1, kind: 'attestation', time: '2026-12-08T00:59:59.500Z', server: 'terroir-1',
    result: 'accepted', method: 'tpm', agentId: AGENT, source: '10.0.0.12:51234',
    tpm: { ekHash: EK_HASH, ekPublic: 'RUs=', akPublic: 'QUs=', ekTrust: 'certificate', nonce: 'bm9uY2U=' },
    unified: unified(),
    ...over,
  };
}

function vectorOf(c: EarClaims): TrustworthinessVector {
  return c.submods[AGENT]!.ear_trustworthiness_vector;
}

/** Signs any payload and header with the test key, bypassing signEar's own checks. */
async function rawSign(payload: unknown, header: Record<string, unknown> = {}, key: KeyObject = KEY): Promise<string> {
  return new CompactSign(Buffer.from(JSON.stringify(payload))).setProtectedHeader({ alg: 'EdDSA', typ: EAR_MEDIA_TYPE, kid: 'audit-1', ...header } as { alg: string }).sign(key);
}

async function refusal(p: Promise<unknown>): Promise<EarError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(EarError);
  return err as EarError;
}

describe('earFromAttestation: the AR4SI mapping', () => {
  it('an accepted TPM attestation (EK certificate, Keylime, latency-bounded place) is affirming on every appraised claim', () => {
    const c = earFromAttestation(record(), OPTS);
    expect(c.eat_profile).toBe(EAR_PROFILE);
    expect(c.iat).toBe(ISSUED.getTime() / 1000);
    expect(c.ear_verifier_id).toEqual({ build: 'terroir-server 0.1.0', developer: 'terroir' });
    expect(Object.keys(c.submods)).toEqual([AGENT]);
    expect(vectorOf(c)).toEqual({
      'instance-identity': 2, configuration: 2, executables: 3, 'file-system': 0,
      hardware: 2, 'runtime-opaque': 0, 'storage-opaque': 0, 'sourced-data': EAR_VALUES.locationLatencyBounded,
    });
    expect(c.submods[AGENT]!.ear_status).toBe('affirming');
    expect(c.ear_status).toBe('affirming');
    expect(c.submods[AGENT]!.ear_appraisal_policy_ids).toEqual([policyId({ sha256: POLICY_SHA, name: 'eu-only' })]);
    expect(c.terroir_evidence).toEqual({ log: 'terroir.example/evidence', index: 41 });
    expect(c.submods[AGENT]!['terroir_attestation']).toEqual({
      method: 'tpm', result: 'accepted', time: '2026-12-08T00:59:59.500Z', ekTrust: 'certificate', verifier: 'keylime', pcrs: [0, 7],
    });
    expect(c.eat_nonce).toBeUndefined();
  });

  it('carries the coarse place only: no landmarks, radii, readings or coordinates', () => {
    const c = earFromAttestation(record(), OPTS);
    expect(c.submods[AGENT]!['terroir_location']).toEqual({
      country: 'DE', region: 'EU', policy: 'eu-only', assurance: 'latency-bounded', witnesses: ['node:gnss', 'latency'],
    });
    const json = JSON.stringify(c);
    expect(json).not.toContain('landmark');
    expect(json).not.toContain('radiusKm');
    expect(json).not.toContain('inside the allowed area');
  });

  it('names the policy set by its digest (RFC 6920 ni URI) and the deciding policy', () => {
    const id = policyId({ sha256: POLICY_SHA, name: 'eu only' });
    expect(id).toBe(`ni:///sha-256;${Buffer.from(POLICY_SHA, 'hex').toString('base64url')}?policy=eu%20only`);
    expect(() => policyId({ sha256: 'XY', name: 'p' })).toThrow(EarError);
  });

  it.each([
    ['operator-witnessed', EAR_VALUES.locationOperatorWitnessed, 'affirming'],
    ['self-reported', 32, 'warning'],
    [undefined, 32, 'warning'], // claims minted before `assurance` existed read as self-reported
  ] as const)('sourced-data for assurance %s is %d (%s)', (assurance, value, status) => {
    const c = earFromAttestation(record({ unified: unified({}, { assurance }) }), OPTS);
    expect(vectorOf(c)['sourced-data']).toBe(value);
    expect(c.ear_status).toBe(status);
    expect((c.submods[AGENT]!['terroir_location'] as { assurance: string }).assurance).toBe(assurance ?? 'self-reported');
  });

  it('an enrolled EK (no manufacturer chain) warns on hardware', () => {
    const r = record();
    r.tpm!.ekTrust = 'enrolled';
    const c = earFromAttestation(r, OPTS);
    expect(vectorOf(c).hardware).toBe(EAR_VALUES.hardwareEnrolled);
    expect(tierOf(EAR_VALUES.hardwareEnrolled)).toBe('warning');
    expect(vectorOf(c)['instance-identity']).toBe(2);
    expect(c.ear_status).toBe('warning');
  });

  it('a TPM record that does not say how its EK was trusted makes no hardware claim', () => {
    const r = record();
    delete r.tpm!.ekTrust;
    expect(vectorOf(earFromAttestation(r, OPTS)).hardware).toBe(0);
  });

  it('plain TPM attestation (no Unified Identity) appraises identity and hardware only', () => {
    const c = earFromAttestation(record({ unified: undefined }), OPTS);
    expect(vectorOf(c)).toMatchObject({ 'instance-identity': 2, hardware: 2, executables: 0, configuration: 0, 'sourced-data': 0 });
    expect(c.ear_status).toBe('affirming');
    expect(c.submods[AGENT]!.ear_appraisal_policy_ids).toBeUndefined();
    expect(c.submods[AGENT]!['terroir_location']).toBeUndefined();
  });

  it('a join-token node: identity a warning (bearer secret), no hardware claim', () => {
    const c = earFromAttestation(record({
      method: 'join_token', agentId: 'spiffe://example.org/agent/join_token/4b1d', tpm: undefined, unified: undefined, joinTokenSha256: 'ee'.repeat(32),
    }), OPTS);
    const v = c.submods['spiffe://example.org/agent/join_token/4b1d']!.ear_trustworthiness_vector;
    expect(v['instance-identity']).toBe(EAR_VALUES.identityJoinToken);
    expect(tierOf(v['instance-identity']!)).toBe('warning');
    expect(v.hardware).toBe(0);
    expect(c.ear_status).toBe('warning');
  });

  it('the development stand-in verifier never yields affirming, even with everything else affirming', () => {
    const u = unified({ keylime: { verifier: 'keylime-development-stand-in', valid: true, failures: [] } }, { verifier: 'keylime-development-stand-in' });
    const c = earFromAttestation(record({ unified: u }), OPTS);
    expect(vectorOf(c).executables).toBe(EAR_VALUES.developmentVerifier);
    expect(vectorOf(c).configuration).toBe(EAR_VALUES.developmentVerifier);
    expect(c.ear_status).toBe('warning');
    expect((c.submods[AGENT]!['terroir_attestation'] as { verifier: string }).verifier).toBe('keylime-development-stand-in');
  });

  it('refused by Keylime (PCR policy): executables and configuration contraindicated, identity and hardware as proven', () => {
    const u = unified({
      keylime: { verifier: 'keylime', valid: false, failures: [{ type: 'pcr_validation.invalid_pcr_7', context: '{"got":"…"}' }] },
      decision: undefined, claims: undefined,
    });
    const c = earFromAttestation(record({ result: 'refused', reason: 'Keylime refused the evidence: pcr_validation.invalid_pcr_7', unified: u }), OPTS);
    expect(vectorOf(c)).toMatchObject({ 'instance-identity': 2, hardware: 2, executables: 96, configuration: 96, 'sourced-data': 0 });
    expect(c.ear_status).toBe('contraindicated');
    expect(c.submods[AGENT]!['terroir_refusal']).toEqual({
      stage: 'keylime', reason: 'Keylime refused the PCR quote (pcr_validation.invalid_pcr_7)', keylimeFailures: ['pcr_validation.invalid_pcr_7'],
    });
    expect(c.submods[AGENT]!['terroir_location']).toBeUndefined();
  });

  it('refused by Keylime for the quote itself (signature, nonce): 99, cryptographic validation failed', () => {
    const u = unified({ keylime: { verifier: 'keylime', valid: false, failures: [{ type: 'qoute_validation.quote_validation', context: 'x' }] }, decision: undefined, claims: undefined });
    const c = earFromAttestation(record({ result: 'refused', unified: u }), OPTS);
    expect(vectorOf(c)).toMatchObject({ executables: 99, configuration: 99 });
    expect(c.ear_status).toBe('contraindicated');
  });

  it('"valid" with failures is a refusal, as the server reads it', () => {
    const u = unified({ keylime: { verifier: 'keylime', valid: true, failures: [{ type: 'pcr_validation.invalid_pcr_0' }] }, decision: undefined, claims: undefined });
    const c = earFromAttestation(record({ result: 'refused', unified: u }), OPTS);
    expect(vectorOf(c).executables).toBe(96);
  });

  it('refused by the location policy: sourced-data 96 (deny) or -97 (undecided), Keylime\'s verdict kept', () => {
    const deny = unified({ decision: { decision: 'deny', reasons: ['gnss sensor g0: position is outside the allowed area (in CH)'] }, claims: undefined });
    const c = earFromAttestation(record({ result: 'refused', reason: 'location policy eu-only denied: gnss sensor g0: position is outside the allowed area (in CH)', unified: deny }), OPTS);
    expect(vectorOf(c)).toMatchObject({ 'instance-identity': 2, hardware: 2, executables: 3, configuration: 2, 'sourced-data': 96 });
    expect(c.ear_status).toBe('contraindicated');
    expect(c.submods[AGENT]!['terroir_refusal']).toEqual({ stage: 'location', reason: 'location policy eu-only denied the node', decision: 'deny' });
    expect(JSON.stringify(c)).not.toContain('CH)');

    const undecided = unified({ decision: { decision: 'undecided', reasons: ['error circle crosses the border'] }, claims: undefined });
    const u = earFromAttestation(record({ result: 'refused', unified: undecided }), OPTS);
    expect(vectorOf(u)['sourced-data']).toBe(EAR_VALUES.locationUndecided);
    expect(u.ear_status).toBe('contraindicated');
  });

  it('a refusal at another check is contraindicated on instance-identity, and its reason holds no coordinates', () => {
    const c = earFromAttestation(record({
      result: 'refused', unified: undefined,
      reason: 'unified_identity.claims_document readings[0]: latitude 48.856613, 2.352222 out of range; attestation refused',
    }), OPTS);
    expect(vectorOf(c)['instance-identity']).toBe(EAR_VALUES.refusedUnattributed);
    expect(c.ear_status).toBe('contraindicated');
    const r = c.submods[AGENT]!['terroir_refusal'] as { stage: string; reason: string };
    expect(r.stage).toBe('other');
    expect(r.reason).not.toMatch(/48\.85|2\.35/);
    expect(r.reason).toContain('[redacted]');
  });

  it('a refused join-token attestation is contraindicated', () => {
    const c = earFromAttestation(record({ result: 'refused', method: 'join_token', tpm: undefined, unified: undefined, reason: 'join token expired' }), OPTS);
    expect(c.ear_status).toBe('contraindicated');
    expect((c.submods[AGENT]!['terroir_refusal'] as { reason: string }).reason).toBe('join token expired');
  });

  it('is pure: the same record gives the same claims, and the record is left as it was', () => {
    const r = record();
    const before = structuredClone(r);
    expect(earFromAttestation(r, OPTS)).toEqual(earFromAttestation(r, OPTS));
    expect(r).toEqual(before);
  });

  it('echoes a relying party\'s nonce as base64url', () => {
    const nonce = crypto.randomBytes(16);
    expect(earFromAttestation(record(), { ...OPTS, nonce }).eat_nonce).toBe(nonce.toString('base64url'));
    expect(earFromAttestation(record(), { ...OPTS, nonce: 'abcdefgh12' }).eat_nonce).toBe('abcdefgh12');
    expect(() => earFromAttestation(record(), { ...OPTS, nonce: new Uint8Array(4) })).toThrow(/8\.\.64 bytes/);
  });

  it('refuses records and options it cannot map, saying what is wrong', () => {
    expect(() => earFromAttestation(record({ agentId: undefined, result: 'refused' }), OPTS)).toThrow(/names no node/);
    expect(() => earFromAttestation(record({ agentId: 'http://x/y' }), OPTS)).toThrow(/not a SPIFFE ID/);
    expect(() => earFromAttestation(record(), { ...OPTS, logIndex: -1 })).toThrow(/logIndex/);
    expect(() => earFromAttestation(record(), { ...OPTS, logOrigin: '' })).toThrow(/logOrigin/);
    expect(() => earFromAttestation(record(), { ...OPTS, issuedAt: new Date('nope') })).toThrow(/issuedAt/);
    expect(() => earFromAttestation(record(), { ...OPTS, verifierBuild: '' })).toThrow(/verifierBuild/);
    expect(() => earFromAttestation({ kind: 'policy' } as unknown as AttestationRecord, OPTS)).toThrow(/kind "attestation"/);
  });
});

describe('tiers', () => {
  it.each([
    [0, 'none'], [1, 'none'], [-1, 'none'],
    [2, 'affirming'], [31, 'affirming'], [-2, 'affirming'], [-32, 'affirming'],
    [32, 'warning'], [95, 'warning'], [-33, 'warning'], [-96, 'warning'],
    [96, 'contraindicated'], [127, 'contraindicated'], [-97, 'contraindicated'], [-128, 'contraindicated'],
  ] as const)('%d is %s', (v, tier) => {
    expect(tierOf(v)).toBe(tier);
  });

  it('refuses values outside -128..127 and non-integers', () => {
    expect(() => tierOf(128)).toThrow(EarError);
    expect(() => tierOf(-129)).toThrow(EarError);
    expect(() => tierOf(2.5)).toThrow(EarError);
  });

  it('the worst tier ignores "no claim" unless nothing else is said', () => {
    expect(worstTier({ 'file-system': 0, hardware: 2 })).toBe('affirming');
    expect(worstTier({ 'file-system': 0, hardware: 2, 'sourced-data': 32 })).toBe('warning');
    expect(worstTier({ hardware: -97, 'sourced-data': 32 })).toBe('contraindicated');
    expect(worstTier({ 'file-system': 0, 'runtime-opaque': 1 })).toBe('none');
  });
});

describe('signEar / verifyEar', () => {
  const claims = (): EarClaims => earFromAttestation(record(), { ...OPTS, issuedAt: new Date() });

  it('round trip: EdDSA, the EAR media type, the kid; the claims come back unchanged', async () => {
    const c = claims();
    const token = await signEar(c, KEY, 'audit-1');
    const [h] = token.split('.');
    expect(JSON.parse(Buffer.from(h!, 'base64url').toString())).toEqual({ alg: 'EdDSA', typ: EAR_MEDIA_TYPE, kid: 'audit-1' });
    expect(EAR_MEDIA_TYPE).toBe('application/eat+jwt; eat_profile="tag:ietf.org,2026:rats/ear#04"');
    expect(await verifyEar(token, PUB)).toEqual(c);
    expect(await verifyEar(token, new Map([['audit-0', crypto.generateKeyPairSync('ed25519').publicKey], ['audit-1', PUB]]))).toEqual(c);
    expect(await verifyEar(token, KEY)).toEqual(c); // a private key is reduced to its public half
  });

  it('checks the echoed nonce when the relying party sent one', async () => {
    const token = await signEar(earFromAttestation(record(), { ...OPTS, issuedAt: new Date(), nonce: 'bm9uY2Utb25l' }), KEY, 'audit-1');
    expect((await verifyEar(token, PUB, { nonce: 'bm9uY2Utb25l' })).eat_nonce).toBe('bm9uY2Utb25l');
    expect((await refusal(verifyEar(token, PUB, { nonce: 'b3RoZXItb25l' }))).code).toBe('bad-nonce');
    const none = await signEar(claims(), KEY, 'audit-1');
    expect((await refusal(verifyEar(none, PUB, { nonce: 'bm9uY2Utb25l' }))).message).toMatch(/echoes no nonce/);
  });

  it('refuses another key', async () => {
    const token = await signEar(claims(), KEY, 'audit-1');
    const other = crypto.generateKeyPairSync('ed25519').publicKey;
    const err = await refusal(verifyEar(token, other));
    expect(err.code).toBe('bad-signature');
    expect((await refusal(verifyEar(token, new Map([['audit-1', other]])))).code).toBe('bad-signature');
  });

  it('refuses an unknown kid, or none when keys are looked up by kid', async () => {
    const token = await signEar(claims(), KEY, 'audit-9');
    const err = await refusal(verifyEar(token, new Map([['audit-1', PUB]])));
    expect(err.code).toBe('unknown-key');
    expect(err.message).toMatch(/audit-9/);
    const noKid = await rawSign(claims(), { kid: undefined });
    expect((await refusal(verifyEar(noKid, new Map([['audit-1', PUB]])))).code).toBe('unknown-key');
  });

  it('refuses alg none', async () => {
    const b64 = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url');
    const token = `${b64({ alg: 'none', typ: EAR_MEDIA_TYPE })}.${b64(claims())}.`;
    const err = await refusal(verifyEar(token, PUB));
    expect(err.code).toBe('bad-header');
    expect(err.message).toMatch(/"none" is refused/);
  });

  it('refuses HS256 (the public key used as an HMAC secret) and ES256', async () => {
    const secret = PUB.export({ type: 'spki', format: 'der' });
    const hs = await new CompactSign(Buffer.from(JSON.stringify(claims()))).setProtectedHeader({ alg: 'HS256', typ: EAR_MEDIA_TYPE }).sign(new Uint8Array(secret));
    expect((await refusal(verifyEar(hs, PUB))).code).toBe('bad-header');
    const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const es = await rawSign(claims(), { alg: 'ES256' }, ec.privateKey);
    expect((await refusal(verifyEar(es, PUB))).code).toBe('bad-header');
    expect((await refusal(verifyEar(es, ec.publicKey))).code).toBe('bad-header');
  });

  it('refuses a changed payload byte', async () => {
    const token = await signEar(claims(), KEY, 'audit-1');
    const [h, p, s] = token.split('.') as [string, string, string];
    const payload = Buffer.from(p, 'base64url');
    const at = payload.indexOf('"affirming"') + 1;
    payload[at] = 'w'.charCodeAt(0); // "affirming" → "wffirming"
    const err = await refusal(verifyEar(`${h}.${payload.toString('base64url')}.${s}`, PUB));
    expect(err.code).toBe('bad-signature');
  });

  it('refuses another typ, or none; accepts the bare eat+jwt form', async () => {
    for (const typ of ['JWT', 'application/jwt', 'application/eat+cwt', 'eat+jwt; eat_profile="tag:github.com,2023:veraison/ear"', undefined]) {
      const err = await refusal(verifyEar(await rawSign(claims(), { typ }), PUB));
      expect(err.code).toBe('bad-header');
    }
    expect((await verifyEar(await rawSign(claims(), { typ: 'eat+jwt' }), PUB)).eat_profile).toBe(EAR_PROFILE);
    expect((await verifyEar(await rawSign(claims(), { typ: `Application/EAT+JWT;eat_profile=${EAR_PROFILE}` }), PUB)).eat_profile).toBe(EAR_PROFILE);
  });

  it('refuses another profile', async () => {
    const err = await refusal(verifyEar(await rawSign({ ...claims(), eat_profile: 'tag:github.com,2023:veraison/ear' }), PUB));
    expect(err.code).toBe('bad-profile');
    expect(err.message).toContain(EAR_PROFILE);
  });

  it('refuses an EAR issued in the future, beyond a minute of skew', async () => {
    const now = new Date();
    const at = (s: number): Promise<string> => rawSign({ ...claims(), iat: Math.floor(now.getTime() / 1000) + s });
    expect((await verifyEar(await at(30), PUB, { now })).iat).toBeGreaterThan(now.getTime() / 1000);
    const err = await refusal(verifyEar(await at(600), PUB, { now }));
    expect(err.code).toBe('bad-time');
    expect(err.message).toMatch(/in the future/);
  });

  it('refuses an EAR older than maxAgeS, and an expired one', async () => {
    const token = await signEar(earFromAttestation(record(), OPTS), KEY, 'audit-1'); // issued 2026-12-08T01:00:00Z
    const now = new Date(ISSUED.getTime() + 3600_000);
    expect((await verifyEar(token, PUB, { now, maxAgeS: 7200 })).iat).toBe(ISSUED.getTime() / 1000);
    const err = await refusal(verifyEar(token, PUB, { now, maxAgeS: 300 }));
    expect(err.code).toBe('bad-time');
    expect(err.message).toMatch(/3600 s ago, more than the 300 s/);
    const exp = await rawSign({ ...earFromAttestation(record(), OPTS), exp: ISSUED.getTime() / 1000 + 600 });
    expect((await refusal(verifyEar(exp, PUB, { now }))).message).toMatch(/expired/);
  });

  it('refuses a floating-point iat', async () => {
    expect((await refusal(verifyEar(await rawSign({ ...claims(), iat: Date.now() / 1000 + 0.5 }), PUB))).code).toBe('bad-time');
  });

  it('refuses vector values out of range, and claims AR4SI does not define', async () => {
    for (const bad of [{ hardware: 128 }, { hardware: -129 }, { hardware: 2.5 }, { hardware: '2' }, { location: 2 }]) {
      const c = claims();
      c.submods[AGENT]!.ear_trustworthiness_vector = { ...c.submods[AGENT]!.ear_trustworthiness_vector, ...bad } as TrustworthinessVector;
      const err = await refusal(verifyEar(await rawSign(c), PUB));
      expect(err.code).toBe('bad-claims');
    }
    const empty = claims();
    empty.submods[AGENT]!.ear_trustworthiness_vector = {};
    expect((await refusal(verifyEar(await rawSign(empty), PUB))).message).toMatch(/non-empty/);
  });

  it('refuses a status that claims more trust than the vector', async () => {
    const c = earFromAttestation(record({ result: 'refused', unified: undefined, reason: 'EK refused' }), { ...OPTS, issuedAt: new Date() });
    c.submods[AGENT]!.ear_status = 'affirming';
    const err = await refusal(verifyEar(await rawSign(c), PUB));
    expect(err.code).toBe('bad-claims');
    expect(err.message).toMatch(/claims more trust than its vector's worst claim \(contraindicated\)/);

    const top = earFromAttestation(record({ result: 'refused', unified: undefined, reason: 'EK refused' }), { ...OPTS, issuedAt: new Date() });
    top.ear_status = 'affirming';
    expect((await refusal(verifyEar(await rawSign(top), PUB))).message).toMatch(/submods' worst status/);

    const unknown = claims();
    (unknown.submods[AGENT] as { ear_status: string }).ear_status = 'fine';
    expect((await refusal(verifyEar(await rawSign(unknown), PUB))).code).toBe('bad-claims');

    const lower = claims(); // more caution than the vector needs is allowed
    lower.submods[AGENT]!.ear_status = 'warning';
    lower.ear_status = 'warning';
    expect((await verifyEar(await rawSign(lower), PUB)).ear_status).toBe('warning');
  });

  it('refuses an EAR without submods, verifier id or evidence reference', async () => {
    for (const [k, v] of [['submods', {}], ['ear_verifier_id', { build: 'x' }], ['terroir_evidence', { log: 'l', index: -1 }]] as const) {
      const err = await refusal(verifyEar(await rawSign({ ...claims(), [k]: v }), PUB));
      expect(err.code).toBe('bad-claims');
    }
  });

  it('refuses what is not a compact JWS', async () => {
    expect((await refusal(verifyEar('not-a-token', PUB))).code).toBe('malformed');
    expect((await refusal(verifyEar('', PUB))).code).toBe('malformed');
    expect((await refusal(verifyEar('a'.repeat(70_000), PUB))).code).toBe('malformed');
  });

  it('signEar needs an Ed25519 private key and refuses claims a relying party would refuse', async () => {
    const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    expect((await refusal(signEar(claims(), ec, 'audit-1'))).code).toBe('invalid-input');
    expect((await refusal(signEar(claims(), PUB, 'audit-1'))).code).toBe('invalid-input');
    expect((await refusal(signEar(claims(), KEY, ''))).code).toBe('invalid-input');
    const c = earFromAttestation(record({ result: 'refused', unified: undefined }), OPTS);
    c.ear_status = 'affirming';
    expect((await refusal(signEar(c, KEY, 'audit-1'))).code).toBe('bad-claims');
  });
});
