// Trust domains and SVIDs for the workload library tests, minted with src/spiffe (the same code the
// server uses), optionally carrying Unified Identity claims.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Bundle } from '../../src/spiffe/bundle.js';
import { SpiffeId, TrustDomain } from '../../src/spiffe/id.js';
import { unifiedIdentityExtension, type UnifiedIdentityClaims } from '../../src/spiffe/unified-identity.js';
import { mintCaCertificate, mintX509Svid, type ExtraExtension } from '../../src/spiffe/x509svid.js';

export interface TestSvid {
  id: SpiffeId;
  chain: Buffer[];
  key: crypto.KeyObject;
  pkcs8: Buffer;
  serialHex: string;
}

export interface TestDomain {
  td: TrustDomain;
  caDer: Buffer;
  caKey: crypto.KeyObject;
  bundle(): Bundle;
  svid(p: string, opts?: { claims?: UnifiedIdentityClaims; extensions?: ExtraExtension[]; ttlSeconds?: number }): TestSvid;
}

export function makeDomain(name: string): TestDomain {
  const td = TrustDomain.parse(name);
  const caKeys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const ca = mintCaCertificate({ trustDomain: td, publicKey: caKeys.publicKey, selfSignKey: caKeys.privateKey, ttlSeconds: 86400 });
  return {
    td,
    caDer: ca.der,
    caKey: caKeys.privateKey,
    bundle() {
      const b = new Bundle(td);
      b.addX509Authority(ca.der);
      return b;
    },
    svid(p, opts = {}) {
      const keys = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const id = SpiffeId.parse(`spiffe://${name}${p}`);
      const extra = [...(opts.claims ? [unifiedIdentityExtension(opts.claims)] : []), ...(opts.extensions ?? [])];
      const m = mintX509Svid({
        id, publicKey: keys.publicKey, issuer: { certificateDer: ca.der, privateKey: caKeys.privateKey },
        ttlSeconds: opts.ttlSeconds ?? 3600, ...(extra.length > 0 ? { extraExtensions: extra } : {}),
      });
      return { id, chain: m.chainDer, key: keys.privateKey, pkcs8: keys.privateKey.export({ type: 'pkcs8', format: 'der' }), serialHex: m.serialHex };
    },
  };
}

/** Writes an SVID and bundles as PEM files for StaticX509Source. */
export function writeSvidFiles(dir: string, stem: string, svid: TestSvid, domains: TestDomain[]): { certFile: string; keyFile: string; bundleFiles: Record<string, string> } {
  const certFile = path.join(dir, `${stem}.crt.pem`);
  const keyFile = path.join(dir, `${stem}.key.pem`);
  fs.writeFileSync(certFile, svid.chain.map((d) => new crypto.X509Certificate(d).toString()).join(''));
  fs.writeFileSync(keyFile, svid.key.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const bundleFiles: Record<string, string> = {};
  for (const d of domains) {
    const f = path.join(dir, `${stem}.bundle-${d.td.name}.pem`);
    fs.writeFileSync(f, d.bundle().x509AuthoritiesPem());
    bundleFiles[d.td.name] = f;
  }
  return { certFile, keyFile, bundleFiles };
}
