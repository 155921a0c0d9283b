/**
 * FFI declarations for tpm2-tss (libtss2-esys, -mu, -rc, -tctildr) through koffi.
 *
 * TPM structures cross this boundary only in TPM wire format: callers marshal inputs themselves and
 * turn them into C structures with Tss2_MU_*_Unmarshal, and turn ESAPI's outputs back into wire
 * bytes with Tss2_MU_*_Marshal (then Esys_Free them). That keeps every C struct layout out of this
 * file: a C structure is just a buffer large enough for it.
 */
import koffi from 'koffi';

/** libtss2 could not be loaded; the message names the Debian package to install. */
export class Tss2LibraryError extends Error {
  readonly code = 'tss2-library-missing';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Tss2LibraryError';
  }
}

const LIBS = {
  esys: { file: 'libtss2-esys.so.0', pkg: 'libtss2-esys-3.0.2-0' },
  mu: { file: 'libtss2-mu.so.0', pkg: 'libtss2-mu0' },
  rc: { file: 'libtss2-rc.so.0', pkg: 'libtss2-rc0' },
  tctildr: { file: 'libtss2-tctildr.so.0', pkg: 'libtss2-tctildr0' },
} as const;

/** A C pointer as koffi hands it back (opaque). */
export type CPointer = unknown;
/** An out-parameter cell: koffi writes the result into element 0. */
export type Out<T> = [T];

/** An ESAPI function: callable synchronously or, via .async, on a koffi worker thread. */
export interface AsyncFn {
  (...args: unknown[]): number;
  async(...args: unknown[]): void;
}

type MarshalFn = (src: CPointer, buf: Buffer, size: number, offset: Out<number>) => number;
type UnmarshalFn = (buf: Buffer, size: number, offset: Out<number>, dest: Buffer) => number;

export interface Tss2 {
  TctiLdr_Initialize(conf: string, out: Out<CPointer>): number;
  TctiLdr_Finalize(ctx: Out<CPointer>): void;
  Esys_Initialize(out: Out<CPointer>, tcti: CPointer, abi: null): number;
  Esys_Finalize(ctx: Out<CPointer>): void;
  Esys_Free(p: CPointer): void;
  RC_Decode(rc: number): string;
  Esys_GetCapability: AsyncFn;
  Esys_TR_FromTPMPublic: AsyncFn;
  Esys_TR_Close: AsyncFn;
  Esys_TR_SetAuth: AsyncFn;
  Esys_FlushContext: AsyncFn;
  Esys_NV_ReadPublic: AsyncFn;
  Esys_NV_Read: AsyncFn;
  Esys_CreatePrimary: AsyncFn;
  Esys_ReadPublic: AsyncFn;
  Esys_EvictControl: AsyncFn;
  Esys_StartAuthSession: AsyncFn;
  Esys_PolicySecret: AsyncFn;
  Esys_ActivateCredential: AsyncFn;
  Esys_PCR_Read: AsyncFn;
  Esys_Quote: AsyncFn;
  Esys_PCR_Extend: AsyncFn;
  Esys_PCR_Reset: AsyncFn;
  marshal: Record<MarshalType, MarshalFn>;
  unmarshal: Record<UnmarshalType, UnmarshalFn>;
}

const MARSHAL_TYPES = [
  'TPM2B_PUBLIC', 'TPM2B_NAME', 'TPM2B_MAX_NV_BUFFER', 'TPM2B_NV_PUBLIC', 'TPM2B_DIGEST', 'TPM2B_ATTEST',
  'TPMT_SIGNATURE', 'TPML_DIGEST', 'TPML_PCR_SELECTION', 'TPMS_CAPABILITY_DATA',
] as const;
const UNMARSHAL_TYPES = [
  'TPM2B_PUBLIC', 'TPM2B_SENSITIVE_CREATE', 'TPM2B_DATA', 'TPML_PCR_SELECTION', 'TPMT_SIG_SCHEME', 'TPM2B_ID_OBJECT',
  'TPM2B_ENCRYPTED_SECRET', 'TPML_DIGEST_VALUES', 'TPMT_SYM_DEF', 'TPM2B_AUTH',
] as const;
export type MarshalType = (typeof MARSHAL_TYPES)[number];
export type UnmarshalType = (typeof UNMARSHAL_TYPES)[number];

let loaded: Tss2 | undefined;

function open(which: keyof typeof LIBS): ReturnType<typeof koffi.load> {
  return loadLibrary(LIBS[which].file, LIBS[which].pkg);
}

/** dlopen `file`, or throw Tss2LibraryError telling the user which Debian package provides it. */
export function loadLibrary(file: string, pkg: string): ReturnType<typeof koffi.load> {
  try {
    return koffi.load(file);
  } catch (err) {
    throw new Tss2LibraryError(`cannot load ${file} (${(err as Error).message}); install it with: apt-get install ${pkg}`, { cause: err });
  }
}

