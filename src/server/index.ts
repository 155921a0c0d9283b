// Public surface of the terroir server.
export { loadServerConfig, parseServerConfig, ConfigError, ENV_OVERRIDES, type ServerConfig } from './config.js';
export { startServer, type RunningServer, type StartServerOptions } from './run.js';
export { CaManager, CaError, type X509Authority, type JwtAuthority, type BundleStore } from './ca/manager.js';
export { SvidIssuer, normalizeSerial } from './ca/issuer.js';
export { RateLimiter } from './ratelimit.js';
export { pinoAuditor, type Auditor, type AuditRecord } from './audit.js';
export { startHealthServer, type HealthServer } from './health.js';
export { BundleFetcher, FederationError } from './federation/fetcher.js';
export { startBundleEndpoint } from './federation/endpoint.js';
export { AttestationError } from './attestation/errors.js';
