// PEM <-> DER (RFC 7468), strict: only the expected label, base64 body, nothing between blocks but
// whitespace.

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([A-Za-z0-9+/=\r\n]*?)-----END \1-----/g;

/** Encodes DER as one PEM block with 64-character lines. */
export function derToPem(der: Buffer, label = 'CERTIFICATE'): string {
  const b64 = der.toString('base64');
  let body = '';
  for (let i = 0; i < b64.length; i += 64) body += b64.slice(i, i + 64) + '\n';
  return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
}

/**
 * Decodes every PEM block with `label` in `text`, in order. Throws an Error (the caller wraps it in
 * its own type) when there is no block, a block with another label, or stray text between blocks.
 */
export function pemToDer(text: string, label = 'CERTIFICATE'): Buffer[] {
  const out: Buffer[] = [];
  let last = 0;
  for (const m of text.matchAll(PEM_BLOCK)) {
    if (text.slice(last, m.index).trim() !== '') throw new Error('unexpected text between PEM blocks');
    if (m[1] !== label) throw new Error(`unexpected PEM block "${m[1]}" (expected "${label}")`);
    const body = (m[2] as string).replace(/\r?\n/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body) || body.length % 4 !== 0) throw new Error('malformed base64 in PEM block');
    out.push(Buffer.from(body, 'base64'));
    last = m.index + m[0].length;
  }
  if (text.slice(last).trim() !== '') throw new Error('unexpected text after the last PEM block');
  if (out.length === 0) throw new Error(`no "${label}" PEM block found`);
  return out;
}
