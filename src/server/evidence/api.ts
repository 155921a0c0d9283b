// The evidence API (evidenceLog.api): what relying parties and auditors ask the log for, over mTLS
// with the server's SVID. GET only, every answer bounded:
//   /v1/evidence/key                         the audit public key (C2SP verifier key), text
//   /v1/evidence/checkpoint                  the newest signed checkpoint (signing one if the log grew), text
//   /v1/evidence/proof/inclusion?index=&size=   {index, size, hashes[]} (base64)
//   /v1/evidence/proof/consistency?from=&to=    {from, to, hashes[]}
//   /v1/evidence/leaves/<index>              {index, kind, time, leafHash} (+ body for auditors)
//   /v1/evidence/nodes/<SPIFFE ID>           the node's latest attestation and issuance indexes
//   /v1/evidence/ear/<SPIFFE ID>             the EAR of the node's latest attestation (application/eat+jwt)
// Record bodies hold nodes' precise readings: only SPIFFE IDs in evidenceLog.api.auditorIds get them.
import type http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { EAR_MEDIA_TYPE } from '../../evidence/ear.js';
import { decodeRecord, type AttestationRecord, type EventRecord } from '../../evidence/record.js';
import type { TrustDomain } from '../../spiffe/id.js';
import { callerOf, createSpiffeHttpsServer, type ServerTlsIdentity } from '../spiffe-https.js';
import type { EvidenceLog } from './log.js';

export interface EvidenceApiOptions {
  host: string;
  port: number;
  log: EvidenceLog;
  verifierKey: string;
  identity: ServerTlsIdentity;
  trustDomain: TrustDomain;
  /** Readers; undefined: any SVID of the trust domain. */
  allowedIds?: readonly string[];
  /** Readers who also get record bodies. */
  auditorIds: readonly string[];
  /** Signs an EAR for an attestation record (the audit key). */
  ear: (record: AttestationRecord, index: number) => Promise<string>;
  logger?: Logger;
}

export interface EvidenceApi {
  readonly port: number;
  close(): Promise<void>;
}

const MAX_INDEX_DIGITS = 15;
const MAX_ID_LENGTH = 2048;

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function index(v: string | null | undefined, name: string): number {
  if (v === null || v === undefined || !new RegExp(`^\\d{1,${MAX_INDEX_DIGITS}}$`).test(v)) {
    throw new HttpError(400, `${name} must be a non-negative decimal integer`);
  }
  return Number(v);
}

/** Why an event took back what an attestation established (undefined: it did not). */
function withdrawal(e: EventRecord): string | undefined {
  const why = e.reason ?? e.action;
  if (e.details?.['withdrawn'] === true) return why;
  if (e.action === 'keylime' && e.result === 'denied') return `Keylime: ${why}`;
  const rpc = e.details?.['rpc'];
  if (e.action === 'admin' && e.result === 'ok' && (rpc === 'BanAgent' || rpc === 'EvictAgent')) return `an operator ${rpc === 'BanAgent' ? 'banned' : 'evicted'} the node`;
  return undefined;
}

/** The attestation record as it stands now: refused if an event after it withdrew the node's trust. */
async function standing(log: EvidenceLog, id: string, index: number, record: AttestationRecord): Promise<AttestationRecord> {
  if (record.result !== 'accepted') return record;
  // Bounded: a node's events between two attestations are a handful (signing events are not tagged with it).
  for (const leaf of await log.after('event', id, index, 1000)) {
    if (leaf.body === undefined) continue;
    const why = withdrawal(decodeRecord(leaf.body) as EventRecord);
    if (why !== undefined) {
      const { unified, ...rest } = record;
      // The claims the attestation established no longer hold: they are not restated.
      const kept = unified ? { unified: { ...unified, claims: undefined } } : {};
      return JSON.parse(JSON.stringify({ ...rest, ...kept, result: 'refused', reason: `trust withdrawn after attestation record ${index} (event ${leaf.index}): ${why}` })) as AttestationRecord;
    }
  }
  return record;
}

