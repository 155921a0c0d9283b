// Selector sets: a canonical form (for uniqueness and exact matching) and SPIRE's match behaviours.
import { createHash } from 'node:crypto';
import type { Selector, SelectorMatch } from './types.js';

/** `type:value`, the form SPIRE prints. */
export function selectorString(s: Selector): string {
  return `${s.type}:${s.value}`;
}

/** Sorted, de-duplicated copy: two entries with the same selectors in another order are the same. */
export function canonicalSelectors(selectors: Selector[]): Selector[] {
  const seen = new Map<string, Selector>();
  for (const s of selectors) seen.set(JSON.stringify([s.type, s.value]), { type: s.type, value: s.value });
  return [...seen.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map(([, s]) => s);
}

/** Fixed-length key of a selector set (kept short so it fits any index). */
export function selectorSetKey(selectors: Selector[]): string {
  return createHash('sha256').update(JSON.stringify(canonicalSelectors(selectors).map((s) => [s.type, s.value]))).digest('hex');
}

/** Does an entry with `entrySelectors` match the filter `given` under `match`? */
export function selectorsMatch(entrySelectors: Selector[], given: Selector[], match: SelectorMatch): boolean {
  const has = new Set(entrySelectors.map((s) => JSON.stringify([s.type, s.value])));
  const want = new Set(given.map((s) => JSON.stringify([s.type, s.value])));
  switch (match) {
    case 'exact':
      return has.size === want.size && [...want].every((k) => has.has(k));
    case 'subset':
      return [...has].every((k) => want.has(k));
    case 'superset':
      return [...want].every((k) => has.has(k));
    case 'any':
      return [...want].some((k) => has.has(k));
  }
}
