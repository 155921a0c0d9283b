import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePortPair } from './ports.js';
import { tempDir } from './tmp.js';

const run = promisify(execFile);
const SCRIPTS = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../swtpm');

export interface StartSwtpmOptions {
  /** Reuse this state dir (provisioned on first use); default a fresh temp dir removed on stop(). */
  stateDir?: string;
  /** Share a manufacturer CA between TPMs; default a CA private to this TPM. */
  caDir?: string;
}

export interface Swtpm {
  /** TCTI string for TpmDevice.open() and tpm2-tools (TPM2TOOLS_TCTI / -T). */
  tcti: string;
  stateDir: string;
  port: number;
  pid: number;
  /** DER of the local manufacturer CA: root, then the issuing CA. */
  manufacturerCaDer: Buffer[];
  /** PEM bundle of the same certificates. */
  caFile: string;
  /** Orderly TPM2_Shutdown, then stop this swtpm by PID (so `safe` stays set); removes a temp state dir. */
  stop(): Promise<void>;
}

/** PEM bundle to DER certificates, in file order. */
export function pemBundleToDer(pem: string): Buffer[] {
  const out: Buffer[] = [];
  for (const m of pem.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)) {
    out.push(new X509Certificate(Buffer.from((m[1] ?? '').replace(/\s+/g, ''), 'base64')).raw);
  }
  return out;
}

/**
 * Starts a provisioned swtpm (RSA-2048 + ECC P-384 EKs with certificates from a local
 * manufacturer CA) on a free loopback port pair, through swtpm/start.sh.
 */
export async function startSwtpm(opts: StartSwtpmOptions = {}): Promise<Swtpm> {
  const tmp = opts.stateDir === undefined ? tempDir('terroir-swtpm-') : undefined;
  const stateDir = opts.stateDir ?? (tmp as { dir: string }).dir;
  let lastErr: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePortPair();
    try {
      const args = [stateDir, String(port), ...(opts.caDir !== undefined ? [opts.caDir] : [])];
      const { stdout } = await run(path.join(SCRIPTS, 'start.sh'), args, { timeout: 30_000 });
      const kv = Object.fromEntries(stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
      const caFile = kv.CA_FILE as string;
      let stopped = false;
      return {
        tcti: kv.TCTI as string,
        stateDir,
        port,
        pid: Number(kv.PID),
        caFile,
        manufacturerCaDer: pemBundleToDer(fs.readFileSync(caFile, 'utf8')),
        async stop() {
          if (stopped) return;
          stopped = true;
          await run(path.join(SCRIPTS, 'stop.sh'), [stateDir], { timeout: 15_000 });
          tmp?.cleanup();
        },
      };
    } catch (err) {
      lastErr = err;
      // Never stop an instance someone else is running on this state dir.
      if (/already running/.test(String((err as { stderr?: string }).stderr ?? err))) break;
      // Another process may have taken the port between the probe and swtpm's bind: try new ports.
      await run(path.join(SCRIPTS, 'stop.sh'), [stateDir], { timeout: 15_000 }).catch(() => undefined);
    }
  }
  tmp?.cleanup();
  throw new Error(`could not start swtpm: ${(lastErr as Error).message}`);
}