/** Loads the tpm2-tss libraries once; throws Tss2LibraryError naming the package when one is missing. */
export function loadTss2(): Tss2 {
  if (loaded !== undefined) return loaded;
  const esys = open('esys');
  const mu = open('mu');
  const rc = open('rc');
  const tctildr = open('tctildr');
  // ESYS_TR, TSS2_RC, TPM handles: uint32_t. Session handles sh1..sh3 are ESYS_TRs.
  const SH = 'uint32_t sh1, uint32_t sh2, uint32_t sh3';
  const f = (sig: string): AsyncFn => esys.func(sig) as unknown as AsyncFn;
  const marshal = {} as Record<MarshalType, MarshalFn>;
  for (const t of MARSHAL_TYPES) marshal[t] = mu.func(`uint32_t Tss2_MU_${t}_Marshal(void *src, _Out_ uint8_t *buffer, size_t size, _Inout_ size_t *offset)`) as unknown as MarshalFn;
  const unmarshal = {} as Record<UnmarshalType, UnmarshalFn>;
  for (const t of UNMARSHAL_TYPES) unmarshal[t] = mu.func(`uint32_t Tss2_MU_${t}_Unmarshal(const uint8_t *buffer, size_t size, _Inout_ size_t *offset, void *dest)`) as unknown as UnmarshalFn;
  loaded = {
    TctiLdr_Initialize: tctildr.func('uint32_t Tss2_TctiLdr_Initialize(const char *conf, _Out_ void **ctx)') as unknown as Tss2['TctiLdr_Initialize'],
    TctiLdr_Finalize: tctildr.func('void Tss2_TctiLdr_Finalize(_Inout_ void **ctx)') as unknown as Tss2['TctiLdr_Finalize'],
    Esys_Initialize: esys.func('uint32_t Esys_Initialize(_Out_ void **ctx, void *tcti, void *abi)') as unknown as Tss2['Esys_Initialize'],
    Esys_Finalize: esys.func('void Esys_Finalize(_Inout_ void **ctx)') as unknown as Tss2['Esys_Finalize'],
    Esys_Free: esys.func('void Esys_Free(void *p)') as unknown as Tss2['Esys_Free'],
    RC_Decode: rc.func('const char *Tss2_RC_Decode(uint32_t rc)') as unknown as Tss2['RC_Decode'],
    Esys_GetCapability: f(`uint32_t Esys_GetCapability(void *ctx, ${SH}, uint32_t capability, uint32_t property, uint32_t count, _Out_ uint8_t *moreData, _Out_ void **data)`),
    Esys_TR_FromTPMPublic: f(`uint32_t Esys_TR_FromTPMPublic(void *ctx, uint32_t tpmHandle, ${SH}, _Out_ uint32_t *object)`),
    Esys_TR_Close: f('uint32_t Esys_TR_Close(void *ctx, _Inout_ uint32_t *object)'),
    Esys_TR_SetAuth: f('uint32_t Esys_TR_SetAuth(void *ctx, uint32_t handle, void *auth)'),
    Esys_FlushContext: f('uint32_t Esys_FlushContext(void *ctx, uint32_t handle)'),
    Esys_NV_ReadPublic: f(`uint32_t Esys_NV_ReadPublic(void *ctx, uint32_t nvIndex, ${SH}, _Out_ void **nvPublic, _Out_ void **nvName)`),
    Esys_NV_Read: f(`uint32_t Esys_NV_Read(void *ctx, uint32_t authHandle, uint32_t nvIndex, ${SH}, uint16_t size, uint16_t offset, _Out_ void **data)`),
    Esys_CreatePrimary: f(`uint32_t Esys_CreatePrimary(void *ctx, uint32_t primaryHandle, ${SH}, void *inSensitive, void *inPublic, void *outsideInfo, void *creationPCR, _Out_ uint32_t *objectHandle, _Out_ void **outPublic, _Out_ void **creationData, _Out_ void **creationHash, _Out_ void **creationTicket)`),
    Esys_ReadPublic: f(`uint32_t Esys_ReadPublic(void *ctx, uint32_t objectHandle, ${SH}, _Out_ void **outPublic, _Out_ void **name, _Out_ void **qualifiedName)`),
    Esys_EvictControl: f(`uint32_t Esys_EvictControl(void *ctx, uint32_t auth, uint32_t objectHandle, ${SH}, uint32_t persistentHandle, _Out_ uint32_t *newObjectHandle)`),
    Esys_StartAuthSession: f(`uint32_t Esys_StartAuthSession(void *ctx, uint32_t tpmKey, uint32_t bind, ${SH}, void *nonceCaller, uint8_t sessionType, void *symmetric, uint16_t authHash, _Out_ uint32_t *sessionHandle)`),
    Esys_PolicySecret: f(`uint32_t Esys_PolicySecret(void *ctx, uint32_t authHandle, uint32_t policySession, ${SH}, void *nonceTPM, void *cpHashA, void *policyRef, int32_t expiration, _Out_ void **timeout, _Out_ void **policyTicket)`),
    Esys_ActivateCredential: f(`uint32_t Esys_ActivateCredential(void *ctx, uint32_t activateHandle, uint32_t keyHandle, ${SH}, void *credentialBlob, void *secret, _Out_ void **certInfo)`),
    Esys_PCR_Read: f(`uint32_t Esys_PCR_Read(void *ctx, ${SH}, void *selectionIn, _Out_ uint32_t *updateCounter, _Out_ void **selectionOut, _Out_ void **values)`),
    Esys_Quote: f(`uint32_t Esys_Quote(void *ctx, uint32_t signHandle, ${SH}, void *qualifyingData, void *inScheme, void *pcrSelect, _Out_ void **quoted, _Out_ void **signature)`),
    Esys_PCR_Extend: f(`uint32_t Esys_PCR_Extend(void *ctx, uint32_t pcrHandle, ${SH}, void *digests)`),
    Esys_PCR_Reset: f(`uint32_t Esys_PCR_Reset(void *ctx, uint32_t pcrHandle, ${SH})`),
    marshal,
    unmarshal,
  };
  return loaded;
}

/** ESYS_TR values with a fixed meaning (tss2_esys.h). */
export const ESYS_TR = {
  NONE: 0xfff,
  PASSWORD: 0x0ff,
  RH_OWNER: 0x101,
  RH_NULL: 0x109,
  RH_ENDORSEMENT: 0x10b,
  RH_PLATFORM: 0x10c,
  /** ESYS_TR_PCR0 + n addresses PCR n. */
  PCR0: 0x000,
} as const;
