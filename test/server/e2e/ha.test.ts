// Two servers sharing one PostgreSQL database (HA): each keeps its own CA keys, the stored bundle is
// the union, and an agent attested at one server is served by the other. PostgreSQL is started from
// the installed binaries.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { SyncEntriesResponse } from '../../../src/api/agent-api.js';
import { startPostgres, type TestPostgres } from '../../support/postgres.js';
import { agentClient, attest, createJoinToken, newKey, startTestServer, TD, unary, type AgentClient, type TestServer } from './helpers.js';

let pg: TestPostgres;
let a: TestServer;
let b: TestServer;
const clients: AgentClient[] = [];

beforeAll(async () => {
  pg = await startPostgres();
  const url = await pg.createDatabase('terroir_ha');
  a = await startTestServer({ dataStore: { type: 'postgres', connectionString: url } });
  b = await startTestServer({ dataStore: { type: 'postgres', connectionString: url } });
  await a.server.tick(); // A re-reads the bundle B extended
});

afterAll(async () => {
  for (const c of clients) c.close();
  await b?.stop();
  await a?.stop();
  await pg?.stop();
});

it('publishes both servers\' CAs in one bundle, with one sequence', async () => {
  const roots = (s: TestServer): string[] => s.server.ca.x509Roots().map((d) => d.toString('base64')).sort();
  expect(roots(a)).toHaveLength(2);
  expect(roots(a)).toEqual(roots(b));
  expect(roots(a)).toContain(a.server.ca.activeX509().certificateDer.toString('base64'));
  expect(roots(a)).toContain(b.server.ca.activeX509().certificateDer.toString('base64'));
  expect(a.server.ca.bundle().sequence).toBe(b.server.ca.bundle().sequence);
});

it('serves at server B an agent attested at server A; a join token works only once across both', async () => {
  const token = await createJoinToken(a.server);
  const k = newKey();
  const ca = agentClient(a.server);
  clients.push(ca);
  const r = (await attest(ca, { params: { joinToken: { token }, csr: k.csr } }))[0]!.result!;
  await a.server.store.createEntries([{ spiffeId: `spiffe://${TD}/ha/w`, parentId: r.spiffeId, selectors: [{ type: 'unix', value: 'uid:1' }], federatesWith: [] }]);
  const cb = agentClient(b.server, { chain: r.svidChain, key: k.privateKey });
  clients.push(cb);
  const sync = await unary<SyncEntriesResponse>(cb, 'SyncEntries', { knownRevision: '' });
  expect(sync.entries.map((e) => e.spiffeId)).toEqual([`spiffe://${TD}/ha/w`]);
  const cb2 = agentClient(b.server);
  clients.push(cb2);
  await expect(attest(cb2, { params: { joinToken: { token }, csr: newKey().csr } })).rejects.toMatchObject({ code: grpc.status.PERMISSION_DENIED });
});
