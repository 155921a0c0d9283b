// StaticX509Source: an X.509-SVID and bundles read from PEM files, for services that get their
// identity from files (e.g. written by a sidecar). Interchangeable with X509Source in the TLS helpers.
// reload() re-reads the files; a set of files that does not parse or verify changes nothing.
import fs from 'node:fs';
import { Bundle, BundleSet } from '../spiffe/bundle.js';
import { TrustDomain } from '../spiffe/id.js';
import { pemToDer } from '../spiffe/pem.js';
import type { X509Svid } from '../spiffe/svid-source.js';
import { parseX509SvidId, verifyX509Svid } from '../spiffe/x509svid.js';
import { WorkloadError } from './errors.js';
import type { X509SourceLike } from './source.js';
import { parseSvid } from './x509-source.js';

export interface StaticX509SourceFiles {
  /** PEM certificates, leaf first, then intermediates. */
  certFile: string;
  /** PEM PKCS#8 private key ("PRIVATE KEY"), unencrypted. */
  keyFile: string;
  /** PEM CA certificates per trust domain name, e.g. { "example.org": "/etc/spiffe/bundle.pem" }; must include the SVID's own. */
  bundleFiles: Record<string, string>;
}

const MAX_FILE_BYTES = 1024 * 1024;

export class StaticX509Source implements X509SourceLike {
  private svid: X509Svid;
  private bundles: BundleSet;
  private bundleList: readonly Bundle[];
  private readonly listeners = new Set<() => void>();

  private constructor(private readonly files: StaticX509SourceFiles) {
    const loaded = load(files);
    this.svid = loaded.svid;
    this.bundles = loaded.bundles;
    this.bundleList = Object.freeze(loaded.bundles.all());
  }

  /** Reads and checks the files (the SVID must verify against its trust domain's bundle). */
  static fromFiles(files: StaticX509SourceFiles): StaticX509Source {
    return new StaticX509Source(files);
  }

  /** Re-reads the files; on any error throws and keeps serving what it had. */
  reload(): void {
    const loaded = load(this.files);
    this.svid = loaded.svid;
    this.bundles = loaded.bundles;
    this.bundleList = Object.freeze(loaded.bundles.all());
    for (const fn of [...this.listeners]) fn();
  }

  getX509Svid(): X509Svid {
    return this.svid;
  }

  getX509BundleForTrustDomain(td: TrustDomain): Bundle | undefined {
    return this.bundles.get(td);
  }

  getX509Bundles(): readonly Bundle[] {
    return this.bundleList;
  }

  onUpdate(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}

function readPem(file: string, what: string): string {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
    if (st.size > MAX_FILE_BYTES) throw new Error(`larger than ${MAX_FILE_BYTES} bytes`);
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new WorkloadError('bad-file', `cannot read ${what} ${file}: ${(e as Error).message}`, { cause: e });
  }
}

function pemBlocks(text: string, label: string, what: string, file: string): Buffer[] {
  try {
    return pemToDer(text, label);
  } catch (e) {
    throw new WorkloadError('bad-file', `${what} ${file}: ${(e as Error).message}`, { cause: e });
  }
}

function load(files: StaticX509SourceFiles): { svid: X509Svid; bundles: BundleSet } {
  if (files === null || typeof files !== 'object' || typeof files.certFile !== 'string' || typeof files.keyFile !== 'string' ||
    files.bundleFiles === null || typeof files.bundleFiles !== 'object') {
    throw new WorkloadError('invalid-argument', 'StaticX509Source needs { certFile, keyFile, bundleFiles }');
  }
  const chain = pemBlocks(readPem(files.certFile, 'certificate file'), 'CERTIFICATE', 'certificate file', files.certFile);
  const keyDer = pemBlocks(readPem(files.keyFile, 'key file'), 'PRIVATE KEY', 'key file', files.keyFile);
  if (keyDer.length !== 1) throw new WorkloadError('bad-file', `key file ${files.keyFile} must hold exactly one PRIVATE KEY block`);
  let id;
  try {
    id = parseX509SvidId(chain[0] as Buffer);
  } catch (e) {
    throw new WorkloadError('bad-file', `certificate file ${files.certFile}: ${(e as Error).message}`, { cause: e });
  }
  let svid: X509Svid;
  try {
    svid = parseSvid(Buffer.concat(chain), keyDer[0] as Buffer, id, undefined, `files ${files.certFile} + ${files.keyFile}`);
  } catch (e) {
    throw new WorkloadError('bad-file', (e as Error).message, { cause: e });
  }
  const bundles = new BundleSet();
  for (const [name, file] of Object.entries(files.bundleFiles)) {
    let td: TrustDomain;
    try {
      td = TrustDomain.parse(name);
    } catch (e) {
      throw new WorkloadError('invalid-argument', `bundleFiles key ${JSON.stringify(name)}: ${(e as Error).message}`, { cause: e });
    }
    const b = new Bundle(td);
    for (const der of pemBlocks(readPem(file, 'bundle file'), 'CERTIFICATE', 'bundle file', file)) {
      try {
        b.addX509Authority(der);
      } catch (e) {
        throw new WorkloadError('bad-file', `bundle file ${file}: ${(e as Error).message}`, { cause: e });
      }
    }
    bundles.set(b);
  }
  try {
    verifyX509Svid(svid.certificatesDer, bundles);
  } catch (e) {
    throw new WorkloadError('bad-file', `SVID ${id.toString()} in ${files.certFile} does not verify against bundleFiles: ${(e as Error).message}`, { cause: e });
  }
  return { svid, bundles };
}
