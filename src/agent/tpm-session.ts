// The agent's TPM for node attestation, over src/tpm's TpmDevice: EK certificate and public, an AK
// (fresh per attestation, or kept at a persistent handle), and ActivateCredential on the challenge.
import pino, { type Logger } from 'pino';
import { TpmDevice, type AkHandle } from '../tpm/device.js';
import { tpmDeviceQuoter, type NodeQuoter } from '../keylime/index.js';
import type { TpmAttestation } from '../api/agent-api.js';
import type { TpmAttestorConfig } from './config.js';
import type { TpmCredentialSource } from './node-attestor.js';

export interface TpmSession extends TpmCredentialSource {
  close(): Promise<void>;
}

export class TpmSessionError extends Error {
  readonly code = 'tpm_session';
  constructor(message: string) {
    super(message);
    this.name = 'TpmSessionError';
  }
}

/** The most EK intermediates the server accepts in one attestation (its MAX_INTERMEDIATES). */
export const MAX_EK_INTERMEDIATES = 8;

export interface OpenTpmSessionOptions {
  /** For warnings about the TPM (e.g. a damaged EK chain NV index); default a pino logger on stdout. */
  logger?: Logger;
}

export async function openTpmCredentialSource(cfg: TpmAttestorConfig, opts: OpenTpmSessionOptions = {}): Promise<TpmSession> {
  const logger = opts.logger ?? pino({ name: 'terroir-agent' }).child({ component: 'tpm' });
  const device = await TpmDevice.open(cfg.tcti, { logger });
  // The EK certificate chain the manufacturer stored in NV: read once per session (provisioned at
  // manufacture, it does not change while the agent runs). Sent as untrusted intermediates; the
  // server trusts only its configured manufacturer roots.
  let intermediates: Promise<Buffer[]> | undefined;
  const ekIntermediates = (): Promise<Buffer[]> => {
    intermediates ??= device.readEkCertificateChain().then((chain) => {
      if (chain.certificates.length <= MAX_EK_INTERMEDIATES) return chain.certificates;
      logger.warn({ found: chain.certificates.length, sent: MAX_EK_INTERMEDIATES },
        `the TPM's EK certificate chain has more certificates than the server accepts; sending the first ${MAX_EK_INTERMEDIATES}`);
      return chain.certificates.slice(0, MAX_EK_INTERMEDIATES);
    }, (err: unknown) => {
      // Optional data: attest without it (the server may hold the intermediates) and try again next time.
      intermediates = undefined;
      logger.warn({ err: (err as Error).message }, 'cannot read the EK certificate chain from the TPM; attesting without it');
      return [];
    });
    return intermediates;
  };
  let ak: AkHandle | undefined;
  // Set once a quoter was handed out (Keylime): the verifier holds the enrolled AK, so it must stay
  // the same for the session, or quotes would fail between a re-attestation and the re-enrollment.
  let keepAk = false;

  const currentAk = async (): Promise<AkHandle> => {
    if (cfg.akHandle !== undefined) {
      if (ak) return ak;
      try {
        ak = await device.loadPersistentAk(cfg.akHandle);
      } catch {
        ak = await device.createAk('ecc-p256', { persistentHandle: cfg.akHandle });
      }
      return ak;
    }
    if (ak && keepAk) return ak;
    // A transient AK lives for one attestation: the previous one is flushed.
    if (ak) await device.releaseAk(ak);
    ak = await device.createAk('ecc-p256');
    return ak;
  };

  return {
    async attestationData(): Promise<TpmAttestation> {
      const ekCertificate = await device.readEkCertificate(cfg.ekKind);
      const ekPublic = await device.ekPublic(cfg.ekKind);
      const chain = await ekIntermediates();
      const a = await currentAk();
      return { ekCertificate: ekCertificate ?? Buffer.alloc(0), ekIntermediates: chain, ekPublic, akPublic: a.public };
    },
    async activateCredential(credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer> {
      if (!ak) throw new Error('no AK: attestationData() must come first');
      return device.activateCredential(ak, cfg.ekKind, credentialBlob, encryptedSecret);
    },
    async quote(pcrs: number[], qualifyingData: Buffer) {
      if (!ak) throw new TpmSessionError('no AK: attestationData() must come first');
      const q = await device.quote(ak, [{ alg: 'sha256', pcrs }], qualifyingData);
      const bank = q.pcrs.find((b) => b.alg === 'sha256');
      if (!bank) throw new TpmSessionError('the TPM returned no sha256 PCR values for the quote');
      return { attest: q.attest, signature: q.signature, pcrs: bank.values };
    },
    async probeQuote(digest: Buffer) {
      if (!ak) throw new TpmSessionError('no AK: the node has not attested, so there is nothing to quote with');
      // Which PCR is quoted does not matter (the landmark checks only the AK's signature over the
      // digest); one PCR because a TPM refuses an empty selection.
      return device.quoteBinding(ak, [{ alg: 'sha256', pcrs: [0] }], digest);
    },
    quoter(): NodeQuoter {
      keepAk = true;
      // Each call quotes with the session's current AK (created by the first attestation).
      const current = (): NodeQuoter => {
        if (!ak) throw new TpmSessionError('no AK yet: the node has not attested, so there is nothing to quote with');
        return tpmDeviceQuoter(device, ak);
      };
      return {
        quote: (pcrs, qualifyingData) => current().quote(pcrs, qualifyingData),
        pcrReset: (index) => current().pcrReset(index),
        pcrExtend: (index, digest) => current().pcrExtend(index, digest),
      };
    },
    async close(): Promise<void> {
      if (ak) await device.releaseAk(ak).catch(() => undefined);
      await device.close();
    },
  };
}
