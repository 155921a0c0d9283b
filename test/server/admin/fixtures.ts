// A real admin server for tests: SQLite file in a temp dir, a real CA certificate in the bundle,
// a pino logger whose lines the test can read.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { Bundle, TrustDomain, mintCaCertificate } from '../../../src/spiffe/index.js';
import { openDataStore, type DataStore } from '../../../src/server/datastore/index.js';
import { createAdminService, startAdminServer, type AdminServer } from '../../../src/server/admin/index.js';
import { tempDir } from '../../support/tmp.js';

export const TD = TrustDomain.parse('example.org');

export function caCertificate(td: TrustDomain): Buffer {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return mintCaCertificate({ trustDomain: td, publicKey, selfSignKey: privateKey, ttlSeconds: 3600 }).der;
}

export interface AdminFixture {
  dir: string;
  socketPath: string;
  dbPath: string;
  store: DataStore;
  server: AdminServer;
  bundle: Bundle;
  logs: Record<string, unknown>[];
  entriesChanged: number;
  evicted: string[];
  close(): Promise<void>;
}

export async function startAdminFixture(opts: { locationPoliciesEnforced?: boolean } = {}): Promise<AdminFixture> {
  const { dir, cleanup } = tempDir('terroir-admin-');
  const socketPath = path.join(dir, 'private', 'api.sock');
  const dbPath = path.join(dir, 'datastore.sqlite3');
  const store = await openDataStore({ type: 'sqlite', path: dbPath });
  const bundle = new Bundle(TD);
  bundle.addX509Authority(caCertificate(TD));
  bundle.sequenceNumber = 3n;
  const logs: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => { logs.push(JSON.parse(line) as Record<string, unknown>); } });
  const fx: AdminFixture = {
    dir, socketPath, dbPath, store, bundle, logs, entriesChanged: 0, evicted: [],
    server: undefined as unknown as AdminServer,
    async close() {
      await fx.server?.close();
      await store.close();
      cleanup();
    },
  };
  const service = createAdminService({
    store, trustDomain: TD, logger, bundleProvider: () => bundle,
    onEntriesChanged: () => { fx.entriesChanged++; },
    onNodeEvicted: (id) => { fx.evicted.push(id); },
    ...(opts.locationPoliciesEnforced !== undefined ? { locationPoliciesEnforced: opts.locationPoliciesEnforced } : {}),
  });
  fx.server = await startAdminServer(socketPath, service, { logger });
  return fx;
}

export function auditRecords(logs: Record<string, unknown>[]): Record<string, unknown>[] {
  return logs.filter((l) => l.audit === true);
}

export function fileMode(p: string): number {
  return fs.statSync(p).mode & 0o777;
}
