// Shared PKI and verifier setup for the Keylime tests and benchmark.
import fs from 'node:fs';
import path from 'node:path';
import { KeylimeVerifierClient, type KeylimeClientOptions } from '../../../src/keylime/client.js';
import { TestKeylimeVerifier, type TestVerifierOptions } from '../../doubles/keylime-verifier.js';
import { createCa, selfSigned, type Issued, type TestCa } from './pki.js';

export interface KeylimePki {
  dir: string;
  /** Issues the verifier's server certificate. */
  serverCa: TestCa;
  /** The CA the verifier trusts for admin clients (Keylime's trusted_client_ca). */
  clientCa: TestCa;
  /** The CA of the verifier's own client certificate, which nodes' quote endpoints trust. */
  pullCa: TestCa;
  /** Unrelated CA: its certificates must be refused everywhere. */
  rogueCa: TestCa;
  server: Issued;
  admin: Issued;
  pull: Issued;
  rogueClient: Issued;
  rogueServer: Issued;
  /** A node's self-signed quote endpoint certificate. */
  node: Issued;
  files: { serverCa: string; clientCert: string; clientKey: string; rogueCa: string; rogueCert: string; rogueKey: string };
}

export async function createPki(dir: string): Promise<KeylimePki> {
  const [serverCa, clientCa, pullCa, rogueCa] = await Promise.all([createCa('verifier CA'), createCa('tenant CA'), createCa('verifier pull CA'), createCa('rogue CA')]);
  const [server, admin, pull, rogueClient, rogueServer, node] = await Promise.all([
    serverCa.issue('verifier', { dns: ['localhost'], ips: ['127.0.0.1'] }),
    clientCa.issue('terroir-server'),
    pullCa.issue('verifier-pull'),
    rogueCa.issue('intruder'),
    rogueCa.issue('verifier', { dns: ['localhost'], ips: ['127.0.0.1'] }),
    selfSigned('node-quote-endpoint', { ips: ['127.0.0.1'] }),
  ]);
  const write = (name: string, text: string): string => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, text, { mode: 0o600 });
    return p;
  };
  return {
    dir, serverCa, clientCa, pullCa, rogueCa, server, admin, pull, rogueClient, rogueServer, node,
    files: {
      serverCa: write('server-ca.pem', serverCa.certPem),
      clientCert: write('client.pem', admin.certPem),
      clientKey: write('client.key', admin.keyPem),
      rogueCa: write('rogue-ca.pem', rogueCa.certPem),
      rogueCert: write('rogue.pem', rogueClient.certPem),
      rogueKey: write('rogue.key', rogueClient.keyPem),
    },
  };
}

export function startVerifier(pki: KeylimePki, opts: Partial<TestVerifierOptions> = {}): Promise<TestKeylimeVerifier> {
  return TestKeylimeVerifier.start({
    cert: pki.server.certPem, key: pki.server.keyPem, clientCa: pki.clientCa.certPem,
    pullCert: pki.pull.certPem, pullKey: pki.pull.keyPem, ...opts,
  });
}

export function clientFor(pki: KeylimePki, verifier: { port: number }, opts: Partial<KeylimeClientOptions> = {}): KeylimeVerifierClient {
  return new KeylimeVerifierClient({
    url: `https://localhost:${verifier.port}`,
    caFile: pki.files.serverCa, certFile: pki.files.clientCert, keyFile: pki.files.clientKey,
    timeoutMs: 2000, retries: 2, retryBaseDelayMs: 20, allowDevelopmentStandIn: true, ...opts,
  });
}
