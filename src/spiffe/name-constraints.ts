// RFC 5280 name constraints (4.2.1.10) applied along a certification path as 6.1 does.
//
// A CA certificate's nameConstraints limit the names of every certificate below it: permitted
// subtrees of one certificate intersect with those of the CAs above (a name must fall in one subtree
// of each constraining CA that has permitted subtrees of that name's form), excluded subtrees add up,
// and exclusion wins. Checked names are the subject DN (unless empty), the emailAddress attributes of
// the subject, and the rfc822Name, dNSName, directoryName, URI and iPAddress SANs (and, on a leaf
// without DNS SANs, a host-like CN, as OpenSSL does). Self-issued intermediates are exempt
// (6.1.3 (b)); the leaf never is.
//
// Fail closed everywhere: a constraint in a form this module does not evaluate (otherName,
// x400Address, ediPartyName, registeredID), a non-zero minimum or any maximum, a constraint value that
// is not a host/domain/mailbox/address+mask, or a name that cannot be compared with a constraint of its
// form (a URI without a host) refuses the chain instead of being skipped.
import type { CertificateView } from './certificate.js';
import { children, content, DerError, oidToString, readTlv, slice, TAG, type Tlv } from './der.js';
import { X509SvidError } from './errors.js';
import { OID } from './oids.js';

/** One GeneralSubtree base, decoded and normalized for matching. */
export type NameSubtree =
  | { form: 'rfc822Name'; value: string }
  | { form: 'dNSName'; value: string }
  | { form: 'directoryName'; rdns: string[] }
  | { form: 'uniformResourceIdentifier'; value: string }
  | { form: 'iPAddress'; address: Buffer; mask: Buffer };

export type NameForm = NameSubtree['form'];

export interface NameConstraints {
  permitted: NameSubtree[];
  excluded: NameSubtree[];
}

/**
 * Upper bound on name × subtree comparisons for one path (as Go's crypto/x509 has): a certificate
 * of up to 64 KiB could otherwise carry thousands of names and constraints each.
 */
export const MAX_NAME_CONSTRAINT_COMPARISONS = 250_000;

const UNSUPPORTED_FORMS: Record<number, string> = {
  0xa0: 'otherName',
  0xa3: 'x400Address',
  0xa5: 'ediPartyName',
  0x88: 'registeredID',
};

const FORM_TAGS: Record<number, NameForm> = {
  0x81: 'rfc822Name',
  0x82: 'dNSName',
  0xa4: 'directoryName',
  0x86: 'uniformResourceIdentifier',
  0x87: 'iPAddress',
};

function malformed(message: string, cause?: unknown): X509SvidError {
  return new X509SvidError('malformed-certificate', message, cause === undefined ? undefined : { cause });
}

/**
 * Decodes a nameConstraints extension value (the DER inside extnValue). `owner` names the
 * certificate in error messages. Throws X509SvidError: 'malformed-certificate' for bad DER or values
 * RFC 5280 forbids, 'unhandled-critical-extension' for a name form this verifier does not evaluate.
 */
export function parseNameConstraints(value: Buffer, owner = 'certificate'): NameConstraints {
  try {
    return parseStrict(value, owner);
  } catch (e) {
    if (e instanceof X509SvidError) throw e;
    throw malformed(`${owner}: malformed nameConstraints extension: ${(e as Error).message}`, e);
  }
}

