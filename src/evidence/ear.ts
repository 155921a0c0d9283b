// EAT Attestation Results (EAR, draft-ietf-rats-ear-04) for terroir's node attestations: the server's
// appraisal of one attestation record, as an AR4SI trustworthiness vector a relying party can act on
// without learning terroir's evidence formats, signed (JWS, EdDSA) with the server's audit key, and
// pointing at the evidence log record it rests on (docs/ear.md). Three parts: the pure mapping from an
// AttestationRecord, signing, and the relying party's verification.
import { createPublicKey, type KeyObject } from 'node:crypto';
import { CompactSign, compactVerify, decodeProtectedHeader, type CompactVerifyGetKey } from 'jose';
import { SpiffeId } from '../spiffe/id.js';
import type { AttestationRecord, RecordedUnifiedEvidence } from './record.js';

/** The `eat_profile` draft-ietf-rats-ear-04 mandates for every EAR. */
export const EAR_PROFILE = 'tag:ietf.org,2026:rats/ear#04';
/**
 * The JWS `typ`: the EAT JWT media type (RFC 9782) with the EAR profile as its `eat_profile`
 * parameter, which is how the EAR draft derives its media types. The `application/` prefix stays
 * because the parameter holds a '/' (RFC 7515 section 4.1.9).
 */
export const EAR_MEDIA_TYPE = `application/eat+jwt; eat_profile="${EAR_PROFILE}"`;
/** The only JWS algorithm produced or accepted: Ed25519. */
export const EAR_ALG = 'EdDSA';
/** Default `ear_verifier_id.developer`. */
export const EAR_DEVELOPER = 'terroir';
/** Tolerated clock difference between the server and a relying party, seconds. */
export const EAR_CLOCK_SKEW_S = 60;
/** Largest compact JWS verifyEar reads: one submod with a few private claims is about 2 KiB. */
export const MAX_EAR_BYTES = 64 * 1024;

/** Private claims (RFC 7519 section 4.3), spelt like the draft's own since -04 (`_`, no `.` or `-`). */
export const EAR_EVIDENCE_CLAIM = 'terroir_evidence';
export const EAR_ATTESTATION_CLAIM = 'terroir_attestation';
export const EAR_LOCATION_CLAIM = 'terroir_location';
export const EAR_REFUSAL_CLAIM = 'terroir_refusal';

export type TrustTier = 'none' | 'affirming' | 'warning' | 'contraindicated';
export const TRUST_TIERS: readonly TrustTier[] = ['none', 'affirming', 'warning', 'contraindicated'];

/** The eight AR4SI trustworthiness claims. */
export const TRUSTWORTHINESS_CLAIMS = [
  'instance-identity', 'configuration', 'executables', 'file-system',
  'hardware', 'runtime-opaque', 'storage-opaque', 'sourced-data',
] as const;
export type TrustworthinessClaim = (typeof TRUSTWORTHINESS_CLAIMS)[number];
export type TrustworthinessVector = Partial<Record<TrustworthinessClaim, number>>;

/**
 * Every value terroir assigns (docs/ear.md has the table). AR4SI's standard values are used where
 * their definition fits; where none does, a value from the tier's non-standard (negative) range,
 * defined here, so a relying party that does not know it still reads the right tier.
 */
