// TPM node attestation (flag-off form): the EK is trusted through its certificate chain to a
// configured manufacturer CA, or because its public hash is enrolled; the AK must be a restricted
// signing key; and credential activation proves the AK lives in the same TPM as the EK. The
// challenge also carries a fresh single-use nonce, which the Unified Identity exchange (issue 8)
// binds into its quote. With nodeAttestation.tpm.pcrSelectors set, the node also quotes those PCRs
// with the same AK, and each quoted value becomes a selector tpm:pcr:sha256:<index>:<hex>.
import crypto from 'node:crypto';
import { SpiffeId, type TrustDomain } from '../../spiffe/id.js';
import { pcrSelectorsQualifyingData, type TpmQuote } from '../../api/agent-api.js';
import {
  checkAkAttributes, ekHash, ekPublicMatchesCertificate, makeCredential, objectName, parseTpm2bPublic, verifyEkCertificate,
  TpmAkPolicyError, TpmEkCertificateError, TpmParseError, TpmQuoteError, verifyQuote, type EkCertificateInfo, type TpmPublic,
} from '../../tpm/index.js';
import { ConfigError } from '../config.js';
import type { DataStore, Selector } from '../datastore/types.js';
import { AttestationError } from './errors.js';
import type { AttestationOutcome } from './types.js';

export const SECRET_BYTES = 32;
export const NONCE_BYTES = 32;
/** Upper bounds for the TPM inputs (a TPM2B_PUBLIC is under 1 KiB; EK certificates a few KiB). */
const MAX_PUBLIC_BYTES = 2048;
const MAX_CERT_BYTES = 16 * 1024;
const MAX_INTERMEDIATES = 8;
/** A quote's TPMS_ATTEST is ~200 bytes and its TPMT_SIGNATURE at most ~520 (RSA-4096): 1 KiB each is ample. */
const MAX_QUOTE_ATTEST_BYTES = 1024;
const MAX_QUOTE_SIGNATURE_BYTES = 1024;
const SHA256_BYTES = 32;

export interface TpmAttestationInput {
  ekCertificate: Buffer;
  ekIntermediates: Buffer[];
  ekPublic: Buffer;
  akPublic: Buffer;
}

export interface TpmChallenge {
  credentialBlob: Buffer;
  encryptedSecret: Buffer;
  nonce: Buffer;
  expiresAt: Date;
  /** sha256 PCRs the node must quote for PCR-digest selectors (ascending; empty: none). */
  selectorPcrs: number[];
}

/** What the server remembers between the challenge and the answer (in memory, per stream). */
export interface PendingTpmAttestation {
  readonly challenge: TpmChallenge;
  readonly secret: Buffer;
  readonly ekHash: string;
  readonly ek: TpmPublic;
  readonly ak: TpmPublic;
  readonly ekCertificate?: EkCertificateInfo;
}

export interface TpmAttestorOptions {
  trustDomain: TrustDomain;
  manufacturerCasDer: Buffer[];
  enrolledEkHashes: Iterable<string>;
  challengeTtlSeconds: number;
  /** nodeAttestation.tpm.pcrSelectors: sha256 PCRs (0..23) every node quotes; default none. */
  pcrSelectors?: readonly number[];
  store: Pick<DataStore, 'consumeNonce'>;
  now?: () => Date;
}

function parsePublic(buf: Buffer, what: string): TpmPublic {
  if (buf.length === 0) throw new AttestationError('invalid_argument', `${what} is missing`);
  if (buf.length > MAX_PUBLIC_BYTES) throw new AttestationError('invalid_argument', `${what} is ${buf.length} bytes, more than ${MAX_PUBLIC_BYTES}`);
  try {
    return parseTpm2bPublic(buf);
  } catch (err) {
    if (err instanceof TpmParseError) throw new AttestationError('invalid_argument', `${what} is not a valid TPM2B_PUBLIC: ${err.message}`, { cause: err });
    throw err;
  }
}

export class TpmAttestor {
  private readonly enrolled: Set<string>;
  private readonly now: () => Date;
  /** PCR-digest selector PCRs, ascending (the order the TPM quotes them in). */
  readonly selectorPcrs: readonly number[];

  constructor(private readonly opts: TpmAttestorOptions) {
    this.enrolled = new Set([...opts.enrolledEkHashes].map((h) => h.toLowerCase()));
    this.now = opts.now ?? (() => new Date());
    const pcrs = [...(opts.pcrSelectors ?? [])];
    const bad = pcrs.find((n) => !Number.isInteger(n) || n < 0 || n > 23);
    if (bad !== undefined) throw new ConfigError(`nodeAttestation.tpm.pcrSelectors: PCR ${String(bad)} is not an index 0..23`);
    if (new Set(pcrs).size !== pcrs.length) throw new ConfigError('nodeAttestation.tpm.pcrSelectors: a PCR is listed twice');
    this.selectorPcrs = pcrs.sort((a, b) => a - b);
  }

