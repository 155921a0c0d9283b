/**
 * The agent side of the TPM layer: a TPM opened by TCTI through tpm2-tss ESAPI (koffi FFI).
 *
 * Every ESAPI call goes through one queue (an ESAPI context is not thread-safe) and runs on a koffi
 * worker thread, so a slow TPM (RSA key generation takes hundreds of milliseconds) never blocks the
 * event loop. TPM structures cross into C only as wire bytes (see native/tss2.ts).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Logger } from 'pino';
import { loadTss2, ESYS_TR, type CPointer, type MarshalType, type Out, type Tss2, type UnmarshalType, type AsyncFn } from '../../native/tss2.js';
import { TPM_ALG, digestSize, hashAlgId, isHashAlg, type HashAlg } from './constants.js';
import { TpmError } from './errors.js';
import { TpmReader, TpmWriter, tpm2b } from './reader.js';
import { objectName, parseTpm2bPublic, type TpmPublic } from './public.js';
import { marshalPcrSelectionList, parseTpmsAttest, parseTpmtSignature, readPcrSelectionList, type PcrSelection, type PcrValues } from './attest.js';
import { pcrDigest } from './quote.js';
import { EK_NV_INDEX, EK_PERSISTENT_HANDLE, akTemplate, ekTemplate, type EkKind } from './templates.js';
import { EK_CHAIN_NV_FIRST, EK_CHAIN_NV_LAST, splitDerCertificates } from './ekchain.js';

export { Tss2LibraryError } from '../../native/tss2.js';
export type { EkKind } from './templates.js';

/** A TPM command failed; `rc` is the TSS2_RC and the message its decoding. */
export class TpmDeviceError extends TpmError {
  readonly rc: number | undefined;
  constructor(code: string, message: string, rc?: number, options?: { cause?: unknown }) {
    super(code, message, options);
    this.rc = rc;
  }
}

export type AkAlg = 'ecc-p256' | 'rsa2048';

/** An attestation key loaded in (or persisted on) this TPM. */
export interface AkHandle {
  alg: AkAlg;
  /** TPM2B_PUBLIC of the AK. */
  public: Buffer;
  /** The AK's TPM name (nameAlg || H(TPMT_PUBLIC)). */
  name: Buffer;
  tpmPublic: TpmPublic;
  /** Set when the AK is persisted (EvictControl) at this handle. */
  persistentHandle?: number;
  /** ESAPI handle (ESYS_TR) in the device that created or loaded it; meaningless elsewhere. */
  readonly esysHandle: number;
}

export interface QuoteResult {
  /** TPMS_ATTEST bytes (without the TPM2B size), as signed. */
  attest: Buffer;
  /** TPMT_SIGNATURE bytes. */
  signature: Buffer;
  /** The values of the quoted PCRs, matching the quote's PCR digest. */
  pcrs: PcrValues;
}

/** What readEkCertificateChain() found. */
export interface EkChain {
  /** Whole DER certificates, in index order and, within an index, in stored order. Untrusted. */
  certificates: Buffer[];
  /** Indices skipped or cut short, and why (also logged as warnings). */
  problems: { index?: number; message: string }[];
}

export interface OpenOptions {
  /**
   * Flush every transient object in the TPM at open (default true): swtpm and raw /dev/tpm0 have
   * no resource manager, so objects left by crashed processes would fill the few slots. Set false
   * when another process is using the same TPM without a resource manager at the same time.
   */
  flushTransientObjects?: boolean;
  /** pino logger for open/flush/retry events (never key material). */
  logger?: Logger;
}

const TPM_CAP_HANDLES = 0x00000001;
const TPM_HT_TRANSIENT = 0x80000000;
const TPM_SE_POLICY = 0x01;
const TPM_RC_HANDLE = 0x08b; // format-one handle error, any handle number
const TSS2_RC_LAYER_MASK = 0xff0000;
/** Room for any C structure used here (the largest, TPMS_CAPABILITY_DATA, is about 1 KiB). */
const C_STRUCT_SIZE = 8192;
/** PCR_Read answers at most 8 PCRs per call. */
const PCRS_PER_READ = 8;
/** NV reads in chunks below every TPM's MAX_NV_BUFFER_SIZE. */
const NV_CHUNK = 768;
/** Bounds on the EK chain read from a (possibly broken) TPM. */
const EK_CHAIN_MAX_INDICES = 16;
const EK_CHAIN_MAX_BYTES = 64 * 1024;
/** TPMA_NV bits (TPM 2.0 Part 2, 13.4). */
const TPMA_NV_OWNERREAD = 1 << 17;
const TPMA_NV_AUTHREAD = 1 << 18;
const TPMA_NV_TPM_NT_SHIFT = 4;
const TPMA_NV_TPM_NT_MASK = 0xf0;
const TPMA_NV_READLOCKED = 1 << 28;
const TPMA_NV_WRITTEN = 1 << 29;
const DEFAULT_EVENT_LOG = '/sys/kernel/security/tpm0/binary_bios_measurements';