function parseStrict(der: Buffer, owner: string): NameConstraints {
  const top = readTlv(der, 0);
  if (top.tag !== TAG.SEQUENCE) throw new DerError(`NameConstraints must be a SEQUENCE, got tag 0x${top.tag.toString(16)}`);
  if (top.end !== der.length) throw new DerError(`${der.length - top.end} trailing bytes after NameConstraints`);
  const out: NameConstraints = { permitted: [], excluded: [] };
  let lastTag = -1;
  const parts = children(der, top);
  if (parts.length === 0) {
    throw malformed(`${owner}: nameConstraints has neither permittedSubtrees nor excludedSubtrees (RFC 5280 4.2.1.10 forbids an empty one)`);
  }
  for (const part of parts) {
    if ((part.tag !== 0xa0 && part.tag !== 0xa1) || part.tag <= lastTag) {
      throw new DerError(`unexpected element 0x${part.tag.toString(16)} (expected permittedSubtrees [0] then excludedSubtrees [1])`);
    }
    lastTag = part.tag;
    const which = part.tag === 0xa0 ? 'permittedSubtrees' : 'excludedSubtrees';
    const subtrees = children(der, part);
    if (subtrees.length === 0) throw new DerError(`${which} is empty (it must hold at least one GeneralSubtree)`);
    const into = part.tag === 0xa0 ? out.permitted : out.excluded;
    for (const st of subtrees) into.push(parseSubtree(der, st, owner, which));
  }
  return out;
}

function parseSubtree(der: Buffer, st: Tlv, owner: string, which: string): NameSubtree {
  if (st.tag !== TAG.SEQUENCE) throw new DerError(`${which}: GeneralSubtree must be a SEQUENCE`);
  const [base, ...rest] = children(der, st);
  if (base === undefined) throw new DerError(`${which}: GeneralSubtree without a base name`);
  let seenMinimum = false;
  for (const f of rest) {
    if (f.tag === 0x80 && !seenMinimum) {
      seenMinimum = true;
      const n = content(der, f);
      if (n.length === 0) throw new DerError(`${which}: empty minimum`);
      if (n.length !== 1 || n[0] !== 0) {
        throw malformed(`${owner}: a ${which} entry has minimum ${describeInteger(n)}; RFC 5280 4.2.1.10 requires minimum 0, so the constraint cannot be honoured`);
      }
    } else if (f.tag === 0x81) {
      throw malformed(`${owner}: a ${which} entry has a maximum; RFC 5280 4.2.1.10 requires it to be absent, so the constraint cannot be honoured`);
    } else {
      throw new DerError(`${which}: unexpected element 0x${f.tag.toString(16)} in GeneralSubtree`);
    }
  }
  const unsupported = UNSUPPORTED_FORMS[base.tag];
  if (unsupported !== undefined) {
    throw new X509SvidError('unhandled-critical-extension',
      `${owner}: nameConstraints ${which} uses the ${unsupported} name form, which this verifier does not evaluate; the chain is refused rather than the constraint ignored`);
  }
  const form = FORM_TAGS[base.tag];
  if (form === undefined) throw new DerError(`${which}: unknown GeneralName tag 0x${base.tag.toString(16)}`);
  const raw = content(der, base);
  switch (form) {
    case 'iPAddress':
      return ipSubtree(raw, owner, which);
    case 'directoryName':
      return { form, rdns: explicitName(der, base) };
    default: {
      const text = ia5(raw, form);
      return { form, value: constraintValue(form, text, owner, which) };
    }
  }
}

function describeInteger(n: Buffer): string {
  return n.length <= 6 ? String(n.readUIntBE(0, n.length) - ((n[0] as number) & 0x80 ? 2 ** (8 * n.length) : 0)) : `0x${n.toString('hex')}`;
}

function ipSubtree(raw: Buffer, owner: string, which: string): NameSubtree {
  if (raw.length !== 8 && raw.length !== 32) {
    throw malformed(`${owner}: a ${which} iPAddress constraint is ${raw.length} bytes; it must be an address and a mask (8 bytes IPv4, 32 bytes IPv6)`);
  }
  const half = raw.length / 2;
  const address = raw.subarray(0, half);
  const mask = raw.subarray(half);
  // A mask must be leading ones then zeros; anything else has no subtree meaning.
  let zeros = false;
  for (const byte of mask) {
    for (let bit = 7; bit >= 0; bit--) {
      const one = ((byte >> bit) & 1) === 1;
      if (one && zeros) throw malformed(`${owner}: a ${which} iPAddress constraint has a non-contiguous mask ${mask.toString('hex')}`);
      if (!one) zeros = true;
    }
  }
  return { form: 'iPAddress', address, mask };
}

