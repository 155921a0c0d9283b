#!/usr/bin/env node
// terroir-server command line: thin — parse, call, print. Verbs and flags follow SPIRE's
// `spire-server` (`entry create -spiffeID … -parentID … -selector unix:uid:1000`), with kebab-case
// aliases (`-spiffe-id`) and `-output json`. Everything but `run` talks to a running server over
// its admin socket.
import fs from 'node:fs';
import { pathToFileURL } from 'node:url';
import type { ServiceError } from '@grpc/grpc-js';
import {
  ADMIN_API_MAX_BATCH,
  AdminClient,
  DEFAULT_ADMIN_SOCKET,
  type Agent,
  type Bundle,
  type Entry,
  type EntryMask,
  type EntryResult,
  type ListEntriesRequest,
  type Selector,
} from '../api/admin-api.js';
import { FlagError, FlagSet, bool, int, list, str, type FlagSpec, type ParsedFlags } from './flags.js';
import { formatJson, formatTable, isoTime, parseOutputFormat, type OutputFormat } from './output.js';

const HELP = `terroir-server — issues SPIFFE identities rooted in hardware and place

Usage: terroir-server <command> [flags]

Commands:
  run -c server.yaml                 run the server
  landmark run -c landmark.yaml      run a latency landmark (docs/latency-witness.md)
  datastore backup|restore -c …      back up / restore the server's state (docs/backup.md)
  audit key|export|verify            the evidence log: audit key, export, offline check (docs/evidence-log.md)
  entry create|show|update|delete    manage registration entries
  agent list|show|ban|evict          manage attested agents
  token generate                     create a join token
  bundle show|list|set|delete        the server's bundle and federated bundles
  healthcheck                        is the server up?
  help                               show this help

Run "terroir-server <command> <verb> -h" for a command's flags. Every command but run takes
-socketPath (default: $TERROIR_ADMIN_SOCKET, the config given with -config, or
${DEFAULT_ADMIN_SOCKET}) and -output pretty|json.
`;

