// Printing command results: aligned text tables for people, `-output json` for scripts.

/** Columns padded to their widest cell, two spaces apart; headers in capitals. */
export function formatTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers.map((h) => h.toUpperCase())), ...rows.map(line)].join('\n') + '\n';
}

/** JSON with bigint as decimal strings and bytes as base64, two-space indented. */
export function formatJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => {
    if (typeof v === 'bigint') return v.toString();
    if (v !== null && typeof v === 'object' && (v as { type?: unknown }).type === 'Buffer' && Array.isArray((v as { data?: unknown }).data)) {
      return Buffer.from((v as { data: number[] }).data).toString('base64');
    }
    return v;
  }, 2) + '\n';
}

export type OutputFormat = 'pretty' | 'json';

export function parseOutputFormat(s: string | undefined): OutputFormat {
  if (s === undefined || s === 'pretty' || s === 'table') return 'pretty';
  if (s === 'json') return 'json';
  throw new Error(`-output must be "pretty" or "json", got "${s}"`);
}

/** Seconds since the epoch → ISO time, '' for 0. */
export function isoTime(seconds: number): string {
  return seconds > 0 ? new Date(seconds * 1000).toISOString().replace('.000Z', 'Z') : '';
}
