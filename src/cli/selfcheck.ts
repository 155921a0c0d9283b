#!/usr/bin/env node
// SPIFFE self-check: the demo `npm run demo` runs. It exercises the src/spiffe primitives end to end
// in one process — CA, X.509-SVID, JWT-SVID, SPIFFE bundle JSON, validation of both SVIDs against the
// bundle as a relying party would receive it, and refusals a verifier must produce — and prints what
// it did. Exit status 0 only when every step behaved as expected.
import crypto from 'node:crypto';
import { pathToFileURL } from 'node:url';
import {
  Bundle, BundleSet, mintCaCertificate, mintJwtSvid, mintX509Svid, parseCertificate, SpiffeError,
  SpiffeId, TrustDomain, validateJwtSvid, verifyX509Svid,
} from '../spiffe/index.js';

const EXTENSION_NAMES: Record<string, string> = {
  '2.5.29.14': 'SubjectKeyIdentifier',
  '2.5.29.15': 'KeyUsage',
  '2.5.29.17': 'SubjectAltName',
  '2.5.29.19': 'BasicConstraints',
  '2.5.29.35': 'AuthorityKeyIdentifier',
  '2.5.29.37': 'ExtendedKeyUsage',
  '2.25.250341728606082657925786220697128205103': 'Unified Identity claims',
};

/** Runs the self-check, writing lines to `print`; resolves true when every check passed. */
export async function runSelfCheck(print: (line: string) => void = console.log): Promise<boolean> {
  let failures = 0;
  const check = (ok: boolean, what: string): void => {
    print(`  ${ok ? 'ok  ' : 'FAIL'}  ${what}`);
    if (!ok) failures++;
  };
  /** Runs `fn`, which must throw a SpiffeError with `code`. */
  const refused = async (what: string, code: string, fn: () => unknown): Promise<void> => {
    try {
      await fn();
      check(false, `${what}: was accepted`);
    } catch (e) {
      const ok = e instanceof SpiffeError && e.code === code;
      check(ok, `${what}: refused (${e instanceof SpiffeError ? e.code : String(e)}) — ${(e as Error).message}`);
    }
  };

  const td = TrustDomain.parse('demo.terroir.example');
  const caKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const ca = mintCaCertificate({ trustDomain: td, publicKey: caKeys.publicKey, selfSignKey: caKeys.privateKey, ttlSeconds: 24 * 3600 });
  const caView = parseCertificate(ca.der);
  print(`Trust domain      ${td.name}`);
  print(`CA certificate    serial ${ca.serialHex}, expires ${ca.notAfter.toISOString()}, ${extSummary(caView)}`);

  const id = SpiffeId.fromSegments(td, 'ns', 'demo', 'sa', 'frontend');
  const workloadKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const claims = JSON.stringify({ country: 'DE', policy: 'eu-only' });
  const svid = mintX509Svid({
    id, publicKey: workloadKey.publicKey, issuer: { certificateDer: ca.der, privateKey: caKeys.privateKey }, ttlSeconds: 3600,
    // A demo claim in the Unified Identity extension: a DER UTF8String holding JSON, non-critical.
    extraExtensions: [{ oid: '2.25.250341728606082657925786220697128205103', critical: false, value: utf8StringDer(claims) }],
  });
  const svidView = parseCertificate(svid.der);
  print(`X.509-SVID        ${id.toString()}`);
  print(`                  serial ${svid.serialHex}, valid ${svidView.notBefore.toISOString()} .. ${svid.notAfter.toISOString()}`);
  print(`                  ${extSummary(svidView)}`);

  const jwtKey = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const kid = crypto.createHash('sha256').update(jwtKey.publicKey.export({ type: 'spki', format: 'der' })).digest('base64url').slice(0, 22);
  const token = await mintJwtSvid({ id, audience: ['demo-backend'], ttlSeconds: 300, key: { kid, privateKey: jwtKey.privateKey, alg: 'ES256' } });
  const [h] = token.split('.');
  print(`JWT-SVID          header ${Buffer.from(h as string, 'base64url').toString()}, ${token.length} bytes`);

  const bundle = new Bundle(td);
  bundle.addX509Authority(ca.der);
  bundle.addJwtAuthority(kid, jwtKey.publicKey);
  bundle.sequenceNumber = 1n;
  bundle.refreshHintSeconds = 300;
  const bundleJson = bundle.toJSON();
  print(`Bundle JSON       ${bundleJson.length} bytes: ${bundleJson.slice(0, 72)}…`);

  // The relying party only has the JSON document.
  const received = new BundleSet(Bundle.parse(td, bundleJson));
  print('Checks');
  check(Bundle.parse(td, bundleJson).equals(bundle), 'bundle JSON round-trips');
  const x = verifyX509Svid([svid.der], received);
  check(x.id.equals(id), `X.509-SVID verifies against the bundle: ${x.id.toString()} (leaf serial ${x.leaf.serialNumber})`);
  const j = await validateJwtSvid(token, received, 'demo-backend');
  check(j.id.equals(id), `JWT-SVID validates against the bundle: ${j.id.toString()}, aud ${JSON.stringify(j.audience)}, exp ${j.expiry.toISOString()}`);

  const foreignTd = TrustDomain.parse('elsewhere.example');
  const fKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const foreignCa = mintCaCertificate({ trustDomain: foreignTd, publicKey: fKeys.publicKey, selfSignKey: fKeys.privateKey, ttlSeconds: 3600 });
  const foreignSvid = mintX509Svid({
    id: SpiffeId.fromSegments(foreignTd, 'intruder'), publicKey: workloadKey.publicKey,
    issuer: { certificateDer: foreignCa.der, privateKey: fKeys.privateKey }, ttlSeconds: 600,
  });
  await refused('X.509-SVID of a foreign trust domain', 'no-bundle', () => verifyX509Svid([foreignSvid.der], received));
  const foreignToken = await mintJwtSvid({ id: SpiffeId.fromSegments(foreignTd, 'intruder'), audience: ['demo-backend'], ttlSeconds: 60, key: { kid, privateKey: jwtKey.privateKey, alg: 'ES256' } });
  await refused('JWT-SVID of a foreign trust domain', 'no-bundle', () => validateJwtSvid(foreignToken, received, 'demo-backend'));
  await refused('JWT-SVID for another audience', 'audience-mismatch', () => validateJwtSvid(token, received, 'someone-else'));
  await refused('X.509-SVID after expiry', 'expired', () => verifyX509Svid([svid.der], received, { now: new Date(svid.notAfter.getTime() + 1000) }));

  print(failures === 0 ? 'Self-check passed.' : `Self-check FAILED: ${failures} check(s).`);
  return failures === 0;
}