/** A failure to report: message to stderr, then exit with `exitCode`. */
class CliError extends Error {
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

const COMMON: FlagSpec[] = [
  { name: 'socketPath', type: 'string', usage: 'path to the server admin API socket', defaultText: DEFAULT_ADMIN_SOCKET },
  { name: 'config', type: 'string', usage: 'server config file to take the admin socket path from' },
  { name: 'output', type: 'string', usage: 'output format: pretty or json', defaultText: 'pretty' },
];

const ENTRY_FIELDS: FlagSpec[] = [
  { name: 'spiffeID', type: 'string', usage: 'SPIFFE ID the workload gets' },
  { name: 'parentID', type: 'string', usage: 'SPIFFE ID of the agent (or parent entry) that may issue it' },
  { name: 'selector', type: 'list', usage: 'a selector type:value, e.g. unix:uid:1000' },
  { name: 'x509SVIDTTL', type: 'int', usage: 'X.509-SVID TTL in seconds (0 = server default)', aliases: ['x509-svid-ttl'] },
  { name: 'jwtSVIDTTL', type: 'int', usage: 'JWT-SVID TTL in seconds (0 = server default)', aliases: ['jwt-svid-ttl'] },
  { name: 'dns', type: 'list', usage: 'DNS name for the X.509-SVID' },
  { name: 'federatesWith', type: 'list', usage: 'trust domain (spiffe://other.org or other.org) whose bundle goes with the SVID' },
  { name: 'hint', type: 'string', usage: 'hint for workloads telling several SVIDs apart' },
  { name: 'admin', type: 'bool', usage: 'the workload may use the admin API' },
  { name: 'downstream', type: 'bool', usage: 'the workload is a downstream server' },
  { name: 'storeSVID', type: 'bool', usage: 'the agent stores the SVID instead of serving it', aliases: ['store-svid'] },
  { name: 'locationPolicy', type: 'string', usage: 'sovereign-location policy the node must satisfy' },
];

function sub(...specs: FlagSpec[]): FlagSet {
  return new FlagSet([...specs, ...COMMON]);
}

const COMMANDS: Record<string, Record<string, FlagSet>> = {
  entry: {
    create: sub(...ENTRY_FIELDS,
      { name: 'entryID', type: 'string', usage: 'UUID to give the entry (default: generated)' },
      { name: 'data', type: 'string', usage: 'JSON file with {"entries": [...]} to create in batches (SPIRE\'s format; "-" = stdin)' },
      { name: 'node', type: 'bool', usage: 'a node-alias entry: parent is the server, selectors match agents' }),
    show: sub(
      { name: 'entryID', type: 'string', usage: 'show only this entry' },
      { name: 'spiffeID', type: 'string', usage: 'only entries with this SPIFFE ID' },
      { name: 'parentID', type: 'string', usage: 'only entries with this parent ID' },
      { name: 'selector', type: 'list', usage: 'selector type:value to match' },
      { name: 'matchSelectorsOn', type: 'string', usage: 'exact, subset, superset or any', defaultText: 'superset' },
      { name: 'federatesWith', type: 'string', usage: 'only entries federating with this trust domain' },
      { name: 'hint', type: 'string', usage: 'only entries with this hint' }),
    update: sub({ name: 'entryID', type: 'string', usage: 'the entry to change (required); only the flags given are changed' },
      ...ENTRY_FIELDS),
    delete: sub({ name: 'entryID', type: 'list', usage: 'the entry to delete (required)' }),
  },
  agent: {
    list: sub({ name: 'banned', type: 'string', usage: 'true: only banned agents, false: only not banned' },
      { name: 'attestationType', type: 'string', usage: 'join_token or tpm' }),
    show: sub({ name: 'spiffeID', type: 'string', usage: 'the agent (required)' }),
    ban: sub({ name: 'spiffeID', type: 'string', usage: 'the agent (required)' }),
    evict: sub({ name: 'spiffeID', type: 'string', usage: 'the agent (required)' }),
  },
  token: {
    generate: sub({ name: 'spiffeID', type: 'string', usage: 'SPIFFE ID the agent gets (default /agent/join_token/<token>)' },
      { name: 'ttl', type: 'int', usage: 'seconds the token stays valid', defaultText: '600' }),
  },
  bundle: {
    show: sub({ name: 'format', type: 'string', usage: 'pem or spiffe', defaultText: 'pem' }),
    list: sub({ name: 'id', type: 'string', usage: 'only this trust domain' },
      { name: 'format', type: 'string', usage: 'pem or spiffe (prints the bundles instead of a table)' }),
    set: sub({ name: 'id', type: 'string', usage: 'trust domain of the bundle, e.g. spiffe://other.org (required)' },
      { name: 'path', type: 'string', usage: 'file to read the bundle from (default: standard input)' },
      { name: 'format', type: 'string', usage: 'pem or spiffe', defaultText: 'pem' }),
    delete: sub({ name: 'id', type: 'string', usage: 'trust domain of the bundle to delete (required)' }),
  },
  healthcheck: { '': sub() },
};

const RUN_FLAGS = new FlagSet([
  { name: 'config', type: 'string', usage: 'server config file (YAML or JSON)', aliases: ['c'] },
]);

// --------------------------------------------------------------------------- helpers

function required(f: ParsedFlags, name: string): string {
  const v = str(f, name);
  if (v === undefined || v === '') throw new CliError(`-${name} is required`, 2);
  return v;
}

function parseSelector(s: string): Selector {
  const i = s.indexOf(':');
  if (i <= 0 || i === s.length - 1) throw new CliError(`selector "${s}" must be type:value, e.g. unix:uid:1000`, 2);
  return { type: s.slice(0, i), value: s.slice(i + 1) };
}

/** `spiffe://other.org` or `other.org` → `other.org`. */
function trustDomainName(s: string): string {
  const m = /^spiffe:\/\/([^/]+)\/?$/.exec(s);
  return m ? m[1]! : s;
}

function selectorsText(sel: Selector[]): string {
  return sel.map((s) => `${s.type}:${s.value}`).join(',');
}

async function socketPathOf(f: ParsedFlags): Promise<string> {
  const explicit = str(f, 'socketPath');
  if (explicit) return explicit;
  const configFile = str(f, 'config');
  if (configFile) {
    const { loadServerConfig } = await import('../server/config.js');
    return loadServerConfig(configFile).adminApi.socketPath;
  }
  return process.env.TERROIR_ADMIN_SOCKET || DEFAULT_ADMIN_SOCKET;
}

function describeRpcError(err: unknown, socketPath: string): CliError {
  const e = err as Partial<ServiceError>;
  if (e.code === 14 /* UNAVAILABLE */ && /connect|No connection|ENOENT|ECONNREFUSED/i.test(e.details ?? '')) {
    const why = /connect (E[A-Z]+)/.exec(e.details ?? '')?.[1] ?? 'no connection';
    return new CliError(`cannot reach the server admin API at ${socketPath} (${why}); is the server running, and is -socketPath right?`);
  }
  return new CliError(e.details || e.message || String(err));
}

function entryTable(entries: Entry[]): string {
  return formatTable(
    ['entry id', 'spiffe id', 'parent id', 'selectors', 'x509 ttl', 'jwt ttl', 'dns', 'federates with', 'hint', 'revision'],
    entries.map((e) => [e.id, e.spiffeId, e.parentId, selectorsText(e.selectors), String(e.x509SvidTtl || 'default'),
      String(e.jwtSvidTtl || 'default'), e.dnsNames.join(','), e.federatesWith.join(','), e.hint, String(e.revision)]));
}

function agentTable(agents: Agent[]): string {
  return formatTable(['spiffe id', 'attestation', 'serial', 'expires', 'banned', 'selectors'],
    agents.map((a) => [a.spiffeId, a.attestationType, a.serialNumber, isoTime(a.expiresAt), a.banned ? 'yes' : 'no', selectorsText(a.selectors)]));
}

function pem(ders: Buffer[]): string {
  return ders.map((d) => `-----BEGIN CERTIFICATE-----\n${d.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END CERTIFICATE-----\n`).join('');
}

function pemToDers(text: string): Buffer[] {
  const blocks = [...text.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)];
  if (blocks.length === 0) throw new CliError('no PEM certificates (-----BEGIN CERTIFICATE-----) found in the bundle input');
  return blocks.map((b) => Buffer.from(b[1]!.replace(/\s+/g, ''), 'base64'));
}