export const EAR_VALUES = {
  /** AR4SI 0: no claim (the evidence says nothing about this aspect). */
  noClaim: 0,
  /** instance-identity 2: recognized (EK trusted, AK proved in the same TPM), not known compromised. */
  identityRecognized: 2,
  /** hardware 2: the EK certificate chains to a TPM manufacturer's CA: genuine hardware. */
  hardwareGenuine: 2,
  /** executables 3: only approved code was measured during boot (the quoted PCRs match the allowlist). */
  executablesBootApproved: 3,
  /** configuration 2: the measured boot configuration is a known and approved one. */
  configurationApproved: 2,
  /** sourced-data 32: the location comes from an unattested source, the node's own sensors. */
  locationSelfReported: 32,
  /** AR4SI 96 (every claim): contraindicated. */
  contraindicated: 96,
  /** AR4SI 99 (every claim): cryptographic validation of the evidence failed. */
  cryptoFailed: 99,
  // terroir-defined (non-standard) values
  /** sourced-data, affirming: landmarks bounded the node's distance by round-trip time. */
  locationLatencyBounded: -2,
  /** sourced-data, affirming: the mobile operator placed the node's SIM inside the area. */
  locationOperatorWitnessed: -3,
  /** instance-identity, warning: recognized by a single-use join token (a bearer secret), no hardware key. */
  identityJoinToken: -33,
  /** hardware, warning: the EK is enrolled by hash; no manufacturer chain shows it is a hardware TPM. */
  hardwareEnrolled: -33,
  /** executables/configuration, warning: only terroir's development stand-in, not Keylime, checked the quote. */
  developmentVerifier: -34,
  /** instance-identity, contraindicated: refused at a check this mapping does not attribute to a claim. */
  refusedUnattributed: -97,
  /** sourced-data, contraindicated: the location policy could not decide, and the attestation was refused. */
  locationUndecided: -97,
} as const;

/** Coarse location facts of an accepted Unified Identity attestation (never coordinates). */
export interface EarLocation {
  country?: string;
  region?: string;
  policy?: string;
  assurance?: string;
  witnesses?: string[];
}

/** How the node attested. */
export interface EarAttestation {
  method: AttestationRecord['method'];
  result: AttestationRecord['result'];
  /** When the server wrote the attestation record (ISO 8601). */
  time: string;
  ekTrust?: 'certificate' | 'enrolled';
  /** Who judged the PCR quote: `keylime` or terroir's development stand-in. */
  verifier?: string;
  /** The PCR indexes the judged quote covered. */
  pcrs?: number[];
}

/** Why an attestation was refused. */
export interface EarRefusal {
  /** The check that refused: Keylime's verdict, the location policy, or another (see `reason`). */
  stage: 'keylime' | 'location' | 'other';
  reason: string;
  /** Keylime's failure types, e.g. `pcr_validation.invalid_pcr_7`. */
  keylimeFailures?: string[];
  /** The location policy's decision (`deny` or `undecided`). */
  decision?: string;
}

export interface EarAppraisal {
  ear_status: TrustTier;
  ear_trustworthiness_vector: TrustworthinessVector;
  ear_appraisal_policy_ids?: string[];
  terroir_attestation?: EarAttestation;
  terroir_location?: EarLocation;
  terroir_refusal?: EarRefusal;
  [extension: string]: unknown;
}

export interface EarClaims {
  eat_profile: string;
  iat: number;
  exp?: number;
  ear_verifier_id: { build: string; developer: string };
  /** The worst status of all submods (one here: the node). */
  ear_status?: TrustTier;
  /** Label → appraisal; terroir's label is the node's SPIFFE ID. */
  submods: Record<string, EarAppraisal>;
  /** The relying party's nonce, echoed (RFC 9711 section 4.1). */
  eat_nonce?: string;
  /** Where the attestation record is: the log's origin and the record's index (ask the log for its inclusion proof). */
  terroir_evidence: { log: string; index: number };
  [extension: string]: unknown;
}

export type EarErrorCode =
  | 'invalid-input' | 'malformed' | 'bad-header' | 'unknown-key' | 'bad-signature'
  | 'bad-profile' | 'bad-time' | 'bad-claims' | 'bad-nonce';

export class EarError extends Error {
  override readonly name = 'EarError';
  constructor(readonly code: EarErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
  }
}

export interface EarOptions {
  /** Log index of the attestation record. */
  logIndex: number;
  /** The evidence log's origin (its checkpoints' first line). */
  logOrigin: string;
  issuedAt: Date;
  /** `ear_verifier_id.build`: which server build appraised, e.g. `terroir-server 0.1.0`. */
  verifierBuild: string;
  /** `ear_verifier_id.developer`; default EAR_DEVELOPER. */
  verifierDeveloper?: string;
  /** A relying party's nonce to echo: 8..64 bytes, or its base64url text (11..88 characters). */
  nonce?: Uint8Array | string;
}

