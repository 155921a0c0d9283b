// RFC 5280 name constraints in X.509-SVID path validation. The constrained CA certificates (and the
// leaves that need SAN forms the product does not mint: IP, e-mail, a self-issued CA's leaf) are made
// by the openssl CLI, independently of src/spiffe; every vector is verified through verifyX509Svid
// and cross-checked with `openssl verify`, which must reach the same verdict except where noted (the
// documented fail-closed differences). Two vectors also go through a real mutual-TLS handshake with
// the workload library's TLS helpers.
import { spawnSync } from 'node:child_process';
import crypto, { type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  Bundle, BundleSet, derToPem, mintX509Svid, parseCertificate, pemToDer, SpiffeId, TrustDomain, verifyX509Svid,
  X509SvidError, type NameFields,
} from '../../src/spiffe/index.js';
import { ctxConstructed, ctxPrimitive, seq } from '../../src/spiffe/der.js';
import { parseNameConstraints } from '../../src/spiffe/name-constraints.js';
import { authorizeAny, createTlsServer, tlsConnect, type X509SourceLike } from '../../src/workload/index.js';
import { tempDir } from '../support/tmp.js';

interface KeyPair {
  publicKey: KeyObject;
  privateKey: KeyObject;
  pubFile: string;
  keyFile: string;
}

interface Cert {
  der: Buffer;
  file: string;
  key: KeyPair;
}

let dir: string;
let cleanup: () => void;
let seq_ = 0;
let rootKey: KeyPair;
let intKey: KeyPair;
let int2Key: KeyPair;
let leafKey: KeyPair;
let root: Cert;

const TRUST_DOMAINS = ['example.org', 'evil.org', 'prod.example.org', 'sub.example.org', 'other.org', 'third.org'];
const CA_EXT = ['basicConstraints=critical,CA:true', 'keyUsage=critical,keyCertSign,cRLSign'];

