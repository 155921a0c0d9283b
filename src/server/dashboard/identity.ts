// The remote dashboard's TLS identity: the server's own SVID (spiffe://<td>/spire/server) with the DNS
// names and IP addresses operators type into a browser, so that a browser (or curl) checking the host
// name accepts it once the trust domain's root is trusted. Re-minted at half-life and after a CA
// rotation; the bundle is the server's current X.509 roots, against which client SVIDs are verified.
import { ServerSvidSource } from '../ca/server-svid-source.js';
import type { SvidIssuer } from '../ca/issuer.js';
import type { CaManager } from '../ca/manager.js';
import type { DashboardIdentity } from './server.js';

export class DashboardSvidSource extends ServerSvidSource implements DashboardIdentity {
  constructor(
    issuer: SvidIssuer,
    ca: CaManager,
    names: { dnsNames: string[]; ipAddresses: string[] },
    ttlSeconds = 3600,
    now: () => Date = () => new Date(),
  ) {
    super(issuer, ca, ttlSeconds, now, names);
  }
}
