// DER, X.509 and PKCS#10 as the server and workloads meet them: certificates in chains and bundles,
// CSRs in BatchNewX509Svid, the Unified Identity extension a consumer reads on every handshake, and
// SPIFFE bundle JSON from federated trust domains. Seeds are minted by src/spiffe itself.
import crypto from 'node:crypto';
import {
  Bundle, SpiffeError, decodeUnifiedIdentityExtension, parseCertificate, parseX509SvidId, unifiedIdentityFromCertificate,
  unifiedIdentityFromJwtClaims, verifyX509Svid,
} from '../../src/spiffe/index.js';
import { verifyCsr } from '../../src/spiffe/x509svid.js';
import { chance, mutateBytes, mutateJsonText, mutateJsonValue, pick, type FuzzTarget } from '../engine.js';
import { SAMPLE_CLAIMS, testPki } from './seeds.js';

const isSpiffeError = (e: unknown): boolean => e instanceof SpiffeError;

export const x509Certificate: FuzzTarget = {
  name: 'x509-certificate',
  description: 'X.509 DER: parseCertificate, the SVID\'s SPIFFE ID, the Unified Identity claims walk, and full X.509-SVID chain verification',
  async setup() {
    const pki = testPki();
    const seeds = [...pki.leaves, pki.caDer];
    const now = new Date();
    return {
      generate: (r) => Buffer.concat([Buffer.from([r() & 3]), mutateBytes(r, seeds)]),
      run(b) {
        const der = b.subarray(1);
        switch (b[0]) {
          case 0: parseCertificate(der); break;
          case 1: parseX509SvidId(der); break;
          case 2: unifiedIdentityFromCertificate(der); break;
          // The chain a peer presents: mutated leaf, real CA.
          default: verifyX509Svid([der, pki.caDer], pki.bundles, { now });
        }
      },
      expected: isSpiffeError,
    };
  },
};

export const csr: FuzzTarget = {
  name: 'csr',
  description: 'PKCS#10 CSRs (verifyCsr: DER walk, key policy, native and node:crypto signature checks)',
  async setup() {
    const seeds = testPki().csrs;
    return { generate: (r) => mutateBytes(r, seeds), run: (b) => verifyCsr(b), expected: isSpiffeError };
  },
};

export const unifiedIdentity: FuzzTarget = {
  name: 'unified-identity',
  description: 'The Unified Identity extension value (DER UTF8String of canonical JSON claims) and the JWT-SVID claim',
  async setup() {
    const text = (v: unknown): Buffer => Buffer.from(JSON.stringify(v) ?? 'null', 'utf8');
    const wrap = (body: Buffer): Buffer => {
      const n = body.length;
      const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
      return Buffer.concat([Buffer.from([0x0c]), len, body]);
    };
    const dict = ['country', 'region', 'policy', 'sensorKinds', 'witnesses', 'assurance', 'latency', 'landmark', 'radiusKm', 'strength', 'DE', 'EU', 'self-reported', 'latency-bounded', 'tpm'];
    return {
      generate(r) {
        if (chance(r, 0.3)) return Buffer.concat([Buffer.from([0]), mutateBytes(r, [wrap(text(SAMPLE_CLAIMS))])]);
        // Structurally mutated claims, re-wrapped (often canonical: JSON.stringify of sorted seed keys is close).
        const claims = mutateJsonValue(r, SAMPLE_CLAIMS, dict);
        const mode = pick(r, [0, 1]);
        return Buffer.concat([Buffer.from([mode]), mode === 0 ? wrap(text(claims)) : Buffer.from(JSON.stringify({ unified_identity: claims }) ?? 'null')]);
      },
      run(b) {
        if (b[0] === 0) return decodeUnifiedIdentityExtension(b.subarray(1));
        let claims: unknown;
        try { claims = JSON.parse(b.subarray(1).toString('utf8')); } catch { return undefined; } // not the parser under test
        return unifiedIdentityFromJwtClaims(claims as Record<string, unknown>);
      },
      expected: isSpiffeError,
    };
  },
};

export const spiffeBundle: FuzzTarget = {
  name: 'spiffe-bundle',
  description: 'SPIFFE bundle JSON (JWK Set with x509-svid and jwt-svid keys) from a federated trust domain (Bundle.parse)',
  async setup() {
    const pki = testPki();
    const b = new Bundle(pki.td);
    b.addX509Authority(pki.caDer);
    b.addJwtAuthority('k1', crypto.createPublicKey(pki.caKey));
    b.sequenceNumber = 7n;
    b.refreshHintSeconds = 300;
    const seedDoc = JSON.parse(b.toJSON()) as unknown;
    const dict = ['keys', 'use', 'x509-svid', 'jwt-svid', 'kty', 'EC', 'RSA', 'OKP', 'crv', 'P-256', 'x', 'y', 'n', 'e', 'kid', 'x5c', 'spiffe_sequence', 'spiffe_refresh_hint'];
    return {
      generate: (r) => Buffer.from(mutateJsonText(r, [seedDoc], dict), 'utf8'),
      run: (input) => Bundle.parse(pki.td, input),
      expected: isSpiffeError,
    };
  },
};
