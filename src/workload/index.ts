// Public surface of the workload library.
export { WorkloadError, AuthorizationError, type WorkloadErrorCode } from './errors.js';
export type { X509BundleSetSource, X509SourceLike } from './source.js';
export type { Backoff } from './watcher.js';
export { X509Source, type X509SourceOptions } from './x509-source.js';
export { JWTSource, type JWTSourceOptions } from './jwt-source.js';
export { StaticX509Source, type StaticX509SourceFiles } from './static-source.js';
export {
  authorizeAny, authorizeId, authorizeOneOf, authorizeMemberOf, authorizeAll, authorizeUnifiedIdentity, unifiedIdentityOf,
  x509Peer, jwtPeer, type Authorizer, type Peer, type UnifiedIdentityRequirement,
} from './authorizer.js';
export { createTlsServer, tlsConnect, spiffeClientOptions, verifyPeerCertificate, peerOf, type MtlsOptions } from './tls.js';
export { createHttpsServer, SpiffeHttpsAgent } from './https.js';
export { spiffeConnector, spiffeUndiciAgent } from './undici.js';
