// The agent's state on disk: its SVID chain, private key and the last trust bundle the server gave
// it, so a restarted agent carries on without attesting again while its SVID is valid. The data
// directory is 0700 and every file 0600; files are replaced atomically (write, fsync, rename).
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export interface StoredAgentState {
  spiffeId: string;
  /** DER chain, leaf first. */
  chain: Buffer[];
  /** PKCS#8 DER private key. */
  key: Buffer;
  /** The server's SPIFFE bundle JSON. */
  bundle: Buffer;
  /** Whether the server lets this node renew by RenewAgent (join token) rather than re-attest (TPM). */
  canRenew: boolean;
  notAfter: number;
}

interface StateFile {
  version: 1;
  spiffeId: string;
  chain: string[];
  bundle: string;
  canRenew: boolean;
}

export class SvidStore {
  private readonly stateFile: string;
  private readonly keyFile: string;

  constructor(readonly dir: string) {
    this.stateFile = path.join(dir, 'agent-svid.json');
    this.keyFile = path.join(dir, 'agent-svid.key');
  }

  /** Creates the data directory 0700 (and tightens it if it exists). */
  init(): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(this.dir, 0o700);
  }

  save(s: StoredAgentState): void {
    const keyPem = crypto.createPrivateKey({ key: s.key, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' });
    const doc: StateFile = {
      version: 1,
      spiffeId: s.spiffeId,
      chain: s.chain.map((c) => c.toString('base64')),
      bundle: s.bundle.toString('utf8'),
      canRenew: s.canRenew,
    };
    // Key first: a state file never points at a key that is not there.
    writeAtomic(this.keyFile, Buffer.from(keyPem));
    writeAtomic(this.stateFile, Buffer.from(JSON.stringify(doc)));
  }

  /** The stored state, or undefined when absent or unreadable (then the agent attests afresh). */
  load(): StoredAgentState | undefined {
    let doc: StateFile;
    let keyPem: string;
    try {
      doc = JSON.parse(fs.readFileSync(this.stateFile, 'utf8')) as StateFile;
      keyPem = fs.readFileSync(this.keyFile, 'utf8');
    } catch {
      return undefined;
    }
    if (doc?.version !== 1 || !Array.isArray(doc.chain) || doc.chain.length === 0 || typeof doc.spiffeId !== 'string') return undefined;
    try {
      const chain = doc.chain.map((c) => Buffer.from(c, 'base64'));
      const leaf = new crypto.X509Certificate(chain[0] as Buffer);
      const key = crypto.createPrivateKey(keyPem);
      // A key that does not belong to the certificate is useless (and a sign of tampering).
      if (!leaf.checkPrivateKey(key)) return undefined;
      return {
        spiffeId: doc.spiffeId,
        chain,
        key: key.export({ format: 'der', type: 'pkcs8' }),
        bundle: Buffer.from(doc.bundle, 'utf8'),
        canRenew: doc.canRenew === true,
        notAfter: Date.parse(leaf.validTo),
      };
    } catch {
      return undefined;
    }
  }

  /** Forgets the SVID (after eviction or a drop): the next start attests again. */
  clear(): void {
    for (const f of [this.stateFile, this.keyFile]) fs.rmSync(f, { force: true });
  }
}

function writeAtomic(file: string, data: Buffer): void {
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, file);
}