function bundleFormat(f: ParsedFlags, fallback: 'pem' | 'spiffe' | undefined): 'pem' | 'spiffe' | undefined {
  const v = str(f, 'format') ?? fallback;
  if (v === undefined || v === 'pem' || v === 'spiffe') return v;
  throw new CliError(`-format must be pem or spiffe, got "${v}"`, 2);
}

function printBundle(b: Bundle, format: 'pem' | 'spiffe'): string {
  return format === 'pem' ? pem(b.x509Authorities) : `${JSON.stringify(JSON.parse(b.spiffeJson), null, 2)}\n`;
}

/** Prints per-item outcomes; failures make the command fail. */
function reportBatch(results: EntryResult[], verb: string, out: OutputFormat, io: Io): number {
  const ok = results.filter((r) => r.status.code === 0).map((r) => r.entry!);
  const failed = results.filter((r) => r.status.code !== 0);
  if (out === 'json') io.out(formatJson({ results }));
  else if (ok.length > 0 && verb !== 'delete') io.out(entryTable(ok));
  else if (ok.length > 0) io.out(ok.map((e) => `Deleted entry ${e.id}\n`).join(''));
  for (const r of failed) {
    const which = r.entry?.id || r.entry?.spiffeId || '';
    io.err(`Failed to ${verb} entry${which ? ` ${which}` : ''}: ${r.status.message}\n`);
  }
  // A success the server qualified (e.g. an entry that will not be signed while a flag is off).
  for (const r of results) if (r.status.code === 0 && r.status.message !== 'OK' && r.status.message !== '') io.err(`Warning: ${r.status.message}\n`);
  return failed.length > 0 ? 1 : 0;
}

// --------------------------------------------------------------------------- commands

type Handler = (f: ParsedFlags, client: AdminClient, out: OutputFormat, io: Io) => Promise<number>;

