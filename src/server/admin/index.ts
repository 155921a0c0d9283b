// The admin API: createAdminService (behaviour) and startAdminServer (the 0600 Unix socket).
export { createAdminService, AdminRpcError, type AdminService, type AdminServiceDeps } from './service.js';
export { startAdminServer, AdminSocketError, type AdminServer, type AdminServerOptions } from './server.js';
export { MAX_ENTRY_TTL_SECONDS, MAX_JOIN_TOKEN_TTL_SECONDS, DEFAULT_JOIN_TOKEN_TTL_SECONDS } from './validate.js';