// ---------------------------------------------------------------------------------------------
// Tiers (AR4SI section 2.3.2: each tier has a standard positive range and a non-standard negative one)

/** The tier of a trustworthiness claim value (-128..127). */
export function tierOf(value: number): TrustTier {
  if (!Number.isInteger(value) || value < -128 || value > 127) {
    throw new EarError('bad-claims', `a trustworthiness claim must be an integer in -128..127, got ${String(value)}`);
  }
  if (value >= 96 || value <= -97) return 'contraindicated';
  if (value >= 32 || value <= -33) return 'warning';
  if (value >= 2 || value <= -2) return 'affirming';
  return 'none';
}

/** How much trust a status conveys, for "no higher trust than the worst claim": none sits below affirming. */
const TRUST_RANK: Record<TrustTier, number> = { contraindicated: 0, warning: 1, none: 2, affirming: 3 };

/** The worst tier of a vector; `none` claims (0, 1, -1) say nothing and count only when all are none. */
export function worstTier(vector: TrustworthinessVector): TrustTier {
  let worst: TrustTier = 'none';
  for (const v of Object.values(vector)) {
    const t = tierOf(v as number);
    if (t === 'none') continue;
    if (worst === 'none' || TRUST_RANK[t] < TRUST_RANK[worst]) worst = t;
  }
  return worst;
}

function lessTrusting(a: TrustTier, b: TrustTier): TrustTier {
  return TRUST_RANK[a] <= TRUST_RANK[b] ? a : b;
}

// ---------------------------------------------------------------------------------------------
// The mapping

/** The EAR claims of one attestation record. Pure: same record and options, same claims. */
export function earFromAttestation(record: AttestationRecord, opts: EarOptions): EarClaims {
  if (record === null || typeof record !== 'object' || record.kind !== 'attestation') {
    throw new EarError('invalid-input', 'earFromAttestation needs an evidence record of kind "attestation"');
  }
  if (record.result !== 'accepted' && record.result !== 'refused') {
    throw new EarError('invalid-input', `attestation record result must be accepted or refused, got ${JSON.stringify(record.result)}`);
  }
  const label = nodeLabel(record);
  const submod = appraise(record);
  const claims: EarClaims = {
    eat_profile: EAR_PROFILE,
    iat: issuedAtSeconds(opts.issuedAt),
    ear_verifier_id: { build: text(opts.verifierBuild, 'verifierBuild'), developer: text(opts.verifierDeveloper ?? EAR_DEVELOPER, 'verifierDeveloper') },
    ear_status: submod.ear_status,
    submods: { [label]: submod },
    terroir_evidence: evidenceRef(opts.logOrigin, opts.logIndex),
  };
  if (opts.nonce !== undefined) claims.eat_nonce = nonceText(opts.nonce);
  return claims;
}

function nodeLabel(record: AttestationRecord): string {
  if (record.agentId === undefined) {
    // A relying party asks for the EAR of a node; a refusal before the node was known has no subject.
    throw new EarError('invalid-input', 'the attestation record names no node (agentId): it was refused before the node was known, so no EAR is issued for it; the evidence log keeps the record');
  }
  try {
    return SpiffeId.parse(record.agentId).toString();
  } catch (err) {
    throw new EarError('invalid-input', `the attestation record's agentId is not a SPIFFE ID: ${(err as Error).message}`, { cause: err });
  }
}