  /** Checks the EK and AK and builds the credential challenge. */
  begin(input: TpmAttestationInput): PendingTpmAttestation {
    const ek = parsePublic(input.ekPublic, 'ek_public');
    const ak = parsePublic(input.akPublic, 'ak_public');
    const hash = ekHash(ek);

    let certInfo: EkCertificateInfo | undefined;
    let certProblem: string | undefined;
    if (input.ekCertificate.length > 0) {
      if (input.ekCertificate.length > MAX_CERT_BYTES) throw new AttestationError('invalid_argument', `ek_certificate is larger than ${MAX_CERT_BYTES} bytes`);
      if (input.ekIntermediates.length > MAX_INTERMEDIATES) throw new AttestationError('invalid_argument', `more than ${MAX_INTERMEDIATES} ek_intermediates`);
      const oversized = input.ekIntermediates.findIndex((c) => c.length > MAX_CERT_BYTES);
      if (oversized >= 0) throw new AttestationError('invalid_argument', `ek_intermediates[${oversized}] is larger than ${MAX_CERT_BYTES} bytes`);
      try {
        certInfo = verifyEkCertificate(input.ekCertificate, this.opts.manufacturerCasDer, { intermediatesDer: input.ekIntermediates, now: this.now() });
      } catch (err) {
        if (!(err instanceof TpmEkCertificateError)) throw err;
        if (err.code === 'malformed-certificate') throw new AttestationError('invalid_argument', err.message, { cause: err });
        certProblem = err.message;
      }
      if (certInfo && !ekPublicMatchesCertificate(ek, certInfo)) {
        throw new AttestationError('permission_denied', 'ek_public does not match the key certified by ek_certificate');
      }
    }
    if (!certInfo && !this.enrolled.has(hash)) {
      throw new AttestationError('permission_denied', certProblem
        ? `EK not trusted: ${certProblem}`
        : `EK not trusted: no EK certificate was sent and EK hash ${hash} is not enrolled (nodeAttestation.tpm.enrolledEkHashes)`);
    }
    try {
      checkAkAttributes(ak);
    } catch (err) {
      if (err instanceof TpmAkPolicyError) throw new AttestationError('permission_denied', `AK refused: ${err.message}`, { cause: err });
      throw err;
    }
    const secret = crypto.randomBytes(SECRET_BYTES);
    let cred: { credentialBlob: Buffer; encryptedSecret: Buffer };
    try {
      cred = makeCredential(ek, objectName(ak), secret);
    } catch (err) {
      throw new AttestationError('invalid_argument', `cannot build a credential for this EK: ${(err as Error).message}`, { cause: err });
    }
    const challenge: TpmChallenge = {
      ...cred,
      nonce: crypto.randomBytes(NONCE_BYTES),
      expiresAt: new Date(this.now().getTime() + this.opts.challengeTtlSeconds * 1000),
      selectorPcrs: [...this.selectorPcrs],
    };
    return { challenge, secret, ekHash: hash, ek, ak, ekCertificate: certInfo };
  }

