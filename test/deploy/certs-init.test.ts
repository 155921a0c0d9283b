// deploy/certs-init.sh (the compose `certs-init` service): the Keylime mTLS PKI it makes must be
// accepted by `openssl verify`, carry the right key usages, and work in a real TLS handshake with
// client authentication; so must the agent's quote endpoint material (agent/); a rerun keeps the
// existing CA; damaged material is refused, not replaced.
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/tmp.js';

const run = promisify(execFile);
const SCRIPT = path.resolve(import.meta.dirname, '../../deploy/certs-init.sh');
const tmp = tempDir('terroir-deploy-pki-');
const pki = path.join(tmp.dir, 'pki');
const other = path.join(tmp.dir, 'other');
const kl = (f: string): string => path.join(pki, 'keylime', f);
const read = (f: string): Buffer => fs.readFileSync(f);
const x509Text = (f: string): string => spawnSync('openssl', ['x509', '-in', f, '-noout', '-text']).stdout.toString();

beforeAll(async () => {
  await run('bash', [SCRIPT, pki]);
  await run('bash', [SCRIPT, other]); // an unrelated PKI: its certificates must be refused by ours
}, 30_000);
afterAll(() => tmp.cleanup());

/** A TLS server with the verifier's certificate requiring client certificates from our CA, as Keylime runs it. */
async function handshake(client: { cert?: Buffer; key?: Buffer; ca: Buffer; servername?: string }): Promise<string> {
  const server = tls.createServer({ cert: read(kl('verifier.crt')), key: read(kl('verifier.key')), ca: read(kl('ca.crt')), requestCert: true, rejectUnauthorized: true });
  server.on('secureConnection', (s) => s.end(`hello ${s.getPeerX509Certificate()?.subject.split('\n').find((l) => l.startsWith('CN=')) ?? '?'}`));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  try {
    return await new Promise<string>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, servername: client.servername ?? 'keylime-verifier', ...client });
      let body = '';
      s.on('data', (d: Buffer) => { body += d.toString(); });
      s.on('end', () => (body ? resolve(body) : reject(new Error('connection closed without an answer'))));
      s.on('error', reject);
    });
  } finally {
    server.close();
  }
}