function appraise(record: AttestationRecord): EarAppraisal {
  const unified = record.unified;
  const keylime = unified?.keylime;
  const keylimeAccepted = keylime !== undefined && keylime.valid === true && keylime.failures.length === 0;
  const decision = unified?.decision?.decision;
  const refusal = record.result === 'refused' ? refusalOf(record) : undefined;

  const vector: Record<TrustworthinessClaim, number> = {
    'instance-identity': identityValue(record),
    configuration: EAR_VALUES.noClaim,
    executables: EAR_VALUES.noClaim,
    'file-system': EAR_VALUES.noClaim,
    hardware: hardwareValue(record),
    'runtime-opaque': EAR_VALUES.noClaim,
    'storage-opaque': EAR_VALUES.noClaim,
    'sourced-data': EAR_VALUES.noClaim,
  };
  if (keylime !== undefined) {
    const v = keylimeAccepted
      ? (keylime.verifier === 'keylime' ? undefined : EAR_VALUES.developmentVerifier)
      : (failureTypes(keylime.failures).every(isQuoteFailure) && keylime.failures.length > 0 ? EAR_VALUES.cryptoFailed : EAR_VALUES.contraindicated);
    vector.executables = v ?? EAR_VALUES.executablesBootApproved;
    vector.configuration = v ?? EAR_VALUES.configurationApproved;
  }
  if (decision !== undefined && decision !== 'allow') {
    vector['sourced-data'] = decision === 'deny' ? EAR_VALUES.contraindicated : EAR_VALUES.locationUndecided;
  } else if (record.result === 'accepted' && unified !== undefined) {
    vector['sourced-data'] = locationValue(unified);
  }
  if (refusal?.stage === 'other') vector['instance-identity'] = EAR_VALUES.refusedUnattributed;

  const appraisal: EarAppraisal = {
    ear_status: worstTier(vector),
    ear_trustworthiness_vector: vector,
  };
  if (record.result === 'refused' && appraisal.ear_status !== 'contraindicated') {
    // Whatever the record says, a refusal must never read as anything but contraindicated.
    vector['instance-identity'] = EAR_VALUES.refusedUnattributed;
    appraisal.ear_status = 'contraindicated';
  }
  if (unified?.policy !== undefined) appraisal.ear_appraisal_policy_ids = [policyId(unified.policy)];
  appraisal[EAR_ATTESTATION_CLAIM] = attestationOf(record);
  const location = locationOf(record);
  if (location !== undefined) appraisal[EAR_LOCATION_CLAIM] = location;
  if (refusal !== undefined) appraisal[EAR_REFUSAL_CLAIM] = refusal;
  return appraisal;
}

function identityValue(record: AttestationRecord): number {
  if (record.method === 'tpm') return EAR_VALUES.identityRecognized;
  if (record.method === 'join_token') return EAR_VALUES.identityJoinToken;
  return 1; // AR4SI 1: evidence the verifier cannot evaluate
}

function hardwareValue(record: AttestationRecord): number {
  if (record.method !== 'tpm') return EAR_VALUES.noClaim;
  if (record.tpm?.ekTrust === 'certificate') return EAR_VALUES.hardwareGenuine;
  if (record.tpm?.ekTrust === 'enrolled') return EAR_VALUES.hardwareEnrolled;
  return EAR_VALUES.noClaim; // a record that does not say how the EK was trusted
}

/** The place's appraisal: only a witness outside the node makes it affirming. */
function locationValue(unified: RecordedUnifiedEvidence): number {
  switch (unified.claims?.['assurance']) {
    case 'latency-bounded': return EAR_VALUES.locationLatencyBounded;
    case 'operator-witnessed': return EAR_VALUES.locationOperatorWitnessed;
    // self-reported, and claims minted before `assurance` existed (read as self-reported)
    default: return EAR_VALUES.locationSelfReported;
  }
}

function refusalOf(record: AttestationRecord): EarRefusal {
  const keylime = record.unified?.keylime;
  if (keylime !== undefined && !(keylime.valid === true && keylime.failures.length === 0)) {
    const types = failureTypes(keylime.failures);
    return {
      stage: 'keylime',
      reason: `${keylime.verifier === 'keylime' ? 'Keylime' : `the verifier ${keylime.verifier}`} refused the PCR quote${types.length > 0 ? ` (${types.join(', ')})` : ''}`,
      keylimeFailures: types,
    };
  }
  const decision = record.unified?.decision?.decision;
  if (decision !== undefined && decision !== 'allow') {
    // The policy's own reasons stay in the evidence log: they talk about readings, not the coarse place.
    const name = record.unified?.policy?.name ?? 'in force';
    return { stage: 'location', reason: `location policy ${name} ${decision === 'deny' ? 'denied the node' : 'could not decide'}`, decision };
  }
  return { stage: 'other', reason: coarseReason(record.reason) };
}

