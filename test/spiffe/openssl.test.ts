// Independent checks with the openssl command line: it accepts the chains we mint (directly and via
// an intermediate), refuses a foreign one, shows the spec's extensions, and its CSRs feed our minting.
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  mintCaCertificate, mintX509Svid, publicKeyFromCsr, SpiffeId, TrustDomain, type X509Authority,
} from '../../src/spiffe/index.js';
import { tempDir } from '../support/tmp.js';

const td = TrustDomain.parse('example.org');
const id = SpiffeId.parse('spiffe://example.org/ns/prod/sa/web');
const UI_OID = '2.25.250341728606082657925786220697128205103';

let dir: string;
let cleanup: () => void;
const file = (name: string, content: string): string => {
  const p = path.join(dir, name);
  fs.writeFileSync(p, content);
  return p;
};
function opensslVerify(args: string[]): { ok: boolean; out: string } {
  const r = spawnSync('openssl', ['verify', ...args], { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout}${r.stderr}` };
}

beforeAll(() => ({ dir, cleanup } = tempDir('terroir-spiffe-openssl-')));
afterAll(() => cleanup());

describe('openssl', () => {
  const rootKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const root = mintCaCertificate({ trustDomain: td, publicKey: rootKeys.publicKey, selfSignKey: rootKeys.privateKey, ttlSeconds: 86_400 });
  const rootAuth: X509Authority = { certificateDer: root.der, privateKey: rootKeys.privateKey };
  const leafKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });

  it('openssl verify accepts a leaf signed by the root, and refuses it under a foreign root', () => {
    const leaf = mintX509Svid({ id, publicKey: leafKey.publicKey, issuer: rootAuth, ttlSeconds: 3600 });
    const caFile = file('root.pem', root.pem);
    const leafFile = file('leaf.pem', leaf.pem);
    const r = opensslVerify(['-CAfile', caFile, '-purpose', 'sslclient', leafFile]);
    expect(r.out).toContain(': OK');
    expect(r.ok).toBe(true);
    expect(opensslVerify(['-CAfile', caFile, '-purpose', 'sslserver', leafFile]).ok).toBe(true);

    const foreignKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const foreign = mintCaCertificate({ trustDomain: td, publicKey: foreignKeys.publicKey, selfSignKey: foreignKeys.privateKey, ttlSeconds: 3600 });
    const bad = opensslVerify(['-CAfile', file('foreign.pem', foreign.pem), leafFile]);
    expect(bad.ok).toBe(false);
    expect(bad.out).toMatch(/signature failure|unable to get local issuer/);
  });

  it('openssl verify accepts a leaf via an intermediate (RSA and P-384 keys along the way)', () => {
    const intKeys = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const int = mintCaCertificate({ trustDomain: td, publicKey: intKeys.publicKey, issuer: rootAuth, ttlSeconds: 7200 });
    const leaf = mintX509Svid({
      id, publicKey: crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey,
      issuer: { certificateDer: int.der, privateKey: intKeys.privateKey }, ttlSeconds: 600,
    });
    const r = opensslVerify(['-CAfile', file('root2.pem', root.pem), '-untrusted', file('int.pem', int.pem), file('leaf2.pem', leaf.pem)]);
    expect(r.out).toContain(': OK');
    // Without the intermediate, openssl has no path.
    expect(opensslVerify(['-CAfile', file('root3.pem', root.pem), file('leaf3.pem', leaf.pem)]).ok).toBe(false);
  });

  it('openssl x509 -text shows the X.509-SVID extensions', () => {
    const json = '{"country":"DE"}';
    const value = Buffer.concat([Buffer.from([0x0c, json.length]), Buffer.from(json)]); // DER UTF8String
    const leaf = mintX509Svid({ id, publicKey: leafKey.publicKey, issuer: rootAuth, ttlSeconds: 3600, extraExtensions: [{ oid: UI_OID, critical: false, value }] });
    const text = execFileSync('openssl', ['x509', '-noout', '-text', '-in', file('leaf4.pem', leaf.pem)], { encoding: 'utf8' });
    expect(text).toMatch(/X509v3 Key Usage: critical\s+Digital Signature\n/);
    expect(text).toMatch(/X509v3 Extended Key Usage: ?\s+TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/X509v3 Subject Alternative Name: critical\s+URI:spiffe:\/\/example\.org\/ns\/prod\/sa\/web\n/);
    expect(text).toMatch(new RegExp(`${UI_OID.replace(/\./g, '\\.')}: ?\\n`)); // present and not marked critical
    expect(text).toContain(json);
    expect(text).toMatch(/Signature Algorithm: ecdsa-with-SHA256/);
    expect(text).toMatch(/Subject: ?\n/); // empty subject
    expect(text).toMatch(/X509v3 Authority Key Identifier/);
    expect(text).toMatch(/X509v3 Subject Key Identifier/);

    const caText = execFileSync('openssl', ['x509', '-noout', '-text', '-in', file('root5.pem', root.pem)], { encoding: 'utf8' });
    expect(caText).toMatch(/X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign/);
    expect(caText).toMatch(/X509v3 Basic Constraints: critical\s+CA:TRUE/);
    expect(caText).toMatch(/URI:spiffe:\/\/example\.org\n/);
  });

  it('a CSR made by openssl gives its key to publicKeyFromCsr; a tampered one is refused', () => {
    const keyFile = path.join(dir, 'csr-key.pem');
    execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', keyFile]);
    const csrDer = execFileSync('openssl', ['req', '-new', '-key', keyFile, '-subj', '/CN=workload', '-outform', 'DER']);
    const key = publicKeyFromCsr(csrDer);
    const expected = crypto.createPublicKey(fs.readFileSync(keyFile)).export({ type: 'spki', format: 'der' });
    expect(key.export({ type: 'spki', format: 'der' }).equals(expected)).toBe(true);
    const bad = Buffer.from(csrDer);
    const at = bad.indexOf(Buffer.from('workload'));
    bad[at] = 0x57;
    expect(() => publicKeyFromCsr(bad)).toThrow(/self-signature does not verify/);
  });
});