function ia5(raw: Buffer, form: string): string {
  for (const b of raw) if (b > 0x7f) throw new DerError(`${form} is not an IA5String (byte 0x${b.toString(16)})`);
  return raw.toString('latin1');
}

// Host names as they appear in constraints and names: letters, digits, '-', '_' labels, dot-separated.
const HOST = /^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/;
const DNS_NAME = /^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*$/;
const IPV4 = /^[0-9]+(\.[0-9]+){3}$/;

/** Validates and lower-cases one constraint value; malformed ones are refused so they can never fail open. */
function constraintValue(form: 'rfc822Name' | 'dNSName' | 'uniformResourceIdentifier', text: string, owner: string, which: string): string {
  const v = text.toLowerCase();
  const bad = (why: string): X509SvidError => malformed(`${owner}: ${which} ${form} constraint ${JSON.stringify(text)} ${why}`);
  switch (form) {
    case 'dNSName':
      // Empty matches every DNS name (RFC 5280: any name built by adding labels on the left).
      if (v !== '' && !HOST.test(v.startsWith('.') ? v.slice(1) : v)) throw bad('is not a DNS domain');
      return v;
    case 'uniformResourceIdentifier':
      if (v.includes('://') || v.includes('/')) {
        throw bad(`is not a host or domain: RFC 5280 URI constraints name only the host part (for SPIFFE IDs, the trust domain), e.g. "example.org" or ".example.org"`);
      }
      if (!HOST.test(v.startsWith('.') ? v.slice(1) : v)) throw bad('is not a host or domain name');
      if (IPV4.test(v)) throw bad('is an IP address; URI constraints must be host names');
      return v;
    case 'rfc822Name': {
      const at = v.lastIndexOf('@');
      const host = at >= 0 ? v.slice(at + 1) : v;
      if (at === 0) throw bad('has an empty local part');
      if (!HOST.test(host.startsWith('.') && at < 0 ? host.slice(1) : host)) throw bad('is not a mailbox, host or domain');
      // The local part of a mailbox is case-sensitive: keep it as written.
      return at >= 0 ? `${text.slice(0, at)}@${host}` : v;
    }
  }
}

/** A directoryName [4] (EXPLICIT: it wraps one Name) as canonical RDN strings. */
function explicitName(der: Buffer, t: Tlv): string[] {
  const inner = children(der, t);
  if (inner.length !== 1 || inner[0]?.tag !== TAG.SEQUENCE) throw new DerError('directoryName must hold exactly one Name');
  return canonicalRdns(der, inner[0]);
}

const STRING_TAGS = new Set([0x0c, 0x13, 0x14, 0x16, 0x1c, 0x1e]);
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/**
 * A Name as one string per RDN, so that equal names compare equal however their strings are encoded:
 * directory strings are decoded, ASCII-lower-cased and whitespace-folded (RFC 5280 7.1, as OpenSSL
 * does); other values are compared as their DER. Attributes of a multi-valued RDN are sorted.
 */
function canonicalRdns(der: Buffer, name: Tlv): string[] {
  return children(der, name).map((rdn) => {
    if (rdn.tag !== TAG.SET) throw new DerError('RelativeDistinguishedName must be a SET');
    const atvs = children(der, rdn);
    if (atvs.length === 0) throw new DerError('empty RelativeDistinguishedName');
    return atvs.map((atv) => {
      const [type, value, ...extra] = children(der, atv);
      if (atv.tag !== TAG.SEQUENCE || type?.tag !== TAG.OID || value === undefined || extra.length > 0) {
        throw new DerError('bad AttributeTypeAndValue');
      }
      const oid = oidToString(content(der, type));
      const text = directoryString(der, value);
      return text === undefined ? `${oid}#${slice(der, value).toString('hex')}` : `${oid}=${fold(text)}`;
    }).sort().join('+');
  });
}

