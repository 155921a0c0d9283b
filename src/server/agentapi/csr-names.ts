// Reads the subjectAltName a PKCS#10 CSR asks for (extensionRequest attribute), so the server can
// refuse a CSR that asks for names the registration entry does not grant. The SVID's names always
// come from the entry; this check only rejects requests that ask for something else.
import { children, content, oidToString, readWhole, TAG, type Tlv } from '../../spiffe/der.js';

const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';

export interface CsrNames {
  uris: string[];
  dnsNames: string[];
  /** GeneralName kinds other than URI and DNS (e.g. "email", "ip", "tag 4"). */
  others: string[];
}

const OTHER_NAMES: Record<number, string> = { 0x81: 'email', 0x87: 'ip', 0xa0: 'otherName', 0xa4: 'directoryName', 0x88: 'registeredID' };

/** The SANs requested by a CSR whose structure publicKeyFromCsr already checked. Throws on malformed DER. */
export function csrRequestedNames(csrDer: Buffer): CsrNames {
  const out: CsrNames = { uris: [], dnsNames: [], others: [] };
  const top = readWhole(csrDer, TAG.SEQUENCE, 'CertificationRequest');
  const cri = children(csrDer, top)[0] as Tlv;
  const attrs = children(csrDer, cri).find((t) => t.tag === 0xa0);
  if (!attrs) return out;
  for (const attr of children(csrDer, attrs)) {
    const [typeT, valuesT] = children(csrDer, attr);
    if (!typeT || !valuesT || oidToString(content(csrDer, typeT)) !== OID_EXTENSION_REQUEST) continue;
    for (const exts of children(csrDer, valuesT)) {
      for (const ext of children(csrDer, exts)) {
        const parts = children(csrDer, ext);
        if (!parts[0] || oidToString(content(csrDer, parts[0])) !== OID_SUBJECT_ALT_NAME) continue;
        const valueT = parts[parts.length - 1] as Tlv;
        const inner = content(csrDer, valueT);
        const names = readWhole(inner, TAG.SEQUENCE, 'subjectAltName');
        for (const gn of children(inner, names)) {
          const v = content(inner, gn).toString('latin1');
          if (gn.tag === 0x86) out.uris.push(v);
          else if (gn.tag === 0x82) out.dnsNames.push(v);
          else out.others.push(OTHER_NAMES[gn.tag] ?? `tag 0x${gn.tag.toString(16)}`);
        }
      }
    }
  }
  return out;
}
