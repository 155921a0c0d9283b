// TPM node attestation (flag-off form): the EK is trusted through its certificate chain to a
// configured manufacturer CA, or because its public hash is enrolled; the AK must be a restricted
// signing key; and credential activation proves the AK lives in the same TPM as the EK. The
// challenge also carries a fresh single-use nonce, which the Unified Identity exchange (issue 8)
// binds into its quote.
import crypto from 'node:crypto';
import { SpiffeId, type TrustDomain } from '../../spiffe/id.js';
import {
  checkAkAttributes, ekHash, ekPublicMatchesCertificate, makeCredential, objectName, parseTpm2bPublic, verifyEkCertificate,
  TpmAkPolicyError, TpmEkCertificateError, TpmParseError, type EkCertificateInfo, type TpmPublic,
} from '../../tpm/index.js';
import type { DataStore, Selector } from '../datastore/types.js';
import { AttestationError } from './errors.js';
import type { AttestationOutcome } from './types.js';

export const SECRET_BYTES = 32;
export const NONCE_BYTES = 32;
/** Upper bounds for the TPM inputs (a TPM2B_PUBLIC is under 1 KiB; EK certificates a few KiB). */
const MAX_PUBLIC_BYTES = 2048;
const MAX_CERT_BYTES = 16 * 1024;
const MAX_INTERMEDIATES = 8;

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

  constructor(private readonly opts: TpmAttestorOptions) {
    this.enrolled = new Set([...opts.enrolledEkHashes].map((h) => h.toLowerCase()));
    this.now = opts.now ?? (() => new Date());
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
    };
    return { challenge, secret, ekHash: hash, ek, ak, ekCertificate: certInfo };
  }

  /** Checks the activated secret and consumes the nonce; returns the node's identity. */
  async finish(p: PendingTpmAttestation, activatedSecret: Buffer): Promise<AttestationOutcome> {
    if (this.now() > p.challenge.expiresAt) {
      throw new AttestationError('permission_denied', 'the credential challenge expired; attest again');
    }
    if (activatedSecret.length !== SECRET_BYTES) {
      throw new AttestationError('invalid_argument', `activated_secret must be ${SECRET_BYTES} bytes, got ${activatedSecret.length}`);
    }
    if (!crypto.timingSafeEqual(activatedSecret, p.secret)) {
      throw new AttestationError('permission_denied', 'activated secret does not match: the AK is not in the TPM holding this EK');
    }
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
    return {
      agentId: SpiffeId.fromSegments(this.opts.trustDomain, 'agent', 'tpm', p.ekHash),
      attestationType: 'tpm',
      selectors,
      attestationData: data,
      canRenew: false,
    };
  }
}