export class TpmDevice {
  private queue: Promise<unknown> = Promise.resolve();
  private readonly transients = new Set<number>();
  private readonly ekPublicCache = new Map<EkKind, Buffer>();
  private closed = false;

  private constructor(
    private readonly tss: Tss2,
    private readonly esys: Out<CPointer>,
    private readonly tcti: Out<CPointer>,
    /** The TCTI string, for messages. */
    readonly tctiConf: string,
    private readonly logger?: Logger,
  ) {}

  /**
   * Opens a TPM: `swtpm:host=127.0.0.1,port=2321`, `device:/dev/tpmrm0` or `tabrmd`. Flushes
   * transient objects left behind by earlier processes (swtpm has only three slots and no
   * resource manager).
   */
  static async open(tcti: string, opts: OpenOptions = {}): Promise<TpmDevice> {
    // ESAPI logs errors to stderr by default; errors reach callers as exceptions instead.
    process.env.TSS2_LOG ??= 'all+NONE';
    const tss = loadTss2();
    const tctiCell: Out<CPointer> = [null];
    let rc = tss.TctiLdr_Initialize(tcti, tctiCell);
    if (rc !== 0) throw new TpmDeviceError('tcti', `cannot open TPM "${tcti}": ${tss.RC_Decode(rc)} (is the TPM/swtpm running, and the TCTI library for it installed, e.g. libtss2-tcti-swtpm0 or libtss2-tcti-device0?)`, rc);
    const esysCell: Out<CPointer> = [null];
    rc = tss.Esys_Initialize(esysCell, tctiCell[0], null);
    if (rc !== 0) {
      tss.TctiLdr_Finalize(tctiCell);
      throw new TpmDeviceError('esys', `cannot initialise ESAPI on "${tcti}": ${tss.RC_Decode(rc)}`, rc);
    }
    const dev = new TpmDevice(tss, esysCell, tctiCell, tcti, opts.logger);
    try {
      if (opts.flushTransientObjects !== false) {
        const flushed = await dev.serial(() => dev.flushTransientObjects());
        if (flushed > 0) dev.logger?.info({ tcti, flushed }, 'flushed transient objects left in the TPM');
      }
    } catch (err) {
      await dev.close();
      throw err;
    }
    dev.logger?.debug({ tcti }, 'TPM opened');
    return dev;
  }

  // ---- plumbing -------------------------------------------------------------------------------

  /** Runs `fn` after every earlier call on this device has finished. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new TpmDeviceError('closed', 'the TPM device is closed'));
    const next = this.queue.then(fn, fn);
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** One ESAPI call on a worker thread; a non-zero TSS2_RC becomes a TpmDeviceError. */
  private async esapi(fn: AsyncFn, op: string, ...args: unknown[]): Promise<void> {
    const rc = await new Promise<number>((resolve, reject) => {
      fn.async(this.esys[0], ...args, (err: unknown, res: number) => (err ? reject(err as Error) : resolve(res)));
    });
    if (rc !== 0) throw this.rcError(op, rc);
  }

  private rcError(op: string, rc: number): TpmDeviceError {
    return new TpmDeviceError('tpm-rc', `${op} failed on ${this.tctiConf}: ${this.tss.RC_Decode(rc)} (rc 0x${rc.toString(16)})`, rc);
  }

  /** Wire bytes → C structure. */
  private toC(type: UnmarshalType, wire: Buffer): Buffer {
    const dest = Buffer.alloc(C_STRUCT_SIZE);
    const off: Out<number> = [0];
    const rc = this.tss.unmarshal[type](wire, wire.length, off, dest);
    if (rc !== 0 || off[0] !== wire.length) throw new TpmDeviceError('marshal', `cannot convert ${type} (${wire.length} bytes) for ESAPI: ${rc !== 0 ? this.tss.RC_Decode(rc) : 'trailing bytes'}`, rc);
    return dest;
  }

  /** ESAPI-allocated C structure → wire bytes; frees it. */
  private fromC(type: MarshalType, ptr: CPointer): Buffer {
    if (ptr === null || ptr === undefined) throw new TpmDeviceError('marshal', `ESAPI returned no ${type}`);
    try {
      const buf = Buffer.alloc(C_STRUCT_SIZE);
      const off: Out<number> = [0];
      const rc = this.tss.marshal[type](ptr, buf, buf.length, off);
      if (rc !== 0) throw new TpmDeviceError('marshal', `cannot marshal ${type} from ESAPI: ${this.tss.RC_Decode(rc)}`, rc);
      return Buffer.from(buf.subarray(0, off[0]));
    } finally {
      this.tss.Esys_Free(ptr);
    }
  }