export async function startEvidenceApi(o: EvidenceApiOptions): Promise<EvidenceApi> {
  const allowed = o.allowedIds ? new Set(o.allowedIds) : undefined;
  const auditors = new Set(o.auditorIds);
  const authorize = (id: { toString(): string; trustDomain: TrustDomain }): string | undefined => {
    const s = id.toString();
    if (auditors.has(s)) return undefined;
    if (allowed) return allowed.has(s) ? undefined : `${s} is not in evidenceLog.api.allowedIds`;
    return id.trustDomain.name === o.trustDomain.name ? undefined : `${s} is not of trust domain ${o.trustDomain.name}`;
  };

  const route = async (req: http.IncomingMessage): Promise<{ type: string; body: string }> => {
    const url = new URL(req.url ?? '/', 'https://evidence.invalid');
    const json = (v: unknown): { type: string; body: string } => ({ type: 'application/json', body: JSON.stringify(v) });
    const p = url.pathname;
    if (p === '/v1/evidence/key') return { type: 'text/plain; charset=utf-8', body: `${o.verifierKey}\n` };
    if (p === '/v1/evidence/checkpoint') {
      const cp = await o.log.checkpoint();
      if (cp === undefined) throw new HttpError(404, 'the evidence log is empty: no checkpoint yet');
      return { type: 'text/plain; charset=utf-8', body: cp.note };
    }
    const size = await o.log.size();
    if (p === '/v1/evidence/proof/inclusion') {
      const i = index(url.searchParams.get('index'), 'index');
      const n = index(url.searchParams.get('size'), 'size');
      if (n > size || i >= n) throw new HttpError(400, `need index < size <= ${size} (the log's size)`);
      return json({ index: i, size: n, hashes: (await o.log.inclusionProof(i, n)).map((h) => h.toString('base64')) });
    }
    if (p === '/v1/evidence/proof/consistency') {
      const from = index(url.searchParams.get('from'), 'from');
      const to = index(url.searchParams.get('to'), 'to');
      if (from < 1 || from > to || to > size) throw new HttpError(400, `need 1 <= from <= to <= ${size} (the log's size)`);
      return json({ from, to, hashes: (await o.log.consistencyProof(from, to)).map((h) => h.toString('base64')) });
    }
    const leafMatch = /^\/v1\/evidence\/leaves\/([^/]+)$/.exec(p);
    if (leafMatch) {
      const i = index(leafMatch[1], 'the leaf index');
      const leaf = await o.log.entry(i);
      if (leaf === undefined) throw new HttpError(404, `no leaf ${i} (the log has ${size})`);
      const auditor = auditors.has(callerOf(req)?.toString() ?? '');
      return json({
        index: leaf.index, kind: leaf.kind, time: leaf.time.toISOString(), leafHash: leaf.leafHash.toString('base64'),
        ...(auditor ? { body: leaf.body ? leaf.body.toString('base64') : null } : {}),
      });
    }
    const nodeMatch = /^\/v1\/evidence\/(nodes|ear)\/(.+)$/.exec(p);
    if (nodeMatch) {
      const id = decodeURIComponent(nodeMatch[2] as string);
      if (id.length > MAX_ID_LENGTH || !id.startsWith('spiffe://')) throw new HttpError(400, 'give the node\'s SPIFFE ID (URL-encoded)');
      const [att, iss] = await Promise.all([o.log.latest('attestation', id), o.log.latest('issuance', id)]);
      if (att === undefined) throw new HttpError(404, `no attestation of ${id} in the log`);
      if (nodeMatch[1] === 'nodes') return json({ node: id, attestation: att.index, ...(iss ? { issuance: iss.index } : {}) });
      if (att.body === undefined) throw new HttpError(404, `${id}'s latest attestation record (${att.index}) was pruned: no EAR can be made from it`);
      // Signed now, from the node's latest attestation as it stands: trust withdrawn since (Keylime,
      // the latency witness, an operator) makes it a refusal, never a stale "affirming".
      const record = await standing(o.log, id, att.index, decodeRecord(att.body) as AttestationRecord);
      return { type: EAR_MEDIA_TYPE, body: await o.ear(record, att.index) };
    }
    throw new HttpError(404, `no such evidence endpoint: ${p.slice(0, 100)}`);
  };

  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const send = (status: number, type: string, body: string, extra: Record<string, string> = {}): void => {
      res.writeHead(status, { 'content-type': type, 'content-length': String(Buffer.byteLength(body)), 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...extra });
      res.end(body);
    };
    if (req.method !== 'GET') {
      send(405, 'application/json', JSON.stringify({ error: 'the evidence API is read-only: GET only' }), { allow: 'GET' });
      return;
    }
    route(req).then((r) => send(200, r.type, r.body), (err: unknown) => {
      if (err instanceof HttpError) return send(err.status, 'application/json', JSON.stringify({ error: err.message }));
      o.logger?.error({ err, url: req.url?.slice(0, 200) }, 'evidence API request failed');
      send(500, 'application/json', JSON.stringify({ error: 'internal error (see the server log)' }));
    });
  };

  const { server, stopRefresh } = createSpiffeHttpsServer(o.identity, authorize, handler, o.logger, 'evidence API');
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.maxHeadersCount = 50;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => { server.off('error', reject); resolve(); });
  });
  const port = (server.address() as AddressInfo).port;
  o.logger?.info({ host: o.host, port }, 'evidence API listening');
  return {
    port,
    async close() {
      stopRefresh();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
