// The `dashboard` section of the server configuration. Off by default; loopback over plain HTTP by
// default; a listener reachable from elsewhere must use mTLS with the server's own SVID and admits only
// the SPIFFE IDs listed in `remote.allowedSpiffeIds` (the dashboard shows the whole fleet).
import net from 'node:net';
import { z } from 'zod';
import { SpiffeId } from '../../spiffe/id.js';

/** True for addresses only this host can reach (127.0.0.0/8, ::1, localhost). */
export function isLoopbackAddress(host: string): boolean {
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  if (net.isIPv6(host)) return host === '::1' || /^::ffff:127\./i.test(host);
  return false;
}

const spiffeIdString = z.string().min(1).refine((s) => {
  try {
    SpiffeId.parse(s);
    return true;
  } catch {
    return false;
  }
}, 'a SPIFFE ID (spiffe://trust.domain/path)');

export const dashboardSchema = z.object({
  enabled: z.boolean().default(false),
  bindAddress: z.string().min(1).default('127.0.0.1'),
  port: z.number().int().min(0).max(65535).default(8082),
  /** mTLS with the server's SVID: clients must present an X.509-SVID of this trust domain with one of these IDs. */
  remote: z.object({
    allowedSpiffeIds: z.array(spiffeIdString).min(1).max(1000),
    /** Names in the dashboard's certificate, for browsers' host-name check (default: agentApi.dnsNames). */
    dnsNames: z.array(z.string().min(1).max(253)).max(32).optional(),
    /** IP addresses in the dashboard's certificate (default: agentApi.ipAddresses, plus bindAddress if it is an IP). */
    ipAddresses: z.array(z.string().refine((s) => net.isIP(s) !== 0, 'an IP address')).max(32).optional(),
  }).strict().optional(),
}).strict().superRefine((d, ctx) => {
  if (d.enabled && !isLoopbackAddress(d.bindAddress) && d.remote === undefined) {
    ctx.addIssue({
      code: 'custom',
      path: ['remote'],
      message: `dashboard.bindAddress ${d.bindAddress} is not a loopback address: remote access requires mTLS; list the operators' SPIFFE IDs in dashboard.remote.allowedSpiffeIds (or bind 127.0.0.1)`,
    });
  }
});

export type DashboardConfig = z.output<typeof dashboardSchema>;
