// Checks that bytes handed to Keylime as an AK/EK are a TPM2B_PUBLIC, so garbage is refused here
// with a clear error instead of by the verifier.
import { parseTpm2bPublic } from '../tpm/index.js';
import { KeylimeError } from './errors.js';

export function checkTpm2bPublic(bytes: Uint8Array, what: string): void {
  try {
    parseTpm2bPublic(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch (err) {
    throw new KeylimeError('KEYLIME_BAD_REQUEST', `${what} is not a TPM2B_PUBLIC: ${(err as Error).message}`, { cause: err });
  }
}