describe('deploy/certs-init.sh', () => {
  it('makes a PKI that openssl verify accepts, with server and client key usages where they belong', () => {
    for (const name of ['verifier', 'registrar', 'verifier-client', 'terroir-client']) {
      const r = spawnSync('openssl', ['verify', '-CAfile', kl('ca.crt'), kl(`${name}.crt`)]);
      expect(r.stdout.toString().trim(), r.stderr.toString()).toBe(`${kl(`${name}.crt`)}: OK`);
      expect(fs.statSync(kl(`${name}.key`)).mode & 0o077).toBe(0);
    }
    expect(x509Text(kl('verifier.crt'))).toMatch(/TLS Web Server Authentication[\s\S]*DNS:keylime-verifier/);
    expect(x509Text(kl('registrar.crt'))).toMatch(/DNS:keylime-registrar/);
    expect(x509Text(kl('terroir-client.crt'))).toContain('TLS Web Client Authentication');
    expect(x509Text(kl('terroir-client.crt'))).not.toContain('TLS Web Server Authentication');
    expect(x509Text(kl('ca.crt'))).toMatch(/CA:TRUE, pathlen:0/);
    // The other PKI is a different CA: our CA does not verify its certificates.
    const cross = spawnSync('openssl', ['verify', '-CAfile', kl('ca.crt'), path.join(other, 'keylime', 'terroir-client.crt')]);
    expect(cross.status).not.toBe(0);
  });

  it('a real TLS handshake with client authentication succeeds with terroir-server\'s client certificate', async () => {
    const answer = await handshake({ cert: read(kl('terroir-client.crt')), key: read(kl('terroir-client.key')), ca: read(kl('ca.crt')) });
    expect(answer).toBe('hello CN=terroir-server (keylime client)');
  });

  it('the handshake fails without a client certificate, with one from another CA, and for a wrong server name', async () => {
    await expect(handshake({ ca: read(kl('ca.crt')) })).rejects.toThrow();
    const foreign = path.join(other, 'keylime');
    await expect(handshake({ cert: read(path.join(foreign, 'terroir-client.crt')), key: read(path.join(foreign, 'terroir-client.key')), ca: read(kl('ca.crt')) })).rejects.toThrow();
    // The client pins our CA: a server certificate from another CA is refused by the client.
    await expect(handshake({ cert: read(kl('terroir-client.crt')), key: read(kl('terroir-client.key')), ca: read(path.join(foreign, 'ca.crt')) })).rejects.toThrow(/self[- ]signed|unable to verify|unknown ca/i);
    await expect(handshake({ cert: read(kl('terroir-client.crt')), key: read(kl('terroir-client.key')), ca: read(kl('ca.crt')), servername: 'keylime-registrar' })).rejects.toThrow(/altnames|Hostname/i);
  });

  it('a rerun keeps the existing CA and certificates', async () => {
    const before = ['ca.crt', 'verifier.crt', 'terroir-client.key'].map((f) => read(kl(f)));
    const r = await run('bash', [SCRIPT, pki]);
    expect(r.stdout).toContain('KEYLIME_CA=');
    expect(['ca.crt', 'verifier.crt', 'terroir-client.key'].map((f) => read(kl(f)))).toEqual(before);
  });

  it('agent/: a self-signed quote endpoint certificate the verifier can pin, and the CA of the verifier\'s client certificate only', async () => {
    const ag = (f: string): string => path.join(pki, 'agent', f);
    expect(fs.readdirSync(path.join(pki, 'agent')).sort()).toEqual(['quote-endpoint.crt', 'quote-endpoint.key', 'verifier-client-ca.crt']);
    // Self-signed, not a CA, for serverAuth; named for the compose service; its key private.
    const self = spawnSync('openssl', ['verify', '-CAfile', ag('quote-endpoint.crt'), ag('quote-endpoint.crt')]);
    expect(self.stdout.toString().trim(), self.stderr.toString()).toBe(`${ag('quote-endpoint.crt')}: OK`);
    const text = x509Text(ag('quote-endpoint.crt'));
    expect(text).toMatch(/CA:FALSE/);
    expect(text).toMatch(/TLS Web Server Authentication[\s\S]*DNS:terroir-agent, DNS:localhost, IP Address:127\.0\.0\.1/);
    expect(fs.statSync(ag('quote-endpoint.key')).mode & 0o077).toBe(0);
    expect(read(ag('verifier-client-ca.crt'))).toEqual(read(kl('ca.crt')));

    // The endpoint as the agent runs it; the verifier pulling as Keylime does: its client certificate,
    // and the endpoint's own certificate as the only trust anchor.
    const server = tls.createServer({ cert: read(ag('quote-endpoint.crt')), key: read(ag('quote-endpoint.key')), ca: read(ag('verifier-client-ca.crt')), requestCert: true, rejectUnauthorized: true });
    server.on('secureConnection', (sock) => sock.end('quote'));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const pull = (dir: string): Promise<string> => new Promise((resolve, reject) => {
      const sock = tls.connect({ host: '127.0.0.1', port, ca: read(ag('quote-endpoint.crt')), cert: read(path.join(dir, 'verifier-client.crt')), key: read(path.join(dir, 'verifier-client.key')) });
      let body = '';
      sock.on('data', (d: Buffer) => { body += d.toString(); });
      sock.on('end', () => (body ? resolve(body) : reject(new Error('connection closed without an answer'))));
      sock.on('error', reject);
    });
    try {
      expect(await pull(path.join(pki, 'keylime'))).toBe('quote');
      await expect(pull(path.join(other, 'keylime'))).rejects.toThrow();
    } finally {
      server.close();
    }
    // Each run makes its own endpoint key: two PKIs, two certificates.
    expect(read(path.join(other, 'agent', 'quote-endpoint.crt'))).not.toEqual(read(ag('quote-endpoint.crt')));
  });

  it('agent/: a rerun keeps the endpoint certificate; a foreign one, or a CA copy that is not ours, is an error', async () => {
    const dir = path.join(tmp.dir, 'agent-damaged');
    await run('bash', [SCRIPT, dir]);
    const crt = path.join(dir, 'agent', 'quote-endpoint.crt');
    const before = read(crt);
    await run('bash', [SCRIPT, dir]);
    expect(read(crt)).toEqual(before);
    fs.copyFileSync(path.join(other, 'agent', 'quote-endpoint.crt'), crt);
    const r = spawnSync('bash', [SCRIPT, dir]);
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toContain(`${path.join(dir, 'agent', 'quote-endpoint')}.crt/.key exist but are not a matching self-signed certificate`);
    fs.rmSync(crt);
    fs.rmSync(path.join(dir, 'agent', 'quote-endpoint.key'));
    fs.copyFileSync(path.join(other, 'keylime', 'ca.crt'), path.join(dir, 'agent', 'verifier-client-ca.crt'));
    const r2 = spawnSync('bash', [SCRIPT, dir]);
    expect(r2.status).toBe(1);
    expect(r2.stderr.toString()).toContain('verifier-client-ca.crt is not a copy of');
  });

  it('damaged material is an error naming the file, and nothing is replaced', async () => {
    const dir = path.join(tmp.dir, 'damaged');
    await run('bash', [SCRIPT, dir]);
    const leaf = path.join(dir, 'keylime', 'verifier.crt');
    // A verifier certificate from another CA where ours belongs.
    fs.copyFileSync(path.join(other, 'keylime', 'verifier.crt'), leaf);
    const before = read(leaf);
    const r = spawnSync('bash', [SCRIPT, dir]);
    expect(r.status).toBe(1);
    expect(r.stderr.toString()).toContain(`${path.join(dir, 'keylime', 'verifier')}.crt/.key exist but do not verify`);
    expect(read(leaf)).toEqual(before);
    // A CA key that does not match its certificate.
    fs.copyFileSync(path.join(other, 'keylime', 'ca.key'), path.join(dir, 'keylime', 'ca.key'));
    const r2 = spawnSync('bash', [SCRIPT, dir]);
    expect(r2.status).toBe(1);
    expect(r2.stderr.toString()).toContain('are not a matching self-signed CA');
    expect(spawnSync('bash', [SCRIPT]).stderr.toString()).toContain('usage: certs-init.sh OUT_DIR');
  });
});
