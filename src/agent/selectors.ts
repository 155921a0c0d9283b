// Selectors: the facts an attestor found about a caller ("unix" + "uid:1000"), and the rule that
// decides which registration entries a caller gets.
import type { Selector } from '../api/agent-api.js';

export type { Selector };

/** "type:value", the form SPIRE prints and takes on command lines. */
export function formatSelector(s: Selector): string {
  return `${s.type}:${s.value}`;
}

/** Parses "type:value" (the value may itself contain colons: "unix:uid:1000"). */
export function parseSelector(text: string): Selector {
  const i = text.indexOf(':');
  if (i <= 0 || i === text.length - 1) throw new Error(`selector "${text}" must be "type:value", e.g. "unix:uid:1000"`);
  return { type: text.slice(0, i), value: text.slice(i + 1) };
}

/** A set of selectors for fast containment checks. */
export class SelectorSet {
  private readonly keys: Set<string>;
  /** A stable text of the whole set: equal sets give equal keys (used to group streams). */
  readonly key: string;

  constructor(readonly selectors: readonly Selector[]) {
    this.keys = new Set(selectors.map(formatSelector));
    this.key = [...this.keys].sort().join('\n');
  }

  has(s: Selector): boolean {
    return this.keys.has(formatSelector(s));
  }

  /**
   * SPIRE's rule: an entry applies to a caller when every one of the entry's selectors is among the
   * caller's. An entry with no selectors never applies (it would match everyone).
   */
  satisfies(entrySelectors: readonly Selector[]): boolean {
    if (entrySelectors.length === 0) return false;
    return entrySelectors.every((s) => this.has(s));
  }
}
