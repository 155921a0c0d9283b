// Admin input → datastore records. Everything is checked before anything is written; a failure
// names the field and what was wrong with it.
import { SpiffeId, TrustDomain } from '../../spiffe/index.js';
import type * as api from '../../api/admin-api.js';
import {
  serverSpiffeId,
  type NewRegistrationEntry,
  type RegistrationEntry,
  type RegistrationEntryUpdate,
  type Selector,
  type SelectorMatch,
} from '../datastore/types.js';

/** Longest X.509-/JWT-SVID TTL an entry may ask for (one year); the CA caps it further at issuance. */
export const MAX_ENTRY_TTL_SECONDS = 365 * 24 * 3600;
/** Longest join token lifetime (one week): tokens are bootstrap secrets, not credentials. */
export const MAX_JOIN_TOKEN_TTL_SECONDS = 7 * 24 * 3600;
export const DEFAULT_JOIN_TOKEN_TTL_SECONDS = 600;
const MAX_SELECTORS = 64;
const MAX_FIELD_CHARS = 1024;
const DNS_NAME_RE = /^(?=.{1,253}$)(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Bad admin input; the service answers INVALID_ARGUMENT with this message. */
export class InvalidInputError extends Error {
  override readonly name = 'InvalidInputError';
  readonly code = 'invalid_argument';
}

function fail(message: string): never {
  throw new InvalidInputError(message);
}

/** A SPIFFE ID in the server's trust domain. */
export function parseOwnId(field: string, s: string, td: TrustDomain): SpiffeId {
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(s);
  } catch (err) {
    return fail(`${field}: ${(err as Error).message}`);
  }
  if (!id.memberOf(td)) fail(`${field}: "${s}" is not in the server's trust domain "${td.name}"`);
  return id;
}

export function parseTrustDomain(field: string, s: string): TrustDomain {
  try {
    return TrustDomain.parse(s);
  } catch (err) {
    return fail(`${field}: ${(err as Error).message}`);
  }
}

export function checkEntryId(id: string): string {
  if (!UUID_RE.test(id)) fail(`entry ID must be a UUID, got "${id}"`);
  return id.toLowerCase();
}

export function parseSelectors(field: string, list: api.Selector[]): Selector[] {
  if (list.length > MAX_SELECTORS) fail(`${field}: at most ${MAX_SELECTORS} selectors, got ${list.length}`);
  return list.map((s, i) => {
    if (s.type === '' || s.value === '') fail(`${field}[${i}]: selector type and value must both be non-empty (type:value), got "${s.type}:${s.value}"`);
    if (s.type.includes(':')) fail(`${field}[${i}]: selector type "${s.type}" must not contain ":"`);
    if (s.type.length + s.value.length > MAX_FIELD_CHARS) fail(`${field}[${i}]: selector longer than ${MAX_FIELD_CHARS} characters`);
    return { type: s.type, value: s.value };
  });
}

function ttl(field: string, v: number): number | undefined {
  if (v === 0) return undefined;
  if (!Number.isInteger(v) || v < 0 || v > MAX_ENTRY_TTL_SECONDS) {
    fail(`${field} must be a whole number of seconds from 1 to ${MAX_ENTRY_TTL_SECONDS} (0 = server default), got ${v}`);
  }
  return v;
}

function dnsNames(list: string[]): string[] | undefined {
  if (list.length === 0) return undefined;
  for (const n of list) if (!DNS_NAME_RE.test(n)) fail(`dnsNames: "${n}" is not a valid DNS name`);
  return list;
}

function federatesWith(list: string[], td: TrustDomain): string[] {
  return list.map((s) => {
    const fed = parseTrustDomain('federatesWith', s);
    if (fed.equals(td)) fail(`federatesWith: "${s}" is the server's own trust domain`);
    return fed.name;
  });
}

function text(field: string, v: string): string | undefined {
  if (v === '') return undefined;
  if (v.length > MAX_FIELD_CHARS) fail(`${field} is longer than ${MAX_FIELD_CHARS} characters`);
  return v;
}

/** The parent: an ID in our trust domain (an agent, another entry, or the server ID for node aliases). */
function parentId(s: string, td: TrustDomain): string {
  return parseOwnId('parentId', s, td).toString();
}

function entryId(s: string, td: TrustDomain): string {
  const id = parseOwnId('spiffeId', s, td);
  if (id.path === '') fail('spiffeId: an entry needs a path; the trust domain ID itself cannot be a workload');
  if (id.toString() === serverSpiffeId(td.name)) fail(`spiffeId: ${id.toString()} is reserved for the server`);
  return id.toString();
}

