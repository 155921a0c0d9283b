// Development-only "insecure bootstrap": learn the server's CA by trust on first use, when no
// bootstrap bundle was given. TLS verification is never switched off: a TLS 1.2 handshake is
// attempted with full verification (it fails, as the CA is unknown), and the certificate chain the
// server sent — in cleartext in TLS 1.2 — is read from the raw bytes on the way. The topmost
// certificate of that chain then becomes the root for a normal, fully verified connection, whose
// SPIFFE server ID is checked as always. Whoever answers first is trusted: that is the insecurity,
// and why the agent refuses this unless `insecureBootstrap: true` and logs it loudly.
import crypto from 'node:crypto';
import net from 'node:net';
import { Duplex } from 'node:stream';
import tls from 'node:tls';

export class InsecureBootstrapError extends Error {
  readonly code = 'insecure_bootstrap_failed';
  constructor(message: string) {
    super(message);
    this.name = 'InsecureBootstrapError';
  }
}

const MAX_HANDSHAKE_BYTES = 256 * 1024;
const HANDSHAKE = 22;
const CERTIFICATE = 11;

/** Extracts the Certificate handshake message's chain from server-to-client TLS 1.2 records. */
export class Tls12CertificateSniffer {
  private records = Buffer.alloc(0);
  private handshake = Buffer.alloc(0);
  chain: Buffer[] | undefined;

  push(data: Buffer): void {
    if (this.chain) return;
    this.records = Buffer.concat([this.records, data]);
    if (this.records.length > MAX_HANDSHAKE_BYTES) throw new InsecureBootstrapError('server handshake too large');
    while (this.records.length >= 5) {
      const len = this.records.readUInt16BE(3);
      if (this.records.length < 5 + len) return;
      const type = this.records[0];
      const fragment = this.records.subarray(5, 5 + len);
      this.records = this.records.subarray(5 + len);
      // Only plaintext handshake records precede ChangeCipherSpec; stop at anything else.
      if (type !== HANDSHAKE) return;
      this.handshake = Buffer.concat([this.handshake, fragment]);
      this.parseMessages();
      if (this.chain) return;
    }
  }

  private parseMessages(): void {
    while (this.handshake.length >= 4) {
      const msgType = this.handshake[0];
      const len = this.handshake.readUIntBE(1, 3);
      if (this.handshake.length < 4 + len) return;
      const body = this.handshake.subarray(4, 4 + len);
      this.handshake = this.handshake.subarray(4 + len);
      if (msgType !== CERTIFICATE) continue;
      const total = body.readUIntBE(0, 3);
      if (total + 3 > body.length) throw new InsecureBootstrapError('malformed Certificate message');
      const chain: Buffer[] = [];
      let off = 3;
      while (off < 3 + total) {
        const n = body.readUIntBE(off, 3);
        if (off + 3 + n > body.length) throw new InsecureBootstrapError('malformed certificate entry');
        chain.push(Buffer.from(body.subarray(off + 3, off + 3 + n)));
        off += 3 + n;
      }
      this.chain = chain;
      return;
    }
  }
}

/**
 * The server's certificate chain (DER, leaf first) as presented, without trusting it. Resolves
 * once the chain is seen; the verified handshake is expected to fail and is discarded.
 */
export function presentedServerChain(host: string, port: number, timeoutMs = 10_000): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host, port });
    const sniffer = new Tls12CertificateSniffer();
    let settled = false;
    const finish = (err: Error | null, chain?: Buffer[]) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      raw.destroy();
      tlsSocket.destroy();
      if (err) reject(err);
      else resolve(chain as Buffer[]);
    };
    // A pass-through stream between TLS and TCP, so the bytes the server sends can be read.
    const tap = new Duplex({
      read() {},
      write(chunk: Buffer, _enc, cb) {
        raw.write(chunk, cb);
      },
    });
    raw.on('data', (d: Buffer) => {
      try {
        sniffer.push(d);
      } catch (e) {
        finish(e as Error);
        return;
      }
      if (sniffer.chain) {
        if (sniffer.chain.length === 0) finish(new InsecureBootstrapError('server sent an empty certificate chain'));
        else finish(null, sniffer.chain);
        return;
      }
      tap.push(d);
    });
    raw.on('error', (e) => finish(new InsecureBootstrapError(`cannot reach the server at ${host}:${port}: ${e.message}`)));
    raw.on('end', () => finish(new InsecureBootstrapError('server closed the connection before sending its certificate')));
    const tlsSocket = tls.connect({
      socket: tap,
      servername: 'terroir-server',
      ALPNProtocols: ['h2'],
      // TLS 1.2 keeps the Certificate message in cleartext. Verification stays on (the default).
      maxVersion: 'TLSv1.2',
    });
    tlsSocket.on('error', () => undefined); // the expected verification failure; the chain decides
    const timer = setTimeout(() => finish(new InsecureBootstrapError('timed out waiting for the server certificate')), timeoutMs);
  });
}

/** SHA-256 fingerprint of a certificate, for the loud log line. */
export function fingerprint(der: Buffer): string {
  return new crypto.X509Certificate(der).fingerprint256;
}