const MAX_REASON = 300;

/** The refusal reason for relying parties: bounded, and never a coordinate (defence in depth). */
function coarseReason(reason: string | undefined): string {
  if (typeof reason !== 'string' || reason.trim() === '') return 'refused (the record names no reason)';
  const redacted = reason.replace(/-?\d{1,3}\.\d{4,}/g, '[redacted]');
  return redacted.length > MAX_REASON ? `${redacted.slice(0, MAX_REASON - 1)}…` : redacted;
}

function failureTypes(failures: unknown[]): string[] {
  const out: string[] = [];
  for (const f of Array.isArray(failures) ? failures : []) {
    const t = f !== null && typeof f === 'object' ? (f as { type?: unknown }).type : undefined;
    if (typeof t === 'string' && t !== '' && !out.includes(t)) out.push(t.slice(0, 100));
    if (out.length >= 16) break;
  }
  return out;
}

/** Keylime's quote checks (signature, nonce, digest: "qoute_validation" is Keylime's own spelling). */
function isQuoteFailure(type: string): boolean {
  return /^(qoute|quote)_validation\./.test(type);
}

function attestationOf(record: AttestationRecord): EarAttestation {
  const a: EarAttestation = { method: record.method, result: record.result, time: record.time };
  if (record.tpm?.ekTrust !== undefined) a.ekTrust = record.tpm.ekTrust;
  const keylime = record.unified?.keylime;
  if (keylime !== undefined) {
    a.verifier = keylime.verifier;
    a.pcrs = Object.keys(record.unified?.quote.pcrs ?? {}).map(Number).filter(Number.isInteger).sort((x, y) => x - y);
  }
  return a;
}

/** The coarse claims the node's SVIDs carry; nothing finer (no readings, disks or coordinates). */
function locationOf(record: AttestationRecord): EarLocation | undefined {
  const c = record.unified?.claims;
  if (record.result !== 'accepted' || c === undefined) return undefined;
  const loc: EarLocation = {};
  for (const k of ['country', 'region', 'policy'] as const) if (typeof c[k] === 'string') loc[k] = c[k] as string;
  loc.assurance = typeof c['assurance'] === 'string' ? c['assurance'] : 'self-reported';
  const w = c['witnesses'];
  if (Array.isArray(w) && w.every((x) => typeof x === 'string')) loc.witnesses = [...(w as string[])];
  return loc;
}

/**
 * The location policy set by content (RFC 6920 `ni` URI: SHA-256 of the policy document as the
 * evidence log's `policy` record holds it, base64url) and the policy in it that decided.
 */
export function policyId(policy: { sha256: string; name: string }): string {
  if (typeof policy.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(policy.sha256)) {
    throw new EarError('invalid-input', 'the record\'s policy digest must be 64 lowercase hex characters (SHA-256)');
  }
  const digest = Buffer.from(policy.sha256, 'hex').toString('base64url');
  return `ni:///sha-256;${digest}?policy=${encodeURIComponent(policy.name)}`;
}

function issuedAtSeconds(d: Date): number {
  if (!(d instanceof Date) || Number.isNaN(d.getTime()) || d.getTime() < 0) throw new EarError('invalid-input', 'issuedAt must be a valid Date');
  return Math.floor(d.getTime() / 1000);
}

function text(v: string, what: string): string {
  if (typeof v !== 'string' || v.trim() === '' || v.length > 200) throw new EarError('invalid-input', `${what} must be a non-empty string of at most 200 characters`);
  return v;
}

function evidenceRef(log: string, index: number): { log: string; index: number } {
  if (typeof log !== 'string' || log === '' || log.length > 200) throw new EarError('invalid-input', 'logOrigin must be the evidence log\'s origin: 1..200 characters');
  if (!Number.isSafeInteger(index) || index < 0) throw new EarError('invalid-input', `logIndex must be a non-negative integer, got ${String(index)}`);
  return { log, index };
}