function entryFromFlags(f: ParsedFlags): { entry: Partial<Entry>; mask: EntryMask } {
  const entry: Partial<Entry> = {};
  const mask: EntryMask = {};
  const set = <K extends keyof EntryMask>(k: K, v: Entry[K] | undefined): void => {
    if (v === undefined) return;
    (entry as Record<string, unknown>)[k] = v;
    mask[k] = true;
  };
  set('spiffeId', str(f, 'spiffeID'));
  set('parentId', str(f, 'parentID'));
  if (f.values.has('selector')) set('selectors', list(f, 'selector').map(parseSelector));
  set('x509SvidTtl', int(f, 'x509SVIDTTL'));
  set('jwtSvidTtl', int(f, 'jwtSVIDTTL'));
  if (f.values.has('dns')) set('dnsNames', list(f, 'dns'));
  if (f.values.has('federatesWith')) set('federatesWith', list(f, 'federatesWith').map(trustDomainName));
  set('hint', str(f, 'hint'));
  if (f.values.has('admin')) set('admin', bool(f, 'admin'));
  if (f.values.has('downstream')) set('downstream', bool(f, 'downstream'));
  if (f.values.has('storeSVID')) set('storeSvid', bool(f, 'storeSVID'));
  set('locationPolicy', str(f, 'locationPolicy'));
  return { entry, mask };
}

/** Reads SPIRE's `entry create -data` JSON: snake_case or camelCase keys, IDs as strings or {trust_domain, path}. */
function entriesFromData(file: string): Partial<Entry>[] {
  let doc: unknown;
  try {
    doc = JSON.parse(fs.readFileSync(file === '-' ? 0 : file, 'utf8'));
  } catch (err) {
    throw new CliError(`cannot read entries from ${file}: ${(err as Error).message}`);
  }
  const list = (doc as { entries?: unknown } | null)?.entries;
  if (!Array.isArray(list)) throw new CliError(`${file}: expected a JSON object with an "entries" array`);
  return list.map((raw, i) => {
    if (raw === null || typeof raw !== 'object') throw new CliError(`${file}: entries[${i}] is not an object`);
    const r = raw as Record<string, unknown>;
    const pick = (...keys: string[]): unknown => keys.map((k) => r[k]).find((v) => v !== undefined);
    const id = (v: unknown, what: string): string | undefined => {
      if (v === undefined || typeof v === 'string') return v;
      const o = v as { trust_domain?: unknown; trustDomain?: unknown; path?: unknown };
      const td = o.trust_domain ?? o.trustDomain;
      if (typeof td === 'string' && typeof (o.path ?? '') === 'string') return `spiffe://${td}${(o.path as string | undefined) ?? ''}`;
      throw new CliError(`${file}: entries[${i}].${what} must be a SPIFFE ID string or {trust_domain, path}`);
    };
    const e: Partial<Entry> = {};
    const assign = <K extends keyof Entry>(k: K, v: unknown, type: 'string' | 'number' | 'boolean' | 'array'): void => {
      if (v === undefined) return;
      const ok = type === 'array' ? Array.isArray(v) : typeof v === type;
      if (!ok) throw new CliError(`${file}: entries[${i}].${k} must be ${type === 'array' ? 'an array' : `a ${type}`}`);
      (e as Record<string, unknown>)[k] = v;
    };
    assign('id', pick('id', 'entry_id', 'entryId'), 'string');
    assign('spiffeId', id(pick('spiffe_id', 'spiffeId'), 'spiffe_id'), 'string');
    assign('parentId', id(pick('parent_id', 'parentId'), 'parent_id'), 'string');
    assign('selectors', pick('selectors'), 'array');
    assign('x509SvidTtl', pick('x509_svid_ttl', 'x509SvidTtl'), 'number');
    assign('jwtSvidTtl', pick('jwt_svid_ttl', 'jwtSvidTtl'), 'number');
    assign('dnsNames', pick('dns_names', 'dnsNames'), 'array');
    assign('federatesWith', pick('federates_with', 'federatesWith'), 'array');
    assign('admin', pick('admin'), 'boolean');
    assign('downstream', pick('downstream'), 'boolean');
    assign('storeSvid', pick('store_svid', 'storeSvid'), 'boolean');
    assign('hint', pick('hint'), 'string');
    assign('locationPolicy', pick('location_policy', 'locationPolicy'), 'string');
    if (e.federatesWith) e.federatesWith = e.federatesWith.map((t) => trustDomainName(String(t)));
    return e;
  });
}