  private free(...ptrs: CPointer[]): void {
    for (const p of ptrs) if (p !== null && p !== undefined) this.tss.Esys_Free(p);
  }

  private async trFromTpm(handle: number): Promise<number> {
    const out: Out<number> = [0];
    await this.esapi(this.tss.Esys_TR_FromTPMPublic, `TR_FromTPMPublic(0x${handle.toString(16)})`, handle, ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, out);
    return out[0];
  }

  private async trClose(tr: number): Promise<void> {
    await this.esapi(this.tss.Esys_TR_Close, 'TR_Close', [tr]).catch(() => undefined);
  }

  private async flush(tr: number): Promise<void> {
    this.transients.delete(tr);
    await this.esapi(this.tss.Esys_FlushContext, 'FlushContext', tr);
  }

  private async flushTransientObjects(): Promise<number> {
    const more: Out<number> = [0];
    const data: Out<CPointer> = [null];
    await this.esapi(this.tss.Esys_GetCapability, 'GetCapability(handles)', ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, TPM_CAP_HANDLES, TPM_HT_TRANSIENT, 64, more, data);
    const cap = new TpmReader(this.fromC('TPMS_CAPABILITY_DATA', data[0]), 'TPMS_CAPABILITY_DATA');
    cap.u32('capability');
    const count = cap.u32('count');
    for (let i = 0; i < count; i++) {
      const handle = cap.u32('handle');
      const tr = await this.trFromTpm(handle);
      await this.esapi(this.tss.Esys_FlushContext, `FlushContext(0x${handle.toString(16)})`, tr);
    }
    return count;
  }

  /** A TPM handle is absent (TPM_RC_HANDLE for any handle position). */
  private static isMissingHandle(err: unknown): boolean {
    if (!(err instanceof TpmDeviceError) || err.rc === undefined) return false;
    const rc = err.rc & ~TSS2_RC_LAYER_MASK;
    return (rc & 0x80) !== 0 && (rc & 0x3f) === (TPM_RC_HANDLE & 0x3f);
  }

  // ---- EK -------------------------------------------------------------------------------------

  /** The DER EK certificate from NV, or undefined when the TPM has none for this kind. */
  readEkCertificate(kind: EkKind): Promise<Buffer | undefined> {
    return this.serial(async () => {
      const index = EK_NV_INDEX[kind];
      let tr: number;
      try {
        tr = await this.trFromTpm(index);
      } catch (err) {
        if (TpmDevice.isMissingHandle(err)) return undefined;
        throw err;
      }
      try {
        const pub = await this.nvReadPublic(tr);
        return trimDer(await this.nvReadAll(tr, tr, pub.dataSize));
      } finally {
        await this.trClose(tr);
      }
    });
  }

  /**
   * The EK certificate chain the manufacturer stored in the TCG EK chain NV indices
   * (0x01C00100..0x01C001FF): every DER certificate found, index by index in handle order, each
   * index's certificates in stored order. Bounded against a broken TPM: at most 16 indices and
   * 64 KiB in all. An index that cannot be read, or whose bytes are not whole certificates, does not
   * fail the call: it is reported in `problems` (and logged as a warning) and only the whole
   * certificates before the damage are kept, because the chain is optional (a verifier may hold the
   * intermediates itself) and never trusted by itself (trust comes from the verifier's roots).
   */
  readEkCertificateChain(): Promise<EkChain> {
    return this.serial(async () => {
      const chain: EkChain = { certificates: [], problems: [] };
      const problem = (index: number | undefined, message: string): void => {
        chain.problems.push({ ...(index !== undefined ? { index } : {}), message });
        this.logger?.warn({ tcti: this.tctiConf, ...(index !== undefined ? { nvIndex: hex(index) } : {}) }, `EK certificate chain: ${message}`);
      };
      const indices = await this.nvIndicesInRange(EK_CHAIN_NV_FIRST, EK_CHAIN_NV_LAST, EK_CHAIN_MAX_INDICES + 1);
      if (indices.length > EK_CHAIN_MAX_INDICES) {
        problem(undefined, `more than ${EK_CHAIN_MAX_INDICES} chain indices are defined; only the first ${EK_CHAIN_MAX_INDICES} are read`);
        indices.length = EK_CHAIN_MAX_INDICES;
      }
      let total = 0;
      for (const index of indices) {
        let tr: number | undefined;
        try {
          tr = await this.trFromTpm(index);
          const pub = await this.nvReadPublic(tr);
          const why = nvUnreadable(pub.attributes);
          if (why !== undefined) { problem(index, `index ${hex(index)} ${why}; skipped`); continue; }
          if (total + pub.dataSize > EK_CHAIN_MAX_BYTES) {
            problem(index, `index ${hex(index)} (${pub.dataSize} bytes) would take the chain past ${EK_CHAIN_MAX_BYTES} bytes; it and later indices are skipped`);
            break;
          }
          total += pub.dataSize;
          const auth = (pub.attributes & TPMA_NV_AUTHREAD) !== 0 ? tr : ESYS_TR.RH_OWNER;
          const split = splitDerCertificates(await this.nvReadAll(tr, auth, pub.dataSize));
          chain.certificates.push(...split.certificates);
          if (split.problem !== undefined) {
            problem(index, `index ${hex(index)} ${split.problem}; kept the ${split.certificates.length} whole certificate(s) before it`);
          }
        } catch (err) {
          problem(index, `index ${hex(index)} could not be read: ${(err as Error).message}; skipped`);
        } finally {
          if (tr !== undefined) await this.trClose(tr);
        }
      }
      return chain;
    });
  }