const NONCE_TEXT = /^[A-Za-z0-9_-]{8,88}$/;

function nonceText(nonce: Uint8Array | string): string {
  if (typeof nonce === 'string') {
    if (!NONCE_TEXT.test(nonce)) throw new EarError('invalid-input', 'a nonce given as text must be 8..88 base64url characters');
    return nonce;
  }
  if (!(nonce instanceof Uint8Array) || nonce.length < 8 || nonce.length > 64) throw new EarError('invalid-input', 'a nonce must be 8..64 bytes (RFC 9711 section 4.1)');
  return Buffer.from(nonce).toString('base64url');
}

// ---------------------------------------------------------------------------------------------
// Signing and verification

/** The EAR as a compact JWS: `{alg: EdDSA, typ: EAR_MEDIA_TYPE, kid}` over the claims' JSON. */
export async function signEar(claims: EarClaims, key: KeyObject, kid: string): Promise<string> {
  if (!isEd25519(key) || key.type !== 'private') throw new EarError('invalid-input', 'signEar needs an Ed25519 private KeyObject (the server\'s audit key)');
  if (typeof kid !== 'string' || kid === '' || kid.length > 200) throw new EarError('invalid-input', 'kid must be a non-empty string of at most 200 characters');
  checkClaims(claims); // never sign what a relying party would refuse
  const payload = Buffer.from(JSON.stringify(claims), 'utf8');
  return new CompactSign(payload).setProtectedHeader({ alg: EAR_ALG, typ: EAR_MEDIA_TYPE, kid }).sign(key);
}

export interface VerifyEarOptions {
  /** Default: the current time. */
  now?: Date;
  /** Refuse an EAR issued longer ago than this. */
  maxAgeS?: number;
  /** The nonce the relying party sent: the EAR must echo exactly it. */
  nonce?: string;
}

/**
 * A relying party's check of an EAR: EdDSA only, the EAR media type, a key from `keys` (by `kid` when a
 * map), the signature, the profile, the times, and every submod's status and vector. Returns the claims.
 */
export async function verifyEar(token: string, keys: Map<string, KeyObject> | KeyObject, opts: VerifyEarOptions = {}): Promise<EarClaims> {
  if (typeof token !== 'string' || token.length === 0 || token.length > MAX_EAR_BYTES) {
    throw new EarError('malformed', `an EAR must be a compact JWS of 1..${MAX_EAR_BYTES} characters`);
  }
  let header: ReturnType<typeof decodeProtectedHeader>;
  try {
    header = decodeProtectedHeader(token);
  } catch (err) {
    throw new EarError('malformed', `not a compact JWS: ${(err as Error).message}`, { cause: err });
  }
  if (header.alg !== EAR_ALG) throw new EarError('bad-header', `JWS alg ${JSON.stringify(header.alg)} is refused: EARs are signed with EdDSA (Ed25519) only`);
  if (!isEarType(header.typ)) throw new EarError('bad-header', `JWS typ ${JSON.stringify(header.typ)} is not the EAR media type ${EAR_MEDIA_TYPE}`);
  const key = pickKey(keys, header.kid);
  const getKey: CompactVerifyGetKey = () => key;
  let payload: Uint8Array;
  try {
    ({ payload } = await compactVerify(token, getKey, { algorithms: [EAR_ALG] }));
  } catch (err) {
    const e = err as { code?: string; message?: string };
    if (e.code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') {
      throw new EarError('bad-signature', 'the EAR signature does not verify with the audit key: it was changed, or signed by another key', { cause: err });
    }
    throw new EarError('malformed', `cannot verify the EAR: ${e.message ?? String(err)}`, { cause: err });
  }
  let claims: unknown;
  try {
    claims = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(payload));
  } catch (err) {
    throw new EarError('malformed', `the EAR payload is not UTF-8 JSON: ${(err as Error).message}`, { cause: err });
  }
  checkClaims(claims);
  checkTimes(claims, opts);
  if (opts.nonce !== undefined && claims.eat_nonce !== opts.nonce) {
    throw new EarError('bad-nonce', claims.eat_nonce === undefined ? 'the EAR echoes no nonce, but one was sent' : 'the EAR echoes another nonce than the one sent: it answers another request');
  }
  return claims;
}

