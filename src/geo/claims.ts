import { createHash } from 'node:crypto';
import canonicalize from 'canonicalize';
import { ClaimsError } from './errors.js';

/**
 * RFC 8785 (JCS) canonical JSON of a claims document, as UTF-8 bytes. The agent binds the SHA-256
 * of these bytes into its TPM quote and the server recomputes it, so the encoding must be
 * byte-for-byte stable: we accept only plain JSON data (no NaN/Infinity, no undefined, functions,
 * symbols, bigints, Dates or class instances, no cycles, no lone surrogates) and say where the
 * offending value sits instead of letting JSON quietly drop or rewrite it.
 */
export function canonicalClaims(obj: unknown): Buffer {
  assertPlainJson(obj, '$', new Set());
  let text: string | undefined;
  try {
    text = canonicalize(obj);
  } catch (err) {
    throw new ClaimsError(`claims cannot be canonicalised: ${(err as Error).message}`, { cause: err });
  }
  if (text === undefined) throw new ClaimsError('claims cannot be canonicalised: top-level value is not JSON');
  return Buffer.from(text, 'utf8');
}

/** SHA-256 of canonicalClaims(obj). */
export function claimsDigest(obj: unknown): Buffer {
  return createHash('sha256').update(canonicalClaims(obj)).digest();
}

function assertPlainJson(v: unknown, path: string, seen: Set<object>): void {
  switch (typeof v) {
    case 'string':
      if (hasLoneSurrogate(v)) throw new ClaimsError(`claims ${path}: string contains a lone UTF-16 surrogate`);
      return;
    case 'boolean':
      return;
    case 'number':
      if (!Number.isFinite(v)) throw new ClaimsError(`claims ${path}: ${String(v)} is not a JSON number; use a finite number`);
      return;
    case 'object':
      break;
    default:
      throw new ClaimsError(`claims ${path}: ${typeof v} is not a JSON value`);
  }
  if (v === null) return;
  if (seen.has(v)) throw new ClaimsError(`claims ${path}: circular reference`);
  const proto = Object.getPrototypeOf(v) as unknown;
  if (Array.isArray(v)) {
    seen.add(v);
    v.forEach((item, i) => assertPlainJson(item, `${path}[${i}]`, seen));
    seen.delete(v);
    return;
  }
  if (proto !== Object.prototype && proto !== null) {
    const name = (v as { constructor?: { name?: string } }).constructor?.name ?? 'object';
    throw new ClaimsError(`claims ${path}: ${name} is not a plain JSON object; convert it first (e.g. a Date to an ISO string)`);
  }
  seen.add(v);
  for (const [k, item] of Object.entries(v)) {
    if (hasLoneSurrogate(k)) throw new ClaimsError(`claims ${path}: key contains a lone UTF-16 surrogate`);
    assertPlainJson(item, `${path}.${k}`, seen);
  }
  seen.delete(v);
}

// A surrogate half without its partner cannot be encoded as UTF-8, so RFC 8785 forbids it.
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function hasLoneSurrogate(s: string): boolean {
  return LONE_SURROGATE.test(s);
}
