// Public surface of the SPIFFE primitives.
export * from './errors.js';
export { TrustDomain, SpiffeId, MAX_SPIFFE_ID_BYTES, MAX_TRUST_DOMAIN_BYTES } from './id.js';
export {
  mintX509Svid, mintCaCertificate, verifyX509Svid, parseX509SvidId, NOT_BEFORE_BACKDATE_SECONDS,
  type X509Authority, type MintedCertificate, type ExtraExtension, type MintX509SvidOptions,
  type MintCaCertificateOptions, type VerifiedX509Svid,
} from './x509svid.js';
export { publicKeyFromCsr, MAX_CSR_BYTES } from './csr.js';
export {
  mintJwtSvid, validateJwtSvid, validateJwtSvidSync, MAX_JWT_BYTES,
  type JwtAuthorityKey, type JwtSvidMintAlgorithm, type MintJwtSvidOptions, type ValidatedJwtSvid,
} from './jwtsvid.js';
export {
  Bundle, BundleSet, MAX_BUNDLE_JSON_BYTES, MAX_BUNDLE_KEYS, type X509BundleSource, type JwtBundleSource,
} from './bundle.js';
export type { X509Svid, X509SvidSource, JwtSvid, JwtSvidSource } from './svid-source.js';
export { derToPem, pemToDer } from './pem.js';
export { parseCertificate, MAX_CERTIFICATE_BYTES, type CertificateView, type CertificateExtension } from './certificate.js';
export type { NameFields } from './cert-builder.js';
export {
  UNIFIED_IDENTITY_OID, UNIFIED_IDENTITY_JWT_CLAIM, MAX_UNIFIED_IDENTITY_BYTES, DEVELOPMENT_STAND_IN_VERIFIER, UnifiedIdentityError, canonicalUnifiedIdentity,
  unifiedIdentityExtension, unifiedIdentityJwtClaim, decodeUnifiedIdentityExtension, unifiedIdentityFromCertificate,
  unifiedIdentityFromJwtClaims, type UnifiedIdentityClaims, type UnifiedIdentityErrorCode,
} from './unified-identity.js';
