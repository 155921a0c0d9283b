/**
 * The verifier side of the TPM layer: pure TypeScript, no TSS library. A server imports this; only
 * the agent imports ./device.js (which loads libtss2 through koffi).
 */
export * from './errors.js';
export { TPM_ALG, TPM_ST, TPMA_OBJECT, TPM_GENERATED_VALUE, digestSize, hashAlgId, hashAlgFromId, isHashAlg, type HashAlg, type EccCurve } from './constants.js';
export {
  parseTpm2bPublic, parseTpmtPublic, toTpm2bPublic, objectName, publicKeyFromTpmPublic, spkiDer, ekHash,
  checkAkAttributes, marshalTpmtPublic, decodeObjectAttributes,
  type TpmPublic, type TpmRsaPublic, type TpmEccPublic, type ObjectAttributes, type Scheme, type SymmetricDef, type AkPolicy,
} from './public.js';
export {
  parseTpmsAttest, parseTpmtSignature, marshalPcrSelectionList,
  type TpmsAttest, type TpmtSignature, type PcrSelection, type PcrValues, type ClockInfo,
} from './attest.js';
export { verifyQuote, pcrDigest, type VerifyQuoteOptions, type QuoteInfo } from './quote.js';
export { makeCredential, kdfa, kdfe, type Credential } from './credential.js';
export { verifyEkCertificate, ekPublicMatchesCertificate, ekCertificateIdentity, type EkCertificateInfo, type VerifyEkCertificateOptions } from './ekcert.js';
export { ekTemplate, akTemplate, EK_NV_INDEX, EK_PERSISTENT_HANDLE, type EkKind } from './templates.js';
export { splitDerCertificates, EK_CHAIN_NV_FIRST, EK_CHAIN_NV_LAST, type SplitCertificates } from './ekchain.js';