const HANDLERS: Record<string, Handler> = {
  async 'entry create'(f, client, out, io) {
    const data = str(f, 'data');
    if (data !== undefined) {
      if ([...f.values.keys()].some((k) => !['data', 'socketPath', 'config', 'output'].includes(k))) {
        throw new CliError('-data takes the entries from the file; do not combine it with entry flags', 2);
      }
      const all = entriesFromData(data);
      const results: EntryResult[] = [];
      for (let i = 0; i < all.length; i += ADMIN_API_MAX_BATCH) {
        results.push(...(await client.call('BatchCreateEntry', { entries: all.slice(i, i + ADMIN_API_MAX_BATCH) })).results);
      }
      return reportBatch(results, 'create', out, io);
    }
    const { entry } = entryFromFlags(f);
    if (!entry.spiffeId) throw new CliError('-spiffeID is required', 2);
    if (bool(f, 'node')) {
      if (entry.parentId) throw new CliError('-node and -parentID do not go together: a node entry\'s parent is the server', 2);
      const td = /^spiffe:\/\/([^/]+)/.exec(entry.spiffeId)?.[1];
      if (td === undefined) throw new CliError(`-spiffeID "${entry.spiffeId}" is not a SPIFFE ID`, 2);
      entry.parentId = `spiffe://${td}/spire/server`;
    }
    if (!entry.parentId) throw new CliError('-parentID is required (or -node for a node-alias entry)', 2);
    if (!entry.selectors?.length) throw new CliError('at least one -selector is required', 2);
    const id = str(f, 'entryID');
    if (id) entry.id = id;
    const res = await client.call('BatchCreateEntry', { entries: [entry] });
    return reportBatch(res.results, 'create', out, io);
  },

  async 'entry show'(f, client, out, io) {
    let entries: Entry[];
    const id = str(f, 'entryID');
    if (id) {
      entries = [await client.call('GetEntry', { id })];
    } else {
      const req: ListEntriesRequest = {};
      const spiffe = str(f, 'spiffeID');
      if (spiffe) req.bySpiffeId = spiffe;
      const parent = str(f, 'parentID');
      if (parent) req.byParentId = parent;
      const fed = str(f, 'federatesWith');
      if (fed) req.byFederatesWith = trustDomainName(fed);
      const hint = str(f, 'hint');
      if (hint) req.byHint = hint;
      const sel = list(f, 'selector').map(parseSelector);
      if (sel.length > 0) {
        const match = str(f, 'matchSelectorsOn') ?? 'superset';
        if (!['exact', 'subset', 'superset', 'any'].includes(match)) {
          throw new CliError(`-matchSelectorsOn must be exact, subset, superset or any, got "${match}"`, 2);
        }
        req.bySelectors = { selectors: sel, match: match as 'exact' };
      }
      entries = [];
      let token = '';
      do {
        const page = await client.call('ListEntries', { ...req, pageToken: token });
        entries.push(...page.entries);
        token = page.nextPageToken;
      } while (token !== '');
    }
    if (out === 'json') io.out(formatJson({ entries }));
    else if (entries.length === 0) io.out('Found 0 entries\n');
    else io.out(`Found ${entries.length} ${entries.length === 1 ? 'entry' : 'entries'}\n${entryTable(entries)}`);
    return 0;
  },

  async 'entry update'(f, client, out, io) {
    const id = required(f, 'entryID');
    const { entry, mask } = entryFromFlags(f);
    if (Object.keys(mask).length === 0) throw new CliError('nothing to update: give at least one field flag, e.g. -selector or -x509SVIDTTL', 2);
    const res = await client.call('BatchUpdateEntry', { entries: [{ ...entry, id }], mask });
    return reportBatch(res.results, 'update', out, io);
  },

  async 'entry delete'(f, client, out, io) {
    const ids = list(f, 'entryID');
    if (ids.length === 0) throw new CliError('-entryID is required', 2);
    const res = await client.call('BatchDeleteEntry', { ids });
    return reportBatch(res.results, 'delete', out, io);
  },

  async 'agent list'(f, client, out, io) {
    const banned = str(f, 'banned') ?? '';
    if (!['', 'true', 'false'].includes(banned)) throw new CliError(`-banned must be true or false, got "${banned}"`, 2);
    const res = await client.call('ListAgents', { byBanned: banned as '', byAttestationType: str(f, 'attestationType') ?? '' });
    if (out === 'json') io.out(formatJson(res));
    else io.out(`Found ${res.agents.length} attested ${res.agents.length === 1 ? 'agent' : 'agents'}\n${res.agents.length ? agentTable(res.agents) : ''}`);
    return 0;
  },

  async 'agent show'(f, client, out, io) {
    const agent = await client.call('GetAgent', { spiffeId: required(f, 'spiffeID') });
    io.out(out === 'json' ? formatJson(agent) : agentTable([agent]));
    return 0;
  },

  async 'agent ban'(f, client, out, io) {
    const agent = await client.call('BanAgent', { spiffeId: required(f, 'spiffeID') });
    io.out(out === 'json' ? formatJson(agent) : `Agent ${agent.spiffeId} banned\n`);
    return 0;
  },

  async 'agent evict'(f, client, out, io) {
    const agent = await client.call('EvictAgent', { spiffeId: required(f, 'spiffeID') });
    io.out(out === 'json' ? formatJson(agent) : `Agent ${agent.spiffeId} evicted\n`);
    return 0;
  },

  async 'token generate'(f, client, out, io) {
    const t = await client.call('GenerateJoinToken', { ttl: int(f, 'ttl') ?? 0, agentSpiffeId: str(f, 'spiffeID') ?? '' });
    if (out === 'json') io.out(formatJson(t));
    else io.out(`Token: ${t.value}\nExpires: ${isoTime(t.expiresAt)}\n${t.agentSpiffeId ? `Agent SPIFFE ID: ${t.agentSpiffeId}\n` : ''}`);
    return 0;
  },

  async 'bundle show'(f, client, out, io) {
    const format = bundleFormat(f, 'pem')!;
    const b = await client.call('GetBundle', {});
    io.out(out === 'json' ? formatJson(b) : printBundle(b, format));
    return 0;
  },

  async 'bundle list'(f, client, out, io) {
    const format = bundleFormat(f, undefined);
    const only = str(f, 'id');
    let bundles = (await client.call('ListFederatedBundles', {})).bundles;
    if (only) bundles = bundles.filter((b) => b.trustDomain === trustDomainName(only));
    if (out === 'json') io.out(formatJson({ bundles }));
    else if (format !== undefined) io.out(bundles.map((b) => `****************************************\n* ${b.trustDomain}\n****************************************\n${printBundle(b, format)}`).join('\n'));
    else io.out(formatTable(['trust domain', 'x509 authorities', 'sequence'], bundles.map((b) => [b.trustDomain, String(b.x509Authorities.length), String(b.sequence)])));
    return 0;
  },

  async 'bundle set'(f, client, out, io) {
    const td = trustDomainName(required(f, 'id'));
    const format = bundleFormat(f, 'pem')!;
    const file = str(f, 'path');
    let text: string;
    try {
      text = fs.readFileSync(file ?? 0, 'utf8');
    } catch (err) {
      throw new CliError(`cannot read the bundle from ${file ?? 'standard input'}: ${(err as Error).message}`);
    }
    const b = await client.call('SetFederatedBundle', format === 'pem'
      ? { trustDomain: td, x509Authorities: pemToDers(text) }
      : { trustDomain: td, spiffeJson: text });
    io.out(out === 'json' ? formatJson(b) : `Bundle for ${b.trustDomain} set (${b.x509Authorities.length} X.509 authorities)\n`);
    return 0;
  },

  async 'bundle delete'(f, client, out, io) {
    const td = trustDomainName(required(f, 'id'));
    await client.call('DeleteFederatedBundle', { trustDomain: td });
    io.out(out === 'json' ? formatJson({ deleted: td }) : `Bundle for ${td} deleted\n`);
    return 0;
  },

  async 'healthcheck'(_f, client, out, io) {
    const h = await client.call('Healthcheck', {}, 5000);
    io.out(out === 'json' ? formatJson(h) : 'Server is healthy.\n');
    return 0;
  },
};

