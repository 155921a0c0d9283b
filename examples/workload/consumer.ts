// A consumer service that serves data only to workloads attested inside the EU.
//
//   SPIFFE_ENDPOINT_SOCKET=unix:///run/terroir/agent.sock PORT=8443 \
//   TRUST_DOMAIN=example.org npx tsx examples/workload/consumer.ts
//
// Its own identity comes from the local terroir agent (X509Source, rotated without restart). A caller
// gets through only with an X.509-SVID of TRUST_DOMAIN whose Unified Identity claims say region EU.
import pino from 'pino';
import {
  authorizeAll, authorizeMemberOf, authorizeUnifiedIdentity, createHttpsServer, unifiedIdentityOf, X509Source,
} from '../../src/workload/index.js';

const log = pino({ name: 'consumer' });
const port = Number(process.env['PORT'] ?? 8443);
const trustDomain = process.env['TRUST_DOMAIN'] ?? 'example.org';

const wanted = process.env['SPIFFE_ID']; // which of our SVIDs to serve with, when the agent gives us several
const source = await X509Source.create({
  logger: log,
  ...(wanted ? { pick: (svids) => svids.find((s) => s.id.toString() === wanted) } : {}),
});
log.info({ id: source.getX509Svid().id.toString() }, 'got our SVID');

const server = createHttpsServer({
  source,
  authorizer: authorizeAll(authorizeMemberOf(trustDomain), authorizeUnifiedIdentity({ trustDomain: trustDomain, regions: ['EU'] })),
  logger: log,
}, (_req, res, peer) => {
  const claims = unifiedIdentityOf(peer);
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ hello: peer.id.toString(), country: claims?.country, policy: claims?.policy }));
});
server.listen(port, () => log.info({ port }, 'consumer listening (SPIFFE mTLS, region EU only)'));

const stop = (): void => {
  server.close();
  void source.close();
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
