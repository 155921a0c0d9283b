// Error types of the SPIFFE layer. Each carries a stable `code` so callers (server, agent, workload
// library) can branch on the reason without matching message text.

/** Base class of every error raised by src/spiffe. */
export abstract class SpiffeError<C extends string = string> extends Error {
  readonly code: C;

  constructor(code: C, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

export type SpiffeIdErrorCode =
  | 'empty'
  | 'too-long'
  | 'wrong-scheme'
  | 'missing-trust-domain'
  | 'trust-domain-too-long'
  | 'bad-trust-domain-char'
  | 'no-leading-slash'
  | 'empty-segment'
  | 'dot-segment'
  | 'trailing-slash'
  | 'bad-path-segment-char';

/** A SPIFFE ID, trust domain name or path that breaks the SPIFFE ID rules. */
export class SpiffeIdError extends SpiffeError<SpiffeIdErrorCode> {}

export type X509SvidErrorCode =
  | 'invalid-argument'
  | 'unsupported-key'
  | 'malformed-certificate'
  | 'malformed-csr'
  | 'bad-csr-signature'
  | 'no-uri-san'
  | 'multiple-uri-sans'
  | 'invalid-spiffe-id'
  | 'root-path-id'
  | 'san-not-critical'
  | 'leaf-is-ca'
  | 'leaf-key-usage'
  | 'leaf-ext-key-usage'
  | 'duplicate-extension'
  | 'unhandled-critical-extension'
  | 'unsupported-signature-algorithm'
  | 'chain-too-long'
  | 'no-bundle'
  | 'expired'
  | 'not-yet-valid'
  | 'issuer-not-ca'
  | 'issuer-key-usage'
  | 'path-length-exceeded'
  | 'name-mismatch'
  | 'bad-signature'
  | 'name-constraint-violation'
  | 'untrusted';

/** Minting or validating an X.509-SVID (or a CA certificate, or a CSR) failed. */
export class X509SvidError extends SpiffeError<X509SvidErrorCode> {}

export type JwtSvidErrorCode =
  | 'invalid-argument'
  | 'unsupported-key'
  | 'malformed-token'
  | 'token-too-large'
  | 'unsupported-algorithm'
  | 'unexpected-header'
  | 'bad-typ'
  | 'missing-kid'
  | 'invalid-subject'
  | 'missing-audience'
  | 'audience-mismatch'
  | 'missing-expiry'
  | 'expired'
  | 'not-yet-valid'
  | 'bad-claim'
  | 'no-bundle'
  | 'unknown-kid'
  | 'key-algorithm-mismatch'
  | 'bad-signature';

/** Minting or validating a JWT-SVID failed. */
export class JwtSvidError extends SpiffeError<JwtSvidErrorCode> {}

export type BundleErrorCode =
  | 'too-large'
  | 'malformed-json'
  | 'malformed-bundle'
  | 'bad-x509-authority'
  | 'bad-jwt-authority'
  | 'duplicate-kid'
  | 'invalid-argument';

/** A trust bundle (or SPIFFE bundle JSON document) is malformed or an operation on it is invalid. */
export class BundleError extends SpiffeError<BundleErrorCode> {}