function directoryString(der: Buffer, t: Tlv): string | undefined {
  if (!STRING_TAGS.has(t.tag)) return undefined;
  const raw = content(der, t);
  switch (t.tag) {
    case 0x0c:
      try {
        return utf8Strict.decode(raw);
      } catch (e) {
        throw new DerError(`invalid UTF8String in a name: ${(e as Error).message}`);
      }
    case 0x1e: {
      if (raw.length % 2 !== 0) throw new DerError('BMPString of odd length in a name');
      let s = '';
      for (let i = 0; i < raw.length; i += 2) s += String.fromCharCode(raw.readUInt16BE(i));
      return s;
    }
    case 0x1c: {
      if (raw.length % 4 !== 0) throw new DerError('UniversalString length not a multiple of 4 in a name');
      let s = '';
      for (let i = 0; i < raw.length; i += 4) {
        const cp = raw.readUInt32BE(i);
        if (cp > 0x10ffff) throw new DerError('UniversalString code point out of range in a name');
        s += String.fromCodePoint(cp);
      }
      return s;
    }
    default:
      return raw.toString('latin1'); // PrintableString, IA5String, TeletexString (treated as Latin-1)
  }
}

function fold(s: string): string {
  return s.replace(/[\t\n\v\f\r ]+/g, ' ').trim().replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/** A name of a subordinate certificate, normalized for matching; `key` undefined = cannot be matched. */
type CheckedName =
  | { form: 'rfc822Name'; shown: string; local?: string; host?: string }
  | { form: 'dNSName'; shown: string; key?: string }
  | { form: 'directoryName'; shown: string; rdns: string[] }
  | { form: 'uniformResourceIdentifier'; shown: string; key?: string }
  | { form: 'iPAddress'; shown: string; address?: Buffer };

// A subject CN that reads as a host name (letters, digits, '_', inner '-', at least one dot).
const CN_HOST = /^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)+$/;

/** The names of `cert` that name constraints apply to. */
function namesOf(cert: CertificateView, label: string, isLeaf: boolean): CheckedName[] {
  const out: CheckedName[] = [];
  const commonNames: string[] = [];
  try {
    if (!cert.subjectEmpty) {
      const subject = cert.subjectName;
      const name = readTlv(subject, 0);
      const rdns = canonicalRdns(subject, name);
      out.push({ form: 'directoryName', shown: 'subject DN', rdns });
      for (const rdn of children(subject, name)) {
        for (const atv of children(subject, rdn)) {
          const [type, value] = children(subject, atv);
          if (type === undefined || value === undefined) continue;
          const oid = oidToString(content(subject, type));
          if (oid === OID.emailAddress) out.push(emailName(ia5(content(subject, value), 'emailAddress'), 'subject emailAddress'));
          if (oid === OID.commonName) commonNames.push(directoryString(subject, value) ?? '');
        }
      }
    }
    const san = cert.extensions.find((e) => e.oid === OID.subjectAltName);
    if (san !== undefined) out.push(...sanNames(san.value));
  } catch (e) {
    if (e instanceof X509SvidError) throw e;
    throw malformed(`${label}: its names cannot be read for name-constraint checking: ${(e as Error).message}`, e);
  }
  // As OpenSSL does: a leaf without DNS SANs may still be taken for the host in its CN by a TLS
  // client, so a host-like CN is checked against DNS constraints.
  if (isLeaf && !out.some((n) => n.form === 'dNSName')) {
    for (const cn of commonNames) {
      const host = cn.toLowerCase();
      if (CN_HOST.test(host)) out.push({ form: 'dNSName', shown: `subject CN ${JSON.stringify(cn)}`, key: host });
    }
  }
  return out;
}