function keyPair(name: string): KeyPair {
  const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const pubFile = path.join(dir, `${name}.pub`);
  const keyFile = path.join(dir, `${name}.key`);
  fs.writeFileSync(pubFile, k.publicKey.export({ type: 'spki', format: 'pem' }));
  fs.writeFileSync(keyFile, k.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  return { ...k, pubFile, keyFile };
}

function openssl(args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

/** A certificate made by `openssl x509 -new`: self-signed without `issuer`, else signed by it. */
function opensslCert(o: { subject: string; key: KeyPair; issuer?: Cert; ext: string[]; sections?: string }): Cert {
  const n = ++seq_;
  const extFile = path.join(dir, `c${n}.ext`);
  fs.writeFileSync(extFile, `${o.ext.join('\n')}\n${o.sections ?? ''}`);
  const out = path.join(dir, `c${n}.pem`);
  const signing = o.issuer === undefined
    ? ['-key', o.key.keyFile]
    : ['-CA', o.issuer.file, '-CAkey', o.issuer.key.keyFile, '-force_pubkey', o.key.pubFile];
  const r = openssl(['x509', '-new', '-subj', o.subject, ...signing, '-days', '1', '-extfile', extFile, '-out', out]);
  if (!r.ok) throw new Error(`openssl x509 -new failed: ${r.out}`);
  return { der: pemToDer(fs.readFileSync(out, 'utf8'), 'CERTIFICATE')[0] as Buffer, file: out, key: o.key };
}

/** An intermediate CA under `issuer` (default: the root) carrying the extra extension lines. */
function ca(name: string, ext: string[], o: { issuer?: Cert; key?: KeyPair; sections?: string; subject?: string } = {}): Cert {
  return opensslCert({
    subject: o.subject ?? `/O=terroir/CN=${name}`, key: o.key ?? intKey, issuer: o.issuer ?? root, ext: [...CA_EXT, ...ext],
    ...(o.sections !== undefined ? { sections: o.sections } : {}),
  });
}

/** A DER nameConstraints value as an openssl extension line. */
function rawNc(value: Buffer, critical = true): string {
  return `2.5.29.30=${critical ? 'critical,' : ''}DER:${value.toString('hex')}`;
}

/** A leaf X.509-SVID minted by the product under `issuer`; returns the chain as presented. */
function leaf(id: string, issuer: Cert, chainAbove: Cert[] = [], o: { dnsNames?: string[]; subject?: NameFields } = {}): Buffer[] {
  const m = mintX509Svid({
    id: SpiffeId.parse(id), publicKey: leafKey.publicKey, issuer: { certificateDer: issuer.der, privateKey: issuer.key.privateKey },
    ttlSeconds: 600, ...o,
  });
  return [m.der, ...(issuer === root ? [] : [issuer.der]), ...chainAbove.map((c) => c.der)];
}

/** A leaf X.509-SVID made by openssl (for SAN forms the product does not mint). */
function opensslLeaf(san: string, issuer: Cert, chainAbove: Cert[] = []): Buffer[] {
  const c = opensslCert({
    subject: '/', key: leafKey, issuer,
    ext: ['basicConstraints=critical,CA:false', 'keyUsage=critical,digitalSignature', `subjectAltName=critical,${san}`],
  });
  return [c.der, ...(issuer === root ? [] : [issuer.der]), ...chainAbove.map((x) => x.der)];
}

type Verdict = 'ok' | `refused:${string}`;

/** Our verdict: verifyX509Svid against bundles in which every test trust domain trusts `anchor`. */
function ours(chain: Buffer[], anchor: Cert = root): { verdict: Verdict; message: string } {
  const bundles = new BundleSet(...TRUST_DOMAINS.map((name) => {
    const b = new Bundle(TrustDomain.parse(name));
    b.addX509Authority(anchor.der);
    return b;
  }));
  try {
    verifyX509Svid(chain, bundles);
    return { verdict: 'ok', message: '' };
  } catch (e) {
    expect(e).toBeInstanceOf(X509SvidError);
    return { verdict: `refused:${(e as X509SvidError).code}`, message: (e as Error).message };
  }
}

/** `openssl verify` of the same chain against the same anchor. */
function theirs(chain: Buffer[], anchor: Cert = root): { ok: boolean; out: string } {
  const n = ++seq_;
  const leafFile = path.join(dir, `v${n}-leaf.pem`);
  fs.writeFileSync(leafFile, derToPem(chain[0] as Buffer));
  const args = ['verify', '-CAfile', anchor.file];
  const rest = chain.slice(1).filter((d) => !d.equals(anchor.der));
  if (rest.length > 0) {
    const untrusted = path.join(dir, `v${n}-untrusted.pem`);
    fs.writeFileSync(untrusted, rest.map((d) => derToPem(d)).join(''));
    args.push('-untrusted', untrusted);
  }
  return openssl([...args, leafFile]);
}

/**
 * Verifies `chain` both ways. `expected` is our verdict; `message` a pattern our error must match;
 * openssl must agree unless `opensslAccepts` documents a fail-closed difference.
 */
function check(chain: Buffer[], expected: Verdict, o: { message?: RegExp; anchor?: Cert; opensslAccepts?: true } = {}): void {
  const got = ours(chain, o.anchor);
  expect(got.verdict, got.message).toBe(expected);
  if (o.message !== undefined) expect(got.message).toMatch(o.message);
  const ssl = theirs(chain, o.anchor);
  if (o.opensslAccepts === true) {
    expect(expected).not.toBe('ok'); // only ever stricter than OpenSSL, never more lenient
    expect(ssl.ok, ssl.out).toBe(true);
  } else {
    expect(ssl.ok, ssl.out).toBe(expected === 'ok');
  }
}

// GeneralName / GeneralSubtree DER for hand-made extension values.
const uriName = (host: string): Buffer => ctxPrimitive(6, Buffer.from(host, 'latin1'));
const subtrees = (tag: 0 | 1, ...subs: Buffer[]): Buffer => ctxConstructed(tag, Buffer.concat(subs));

beforeAll(() => {
  ({ dir, cleanup } = tempDir('terroir-nc-'));
  rootKey = keyPair('root');
  intKey = keyPair('int');
  int2Key = keyPair('int2');
  leafKey = keyPair('leaf');
  root = opensslCert({ subject: '/O=terroir/CN=upstream root', key: rootKey, ext: CA_EXT });
});
afterAll(() => cleanup());

describe('URI name constraints (the SPIFFE trust domain)', () => {
  it('a permitted host admits exactly that trust domain: not a sibling, not a subdomain', () => {
    const int = ca('uri-exact', ['nameConstraints=critical,permitted;URI:example.org']);
    check(leaf('spiffe://example.org/ns/prod/sa/web', int), 'ok');
    check(leaf('spiffe://evil.org/ns/prod/sa/web', int), 'refused:name-constraint-violation',
      { message: /leaf certificate: its URI SAN "spiffe:\/\/evil\.org\/ns\/prod\/sa\/web" is outside the permitted uniformResourceIdentifier "example\.org" of the name constraints of the intermediate certificate #1/ });
    check(leaf('spiffe://sub.example.org/w', int), 'refused:name-constraint-violation');
  });

  it('a leading-dot domain admits every subdomain but not the domain itself; case does not matter', () => {
    const int = ca('uri-dot', ['nameConstraints=critical,permitted;URI:.Example.ORG']);
    check(leaf('spiffe://prod.example.org/w', int), 'ok');
    check(leaf('spiffe://sub.example.org/w', int), 'ok');
    check(leaf('spiffe://example.org/w', int), 'refused:name-constraint-violation');
    check(leaf('spiffe://evil.org/w', int), 'refused:name-constraint-violation');
  });

  it('an excluded host refuses that trust domain only, and exclusion wins over a permitted subtree', () => {
    const excl = ca('uri-excl', ['nameConstraints=critical,excluded;URI:evil.org']);
    check(leaf('spiffe://example.org/w', excl), 'ok');
    check(leaf('spiffe://evil.org/w', excl), 'refused:name-constraint-violation', { message: /is in the excluded uniformResourceIdentifier "evil\.org"/ });
    const both = ca('uri-both', ['nameConstraints=critical,permitted;URI:.org,excluded;URI:evil.org']);
    check(leaf('spiffe://example.org/w', both), 'ok');
    check(leaf('spiffe://evil.org/w', both), 'refused:name-constraint-violation', { message: /excluded/ });
  });

  it('a URI constraint written as a SPIFFE ID is refused, not compared as a host (openssl refuses too)', () => {
    // RFC 5280 URI constraints name a host; "spiffe://example.org" never matches one. Refusing it as
    // malformed (rather than "no match") also keeps an excluded one from failing open.
    const int = ca('uri-spiffe', ['nameConstraints=critical,permitted;URI:spiffe://example.org']);
    check(leaf('spiffe://example.org/w', int), 'refused:malformed-certificate', { message: /only the host part .*"example\.org"/ });
    const excl = ca('uri-spiffe-excl', ['nameConstraints=critical,excluded;URI:spiffe://evil.org']);
    check(leaf('spiffe://evil.org/w', excl), 'refused:malformed-certificate', { opensslAccepts: true });
  });

  it('a constraint on a non-immediate ancestor applies to everything below it', () => {
    const top = ca('uri-top', ['nameConstraints=critical,permitted;URI:example.org']);
    const mid = ca('uri-mid', [], { issuer: top, key: int2Key });
    check(leaf('spiffe://example.org/w', mid, [top]), 'ok');
    check(leaf('spiffe://evil.org/w', mid, [top]), 'refused:name-constraint-violation', { message: /of the intermediate certificate #2/ });
    // The intermediate's own SPIFFE ID is one of its names, checked against the constraint above it.
    const evilMid = ca('uri-evil-mid', ['subjectAltName=URI:spiffe://evil.org'], { issuer: top, key: int2Key });
    check(opensslLeaf('URI:spiffe://example.org/w', evilMid, [top]), 'refused:name-constraint-violation',
      { message: /^intermediate certificate #1: its URI SAN "spiffe:\/\/evil\.org"/ });
  });

  it('a name of a constrained form that has no host to compare is refused', () => {
    const top = ca('uri-nohost', ['nameConstraints=critical,permitted;URI:example.org']);
    const mid = ca('uri-urn-mid', ['subjectAltName=URI:urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66'], { issuer: top, key: int2Key });
    check(leaf('spiffe://example.org/w', mid, [top]), 'refused:name-constraint-violation', { message: /URI SAN "urn:uuid:.*" has no host or domain part/ });
  });

  it('a self-issued intermediate is exempt for its own names, not for what it signs', () => {
    const top = ca('uri-si', ['nameConstraints=critical,permitted;URI:example.org']);
    // Same subject as `top` (so self-issued), new key, a name outside the constraint.
    const rollover = ca('uri-si-2', ['subjectAltName=URI:spiffe://evil.org'], { issuer: top, key: int2Key, subject: '/O=terroir/CN=uri-si' });
    expect(parseCertificate(rollover.der).subjectName.equals(parseCertificate(top.der).subjectName)).toBe(true);
    check(opensslLeaf('URI:spiffe://example.org/w', rollover, [top]), 'ok');
    check(opensslLeaf('URI:spiffe://evil.org/w', rollover, [top]), 'refused:name-constraint-violation');
  });

  it('permitted subtrees of successive CAs intersect', () => {
    const top = ca('uri-int-top', ['nameConstraints=critical,permitted;URI:example.org,permitted;URI:other.org']);
    const mid = ca('uri-int-mid', ['nameConstraints=critical,permitted;URI:example.org,permitted;URI:third.org'], { issuer: top, key: int2Key });
    check(leaf('spiffe://example.org/w', mid, [top]), 'ok');
    check(leaf('spiffe://other.org/w', mid, [top]), 'refused:name-constraint-violation', { message: /"third\.org".* of the intermediate certificate #1/ });
    check(leaf('spiffe://third.org/w', mid, [top]), 'refused:name-constraint-violation', { message: /of the intermediate certificate #2/ });
  });

  it('constraints carried by the trust anchor itself apply (as in OpenSSL and Go)', () => {
    const constrainedRoot = opensslCert({
      subject: '/O=terroir/CN=constrained root', key: rootKey, ext: [...CA_EXT, 'nameConstraints=critical,permitted;URI:example.org'],
    });
    check(leaf('spiffe://example.org/w', constrainedRoot), 'ok', { anchor: constrainedRoot });
    check(leaf('spiffe://evil.org/w', constrainedRoot), 'refused:name-constraint-violation', { anchor: constrainedRoot, message: /of the trust bundle authority/ });
    const int = ca('under-constrained-root', [], { issuer: constrainedRoot });
    check(leaf('spiffe://evil.org/w', int), 'refused:name-constraint-violation', { anchor: constrainedRoot });
  });

  it('a non-critical nameConstraints extension is enforced all the same', () => {
    const int = ca('uri-noncrit', ['nameConstraints=permitted;URI:example.org']);
    check(leaf('spiffe://example.org/w', int), 'ok');
    check(leaf('spiffe://evil.org/w', int), 'refused:name-constraint-violation');
  });
});

describe('DNS, IP, e-mail and directoryName constraints', () => {
  it('dNSName: label-wise suffix matching; a URI is not constrained by DNS subtrees', () => {
    const int = ca('dns', ['nameConstraints=critical,permitted;DNS:example.org,excluded;DNS:internal.example.org']);
    check(leaf('spiffe://example.org/w', int, [], { dnsNames: ['example.org', 'web.example.org', 'a.b.example.org'] }), 'ok');
    check(leaf('spiffe://example.org/w', int, [], { dnsNames: ['web.evil.org'] }), 'refused:name-constraint-violation', { message: /DNS SAN "web\.evil\.org" is outside the permitted dNSName "example\.org"/ });
    check(leaf('spiffe://example.org/w', int, [], { dnsNames: ['badexample.org'] }), 'refused:name-constraint-violation');
    check(leaf('spiffe://example.org/w', int, [], { dnsNames: ['db.internal.example.org'] }), 'refused:name-constraint-violation', { message: /excluded dNSName/ });
    // DNS subtrees say nothing about URIs: another trust domain's SVID without DNS SANs passes.
    check(leaf('spiffe://evil.org/w', int), 'ok');
  });

  it('dNSName: a leaf without DNS SANs has a host-like CN checked instead (as OpenSSL does)', () => {
    const int = ca('dns-cn', ['nameConstraints=critical,permitted;DNS:example.org']);
    check(leaf('spiffe://example.org/w', int, [], { subject: { commonName: 'web.example.org' } }), 'ok');
    check(leaf('spiffe://example.org/w', int, [], { subject: { commonName: 'Web.Evil.org' } }), 'refused:name-constraint-violation', { message: /subject CN "Web\.Evil\.org" is outside the permitted dNSName/ });
    check(leaf('spiffe://example.org/w', int, [], { subject: { commonName: 'web server' } }), 'ok'); // not a host name
    // With a DNS SAN, the SAN is the host name and the CN is left alone.
    check(leaf('spiffe://example.org/w', int, [], { subject: { commonName: 'web.evil.org' }, dnsNames: ['web.example.org'] }), 'ok');
  });

  it('iPAddress v4: address and mask; an IPv6 address is outside IPv4-only permitted subtrees', () => {
    const int = ca('ip4', ['nameConstraints=critical,permitted;IP:10.0.0.0/255.0.0.0']);
    check(opensslLeaf('URI:spiffe://example.org/w,IP:10.1.2.3', int), 'ok');
    check(opensslLeaf('URI:spiffe://example.org/w,IP:11.1.2.3', int), 'refused:name-constraint-violation', { message: /IP SAN 11\.1\.2\.3 is outside the permitted iPAddress 10\.0\.0\.0\/255\.0\.0\.0/ });
    check(opensslLeaf('URI:spiffe://example.org/w,IP:fd00::1', int), 'refused:name-constraint-violation');
  });

  it('iPAddress v6: prefix match, exclusions', () => {
    const int = ca('ip6', ['nameConstraints=critical,permitted;IP:fd00::/ff00::,excluded;IP:fd00:dead::/ffff:ffff::']);
    check(opensslLeaf('URI:spiffe://example.org/w,IP:fd12:3456::1', int), 'ok');
    check(opensslLeaf('URI:spiffe://example.org/w,IP:fe80::1', int), 'refused:name-constraint-violation');
    check(opensslLeaf('URI:spiffe://example.org/w,IP:fd00:dead::7', int), 'refused:name-constraint-violation', { message: /excluded iPAddress/ });
    // IPv4 names are not in IPv6 subtrees.
    check(opensslLeaf('URI:spiffe://example.org/w,IP:10.0.0.1', int), 'refused:name-constraint-violation');
  });

  it('rfc822Name: host, leading-dot domain and mailbox forms', () => {
    const int = ca('email', ['nameConstraints=critical,permitted;email:.example.org,permitted;email:example.net,excluded;email:root@mail.example.org']);
    check(opensslLeaf('URI:spiffe://example.org/w,email:ops@mail.example.org', int), 'ok');
    check(opensslLeaf('URI:spiffe://example.org/w,email:ops@EXAMPLE.net', int), 'ok');
    check(opensslLeaf('URI:spiffe://example.org/w,email:ops@example.org', int), 'refused:name-constraint-violation');
    check(opensslLeaf('URI:spiffe://example.org/w,email:root@mail.example.org', int), 'refused:name-constraint-violation', { message: /excluded rfc822Name/ });
    // Legacy e-mail addresses in the subject DN are checked as rfc822Names too (RFC 5280 4.2.1.10).
    const legacy = opensslCert({
      subject: '/CN=web/emailAddress=ops@evil.org', key: leafKey, issuer: int,
      ext: ['basicConstraints=critical,CA:false', 'keyUsage=critical,digitalSignature', 'subjectAltName=URI:spiffe://example.org/w'],
    });
    check([legacy.der, int.der], 'refused:name-constraint-violation', { message: /subject emailAddress "ops@evil\.org" is outside the permitted rfc822Name/ });
  });

  it('directoryName: RDN-prefix match on the subject, ignoring case and string type; an empty subject is not a name', () => {
    const int = ca('dirname', ['nameConstraints=critical,permitted;dirName:dn_sect'], { sections: '[dn_sect]\nO=Terroir\n' });
    check(leaf('spiffe://example.org/w', int, [], { subject: { organization: 'terroir', commonName: 'web' } }), 'ok');
    check(leaf('spiffe://example.org/w', int, [], { subject: { organization: 'TERROIR' } }), 'ok');
    check(leaf('spiffe://example.org/w', int, [], { subject: { organization: 'evil', commonName: 'web' } }), 'refused:name-constraint-violation', { message: /subject DN is outside the permitted directoryName/ });
    check(leaf('spiffe://example.org/w', int, [], { subject: { country: 'DE', organization: 'terroir' } }), 'refused:name-constraint-violation');
    check(leaf('spiffe://example.org/w', int), 'ok'); // empty subject: SPIFFE leaves name themselves in the SAN
  });
});

describe('constraints that cannot be honoured refuse the chain', () => {
  it('unsupported name forms (otherName, registeredID) refuse even where OpenSSL ignores them', () => {
    const rid = ca('rid', ['nameConstraints=critical,excluded;RID:1.2.3.4']);
    check(leaf('spiffe://example.org/w', rid), 'refused:unhandled-critical-extension', { message: /registeredID name form/, opensslAccepts: true });
    const other = ca('othername', ['nameConstraints=critical,permitted;otherName:1.2.3.4;UTF8:abc']);
    check(leaf('spiffe://example.org/w', other), 'refused:unhandled-critical-extension', { message: /otherName name form/, opensslAccepts: true });
  });

  it('a non-zero minimum or any maximum is refused (openssl refuses too)', () => {
    const min = ca('min', [rawNc(seq(subtrees(0, seq(uriName('example.org'), ctxPrimitive(0, Buffer.from([1]))))))]);
    check(leaf('spiffe://example.org/w', min), 'refused:malformed-certificate', { message: /minimum 1; RFC 5280 4\.2\.1\.10 requires minimum 0/ });
    const max = ca('max', [rawNc(seq(subtrees(0, seq(uriName('example.org'), ctxPrimitive(1, Buffer.from([5]))))))]);
    check(leaf('spiffe://example.org/w', max), 'refused:malformed-certificate', { message: /has a maximum/ });
    // An explicit minimum of 0 is the default value written out: accepted.
    const zero = ca('min0', [rawNc(seq(subtrees(0, seq(uriName('example.org'), ctxPrimitive(0, Buffer.from([0]))))))]);
    check(leaf('spiffe://example.org/w', zero), 'ok');
  });

  it('malformed extension bytes give malformed-certificate, never a crash (openssl refuses them too)', () => {
    const truncated = ca('bad-trunc', [rawNc(Buffer.from('3005a003300186', 'hex'))]);
    check(leaf('spiffe://example.org/w', truncated), 'refused:malformed-certificate', { message: /malformed nameConstraints extension/ });
    const wrongTag = ca('bad-tag', [rawNc(seq(ctxConstructed(2, seq(uriName('example.org')))))]);
    check(leaf('spiffe://example.org/w', wrongTag), 'refused:malformed-certificate');
  });

  it('an empty NameConstraints is refused (RFC 5280 forbids it; OpenSSL tolerates it)', () => {
    const empty = ca('empty', [rawNc(seq())]);
    check(leaf('spiffe://example.org/w', empty), 'refused:malformed-certificate', { message: /neither permittedSubtrees nor excludedSubtrees/, opensslAccepts: true });
  });

  it('more name × constraint comparisons than the limit are refused (resource exhaustion)', () => {
    const many = Array.from({ length: 500 }, (_, i) => ctxPrimitive(2, Buffer.from(`d${i}.example.org`)));
    const int = ca('many', [rawNc(seq(subtrees(0, ...many.map((n) => seq(n)))))]);
    const dnsNames = Array.from({ length: 501 }, (_, i) => `d${i % 500}.example.org`);
    const got = ours(leaf('spiffe://example.org/w', int, [], { dnsNames }));
    expect(got.verdict).toBe('refused:untrusted');
    expect(got.message).toMatch(/more than 250000 comparisons/);
    // Control: the same constraints with few names verify.
    check(leaf('spiffe://example.org/w', int, [], { dnsNames: ['d7.example.org', 'x.d499.example.org'] }), 'ok');
  });

  it('parseNameConstraints: random and truncated bytes only ever give X509SvidError', () => {
    const good = seq(subtrees(0, seq(uriName('example.org')), seq(ctxPrimitive(7, Buffer.from([10, 0, 0, 0, 255, 0, 0, 0])))),
      subtrees(1, seq(ctxPrimitive(2, Buffer.from('evil.org')))));
    const nc = parseNameConstraints(good);
    expect(nc.permitted.map((s) => s.form)).toEqual(['uniformResourceIdentifier', 'iPAddress']);
    expect(nc.excluded).toEqual([{ form: 'dNSName', value: 'evil.org' }]);
    const inputs: Buffer[] = [];
    for (let cut = 0; cut < good.length; cut++) inputs.push(good.subarray(0, cut));
    for (let i = 0; i < good.length; i++) {
      const flipped = Buffer.from(good);
      flipped[i] = (flipped[i] as number) ^ 0xff;
      inputs.push(flipped);
    }
    for (let i = 0; i < 200; i++) inputs.push(crypto.randomBytes(1 + (i % 40)));
    inputs.push(Buffer.concat([good, Buffer.from([0])])); // trailing byte
    inputs.push(seq(subtrees(0, seq(ctxPrimitive(7, Buffer.from([10, 0, 0, 0, 0, 255, 0, 0])))))); // non-contiguous mask
    let refused = 0;
    for (const input of inputs) {
      try {
        parseNameConstraints(input);
      } catch (e) {
        expect(e).toBeInstanceOf(X509SvidError);
        expect(['malformed-certificate', 'unhandled-critical-extension']).toContain((e as X509SvidError).code);
        refused++;
      }
    }
    expect(refused).toBeGreaterThan(good.length); // every truncation at least, and the two hand-made bad ones
  });
});

describe('through the workload library\'s mutual TLS', () => {
  let server: tls.Server | undefined;
  afterEach(async () => {
    await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    server = undefined;
  });

  function source(chain: Buffer[], key: KeyObject): X509SourceLike {
    const id = SpiffeId.parse(parseCertificate(chain[0] as Buffer).subjectAltName?.uris[0] as string);
    const bundles = TRUST_DOMAINS.map((name) => {
      const b = new Bundle(TrustDomain.parse(name));
      b.addX509Authority(root.der);
      return b;
    });
    const set = new BundleSet(...bundles);
    return {
      getX509Svid: () => ({ id, certificatesDer: chain, privateKey: key, expiresAt: new Date(Date.now() + 600_000) }),
      getX509BundleForTrustDomain: (td) => set.getX509BundleForTrustDomain(td),
      getX509Bundles: () => bundles,
      onUpdate: () => () => undefined,
    };
  }

  async function handshake(serverChain: Buffer[]): Promise<string | Error> {
    const serverSource = source(serverChain, leafKey.privateKey);
    const clientKey = keyPair('tls-client');
    const okInt = ca('tls-client-ca', ['nameConstraints=critical,permitted;URI:example.org']);
    const clientChain = [mintX509Svid({
      id: SpiffeId.parse('spiffe://example.org/client'), publicKey: clientKey.publicKey,
      issuer: { certificateDer: okInt.der, privateKey: intKey.privateKey }, ttlSeconds: 600,
    }).der, okInt.der];
    const clientSource = source(clientChain, clientKey.privateKey);
    server = createTlsServer({ source: serverSource, authorizer: authorizeAny() }, (s) => s.end('hello'));
    await new Promise<void>((resolve) => server?.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    return new Promise((resolve) => {
      const socket = tlsConnect({ source: clientSource, authorizer: authorizeAny(), host: '127.0.0.1', port });
      let data = '';
      socket.on('data', (d: Buffer) => { data += d.toString(); });
      socket.on('end', () => resolve(data));
      socket.on('error', (e) => resolve(e));
    });
  }

  it('a chain through a constrained intermediate completes a handshake in both directions', async () => {
    const int = ca('tls-ok', ['nameConstraints=critical,permitted;URI:example.org']);
    await expect(handshake(leaf('spiffe://example.org/server', int))).resolves.toBe('hello');
  });

  it('the SPIFFE check refuses a server whose chain OpenSSL accepts but carries an unsupported constraint', async () => {
    const int = ca('tls-rid', ['nameConstraints=critical,excluded;RID:1.2.3.4']);
    const outcome = await handshake(leaf('spiffe://example.org/server', int));
    expect(outcome).toBeInstanceOf(X509SvidError);
    expect((outcome as X509SvidError).code).toBe('unhandled-critical-extension');
  });
});