function extSummary(v: ReturnType<typeof parseCertificate>): string {
  return 'extensions: ' + v.extensions.map((e) => {
    const name = EXTENSION_NAMES[e.oid] ?? e.oid;
    let detail = '';
    if (e.oid === '2.5.29.19') detail = v.basicConstraints?.ca ? ' CA' : ' not-CA';
    if (e.oid === '2.5.29.15') detail = ` ${keyUsageNames(v.keyUsage ?? 0)}`;
    if (e.oid === '2.5.29.37') detail = ' serverAuth+clientAuth';
    if (e.oid === '2.5.29.17') detail = ` ${v.subjectAltName?.uris.join(',')}`;
    return `${name}${detail}${e.critical ? ' (critical)' : ''}`;
  }).join('; ');
}

function keyUsageNames(bits: number): string {
  const names = ['digitalSignature', 'nonRepudiation', 'keyEncipherment', 'dataEncipherment', 'keyAgreement', 'keyCertSign', 'cRLSign'];
  return names.filter((_, i) => bits & (1 << i)).join('+');
}

function utf8StringDer(s: string): Buffer {
  const body = Buffer.from(s, 'utf8');
  if (body.length > 127) throw new Error('demo claim too long for a short-form DER length');
  return Buffer.concat([Buffer.from([0x0c, body.length]), body]);
}

const invokedDirectly = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (invokedDirectly) {
  runSelfCheck().then((ok) => {
    process.exitCode = ok ? 0 : 1;
  }, (e: unknown) => {
    const code = e instanceof SpiffeError ? ` (${e.code})` : '';
    console.error(`self-check error${code}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    process.exitCode = 1;
  });
}