async function run(argv: string[], io: Io): Promise<number> {
  const parsed = RUN_FLAGS.parse(argv);
  if (parsed.help) { io.out(`Usage: terroir-server run -c server.yaml\n\n${RUN_FLAGS.usage()}`); return 0; }
  const file = str(parsed, 'config');
  if (!file) throw new CliError('run needs the config file: terroir-server run -c server.yaml', 2);
  const { loadServerConfig } = await import('../server/config.js');
  const { startServer } = await import('../server/run.js');
  const config = loadServerConfig(file);
  // Traces: a process-wide provider, so it is set up here and not in startServer (tests run several in one process).
  const tracing = config.tracing ? (await import('../api/tracing.js')).startTracing({ serviceName: 'terroir-server', otlpEndpoint: config.tracing.otlpEndpoint }) : undefined;
  const server = await startServer(config);
  await untilSignal();
  await server.stop();
  await tracing?.shutdown();
  return 0;
}

const LANDMARK_FLAGS = new FlagSet([
  { name: 'config', type: 'string', usage: 'landmark config file (YAML)', aliases: ['c'] },
]);

/** Serves until SIGINT/SIGTERM. */
function untilSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = (): void => { resolve(); };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}

async function landmark(argv: string[], io: Io): Promise<number> {
  const usage = 'Usage: terroir-server landmark run -c landmark.yaml';
  if (argv[0] !== 'run') {
    io.err(`${usage}\n`);
    return argv[0] === '-h' || argv[0] === '--help' ? 0 : 2;
  }
  const parsed = LANDMARK_FLAGS.parse(argv.slice(1));
  if (parsed.help) { io.out(`${usage}\n\n${LANDMARK_FLAGS.usage()}`); return 0; }
  const file = str(parsed, 'config');
  if (!file) throw new CliError(`landmark run needs the config file: ${usage.replace('Usage: ', '')}`, 2);
  const { loadLandmarkConfig, startLandmark } = await import('../landmark/landmark.js');
  const lm = await startLandmark(loadLandmarkConfig(file));
  await untilSignal();
  await lm.stop();
  return 0;
}