/** A complete new entry from the API (defaults filled in by the proto loader). */
export function toNewEntry(e: Partial<api.Entry>, td: TrustDomain): NewRegistrationEntry {
  const selectors = parseSelectors('selectors', e.selectors ?? []);
  if (selectors.length === 0) fail('selectors: an entry needs at least one selector');
  const out: NewRegistrationEntry = {
    spiffeId: entryId(e.spiffeId ?? '', td),
    parentId: parentId(e.parentId ?? '', td),
    selectors,
    federatesWith: federatesWith(e.federatesWith ?? [], td),
  };
  if (e.id) out.id = checkEntryId(e.id);
  const x509 = ttl('x509SvidTtl', e.x509SvidTtl ?? 0);
  if (x509 !== undefined) out.x509SvidTtl = x509;
  const jwt = ttl('jwtSvidTtl', e.jwtSvidTtl ?? 0);
  if (jwt !== undefined) out.jwtSvidTtl = jwt;
  const dns = dnsNames(e.dnsNames ?? []);
  if (dns !== undefined) out.dnsNames = dns;
  if (e.admin) out.admin = true;
  if (e.downstream) out.downstream = true;
  if (e.storeSvid) out.storeSvid = true;
  const hint = text('hint', e.hint ?? '');
  if (hint !== undefined) out.hint = hint;
  const policy = text('locationPolicy', e.locationPolicy ?? '');
  if (policy !== undefined) out.locationPolicy = policy;
  return out;
}

/** An update carrying only the masked fields; a masked empty/zero value clears an optional field. */
export function toEntryUpdate(e: Partial<api.Entry>, mask: api.EntryMask, td: TrustDomain): RegistrationEntryUpdate {
  const u: RegistrationEntryUpdate = { id: checkEntryId(e.id ?? '') };
  if (!Object.values(mask).some(Boolean)) fail('mask: name at least one field to update');
  if (mask.spiffeId) u.spiffeId = entryId(e.spiffeId ?? '', td);
  if (mask.parentId) u.parentId = parentId(e.parentId ?? '', td);
  if (mask.selectors) {
    u.selectors = parseSelectors('selectors', e.selectors ?? []);
    if (u.selectors.length === 0) fail('selectors: an entry needs at least one selector');
  }
  if (mask.x509SvidTtl) u.x509SvidTtl = ttl('x509SvidTtl', e.x509SvidTtl ?? 0) ?? null;
  if (mask.jwtSvidTtl) u.jwtSvidTtl = ttl('jwtSvidTtl', e.jwtSvidTtl ?? 0) ?? null;
  if (mask.dnsNames) u.dnsNames = dnsNames(e.dnsNames ?? []) ?? null;
  if (mask.federatesWith) u.federatesWith = federatesWith(e.federatesWith ?? [], td);
  if (mask.admin) u.admin = e.admin ? true : null;
  if (mask.downstream) u.downstream = e.downstream ? true : null;
  if (mask.storeSvid) u.storeSvid = e.storeSvid ? true : null;
  if (mask.hint) u.hint = text('hint', e.hint ?? '') ?? null;
  if (mask.locationPolicy) u.locationPolicy = text('locationPolicy', e.locationPolicy ?? '') ?? null;
  return u;
}

export function toApiEntry(e: RegistrationEntry): api.Entry {
  return {
    id: e.id,
    spiffeId: e.spiffeId,
    parentId: e.parentId,
    selectors: e.selectors,
    x509SvidTtl: e.x509SvidTtl ?? 0,
    jwtSvidTtl: e.jwtSvidTtl ?? 0,
    dnsNames: e.dnsNames ?? [],
    federatesWith: e.federatesWith,
    admin: e.admin ?? false,
    downstream: e.downstream ?? false,
    hint: e.hint ?? '',
    storeSvid: e.storeSvid ?? false,
    locationPolicy: e.locationPolicy ?? '',
    revision: Number(e.revision),
    createdAt: Math.floor(e.createdAt.getTime() / 1000),
  };
}

export function parseMatch(m: string | undefined): SelectorMatch {
  if (m === undefined || m === '') return 'exact';
  if (m === 'exact' || m === 'subset' || m === 'superset' || m === 'any') return m;
  return fail(`bySelectors.match must be exact, subset, superset or any, got "${m}"`);
}

export function joinTokenTtl(v: number): number {
  if (v === 0) return DEFAULT_JOIN_TOKEN_TTL_SECONDS;
  if (!Number.isInteger(v) || v < 0 || v > MAX_JOIN_TOKEN_TTL_SECONDS) {
    fail(`ttl must be a whole number of seconds from 1 to ${MAX_JOIN_TOKEN_TTL_SECONDS} (0 = ${DEFAULT_JOIN_TOKEN_TTL_SECONDS}), got ${v}`);
  }
  return v;
}
