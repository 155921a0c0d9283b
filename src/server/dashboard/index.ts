// The operator's dashboard (issue 17): a read-only page with the fleet on a world map, the node list,
// refusals and policies, updated live from the audit stream.
export { DashboardFeed, scrubReason, type DashboardEvent, type DashboardEventKind } from './feed.js';
export { DashboardView, MAX_PAGE, type NodeRow, type FleetSummary } from './view.js';
export { startDashboard, CONTENT_SECURITY_POLICY, type DashboardServer, type DashboardOptions, type DashboardIdentity } from './server.js';
export { dashboardSchema, isLoopbackAddress, type DashboardConfig } from './config.js';
export { buildWorldMap, worldMapBody, type WorldMap } from './map.js';
export { DashboardSvidSource } from './identity.js';
