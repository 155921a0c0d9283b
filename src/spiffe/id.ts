// SPIFFE IDs and trust domain names, validated by the rules of the SPIFFE-ID standard: scheme
// `spiffe`, a lowercase trust domain of [a-z0-9._-], a path of segments of [a-zA-Z0-9._-] without
// empty, `.` or `..` segments and without a trailing slash; no port, user info, query, fragment or
// percent-encoding (all of which fall out of the character rules).
import { SpiffeIdError } from './errors.js';

export { SpiffeIdError } from './errors.js';

const SCHEME_PREFIX = 'spiffe://';
/** The standard asks implementations to accept IDs up to 2048 bytes; longer input is refused. */
export const MAX_SPIFFE_ID_BYTES = 2048;
/** Trust domain names are limited to 255 bytes (a DNS name). */
export const MAX_TRUST_DOMAIN_BYTES = 255;

const TD_CHAR = /^[a-z0-9._-]$/;
const SEGMENT_CHAR = /^[a-zA-Z0-9._-]$/;
const TD_RE = /^[a-z0-9._-]+$/;
const SEGMENT_RE = /^[a-zA-Z0-9._-]+$/;

/** A SPIFFE trust domain, e.g. `example.org`. Immutable. */
export class TrustDomain {
  readonly name: string;

  private constructor(name: string) {
    this.name = name;
  }

  /**
   * Parses a trust domain name (`example.org`). Like go-spiffe, a SPIFFE ID (`spiffe://example.org/x`)
   * is also accepted and yields its trust domain.
   */
  static parse(name: string): TrustDomain {
    if (typeof name !== 'string' || name === '') {
      throw new SpiffeIdError('missing-trust-domain', 'invalid trust domain "": trust domain is missing');
    }
    if (name.includes(':/')) return SpiffeId.parse(name).trustDomain;
    validateTrustDomainName(name, `invalid trust domain ${quote(name)}`);
    return new TrustDomain(name);
  }

  /** `spiffe://<name>`: the SPIFFE ID of the trust domain itself (used in signing certificates). */
  idString(): string {
    return SCHEME_PREFIX + this.name;
  }

  /** The SPIFFE ID of the trust domain itself. */
  id(): SpiffeId {
    return SpiffeId.fromPath(this, '');
  }

  toString(): string {
    return this.name;
  }

  toJSON(): string {
    return this.name;
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `TrustDomain(${this.name})`;
  }

  equals(o: TrustDomain): boolean {
    return o instanceof TrustDomain && o.name === this.name;
  }
}

/** A SPIFFE ID: `spiffe://<trust domain><path>`. Immutable; `path` is '' or starts with '/'. */
export class SpiffeId {
  readonly trustDomain: TrustDomain;
  readonly path: string;
  private readonly str: string;

  private constructor(td: TrustDomain, path: string) {
    this.trustDomain = td;
    this.path = path;
    this.str = SCHEME_PREFIX + td.name + path;
  }

  /** Parses and validates a SPIFFE ID string. Throws SpiffeIdError naming the broken rule. */
  static parse(s: string): SpiffeId {
    if (typeof s !== 'string' || s === '') {
      throw new SpiffeIdError('empty', 'invalid SPIFFE ID "": cannot be empty');
    }
    const what = `invalid SPIFFE ID ${quote(s)}`;
    if (Buffer.byteLength(s, 'utf8') > MAX_SPIFFE_ID_BYTES) {
      throw new SpiffeIdError('too-long', `${what}: longer than ${MAX_SPIFFE_ID_BYTES} bytes`);
    }
    if (!s.startsWith(SCHEME_PREFIX)) {
      throw new SpiffeIdError('wrong-scheme', `${what}: scheme is missing or invalid (must be exactly "spiffe://")`);
    }
    const rest = s.slice(SCHEME_PREFIX.length);
    const slash = rest.indexOf('/');
    const tdName = slash === -1 ? rest : rest.slice(0, slash);
    const path = slash === -1 ? '' : rest.slice(slash);
    validateTrustDomainName(tdName, what);
    validatePath(path, what);
    return new SpiffeId(TrustDomain.parse(tdName), path);
  }

  /** A SPIFFE ID from a trust domain and a path ('' or '/seg/seg'). */
  static fromPath(td: TrustDomain, path: string): SpiffeId {
    if (typeof path !== 'string') throw new SpiffeIdError('no-leading-slash', 'invalid path: not a string');
    validatePath(path, `invalid path ${quote(path)}`);
    const id = new SpiffeId(td, path);
    if (Buffer.byteLength(id.str, 'utf8') > MAX_SPIFFE_ID_BYTES) {
      throw new SpiffeIdError('too-long', `invalid SPIFFE ID: longer than ${MAX_SPIFFE_ID_BYTES} bytes`);
    }
    return id;
  }

  /** A SPIFFE ID from a trust domain and path segments (each one segment, no '/'). */
  static fromSegments(td: TrustDomain, ...segments: string[]): SpiffeId {
    for (const seg of segments) validateSegment(seg, `invalid path segment ${quote(seg)}`);
    return SpiffeId.fromPath(td, segments.map((s) => '/' + s).join(''));
  }

  toString(): string {
    return this.str;
  }

  toJSON(): string {
    return this.str;
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `SpiffeId(${this.str})`;
  }

  equals(o: SpiffeId): boolean {
    return o instanceof SpiffeId && o.str === this.str;
  }

  memberOf(td: TrustDomain): boolean {
    return this.trustDomain.equals(td);
  }
}

function validateTrustDomainName(name: string, what: string): void {
  if (name === '') throw new SpiffeIdError('missing-trust-domain', `${what}: trust domain is missing`);
  if (!TD_RE.test(name)) {
    throw new SpiffeIdError('bad-trust-domain-char',
      `${what}: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores` +
      ` (found ${quote(firstBad(name, TD_CHAR))}; no port, user info or upper case)`);
  }
  if (name.length > MAX_TRUST_DOMAIN_BYTES) {
    throw new SpiffeIdError('trust-domain-too-long', `${what}: trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`);
  }
}

function validatePath(path: string, what: string): void {
  if (path === '') return;
  if (path[0] !== '/') throw new SpiffeIdError('no-leading-slash', `${what}: path must have a leading slash`);
  const segments = path.slice(1).split('/');
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i] as string;
    if (seg === '') {
      if (i === segments.length - 1) {
        throw new SpiffeIdError('trailing-slash', `${what}: path cannot have a trailing slash`);
      }
      throw new SpiffeIdError('empty-segment', `${what}: path cannot contain empty segments`);
    }
    validateSegment(seg, what);
  }
}

function validateSegment(seg: string, what: string): void {
  if (typeof seg !== 'string' || seg === '') {
    throw new SpiffeIdError('empty-segment', `${what}: path cannot contain empty segments`);
  }
  if (seg === '.' || seg === '..') {
    throw new SpiffeIdError('dot-segment', `${what}: path cannot contain dot segments`);
  }
  if (!SEGMENT_RE.test(seg)) {
    throw new SpiffeIdError('bad-path-segment-char',
      `${what}: path segment characters are limited to letters, numbers, dots, dashes, and underscores` +
      ` (found ${quote(firstBad(seg, SEGMENT_CHAR))}; no percent-encoding, query or fragment)`);
  }
}

function firstBad(s: string, ok: RegExp): string {
  for (const ch of s) if (!ok.test(ch)) return ch;
  return '';
}

function quote(s: string): string {
  // Bounded so a hostile multi-kilobyte input does not blow up log lines.
  return JSON.stringify(s.length > 120 ? s.slice(0, 120) + '…' : s);
}
