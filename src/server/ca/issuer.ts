// Issues SVIDs with the CA's active keys: agent and workload X.509-SVIDs (through src/spiffe),
// JWT-SVIDs, and the server's own TLS SVID (which may also carry IP addresses, so it is built here).
import crypto, { type KeyObject } from 'node:crypto';
import net from 'node:net';
import { SpiffeId, TrustDomain } from '../../spiffe/id.js';
import { mintX509Svid, type CsrPublicKey, type ExtraExtension } from '../../spiffe/x509svid.js';
import { mintJwtSvid, type JwtSvidMintAlgorithm } from '../../spiffe/jwtsvid.js';
import {
  authorityKeyIdentifier, buildCertificate, EMPTY_NAME, EXT, extension, publicKeyInfo, randomSerial, subjectKeyIdentifier,
} from '../../spiffe/cert-builder.js';
import { ctxPrimitive, seq } from '../../spiffe/der.js';
import { OID } from '../../spiffe/oids.js';
import { certSignerFor } from '../../spiffe/signer.js';
import type { CaManager } from './manager.js';
import { subjectNameOf } from './certs.js';

const selfSigned = new WeakMap<Buffer, boolean>();

/**
 * The CA certificates an SVID signed by `a` carries after its leaf: none when `a` is a self-signed
 * root (peers hold it in the bundle), else `a` and the certificates above it. An empty chainDer alone
 * does not mean self-signed: under an upstream CA that is itself the published root it is empty too.
 */
export function issuerChain(a: { certificateDer: Buffer; chainDer: Buffer[] }): Buffer[] {
  let self = selfSigned.get(a.certificateDer);
  if (self === undefined) {
    const c = new crypto.X509Certificate(a.certificateDer);
    self = c.checkIssued(c) && c.verify(c.publicKey);
    selfSigned.set(a.certificateDer, self);
  }
  return self ? [] : [a.certificateDer, ...a.chainDer];
}

export interface IssuedX509 {
  spiffeId: string;
  /** Leaf first, then the intermediates up to (not including) a bundle root. */
  certChain: Buffer[];
  serialHex: string;
  notAfter: Date;
}

export interface IssuerOptions {
  ca: CaManager;
  /** Upper bound for any SVID lifetime (CA TTL / 6), seconds. */
  maxTtlSeconds: number;
  jwtIssuer?: string;
  now?: () => Date;
}

/** Lowercase hex without leading zeros: the one spelling serials are stored and compared in. */
export function normalizeSerial(hex: string): string {
  const s = hex.toLowerCase().replace(/[^0-9a-f]/g, '').replace(/^0+/, '');
  return s === '' ? '0' : s;
}

export class SvidIssuer {
  readonly trustDomain: TrustDomain;
  private readonly now: () => Date;

  constructor(private readonly opts: IssuerOptions) {
    this.trustDomain = TrustDomain.parse(opts.ca.trustDomain);
    this.now = opts.now ?? (() => new Date());
  }

  private ttl(requested: number): number {
    return Math.max(1, Math.min(requested, this.opts.maxTtlSeconds));
  }

  /** An X.509-SVID for `id` and the key of an already verified CSR. */
  mintX509(id: SpiffeId, publicKey: KeyObject | CsrPublicKey, ttlSeconds: number, dnsNames: string[] = [], extraExtensions?: ExtraExtension[]): IssuedX509 {
    const active = this.opts.ca.activeX509();
    const minted = mintX509Svid({
      id,
      publicKey,
      issuer: { certificateDer: active.certificateDer, privateKey: active.privateKey, chainDer: active.chainDer },
      ttlSeconds: this.ttl(ttlSeconds),
      now: this.now(),
      dnsNames,
      ...(extraExtensions && extraExtensions.length > 0 ? { extraExtensions } : {}),
    });
    return {
      spiffeId: id.toString(),
      certChain: [minted.der, ...issuerChain(active)],
      serialHex: normalizeSerial(minted.serialHex),
      notAfter: minted.notAfter,
    };
  }

  async mintJwt(id: SpiffeId, audience: string[], ttlSeconds: number, extraClaims?: Record<string, unknown>): Promise<{ token: string; expiresAt: Date }> {
    const key = this.opts.ca.activeJwt();
    const alg: JwtSvidMintAlgorithm = key.privateKey.asymmetricKeyType === 'rsa' ? 'RS256' : 'ES256';
    const ttl = this.ttl(ttlSeconds);
    const now = this.now();
    const token = await mintJwtSvid({
      id, audience, ttlSeconds: ttl, now, key: { kid: key.kid, privateKey: key.privateKey, alg },
      extraClaims: this.opts.jwtIssuer || extraClaims ? { ...extraClaims, ...(this.opts.jwtIssuer ? { iss: this.opts.jwtIssuer } : {}) } : undefined,
    });
    return { token, expiresAt: new Date((Math.floor(now.getTime() / 1000) + ttl) * 1000) };
  }

  /**
   * The server's TLS identity: spiffe://<td>/spire/server plus DNS names and IP addresses, a fresh
   * key, signed by the active CA. Returns PEM for the TLS stack.
   */
  mintServerSvid(dnsNames: string[], ipAddresses: string[], ttlSeconds: number): { certChainPem: string; keyPem: string; notAfter: Date; leafDer: Buffer } {
    const active = this.opts.ca.activeX509();
    const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const info = publicKeyInfo(publicKey);
    const now = this.now().getTime();
    const caNotAfter = active.notAfter.getTime();
    const notAfter = new Date(Math.min(now + this.ttl(ttlSeconds) * 1000, caNotAfter));
    const names = [
      ctxPrimitive(6, Buffer.from(SpiffeId.fromPath(this.trustDomain, '/spire/server').toString(), 'latin1')),
      ...dnsNames.map((d) => ctxPrimitive(2, Buffer.from(d, 'latin1'))),
      ...ipAddresses.map((ip) => ctxPrimitive(7, ipBytes(ip))),
    ];
    const der = buildCertificate({
      serial: randomSerial(),
      issuerName: subjectNameOf(active.certificateDer),
      subjectName: EMPTY_NAME,
      notBefore: new Date(now - 10_000),
      notAfter,
      spki: info.spki,
      extensions: [
        EXT.leafKeyUsage,
        EXT.leafBasicConstraints,
        EXT.serverClientAuth,
        subjectKeyIdentifier(info.keyId),
        authorityKeyIdentifier(publicKeyInfo(active.privateKey).keyId),
        // Critical because the subject is empty (RFC 5280 4.2.1.6).
        extension(OID.subjectAltName, true, seq(...names)),
      ],
    }, certSignerFor(active.privateKey));
    const chain = [der, ...issuerChain(active)];
    return {
      certChainPem: chain.map((c) => new crypto.X509Certificate(c).toString()).join(''),
      keyPem: privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
      notAfter,
      leafDer: der,
    };
  }
}

function ipBytes(ip: string): Buffer {
  if (net.isIPv4(ip)) return Buffer.from(ip.split('.').map(Number));
  if (net.isIPv6(ip)) {
    const [head, tail] = ip.split('::') as [string, string | undefined];
    const h = head ? head.split(':') : [];
    const t = tail ? tail.split(':') : [];
    const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
    return Buffer.from(groups.flatMap((g: string) => { const v = parseInt(g, 16); return [v >> 8, v & 0xff]; }));
  }
  throw new Error(`agentApi.ipAddresses: "${ip}" is not an IP address`);
}