function sanNames(der: Buffer): CheckedName[] {
  const top = readTlv(der, 0);
  if (top.tag !== TAG.SEQUENCE || top.end !== der.length) throw new DerError('SubjectAltName must be one SEQUENCE');
  const out: CheckedName[] = [];
  for (const gn of children(der, top)) {
    const raw = content(der, gn);
    switch (gn.tag) {
      case 0x81:
        out.push(emailName(ia5(raw, 'rfc822Name'), 'rfc822Name SAN'));
        break;
      case 0x82: {
        const v = ia5(raw, 'dNSName').toLowerCase();
        out.push({ form: 'dNSName', shown: `DNS SAN ${JSON.stringify(v)}`, ...(DNS_NAME.test(v) ? { key: v } : {}) });
        break;
      }
      case 0xa4:
        out.push({ form: 'directoryName', shown: 'directoryName SAN', rdns: explicitName(der, gn) });
        break;
      case 0x86: {
        const v = ia5(raw, 'uniformResourceIdentifier');
        const host = uriHost(v);
        out.push({ form: 'uniformResourceIdentifier', shown: `URI SAN ${JSON.stringify(v)}`, ...(host !== undefined ? { key: host } : {}) });
        break;
      }
      case 0x87:
        if (raw.length !== 4 && raw.length !== 16) throw new DerError(`iPAddress SAN of ${raw.length} bytes (must be 4 or 16)`);
        out.push({ form: 'iPAddress', shown: `IP SAN ${ipText(raw)}`, address: raw });
        break;
      default:
        break; // otherName, x400Address, ediPartyName, registeredID: no constraint of these forms is ever accepted
    }
  }
  return out;
}

function emailName(text: string, what: string): CheckedName {
  const at = text.lastIndexOf('@');
  const host = at > 0 ? text.slice(at + 1).toLowerCase() : '';
  const shown = `${what} ${JSON.stringify(text)}`;
  return HOST.test(host) ? { form: 'rfc822Name', shown, local: text.slice(0, at), host } : { form: 'rfc822Name', shown };
}

/** The host of a URI with an authority (scheme://[userinfo@]host[:port]/...), lower case; undefined when there is none or it is an IP literal. */
function uriHost(uri: string): string | undefined {
  const m = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)/i.exec(uri);
  if (m === null) return undefined;
  let authority = m[1] as string;
  authority = authority.slice(authority.lastIndexOf('@') + 1);
  if (authority.startsWith('[')) return undefined;
  const host = authority.replace(/:[0-9]*$/, '').toLowerCase();
  return HOST.test(host) && !IPV4.test(host) ? host : undefined;
}