function isEd25519(key: unknown): key is KeyObject {
  return key !== null && typeof key === 'object' && (key as KeyObject).asymmetricKeyType === 'ed25519';
}

function publicOf(key: KeyObject): KeyObject {
  return key.type === 'private' ? createPublicKey(key) : key;
}

function pickKey(keys: Map<string, KeyObject> | KeyObject, kid: unknown): KeyObject {
  if (keys instanceof Map) {
    if (typeof kid !== 'string' || kid === '') throw new EarError('unknown-key', 'the EAR header names no kid, and the audit keys are looked up by kid');
    const key = keys.get(kid);
    if (key === undefined) throw new EarError('unknown-key', `no audit key with kid ${JSON.stringify(kid)}: fetch the server's current audit keys`);
    if (!isEd25519(key)) throw new EarError('invalid-input', `audit key ${JSON.stringify(kid)} is not an Ed25519 key`);
    return publicOf(key);
  }
  if (!isEd25519(keys)) throw new EarError('invalid-input', 'verifyEar needs an Ed25519 KeyObject (the server\'s audit public key) or a map of them by kid');
  return publicOf(keys);
}

/** `application/eat+jwt` (or `eat+jwt`), with no parameter but an `eat_profile` naming the EAR profile. */
function isEarType(typ: unknown): boolean {
  if (typeof typ !== 'string') return false;
  const [type, ...params] = typ.split(';').map((s) => s.trim());
  if (type === undefined || type.toLowerCase().replace(/^application\//, '') !== 'eat+jwt') return false;
  if (params.length === 0) return true;
  if (params.length > 1) return false;
  const m = /^eat_profile=(?:"([^"]*)"|([^\s"]+))$/i.exec(params[0] as string);
  const profile = m?.[1] ?? m?.[2];
  return profile !== undefined && profile.toLowerCase() === EAR_PROFILE.toLowerCase();
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

const STATUSES = new Set<string>(TRUST_TIERS);
const VECTOR_KEYS = new Set<string>(TRUSTWORTHINESS_CLAIMS);

/** The shape and consistency rules of an EAR claims set (what verifyEar enforces, and signEar too). */
function checkClaims(c: unknown): asserts c is EarClaims {
  const bad = (why: string): never => {
    throw new EarError('bad-claims', why);
  };
  if (!isObject(c)) bad('the EAR payload must be a JSON object');
  const claims = c as Record<string, unknown>;
  if (claims['eat_profile'] !== EAR_PROFILE) {
    throw new EarError('bad-profile', `eat_profile ${JSON.stringify(claims['eat_profile'])} is not the EAR profile ${EAR_PROFILE}`);
  }
  if (!Number.isSafeInteger(claims['iat'])) throw new EarError('bad-time', 'iat must be an integer number of seconds (EAT forbids floating point)');
  if (claims['exp'] !== undefined && !Number.isSafeInteger(claims['exp'])) throw new EarError('bad-time', 'exp must be an integer number of seconds');
  const vid = claims['ear_verifier_id'];
  if (!isObject(vid) || typeof vid['build'] !== 'string' || vid['build'] === '' || typeof vid['developer'] !== 'string' || vid['developer'] === '') {
    bad('ear_verifier_id must be {build, developer}, both non-empty strings');
  }
  if (claims['eat_nonce'] !== undefined && (typeof claims['eat_nonce'] !== 'string' || !NONCE_TEXT.test(claims['eat_nonce']))) {
    bad('eat_nonce must be 8..88 base64url characters');
  }
  const ev = claims[EAR_EVIDENCE_CLAIM];
  if (!isObject(ev) || typeof ev['log'] !== 'string' || ev['log'] === '' || !Number.isSafeInteger(ev['index']) || (ev['index'] as number) < 0) {
    bad(`${EAR_EVIDENCE_CLAIM} must be {log, index}: the evidence log's origin and the attestation record's index`);
  }
  const submods = claims['submods'];
  if (!isObject(submods) || Object.keys(submods).length === 0) bad('submods must be a non-empty map of appraisals');
  let overall: TrustTier | undefined;
  for (const [label, a] of Object.entries(submods as Record<string, unknown>)) {
    const worst = checkAppraisal(label, a, bad);
    overall = overall === undefined ? worst : lessTrusting(overall, worst);
  }
  const top = claims['ear_status'];
  if (top !== undefined) {
    if (typeof top !== 'string' || !STATUSES.has(top)) bad(`ear_status ${JSON.stringify(top)} is not one of ${TRUST_TIERS.join(', ')}`);
    if (TRUST_RANK[top as TrustTier] > TRUST_RANK[overall as TrustTier]) bad(`ear_status ${top as string} claims more trust than the submods' worst status, ${overall as string}`);
  }
}

