// Cost of name-constraint processing in verifyX509Svid: root → intermediate → leaf, with the
// intermediate unconstrained vs. constrained (URI permitted; URI+DNS permitted/excluded with DNS SANs).
// Baseline and candidate measured in alternating slices. Run: npx tsx bench/name-constraints.ts [seconds]
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Bundle, BundleSet, mintX509Svid, pemToDer, SpiffeId, TrustDomain, verifyX509Svid } from '../src/spiffe/index.js';

const SECONDS = Number(process.argv[2] ?? '2');
const ROUNDS = 10;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nc-bench-'));
const key = (n: string) => {
  const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  fs.writeFileSync(path.join(dir, `${n}.key`), k.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  fs.writeFileSync(path.join(dir, `${n}.pub`), k.publicKey.export({ type: 'spki', format: 'pem' }));
  return k;
};
key('root');
const intK = key('int');
const leafK = key('leaf');
const CA = 'basicConstraints=critical,CA:true\nkeyUsage=critical,keyCertSign,cRLSign\n';
function cert(name: string, args: string[], ext: string): Buffer {
  fs.writeFileSync(path.join(dir, `${name}.ext`), ext);
  const r = spawnSync('openssl', ['x509', '-new', '-days', '1', ...args, '-extfile', path.join(dir, `${name}.ext`), '-out', path.join(dir, `${name}.pem`)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return pemToDer(fs.readFileSync(path.join(dir, `${name}.pem`), 'utf8'))[0] as Buffer;
}
const root = cert('root', ['-subj', '/O=terroir/CN=root', '-key', path.join(dir, 'root.key')], CA);
const int = (name: string, nc: string) => cert(name, ['-subj', `/O=terroir/CN=${name}`, '-CA', path.join(dir, 'root.pem'), '-CAkey', path.join(dir, 'root.key'), '-force_pubkey', path.join(dir, 'int.pub')], CA + nc);
const plain = int('plain', '');
const uri = int('uri', 'nameConstraints=critical,permitted;URI:example.org\n');
const mixed = int('mixed', 'nameConstraints=critical,permitted;URI:example.org,permitted;URI:.example.org,permitted;DNS:example.org,excluded;DNS:internal.example.org,excluded;IP:10.0.0.0/255.0.0.0\n');
const td = TrustDomain.parse('example.org');
const b = new Bundle(td);
b.addX509Authority(root);
const bundles = new BundleSet(b);
const chain = (i: Buffer, dnsNames: string[] = []) => [mintX509Svid({ id: SpiffeId.parse('spiffe://example.org/ns/prod/sa/web'), publicKey: leafK.publicKey, issuer: { certificateDer: i, privateKey: intK.privateKey }, ttlSeconds: 3600, dnsNames }).der, i];
const dns = ['web.example.org', 'web.prod.example.org', 'example.org'];
const cPlain = chain(plain);
const cPlainDns = chain(plain, dns);
const cUri = chain(uri);
const cMixed = chain(mixed, dns);

function interleaved(base: () => unknown, cand: () => unknown): [number, number] {
  const slice = (SECONDS * 1e9) / ROUNDS;
  const total = [{ n: 0, ns: 0 }, { n: 0, ns: 0 }];
  for (let i = 0; i < 200; i++) { base(); cand(); }
  for (let r = 0; r < ROUNDS; r++) {
    for (const [idx, fn] of [[0, base], [1, cand]] as const) {
      const start = process.hrtime.bigint();
      let n = 0;
      let el: number;
      do { fn(); n++; el = Number(process.hrtime.bigint() - start); } while (el < slice);
      total[idx]!.n += n; total[idx]!.ns += el;
    }
  }
  return total.map((t) => (t.n * 1e9) / t.ns) as [number, number];
}
const fmt = (x: number) => x.toFixed(0).padStart(7);
console.log(`node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'}, load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}, ${SECONDS}s per pair`);
for (const [label, base, cand] of [
  ['verifyX509Svid, intermediate permitted URI:example.org', cPlain, cUri],
  ['verifyX509Svid, 5 mixed constraints, leaf with 3 DNS SANs', cPlainDns, cMixed],
] as const) {
  const [a, c] = interleaved(() => verifyX509Svid(base, bundles), () => verifyX509Svid(cand, bundles));
  console.log(`${label}: unconstrained ${fmt(a)} /s, constrained ${fmt(c)} /s (${((c / a) * 100).toFixed(1)} %)`);
}
fs.rmSync(dir, { recursive: true, force: true });