  /**
   * Checks the activated secret and, when the challenge asked for one, the PCR-selector quote, then
   * consumes the nonce; returns the node's identity. A refused answer writes nothing (the nonce is
   * consumed only once everything else passed; the stream ends either way, so it is never reused).
   */
  async finish(p: PendingTpmAttestation, activatedSecret: Buffer, pcrQuote?: TpmQuote | null): Promise<AttestationOutcome> {
    if (this.now() > p.challenge.expiresAt) {
      throw new AttestationError('permission_denied', 'the credential challenge expired; attest again');
    }
    if (activatedSecret.length !== SECRET_BYTES) {
      throw new AttestationError('invalid_argument', `activated_secret must be ${SECRET_BYTES} bytes, got ${activatedSecret.length}`);
    }
    if (!crypto.timingSafeEqual(activatedSecret, p.secret)) {
      throw new AttestationError('permission_denied', 'activated secret does not match: the AK is not in the TPM holding this EK');
    }
    // The AK is now proven to share a TPM with the EK, so its quote speaks for this node's PCRs.
    const pcrValues = p.challenge.selectorPcrs.length > 0 ? verifyPcrQuote(p, pcrQuote) : undefined;
    // Single use across all servers: a second answer to the same challenge is a replay.
    if (!(await this.opts.store.consumeNonce(p.challenge.nonce, p.challenge.expiresAt))) {
      throw new AttestationError('permission_denied', 'attestation nonce already used (replay); attest again');
    }
    const selectors: Selector[] = [{ type: 'tpm', value: `ek_hash:${p.ekHash}` }];
    const data: Record<string, unknown> = { ekHash: p.ekHash, akName: objectName(p.ak).toString('hex'), enrolled: this.enrolled.has(p.ekHash) };
    if (p.ekCertificate) {
      const issuer = p.ekCertificate.issuer.replace(/\n/g, ',');
      selectors.push({ type: 'tpm', value: `ek_issuer:${issuer}` });
      if (p.ekCertificate.manufacturer) selectors.push({ type: 'tpm', value: `ek_manufacturer:${p.ekCertificate.manufacturer}` });
      if (p.ekCertificate.model) selectors.push({ type: 'tpm', value: `ek_model:${p.ekCertificate.model}` });
      Object.assign(data, { ekIssuer: issuer, ekSerial: p.ekCertificate.serialNumber, manufacturer: p.ekCertificate.manufacturer, model: p.ekCertificate.model });
    }
    if (pcrValues) {
      const sha256: Record<string, string> = {};
      for (const [idx, v] of pcrValues) {
        const hex = v.toString('hex');
        selectors.push({ type: 'tpm', value: `pcr:sha256:${idx}:${hex}` });
        sha256[String(idx)] = hex;
      }
      data['pcrs'] = { sha256 };
    }
    return {
      agentId: SpiffeId.fromSegments(this.opts.trustDomain, 'agent', 'tpm', p.ekHash),
      attestationType: 'tpm',
      selectors,
      attestationData: data,
      canRenew: false,
    };
  }
}

/**
 * Checks the PCR-selector quote against the challenge: sizes, the exact PCR set, then (src/tpm's
 * verifyQuote) TPM magic and quote type, the AK's signature, qualifyingData equal to
 * SHA-256("terroir-pcr-selectors-v1" || nonce), the selection equal to the requested PCRs and the
 * PCR digest equal to the digest of the sent values. Returns the values in ascending PCR order.
 */
function verifyPcrQuote(p: PendingTpmAttestation, q: TpmQuote | null | undefined): Map<number, Buffer> {
  const wanted = p.challenge.selectorPcrs;
  if (!q || (q.attest.length === 0 && q.signature.length === 0)) {
    throw new AttestationError('failed_precondition',
      `this server derives PCR selectors (nodeAttestation.tpm.pcrSelectors: ${wanted.join(', ')}): the challenge response must carry pcr_quote; upgrade the agent to one that answers selector_pcrs`);
  }
  const bad = (m: string): AttestationError => new AttestationError('invalid_argument', `pcr_quote${m}`);
  if (q.attest.length === 0 || q.attest.length > MAX_QUOTE_ATTEST_BYTES) throw bad(`.attest must be 1..${MAX_QUOTE_ATTEST_BYTES} bytes, got ${q.attest.length}`);
  if (q.signature.length === 0 || q.signature.length > MAX_QUOTE_SIGNATURE_BYTES) throw bad(`.signature must be 1..${MAX_QUOTE_SIGNATURE_BYTES} bytes, got ${q.signature.length}`);
  const sent = new Map<number, Buffer>();
  for (const [k, v] of Object.entries(q.pcrs ?? {})) {
    const idx = /^\d{1,2}$/.test(k) ? Number(k) : NaN;
    if (!wanted.includes(idx)) throw bad(`.pcrs has PCR ${k.slice(0, 8)}, which the challenge did not ask for (selector_pcrs: ${wanted.join(', ')})`);
    if (!Buffer.isBuffer(v) || v.length !== SHA256_BYTES) throw bad(`.pcrs[${idx}] must be a ${SHA256_BYTES}-byte sha256 value`);
    sent.set(idx, v);
  }
  const missing = wanted.filter((i) => !sent.has(i));
  if (missing.length > 0) throw bad(`.pcrs lacks PCR(s) ${missing.join(', ')}: quote every PCR of the challenge's selector_pcrs`);
  try {
    verifyQuote({
      akPublic: p.ak, attest: q.attest, signature: q.signature,
      pcrs: [{ alg: 'sha256', values: sent }], expectedExtraData: pcrSelectorsQualifyingData(p.challenge.nonce),
    });
  } catch (err) {
    if (!(err instanceof TpmQuoteError)) throw err;
    const why = err.code === 'extra-data-mismatch'
      ? 'the quote is not bound to this challenge (wrong nonce, replayed quote, or not the PCR-selector binding)'
      : err.message;
    throw new AttestationError(err.code.startsWith('malformed') ? 'invalid_argument' : 'permission_denied', `pcr_quote verification failed (${err.code}): ${why}`, { cause: err });
  }
  return new Map(wanted.map((i) => [i, sent.get(i) as Buffer]));
}
