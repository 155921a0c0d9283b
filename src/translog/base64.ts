/**
 * Strict standard base64 (RFC 4648 §4) decoding. Buffer.from(s, 'base64') skips invalid characters and
 * accepts missing padding, which would let two different strings name the same key or signature; here a
 * string decodes only if it is the canonical encoding of its bytes. Returns undefined otherwise.
 */
export function decodeBase64Strict(s: string): Buffer | undefined {
  if (s.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(s)) return undefined;
  const bytes = Buffer.from(s, 'base64');
  return bytes.toString('base64') === s ? bytes : undefined;
}