/** Checks one appraisal; returns the tier its status must not exceed (worse of status and vector). */
function checkAppraisal(label: string, a: unknown, bad: (why: string) => never): TrustTier {
  const where = `submod ${JSON.stringify(label)}`;
  if (label === '') bad('a submod label must not be empty');
  if (!isObject(a)) bad(`${where} must be an object`);
  const appraisal = a as Record<string, unknown>;
  const status = appraisal['ear_status'];
  if (typeof status !== 'string' || !STATUSES.has(status)) bad(`${where}: ear_status ${JSON.stringify(status)} is not one of ${TRUST_TIERS.join(', ')}`);
  const vector = appraisal['ear_trustworthiness_vector'];
  if (!isObject(vector) || Object.keys(vector).length === 0) bad(`${where}: ear_trustworthiness_vector must be a non-empty map`);
  for (const [k, v] of Object.entries(vector as Record<string, unknown>)) {
    if (!VECTOR_KEYS.has(k)) bad(`${where}: ${JSON.stringify(k)} is not an AR4SI trustworthiness claim`);
    if (typeof v !== 'number' || !Number.isInteger(v) || v < -128 || v > 127) bad(`${where}: ${k} = ${JSON.stringify(v)} is not an integer in -128..127`);
  }
  const worst = worstTier(vector as TrustworthinessVector);
  if (TRUST_RANK[status as TrustTier] > TRUST_RANK[worst]) {
    bad(`${where}: ear_status ${status as string} claims more trust than its vector's worst claim (${worst})`);
  }
  const ids = appraisal['ear_appraisal_policy_ids'];
  if (ids !== undefined && (!Array.isArray(ids) || ids.length === 0 || !ids.every((x) => typeof x === 'string' && x !== ''))) {
    bad(`${where}: ear_appraisal_policy_ids must be a non-empty list of strings`);
  }
  return lessTrusting(status as TrustTier, worst);
}

function checkTimes(claims: EarClaims, opts: VerifyEarOptions): void {
  const now = opts.now ?? new Date();
  if (!(now instanceof Date) || Number.isNaN(now.getTime())) throw new EarError('invalid-input', 'now must be a valid Date');
  const nowS = now.getTime() / 1000;
  if (claims.iat > nowS + EAR_CLOCK_SKEW_S) {
    throw new EarError('bad-time', `the EAR was issued ${Math.round(claims.iat - nowS)} s in the future; check the server's and this host's clocks`);
  }
  if (opts.maxAgeS !== undefined) {
    if (!Number.isFinite(opts.maxAgeS) || opts.maxAgeS < 0) throw new EarError('invalid-input', 'maxAgeS must be a non-negative number of seconds');
    if (nowS - claims.iat > opts.maxAgeS) {
      throw new EarError('bad-time', `the EAR was issued ${Math.round(nowS - claims.iat)} s ago, more than the ${opts.maxAgeS} s allowed: fetch a fresh one`);
    }
  }
  if (claims.exp !== undefined && nowS >= claims.exp + EAR_CLOCK_SKEW_S) throw new EarError('bad-time', 'the EAR has expired (exp): fetch a fresh one');
}