  /** Defined handles in [first, last], in ascending order, at most `max` of them. */
  private async nvIndicesInRange(first: number, last: number, max: number): Promise<number[]> {
    const out: number[] = [];
    for (let from = first; out.length < max;) {
      const more: Out<number> = [0];
      const data: Out<CPointer> = [null];
      await this.esapi(this.tss.Esys_GetCapability, 'GetCapability(handles)', ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, TPM_CAP_HANDLES, from, max - out.length, more, data);
      const cap = new TpmReader(this.fromC('TPMS_CAPABILITY_DATA', data[0]), 'TPMS_CAPABILITY_DATA');
      cap.u32('capability');
      const count = cap.u32('count');
      let next = from;
      for (let i = 0; i < count; i++) {
        const h = cap.u32('handle');
        // A TPM answers in ascending order from `from`; anything else ends the walk rather than loop.
        if (h < next || h > last) return out;
        out.push(h);
        next = h + 1;
      }
      if (more[0] === 0 || count === 0 || next > last) return out;
      from = next;
    }
    return out;
  }

  private async nvReadPublic(tr: number): Promise<{ attributes: number; dataSize: number }> {
    const nvPub: Out<CPointer> = [null];
    const nvName: Out<CPointer> = [null];
    await this.esapi(this.tss.Esys_NV_ReadPublic, 'NV_ReadPublic', tr, ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, nvPub, nvName);
    this.free(nvName[0]);
    const r = new TpmReader(this.fromC('TPM2B_NV_PUBLIC', nvPub[0]), 'TPM2B_NV_PUBLIC');
    r.u16('size'); r.u32('nvIndex'); r.u16('nameAlg');
    const attributes = r.u32('attributes');
    r.tpm2b('authPolicy', 64);
    return { attributes, dataSize: r.u16('dataSize') };
  }

