// A client workload calling the consumer over SPIFFE mTLS, with undici.
//
//   SPIFFE_ENDPOINT_SOCKET=unix:///run/terroir/agent.sock \
//   CONSUMER_URL=https://127.0.0.1:8443/ CONSUMER_ID=spiffe://example.org/consumer \
//   npx tsx examples/workload/client.ts
//
// The server must present exactly CONSUMER_ID; our own SVID (with the claims of our node) comes from
// the local agent and is rotated without restart.
import { request } from 'undici';
import { authorizeId, spiffeUndiciAgent, X509Source } from '../../src/workload/index.js';

const url = process.env['CONSUMER_URL'] ?? 'https://127.0.0.1:8443/';
const consumerId = process.env['CONSUMER_ID'] ?? 'spiffe://example.org/consumer';

const wanted = process.env['SPIFFE_ID']; // which of our SVIDs to present, when the agent gives us several
const source = await X509Source.create(wanted ? { pick: (svids) => svids.find((s) => s.id.toString() === wanted) } : {});
const dispatcher = spiffeUndiciAgent({ source, authorizer: authorizeId(consumerId) });
try {
  const res = await request(url, { dispatcher });
  process.stdout.write(`${res.statusCode} ${await res.body.text()}\n`);
} catch (e) {
  process.stderr.write(`refused: ${(e as Error).message}\n`);
  process.exitCode = 1;
} finally {
  await dispatcher.close();
  await source.close();
}