export async function main(argv: string[], io: Io = {
  out: (s) => { process.stdout.write(s); },
  err: (s) => { process.stderr.write(s); },
}): Promise<number> {
  const cmd = argv[0];
  if (cmd === undefined || cmd === 'help' || cmd === '-h' || cmd === '--help') {
    io.out(HELP);
    return 0;
  }
  try {
    if (cmd === 'run') return await run(argv.slice(1), io);
    if (cmd === 'landmark') return await landmark(argv.slice(1), io);
    if (cmd === 'audit') return await (await import('./audit-cmd.js')).auditCommand(argv.slice(1), io);
    if (cmd === 'datastore') return await (await import('./datastore-cmd.js')).datastoreCommand(argv.slice(1), io);
    const verbs = COMMANDS[cmd];
    if (verbs === undefined) {
      io.err(`terroir-server: unknown command "${cmd}"; run "terroir-server help" for the list\n`);
      return 2;
    }
    const single = verbs[''] !== undefined;
    const verb = single ? '' : argv[1];
    const rest = argv.slice(single ? 1 : 2);
    const flags = verb === undefined ? undefined : verbs[verb];
    if (verb === undefined || flags === undefined) {
      const known = Object.keys(verbs).join('|');
      io.err(verb === undefined || verb === '-h' || verb === '--help'
        ? `Usage: terroir-server ${cmd} ${known} [flags]\n`
        : `terroir-server: unknown ${cmd} command "${verb}"; use ${known}\n`);
      return verb === '-h' || verb === '--help' ? 0 : 2;
    }
    const name = `${cmd}${verb ? ` ${verb}` : ''}`;
    let parsed: ParsedFlags;
    try {
      parsed = flags.parse(rest);
    } catch (err) {
      if (err instanceof FlagError) {
        io.err(`terroir-server ${name}: ${err.message}\n\nFlags:\n${flags.usage()}`);
        return 2;
      }
      throw err;
    }
    if (parsed.help) {
      io.out(`Usage: terroir-server ${name} [flags]\n\nFlags:\n${flags.usage()}`);
      return 0;
    }
    if (parsed.args.length > 0) throw new CliError(`unexpected argument "${parsed.args[0]}" (flags start with -)`, 2);
    let out: OutputFormat;
    try {
      out = parseOutputFormat(str(parsed, 'output'));
    } catch (err) {
      throw new CliError((err as Error).message, 2);
    }
    const socketPath = await socketPathOf(parsed);
    const client = new AdminClient(socketPath);
    try {
      return await HANDLERS[name]!(parsed, client, out, io);
    } catch (err) {
      if (err instanceof CliError) throw err;
      throw describeRpcError(err, socketPath);
    } finally {
      client.close();
    }
  } catch (err) {
    const code = err instanceof CliError ? err.exitCode : 1;
    io.err(`${err instanceof CliError ? 'Error' : 'terroir-server'}: ${(err as Error).message}\n`);
    return code;
  }
}

// Run when executed directly (node/tsx), not when imported by tests.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(fs.realpathSync(process.argv[1])).href) {
  void main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