function ipText(b: Buffer): string {
  if (b.length === 4) return [...b].join('.');
  const groups: string[] = [];
  for (let i = 0; i < b.length; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  return groups.join(':');
}

function describeSubtree(s: NameSubtree): string {
  switch (s.form) {
    case 'iPAddress':
      return `iPAddress ${ipText(s.address)}/${ipText(s.mask)}`;
    case 'directoryName':
      return `directoryName of ${s.rdns.length} RDN(s)`;
    default:
      return `${s.form} ${JSON.stringify(s.value)}`;
  }
}

/** Whether `name` lies in subtree `s`; undefined when the name has no part to compare with a constraint of its form. */
function within(name: CheckedName, s: NameSubtree): boolean | undefined {
  switch (name.form) {
    case 'dNSName': {
      if (s.form !== 'dNSName') return false;
      if (name.key === undefined) return undefined;
      // Labels may only be added on the left; a leading '.' asks for at least one added label.
      if (s.value === '') return true;
      if (s.value.startsWith('.')) return name.key.endsWith(s.value);
      return name.key === s.value || name.key.endsWith(`.${s.value}`);
    }
    case 'uniformResourceIdentifier': {
      if (s.form !== 'uniformResourceIdentifier') return false;
      if (name.key === undefined) return undefined;
      return s.value.startsWith('.') ? name.key.endsWith(s.value) : name.key === s.value;
    }
    case 'rfc822Name': {
      if (s.form !== 'rfc822Name') return false;
      if (name.host === undefined || name.local === undefined) return undefined;
      const at = s.value.lastIndexOf('@');
      if (at >= 0) return name.local === s.value.slice(0, at) && name.host === s.value.slice(at + 1);
      return s.value.startsWith('.') ? name.host.endsWith(s.value) : name.host === s.value;
    }
    case 'iPAddress': {
      if (s.form !== 'iPAddress') return false;
      const a = name.address as Buffer;
      if (a.length !== s.address.length) return false;
      for (let i = 0; i < a.length; i++) {
        if ((((a[i] as number) ^ (s.address[i] as number)) & (s.mask[i] as number)) !== 0) return false;
      }
      return true;
    }
    case 'directoryName': {
      if (s.form !== 'directoryName') return false;
      return s.rdns.length <= name.rdns.length && s.rdns.every((r, i) => r === name.rdns[i]);
    }
  }
}

interface Constrainer {
  label: string;
  nc: NameConstraints;
}

const parsedCache = new WeakMap<CertificateView, NameConstraints | null>();

/** The name constraints a CA certificate carries (cached per parsed view; trust anchors are reused). */
function constraintsOf(cert: CertificateView, label: string): NameConstraints | undefined {
  const cached = parsedCache.get(cert);
  if (cached !== undefined) return cached ?? undefined;
  const ext = cert.extensions.find((e) => e.oid === OID.nameConstraints);
  const nc = ext === undefined ? undefined : parseNameConstraints(ext.value, label);
  parsedCache.set(cert, nc ?? null);
  return nc;
}

/**
 * Applies the name constraints of `anchor` and of every CA in `chain` (leaf first, ending just below
 * `anchor`) to the certificates below each of them. Call after the path's signatures have been
 * verified; `labelOf(i)` names chain[i] in error messages. Throws X509SvidError:
 * 'name-constraint-violation' for a name outside the permitted or inside the excluded subtrees (or one
 * that cannot be compared with them), 'untrusted' past the comparison limit, and
 * 'malformed-certificate' and 'unhandled-critical-extension' from parseNameConstraints.
 */
export function enforceNameConstraints(chain: readonly CertificateView[], anchor: CertificateView, labelOf: (index: number) => string): void {
  const active: Constrainer[] = [];
  const anchorNc = constraintsOf(anchor, 'trust bundle authority');
  if (anchorNc !== undefined) active.push({ label: 'trust bundle authority', nc: anchorNc });
  let budget = MAX_NAME_CONSTRAINT_COMPARISONS;
  for (let i = chain.length - 1; i >= 0; i--) {
    const cert = chain[i] as CertificateView;
    const label = labelOf(i);
    const selfIssued = cert.issuerName.equals(cert.subjectName);
    if (active.length > 0 && (i === 0 || !selfIssued)) {
      const names = namesOf(cert, label, i === 0);
      for (const c of active) budget -= names.length * (c.nc.permitted.length + c.nc.excluded.length);
      if (budget < 0) {
        throw new X509SvidError('untrusted', `name constraints of this chain need more than ${MAX_NAME_CONSTRAINT_COMPARISONS} comparisons; refused against resource exhaustion`);
      }
      for (const name of names) checkName(name, label, active);
    }
    if (i > 0) {
      const nc = constraintsOf(cert, label);
      if (nc !== undefined) active.push({ label, nc });
    }
  }
}

function checkName(name: CheckedName, label: string, active: readonly Constrainer[]): void {
  // Excluded first: a name both permitted and excluded is excluded.
  for (const c of active) {
    for (const s of c.nc.excluded) {
      const hit = within(name, s);
      if (hit === undefined) throw uncheckable(name, label, c, 'excluded');
      if (hit) throw new X509SvidError('name-constraint-violation', `${label}: its ${name.shown} is in the excluded ${describeSubtree(s)} of the name constraints of the ${c.label}`);
    }
  }
  for (const c of active) {
    const relevant = c.nc.permitted.filter((s) => s.form === name.form);
    if (relevant.length === 0) continue;
    let ok = false;
    for (const s of relevant) {
      const hit = within(name, s);
      if (hit === undefined) throw uncheckable(name, label, c, 'permitted');
      if (hit) {
        ok = true;
        break;
      }
    }
    if (!ok) {
      throw new X509SvidError('name-constraint-violation',
        `${label}: its ${name.shown} is outside the permitted ${relevant.map(describeSubtree).join(', ')} of the name constraints of the ${c.label}`);
    }
  }
}

function uncheckable(name: CheckedName, label: string, c: Constrainer, which: string): X509SvidError {
  return new X509SvidError('name-constraint-violation',
    `${label}: its ${name.shown} has no host or domain part to compare with the ${which} ${name.form} name constraints of the ${c.label}`);
}
