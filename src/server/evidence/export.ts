// The export an auditor takes away (terroir-server audit export): JSON Lines — a header, the signed
// checkpoints (ascending), then every leaf in index order with its hash and body (null once pruned).
// A fresh checkpoint covering every exported leaf is signed first, so nothing in it is unvouched for.
import type { EvidenceLog } from './log.js';

export const EXPORT_FORMAT = 'terroir-evidence-export';

export interface ExportHeader {
  format: typeof EXPORT_FORMAT;
  v: 1;
  origin: string;
  /** Leaves in the export (= the newest checkpoint's size). */
  size: number;
  exportedAt: string;
}
export interface ExportCheckpointLine {
  checkpoint: string;
}
export interface ExportLeafLine {
  i: number;
  /** Leaf hash, hex. */
  hash: string;
  /** The record's canonical bytes, base64; null when retention pruned them. */
  body: string | null;
}

const PAGE = 2000;

/** Writes the export line by line through `write` (which may apply backpressure by returning a promise). */
export async function exportLog(log: EvidenceLog, write: (line: string) => void | Promise<void>, now: Date = new Date()): Promise<{ size: number; checkpoints: number }> {
  await log.flush();
  const head = await log.checkpoint();
  const size = head?.size ?? 0;
  const header: ExportHeader = { format: EXPORT_FORMAT, v: 1, origin: log.origin, size, exportedAt: now.toISOString() };
  await write(`${JSON.stringify(header)}\n`);
  const cps = (await log.checkpoints()).filter((c) => c.size <= size);
  for (const c of cps) await write(`${JSON.stringify({ checkpoint: c.note } satisfies ExportCheckpointLine)}\n`);
  for (let from = 0; from < size; from += PAGE) {
    const leaves = await log.leaves(from, Math.min(size, from + PAGE));
    let chunk = '';
    for (const l of leaves) {
      chunk += `${JSON.stringify({ i: l.index, hash: l.leafHash.toString('hex'), body: l.body ? l.body.toString('base64') : null } satisfies ExportLeafLine)}\n`;
    }
    await write(chunk);
  }
  return { size, checkpoints: cps.length };
}
