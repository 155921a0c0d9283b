// The server's CA: X.509 and JWT signing keys rotated in SPIRE's manner.
//
// Each key goes prepared → active → old. A new key is prepared (and published in the bundle, so
// relying parties learn it before anything is signed with it) when the active one reaches half its
// lifetime; it becomes active when the active one has a sixth of its lifetime left — because SVIDs
// live at most CA TTL/6, everything signed by the outgoing key expires before that key does. The
// outgoing key stays in the bundle as "old" until it expires.
//
// Several servers may share one datastore (HA); each has its own keys. The stored bundle is the
// union: on every write this server keeps the other servers' unexpired keys and replaces its own.
import crypto, { type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { StoredBundle } from '../datastore/types.js';
import { mintCaCertificateDer, type CaSubject, type LoadedUpstream } from './certs.js';
import type { CaKeyStore, CaKeyType } from './keys.js';
import { bundleKeyToJwk, jwkIdentity, jwkNotAfter, parseStoredKeys, renderBundle, type BundleKey } from './bundle-doc.js';

export type AuthorityStatus = 'prepared' | 'active' | 'old';

export interface X509Authority {
  kind: 'x509';
  id: string;
  status: AuthorityStatus;
  certificateDer: Buffer;
  /** Certificates between this CA and a published root (upstream intermediates); empty when self-signed. */
  chainDer: Buffer[];
  notBefore: Date;
  notAfter: Date;
  keyRef: string;
  /** Absent when the key could not be loaded (memory store after a restart): published, never used. */
  privateKey?: KeyObject;
  publicKey: KeyObject;
}

export interface JwtAuthority {
  kind: 'jwt';
  kid: string;
  status: AuthorityStatus;
  notBefore: Date;
  notAfter: Date;
  keyRef: string;
  privateKey?: KeyObject;
  publicKey: KeyObject;
}

type Authority = X509Authority | JwtAuthority;

export class CaError extends Error {
  override readonly name = 'CaError';
  constructor(readonly code: 'no_active_authority' | 'bundle_store_failed' | 'journal_corrupt', message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

export interface BundleStore {
  getBundle(trustDomain: string): Promise<StoredBundle | undefined>;
  setBundle(bundle: StoredBundle): Promise<StoredBundle>;
}

export interface CaManagerOptions {
  trustDomain: string;
  keyType: CaKeyType;
  /** Lifetime of each CA certificate and JWT key, seconds. */
  ttlSeconds: number;
  subject: CaSubject;
  keyStore: CaKeyStore;
  upstream?: LoadedUpstream;
  /** Where this server's journal (which keys it owns, in which state) lives; absent = not persisted. */
  journalPath?: string;
  store: BundleStore;
  refreshHintSeconds: number;
  now?: () => Date;
  logger?: Logger;
}

interface JournalAuthority {
  kind: 'x509' | 'jwt';
  id: string;
  status: AuthorityStatus;
  certificateDer?: string;
  chainDer?: string[];
  publicKeySpki: string;
  notBefore: string;
  notAfter: string;
  keyRef: string;
}

/** How long before now a new certificate's notBefore is set, for clock skew between machines. */
const BACKDATE_MS = 10_000;

export type BundleListener = (bundle: StoredBundle) => void;

export class CaManager {
  private x509: X509Authority[] = [];
  private jwt: JwtAuthority[] = [];
  private current: StoredBundle | undefined;
  private readonly listeners = new Set<BundleListener>();
  private readonly now: () => Date;
  private ticking: Promise<boolean> | undefined;

  private constructor(private readonly opts: CaManagerOptions) {
    this.now = opts.now ?? (() => new Date());
  }

  /** Loads this server's journal (if any), brings the keys up to date and publishes the bundle. */
  static async start(opts: CaManagerOptions): Promise<CaManager> {
    const ca = new CaManager(opts);
    ca.loadJournal();
    await ca.tick();
    return ca;
  }

  get trustDomain(): string {
    return this.opts.trustDomain;
  }

  /** The X.509 authority that signs now. */
  activeX509(): X509Authority & { privateKey: KeyObject } {
    const a = this.x509.find((x) => x.status === 'active');
    if (!a?.privateKey || a.notAfter <= this.now()) throw new CaError('no_active_authority', 'the CA has no active X.509 key; check the server log for CA rotation errors');
    return a as X509Authority & { privateKey: KeyObject };
  }

  activeJwt(): JwtAuthority & { privateKey: KeyObject } {
    const a = this.jwt.find((x) => x.status === 'active');
    if (!a?.privateKey || a.notAfter <= this.now()) throw new CaError('no_active_authority', 'the CA has no active JWT key; check the server log for CA rotation errors');
    return a as JwtAuthority & { privateKey: KeyObject };
  }

  /** Every authority this server holds (prepared, active, old), for inspection and tests. */
  authorities(): { x509: readonly X509Authority[]; jwt: readonly JwtAuthority[] } {
    return { x509: [...this.x509], jwt: [...this.jwt] };
  }

  /** The bundle as last published or read from the datastore. */
  bundle(): StoredBundle {
    if (!this.current) throw new CaError('no_active_authority', 'the CA has not published a bundle yet');
    return this.current;
  }

  /** The X.509 roots of the current bundle (DER), what peers' chains are verified against. */
  x509Roots(): Buffer[] {
    return parseStoredKeys(this.bundle().bundleJson)
      .filter((k) => k.use === 'x509-svid' && Array.isArray(k.x5c) && typeof k.x5c[0] === 'string')
      .map((k) => Buffer.from((k.x5c as string[])[0] as string, 'base64'));
  }

  onBundleChange(listener: BundleListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Rotates keys that are due and re-reads the stored bundle (another server may have changed it).
   * Returns true when the bundle changed. Calls are serialized.
   */
  async tick(): Promise<boolean> {
    const run = (this.ticking ?? Promise.resolve(false)).catch(() => false).then(() => this.doTick());
    this.ticking = run;
    return run;
  }

  private async doTick(): Promise<boolean> {
    const now = this.now();
    const dropped: Authority[] = [];
    const rotatedX509 = await this.rotate('x509', now, dropped);
    const rotatedJwt = await this.rotate('jwt', now, dropped);
    for (const a of dropped) this.opts.keyStore.remove(a.keyRef);
    if (rotatedX509 || rotatedJwt || dropped.length) this.saveJournal();
    return this.publish(now, dropped);
  }

  private list(kind: 'x509' | 'jwt'): Authority[] {
    return kind === 'x509' ? this.x509 : this.jwt;
  }

  private async rotate(kind: 'x509' | 'jwt', now: Date, dropped: Authority[]): Promise<boolean> {
    let changed = false;
    const all = this.list(kind);
    // Expired keys leave; an unusable active key (expired, or its private key lost) is retired.
    for (const a of [...all]) {
      if (a.notAfter <= now) {
        all.splice(all.indexOf(a), 1);
        dropped.push(a);
        changed = true;
      }
    }
    for (const a of all) {
      if ((a.status === 'active' || a.status === 'prepared') && !a.privateKey) {
        a.status = 'old';
        changed = true;
      }
    }
    let active = all.find((a) => a.status === 'active');
    let prepared = all.find((a) => a.status === 'prepared');
    if (!active) {
      if (prepared) {
        prepared.status = 'active';
        active = prepared;
        prepared = undefined;
      } else {
        active = await this.mint(kind, 'active', now);
        all.push(active);
      }
      changed = true;
    }
    const life = active.notAfter.getTime() - active.notBefore.getTime();
    const age = now.getTime() - active.notBefore.getTime();
    if (!prepared && age >= life / 2) {
      prepared = await this.mint(kind, 'prepared', now);
      all.push(prepared);
      changed = true;
    }
    if (prepared && now.getTime() >= active.notAfter.getTime() - life / 6) {
      active.status = 'old';
      prepared.status = 'active';
      this.opts.logger?.info({ kind, activated: idOf(prepared), retired: idOf(active) }, 'CA key rotated');
      changed = true;
    }
    return changed;
  }

  private async mint(kind: 'x509' | 'jwt', status: AuthorityStatus, now: Date): Promise<Authority> {
    const { ttlSeconds, upstream } = this.opts;
    const key = this.opts.keyStore.generate(this.opts.keyType);
    const notBefore = new Date(now.getTime() - BACKDATE_MS);
    let notAfter = new Date(now.getTime() + ttlSeconds * 1000);
    if (kind === 'jwt') {
      this.opts.logger?.info({ status }, 'JWT signing key created');
      return {
        kind, kid: crypto.randomBytes(16).toString('base64url'), status, notBefore, notAfter,
        keyRef: key.ref, privateKey: key.privateKey, publicKey: key.publicKey,
      };
    }
    if (upstream && upstream.notAfter < notAfter) notAfter = upstream.notAfter;
    const certificateDer = await mintCaCertificateDer({
      trustDomain: this.opts.trustDomain,
      subject: this.opts.subject,
      publicKey: key.publicKey,
      selfKey: key.privateKey,
      notBefore,
      notAfter,
      issuer: upstream && { certificateDer: upstream.certificateDer, privateKey: upstream.privateKey },
    });
    const id = crypto.createHash('sha256').update(certificateDer).digest('hex').slice(0, 16);
    this.opts.logger?.info({ status, id, notAfter: notAfter.toISOString(), upstream: Boolean(upstream) }, 'X.509 CA certificate created');
    return {
      kind, id, status, certificateDer, chainDer: upstream ? upstream.chainDer : [], notBefore, notAfter,
      keyRef: key.ref, privateKey: key.privateKey, publicKey: key.publicKey,
    };
  }

  /** The keys this server wants published (prepared, active and old, all unexpired). */
  private ownKeys(): BundleKey[] {
    const keys: BundleKey[] = [];
    if (this.opts.upstream) {
      // Relying parties trust the upstream roots; our rotating intermediates travel in SVID chains.
      for (const der of this.opts.upstream.rootsDer) {
        keys.push({ use: 'x509-svid', certificateDer: der, notAfter: new Date(new crypto.X509Certificate(der).validTo) });
      }
    } else {
      for (const a of this.x509) keys.push({ use: 'x509-svid', certificateDer: a.certificateDer, notAfter: a.notAfter });
    }
    for (const a of this.jwt) keys.push({ use: 'jwt-svid', kid: a.kid, publicKey: a.publicKey, notAfter: a.notAfter });
    return keys;
  }

  private async publish(now: Date, dropped: Authority[]): Promise<boolean> {
    const td = this.opts.trustDomain;
    let stored: StoredBundle | undefined;
    try {
      stored = await this.opts.store.getBundle(td);
    } catch (err) {
      throw new CaError('bundle_store_failed', `cannot read the bundle of ${td} from the datastore: ${(err as Error).message}`, { cause: err });
    }
    let storedKeys: ReturnType<typeof parseStoredKeys>;
    try {
      storedKeys = stored ? parseStoredKeys(stored.bundleJson) : [];
    } catch (err) {
      throw new CaError('bundle_store_failed', `the stored bundle of ${td} is not valid JSON (${(err as Error).message}); fix or delete it in the datastore`, { cause: err });
    }
    const own = this.ownKeys().map(bundleKeyToJwk);
    const ownIds = new Set(own.map(jwkIdentity));
    const droppedIds = new Set(dropped.map((a) => jwkIdentity(a.kind === 'x509'
      ? bundleKeyToJwk({ use: 'x509-svid', certificateDer: a.certificateDer, notAfter: a.notAfter })
      : bundleKeyToJwk({ use: 'jwt-svid', kid: a.kid, publicKey: a.publicKey, notAfter: a.notAfter }))));
    const foreign = storedKeys.filter((k) => {
      const id = jwkIdentity(k);
      if (ownIds.has(id) || droppedIds.has(id)) return false;
      const exp = jwkNotAfter(k);
      return exp === undefined || exp > now;
    });
    const wanted = [...foreign, ...own];
    const storedIds = stored ? storedKeys.map(jwkIdentity).sort().join('\n') : undefined;
    const wantedIds = wanted.map(jwkIdentity).sort().join('\n');
    if (stored && storedIds === wantedIds) {
      // Nothing of ours to change; adopt what is stored (maybe another server's newer write).
      const changed = this.current?.sequence !== stored.sequence || this.current.bundleJson !== stored.bundleJson;
      this.current = stored;
      if (changed) this.emit(stored);
      return changed;
    }
    const sequence = (stored?.sequence ?? 0n) + 1n;
    const next: StoredBundle = { trustDomain: td, bundleJson: renderBundle(wanted, sequence, this.opts.refreshHintSeconds), sequence };
    try {
      this.current = await this.opts.store.setBundle(next);
    } catch (err) {
      throw new CaError('bundle_store_failed', `cannot store the bundle of ${td}: ${(err as Error).message}`, { cause: err });
    }
    this.opts.logger?.info({ sequence: sequence.toString(), keys: wanted.length }, 'trust bundle published');
    this.emit(this.current);
    return true;
  }

  private emit(b: StoredBundle): void {
    for (const l of this.listeners) {
      try {
        l(b);
      } catch (err) {
        this.opts.logger?.error({ err }, 'bundle listener failed');
      }
    }
  }

  private saveJournal(): void {
    const file = this.opts.journalPath;
    if (!file) return;
    const entries: JournalAuthority[] = [...this.x509, ...this.jwt].map((a) => ({
      kind: a.kind,
      id: a.kind === 'x509' ? a.id : a.kid,
      status: a.status,
      certificateDer: a.kind === 'x509' ? a.certificateDer.toString('base64') : undefined,
      chainDer: a.kind === 'x509' ? a.chainDer.map((c) => c.toString('base64')) : undefined,
      publicKeySpki: (a.publicKey.export({ format: 'der', type: 'spki' })).toString('base64'),
      notBefore: a.notBefore.toISOString(),
      notAfter: a.notAfter.toISOString(),
      keyRef: a.keyRef,
    }));
    const tmp = `${file}.tmp`;
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.writeFileSync(tmp, JSON.stringify({ version: 1, authorities: entries }, null, 1), { mode: 0o600 });
    fs.renameSync(tmp, file);
  }

  private loadJournal(): void {
    const file = this.opts.journalPath;
    if (!file || !fs.existsSync(file)) return;
    let doc: { version?: unknown; authorities?: JournalAuthority[] };
    try {
      doc = JSON.parse(fs.readFileSync(file, 'utf8')) as typeof doc;
      if (doc.version !== 1 || !Array.isArray(doc.authorities)) throw new Error('unknown journal version');
    } catch (err) {
      throw new CaError('journal_corrupt', `CA journal ${file} is unreadable (${(err as Error).message}); move it away to start a new CA`, { cause: err });
    }
    for (const j of doc.authorities) {
      const key = this.opts.keyStore.load(j.keyRef);
      const publicKey = crypto.createPublicKey({ key: Buffer.from(j.publicKeySpki, 'base64'), format: 'der', type: 'spki' });
      const base = { status: j.status, notBefore: new Date(j.notBefore), notAfter: new Date(j.notAfter), keyRef: j.keyRef, publicKey, privateKey: key?.privateKey };
      if (j.kind === 'x509') {
        this.x509.push({
          kind: 'x509', id: j.id, ...base,
          certificateDer: Buffer.from(j.certificateDer ?? '', 'base64'),
          chainDer: (j.chainDer ?? []).map((c) => Buffer.from(c, 'base64')),
        });
      } else {
        this.jwt.push({ kind: 'jwt', kid: j.id, ...base });
      }
    }
  }
}

function idOf(a: Authority): string {
  return a.kind === 'x509' ? a.id : a.kid;
}
