/**
 * Backs the quote endpoint with src/tpm's TpmDevice. Type-only imports: this module does not load
 * the TSS libraries itself, so importing src/keylime never drags native code into the server.
 */
import type { AkHandle, TpmDevice } from '../tpm/device.js';
import type { NodeQuoter } from './quote-endpoint.js';
import type { PcrHashAlg } from './quote-string.js';

export type QuotingDevice = Pick<TpmDevice, 'quote' | 'pcrReset' | 'pcrExtend'>;

/** A NodeQuoter quoting `hashAlg` PCRs with `ak`; PCR extends go to the same bank. */
export function tpmDeviceQuoter(device: QuotingDevice, ak: AkHandle, hashAlg: Exclude<PcrHashAlg, 'sm3_256'> = 'sha256'): NodeQuoter {
  return {
    async quote(pcrs, qualifyingData) {
      const q = await device.quote(ak, [{ alg: hashAlg, pcrs: [...pcrs] }], Buffer.from(qualifyingData));
      return { attest: q.attest, signature: q.signature, pcrs: q.pcrs.map((b) => ({ alg: b.alg, values: b.values })) };
    },
    pcrReset: (index) => device.pcrReset(index),
    pcrExtend: (index, digest) => device.pcrExtend(index, hashAlg, Buffer.from(digest)),
  };
}