  /** The whole contents of an NV index, in chunks, authorised by `auth` (the index or a hierarchy) with an empty password. */
  private async nvReadAll(tr: number, auth: number, size: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let off = 0; off < size; off += NV_CHUNK) {
      const out: Out<CPointer> = [null];
      await this.esapi(this.tss.Esys_NV_Read, 'NV_Read', auth, tr, ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE, Math.min(NV_CHUNK, size - off), off, out);
      const chunk = new TpmReader(this.fromC('TPM2B_MAX_NV_BUFFER', out[0]), 'TPM2B_MAX_NV_BUFFER');
      parts.push(chunk.tpm2b('buffer', 4096));
    }
    return Buffer.concat(parts);
  }

  /** TPM2B_PUBLIC of the EK: the provisioned persistent EK if present, else recreated from the default template. */
  ekPublic(kind: EkKind): Promise<Buffer> {
    const cached = this.ekPublicCache.get(kind);
    if (cached !== undefined) return Promise.resolve(cached);
    return this.serial(async () => {
      const ek = await this.loadEk(kind);
      try {
        const pub = await this.readPublic(ek.tr);
        this.ekPublicCache.set(kind, pub);
        return pub;
      } finally {
        await ek.release();
      }
    });
  }

  private async readPublic(tr: number): Promise<Buffer> {
    const pub: Out<CPointer> = [null];
    const name: Out<CPointer> = [null];
    const qname: Out<CPointer> = [null];
    await this.esapi(this.tss.Esys_ReadPublic, 'ReadPublic', tr, ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, pub, name, qname);
    this.free(name[0], qname[0]);
    return this.fromC('TPM2B_PUBLIC', pub[0]);
  }

  /** The EK as an ESYS_TR: the persistent one, or a transient primary (flushed by release()). */
  private async loadEk(kind: EkKind): Promise<{ tr: number; release: () => Promise<void> }> {
    try {
      const tr = await this.trFromTpm(EK_PERSISTENT_HANDLE[kind]);
      return { tr, release: () => this.trClose(tr) };
    } catch (err) {
      if (!TpmDevice.isMissingHandle(err)) throw err;
    }
    const { tr } = await this.createPrimary(ESYS_TR.RH_ENDORSEMENT, ekTemplate(kind), `CreatePrimary(EK ${kind})`);
    return { tr, release: () => this.flush(tr) };
  }

  private async createPrimary(hierarchy: number, template: Buffer, op: string): Promise<{ tr: number; public: Buffer }> {
    const sensitive = this.toC('TPM2B_SENSITIVE_CREATE', Buffer.from([0, 4, 0, 0, 0, 0]));
    const inPublic = this.toC('TPM2B_PUBLIC', tpm2b(template));
    const outside = this.toC('TPM2B_DATA', Buffer.from([0, 0]));
    const creationPcr = this.toC('TPML_PCR_SELECTION', Buffer.from([0, 0, 0, 0]));
    const tr: Out<number> = [0];
    const out: Out<CPointer> = [null];
    const cData: Out<CPointer> = [null];
    const cHash: Out<CPointer> = [null];
    const cTicket: Out<CPointer> = [null];
    await this.esapi(this.tss.Esys_CreatePrimary, op, hierarchy, ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE,
      sensitive, inPublic, outside, creationPcr, tr, out, cData, cHash, cTicket);
    this.free(cData[0], cHash[0], cTicket[0]);
    this.transients.add(tr[0]);
    return { tr: tr[0], public: this.fromC('TPM2B_PUBLIC', out[0]) };
  }

  // ---- AK -------------------------------------------------------------------------------------

  /**
   * Creates an attestation key: a restricted signing primary key in the endorsement hierarchy
   * (ECC P-256/ECDSA-SHA256 or RSA-2048/RSASSA-SHA256), fresh each time. It stays loaded until
   * releaseAk() or close(); with `persistentHandle` (0x81000000..0x817fffff) it is also made
   * persistent there and survives restarts (load it with loadPersistentAk).
   */
  createAk(alg: AkAlg, opts: { persistentHandle?: number } = {}): Promise<AkHandle> {
    return this.serial(async () => {
      const created = await this.createPrimary(ESYS_TR.RH_ENDORSEMENT, akTemplate(alg, crypto.randomBytes(32)), `CreatePrimary(AK ${alg})`);
      const tpmPublic = parseTpm2bPublic(created.public);
      const base = { alg, public: created.public, name: objectName(tpmPublic), tpmPublic };
      if (opts.persistentHandle === undefined) return { ...base, esysHandle: created.tr };
      try {
        const out: Out<number> = [0];
        await this.esapi(this.tss.Esys_EvictControl, `EvictControl(0x${opts.persistentHandle.toString(16)})`, ESYS_TR.RH_OWNER, created.tr,
          ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE, opts.persistentHandle, out);
        return { ...base, persistentHandle: opts.persistentHandle, esysHandle: out[0] };
      } finally {
        await this.flush(created.tr);
      }
    });
  }

  /** An AK persisted earlier by createAk({ persistentHandle }). */
  loadPersistentAk(handle: number): Promise<AkHandle> {
    return this.serial(async () => {
      const tr = await this.trFromTpm(handle);
      const pub = await this.readPublic(tr);
      const tpmPublic = parseTpm2bPublic(pub);
      const alg: AkAlg = tpmPublic.type === 'rsa' ? 'rsa2048' : 'ecc-p256';
      return { alg, public: pub, name: objectName(tpmPublic), tpmPublic, persistentHandle: handle, esysHandle: tr };
    });
  }

  /** Flushes a transient AK (or forgets a persistent one's ESAPI handle; the key stays in the TPM). */
  releaseAk(ak: AkHandle): Promise<void> {
    return this.serial(async () => {
      if (ak.persistentHandle !== undefined) await this.trClose(ak.esysHandle);
      else if (this.transients.has(ak.esysHandle)) await this.flush(ak.esysHandle);
    });
  }

  /** Removes a persisted AK from the TPM. */
  evictPersistentAk(ak: AkHandle): Promise<void> {
    return this.serial(async () => {
      if (ak.persistentHandle === undefined) throw new TpmDeviceError('not-persistent', 'evictPersistentAk: the AK is not persistent');
      const out: Out<number> = [0];
      await this.esapi(this.tss.Esys_EvictControl, 'EvictControl(evict)', ESYS_TR.RH_OWNER, ak.esysHandle,
        ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE, ak.persistentHandle, out);
    });
  }

  /**
   * TPM2_ActivateCredential: recovers the secret a verifier wrapped with MakeCredential for this
   * EK and AK name. Fails (TPM_RC_INTEGRITY) when the credential was made for another AK or EK.
   */
  activateCredential(ak: AkHandle, ekKind: EkKind, credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer> {
    return this.serial(async () => {
      const blob = this.toC('TPM2B_ID_OBJECT', credentialBlob);
      const secret = this.toC('TPM2B_ENCRYPTED_SECRET', encryptedSecret);
      const ek = await this.loadEk(ekKind);
      let session: number | undefined;
      try {
        let ekPubBytes = this.ekPublicCache.get(ekKind);
        if (ekPubBytes === undefined) {
          ekPubBytes = await this.readPublic(ek.tr);
          this.ekPublicCache.set(ekKind, ekPubBytes);
        }
        const ekPub = parseTpm2bPublic(ekPubBytes);
        let ekAuth: number = ESYS_TR.PASSWORD;
        if (!ekPub.objectAttributes.userWithAuth) {
          // Low-range EKs are usable only through their policy: PolicySecret(TPM_RH_ENDORSEMENT).
          const symDef = this.toC('TPMT_SYM_DEF', Buffer.from([0x00, 0x10]));
          const out: Out<number> = [0];
          await this.esapi(this.tss.Esys_StartAuthSession, 'StartAuthSession(policy)', ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE,
            null, TPM_SE_POLICY, symDef, hashAlgId(ekPub.nameAlg), out);
          session = out[0];
          await this.esapi(this.tss.Esys_PolicySecret, 'PolicySecret(endorsement)', ESYS_TR.RH_ENDORSEMENT, session, ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE,
            null, null, null, 0, null, null);
          ekAuth = session;
        }
        const certInfo: Out<CPointer> = [null];
        await this.esapi(this.tss.Esys_ActivateCredential, 'ActivateCredential', ak.esysHandle, ek.tr, ESYS_TR.PASSWORD, ekAuth, ESYS_TR.NONE, blob, secret, certInfo);
        return new TpmReader(this.fromC('TPM2B_DIGEST', certInfo[0]), 'TPM2B_DIGEST').tpm2b('certInfo', 64);
      } finally {
        if (session !== undefined) await this.esapi(this.tss.Esys_FlushContext, 'FlushContext(session)', session).catch(() => undefined);
        await ek.release();
      }
    });
  }

  // ---- PCRs and quotes ------------------------------------------------------------------------

  /** Reads any PCR selection (in as many PCR_Read calls as needed, 8 PCRs each). */
  pcrRead(selection: PcrSelection[]): Promise<PcrValues> {
    const bad = selectionProblem(selection);
    if (bad !== undefined) return Promise.reject(new TpmDeviceError('bad-argument', `pcrRead: ${bad}`));
    return this.serial(() => this.pcrReadNow(selection));
  }

  private async pcrReadNow(selection: PcrSelection[]): Promise<PcrValues> {
    const result: PcrValues = selection.map((s) => ({ alg: s.alg, values: new Map<number, Buffer>() }));
    const pending = selection.flatMap((s) => s.pcrs.map((pcr) => ({ alg: s.alg, pcr })));
    for (let i = 0; i < pending.length; i += PCRS_PER_READ) {
      const chunk = pending.slice(i, i + PCRS_PER_READ);
      const sel: PcrSelection[] = [];
      for (const { alg, pcr } of chunk) {
        const bank = sel.find((s) => s.alg === alg);
        if (bank === undefined) sel.push({ alg, pcrs: [pcr] });
        else bank.pcrs.push(pcr);
      }
      const counter: Out<number> = [0];
      const selOut: Out<CPointer> = [null];
      const values: Out<CPointer> = [null];
      await this.esapi(this.tss.Esys_PCR_Read, 'PCR_Read', ESYS_TR.NONE, ESYS_TR.NONE, ESYS_TR.NONE,
        this.toC('TPML_PCR_SELECTION', marshalPcrSelectionList(sel)), counter, selOut, values);
      const got = readPcrSelectionList(new TpmReader(this.fromC('TPML_PCR_SELECTION', selOut[0]), 'TPML_PCR_SELECTION'));
      const vr = new TpmReader(this.fromC('TPML_DIGEST', values[0]), 'TPML_DIGEST');
      const n = vr.u32('count');
      const digests: Buffer[] = [];
      for (let k = 0; k < n; k++) digests.push(vr.tpm2b('digest', 64));
      let k = 0;
      for (const s of got) {
        for (const pcr of s.pcrs) {
          const d = digests[k++];
          if (d === undefined) throw new TpmDeviceError('pcr-read', 'PCR_Read returned fewer digests than PCRs selected');
          result.find((b) => b.alg === s.alg)?.values.set(pcr, d);
        }
      }
    }
    for (const s of selection) {
      const bank = result.find((b) => b.alg === s.alg);
      for (const pcr of s.pcrs) {
        if (!bank?.values.has(pcr)) throw new TpmDeviceError('pcr-bank-inactive', `PCR ${s.alg}:${pcr} was not returned: is the ${s.alg} bank allocated on this TPM?`);
      }
    }
    return result;
  }

  /**
   * TPM2_Quote over `selection` with `qualifyingData` (at most 64 bytes), signed with the AK's own
   * scheme. Also returns the PCR values; they are read first and checked against the quote's PCR
   * digest, and re-read if a PCR changed in between.
   */
  quote(ak: AkHandle, selection: PcrSelection[], qualifyingData: Buffer): Promise<QuoteResult> {
    const bad = quoteArgumentProblem(selection, qualifyingData);
    if (bad !== undefined) return Promise.reject(new TpmDeviceError('bad-argument', `quote: ${bad}`));
    return this.serial(async () => {
      for (let attempt = 0; ; attempt++) {
        const pcrs = await this.pcrReadNow(selection);
        const { attest, signature } = await this.quoteCommand(ak, selection, qualifyingData);
        const parsed = parseTpmsAttest(attest);
        const s = parseTpmtSignature(signature);
        const hash: HashAlg = s.sigAlg === 'null' ? 'sha256' : s.hashAlg;
        if (parsed.quote !== undefined && pcrDigest(parsed.quote.pcrSelection, pcrs, hash).equals(parsed.quote.pcrDigest)) {
          return { attest, signature, pcrs };
        }
        if (attempt >= 4) throw new TpmDeviceError('pcr-race', 'quote: PCRs kept changing between PCR_Read and Quote');
        this.logger?.debug({ attempt }, 'a quoted PCR changed between PCR_Read and Quote; quoting again');
      }
    });
  }

  /**
   * TPM2_Quote without reading the PCRs first: attest and signature only, for a verifier that checks
   * the signature and qualifyingData and not the PCR values (the latency probe, where one TPM command
   * instead of two is a shorter round trip and so a smaller radius).
   */
  quoteBinding(ak: AkHandle, selection: PcrSelection[], qualifyingData: Buffer): Promise<{ attest: Buffer; signature: Buffer }> {
    const bad = quoteArgumentProblem(selection, qualifyingData);
    if (bad !== undefined) return Promise.reject(new TpmDeviceError('bad-argument', `quote: ${bad}`));
    return this.serial(() => this.quoteCommand(ak, selection, qualifyingData));
  }

  /** One Esys_Quote (inside serial()): the TPMS_ATTEST bytes and the TPMT_SIGNATURE. */
  private async quoteCommand(ak: AkHandle, selection: PcrSelection[], qualifyingData: Buffer): Promise<{ attest: Buffer; signature: Buffer }> {
    const qd = this.toC('TPM2B_DATA', tpm2b(qualifyingData));
    const scheme = this.toC('TPMT_SIG_SCHEME', Buffer.from([0x00, TPM_ALG.NULL]));
    const sel = this.toC('TPML_PCR_SELECTION', marshalPcrSelectionList(selection));
    const quoted: Out<CPointer> = [null];
    const sig: Out<CPointer> = [null];
    await this.esapi(this.tss.Esys_Quote, 'Quote', ak.esysHandle, ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE, qd, scheme, sel, quoted, sig);
    let attest: Buffer;
    try {
      attest = new TpmReader(this.fromC('TPM2B_ATTEST', quoted[0]), 'TPM2B_ATTEST').tpm2b('attestationData', 4096);
    } catch (err) {
      this.free(sig[0]);
      throw err;
    }
    return { attest, signature: this.fromC('TPMT_SIGNATURE', sig[0]) };
  }

  /** TPM2_PCR_Extend of one bank of `pcr` with `digest`. */
  pcrExtend(pcr: number, alg: HashAlg, digest: Buffer): Promise<void> {
    if (digest.length !== digestSize(alg)) return Promise.reject(new TpmDeviceError('bad-argument', `pcrExtend: a ${alg} digest is ${digestSize(alg)} bytes, got ${digest.length}`));
    if (!Number.isInteger(pcr) || pcr < 0 || pcr > 23) return Promise.reject(new TpmDeviceError('bad-argument', `pcrExtend: PCR ${pcr} is out of range 0..23`));
    return this.serial(async () => {
      const values = this.toC('TPML_DIGEST_VALUES', new TpmWriter().u32(1).u16(hashAlgId(alg)).bytes(digest).finish());
      await this.esapi(this.tss.Esys_PCR_Extend, `PCR_Extend(${pcr})`, ESYS_TR.PCR0 + pcr, ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE, values);
    });
  }

  /** TPM2_PCR_Reset (only resettable PCRs, e.g. 16 and 23, at locality 0). */
  pcrReset(pcr: number): Promise<void> {
    if (!Number.isInteger(pcr) || pcr < 0 || pcr > 23) return Promise.reject(new TpmDeviceError('bad-argument', `pcrReset: PCR ${pcr} is out of range 0..23`));
    return this.serial(() => this.esapi(this.tss.Esys_PCR_Reset, `PCR_Reset(${pcr})`, ESYS_TR.PCR0 + pcr, ESYS_TR.PASSWORD, ESYS_TR.NONE, ESYS_TR.NONE));
  }

  /**
   * The binary measured-boot event log (TCG PC Client format) when the kernel exposes it, else
   * undefined (no TPM, swtpm, or not readable).
   */
  readEventLog(path: string = DEFAULT_EVENT_LOG): Buffer | undefined {
    try {
      return fs.readFileSync(path);
    } catch {
      return undefined;
    }
  }

  /** Flushes the transient objects this device created and releases the TPM connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.serial(async () => {
      for (const tr of [...this.transients]) await this.flush(tr).catch(() => undefined);
    }).catch(() => undefined);
    this.closed = true;
    this.tss.Esys_Finalize(this.esys);
    this.tss.TctiLdr_Finalize(this.tcti);
  }
}

/** Why a PCR selection cannot be sent to a TPM, or undefined when it can. */
/** Why a quote's arguments are refused before any TPM command, or undefined. */
function quoteArgumentProblem(selection: PcrSelection[], qualifyingData: Buffer): string | undefined {
  if (qualifyingData.length > 64) return `qualifyingData is ${qualifyingData.length} bytes; at most 64 (hash it first)`;
  return selectionProblem(selection);
}

function selectionProblem(selection: PcrSelection[]): string | undefined {
  if (selection.length === 0) return 'the PCR selection is empty';
  const seen = new Set<string>();
  for (const s of selection) {
    if (!isHashAlg(s.alg)) return `PCR bank ${String(s.alg)} is not one of sha1, sha256, sha384, sha512`;
    if (seen.has(s.alg)) return `PCR bank ${s.alg} is selected twice`;
    seen.add(s.alg);
    if (s.pcrs.length === 0) return `no PCRs selected in bank ${s.alg}`;
    for (const p of s.pcrs) if (!Number.isInteger(p) || p < 0 || p > 23) return `PCR ${String(p)} is out of range 0..23`;
    if (new Set(s.pcrs).size !== s.pcrs.length) return `a PCR is selected twice in bank ${s.alg}`;
  }
  return undefined;
}

function hex(n: number): string { return `0x${n.toString(16).padStart(8, '0')}`; }

/**
 * Why an NV index cannot be read here with an empty password, or undefined. Chain indices are
 * ordinary indices readable with their own (empty) auth or the owner's; anything else is skipped.
 */
function nvUnreadable(attributes: number): string | undefined {
  const type = (attributes & TPMA_NV_TPM_NT_MASK) >>> TPMA_NV_TPM_NT_SHIFT;
  if (type !== 0) return `is not an ordinary index (TPM_NT ${type})`;
  if ((attributes & TPMA_NV_WRITTEN) === 0) return 'has never been written';
  if ((attributes & TPMA_NV_READLOCKED) !== 0) return 'is read-locked';
  if ((attributes & (TPMA_NV_AUTHREAD | TPMA_NV_OWNERREAD)) === 0) return 'is readable neither with its own auth nor the owner\'s';
  return undefined;
}

/** NV areas can be larger than the certificate in them (padding): keep exactly the DER element. */
function trimDer(buf: Buffer): Buffer {
  if (buf.length < 2 || buf[0] !== 0x30) return buf;
  const l = buf[1] as number;
  if (l < 0x80) return buf.subarray(0, Math.min(buf.length, 2 + l));
  const n = l & 0x7f;
  if (n < 1 || n > 4 || buf.length < 2 + n) return buf;
  let len = 0;
  for (let i = 0; i < n; i++) len = len * 256 + (buf[2 + i] as number);
  return buf.subarray(0, Math.min(buf.length, 2 + n + len));
}
