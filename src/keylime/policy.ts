/**
 * Keylime's TPM PCR policy (`tpm_policy`): a JSON object mapping PCR index to the list of allowed
 * hex digests, plus `"mask"`, the bitmask of PCRs the verifier asks the node to quote.
 */
import { z } from 'zod';
import { KeylimeError } from './errors.js';

/** PCR index (0..23) → allowed values (hex digests of the quoted bank). */
export type TpmPolicy = Readonly<Record<number, readonly string[]>>;

const MAX_PCR = 23;

/** `0x...` bitmask with one bit per PCR index. */
export function pcrMask(indices: Iterable<number>): string {
  let mask = 0;
  for (const i of indices) {
    if (!Number.isInteger(i) || i < 0 || i > MAX_PCR) throw new KeylimeError('KEYLIME_BAD_REQUEST', `PCR index ${i} out of range 0..${MAX_PCR}`);
    mask |= 1 << i;
  }
  return `0x${mask.toString(16)}`;
}

/** PCR indices of a `0x`-prefixed (or bare) hex mask, ascending; strict: 1..6 hex digits, PCRs 0..23. */
export function pcrIndicesFromMask(mask: string): number[] {
  const m = /^(?:0[xX])?([0-9a-fA-F]{1,6})$/.exec(mask);
  if (m === null) throw new KeylimeError('KEYLIME_BAD_REQUEST', `PCR mask ${JSON.stringify(mask.slice(0, 32))} is not a hex bitmask of PCRs 0..${MAX_PCR}`);
  const value = parseInt(m[1] as string, 16);
  const out: number[] = [];
  for (let i = 0; i <= MAX_PCR; i++) if ((value >> i) & 1) out.push(i);
  return out;
}

/** The `tpm_policy` string Keylime expects: allowed values per PCR and the mask covering them. */
export function tpmPolicyJson(policy: TpmPolicy, extraMaskPcrs: Iterable<number> = []): string {
  const out: Record<string, string[] | string> = {};
  const indices: number[] = [];
  for (const [k, values] of Object.entries(policy)) {
    const idx = Number(k);
    if (!/^\d+$/.test(k) || idx > MAX_PCR) throw new KeylimeError('KEYLIME_BAD_REQUEST', `TPM policy key ${JSON.stringify(k)} is not a PCR index 0..${MAX_PCR}`);
    if (values.length === 0) throw new KeylimeError('KEYLIME_BAD_REQUEST', `TPM policy for PCR ${idx} allows no value: every quote would fail`);
    for (const v of values) {
      if (!/^[0-9a-fA-F]+$/.test(v) || v.length % 2 !== 0) throw new KeylimeError('KEYLIME_BAD_REQUEST', `TPM policy value for PCR ${idx} is not a hex digest`);
    }
    out[String(idx)] = values.map((v) => v.toLowerCase());
    indices.push(idx);
  }
  out.mask = pcrMask([...indices, ...extraMaskPcrs]);
  return JSON.stringify(out);
}

const policySchema = z.record(z.string(), z.union([z.string(), z.array(z.string().regex(/^[0-9a-fA-F]+$/)).max(64)]));

export interface ParsedTpmPolicy {
  /** PCRs the node must quote. */
  mask: number[];
  /** Allowed values (lower-case hex) per PCR that has an allowlist. */
  allowed: Map<number, string[]>;
}

/** Parses a `tpm_policy` string (as a verifier would). */
export function parseTpmPolicyJson(text: string): ParsedTpmPolicy {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new KeylimeError('KEYLIME_BAD_REQUEST', 'tpm_policy is not JSON');
  }
  const parsed = policySchema.safeParse(raw);
  if (!parsed.success) throw new KeylimeError('KEYLIME_BAD_REQUEST', `tpm_policy has the wrong shape: ${z.prettifyError(parsed.error)}`);
  const mask = parsed.data.mask;
  if (typeof mask !== 'string') throw new KeylimeError('KEYLIME_BAD_REQUEST', 'tpm_policy must contain "mask" (a hex string)');
  const allowed = new Map<number, string[]>();
  for (const [k, v] of Object.entries(parsed.data)) {
    if (k === 'mask') continue;
    if (!/^\d+$/.test(k) || Number(k) > MAX_PCR || !Array.isArray(v)) throw new KeylimeError('KEYLIME_BAD_REQUEST', `tpm_policy key ${JSON.stringify(k)} is not a PCR index with a list of values`);
    allowed.set(Number(k), v.map((x) => x.toLowerCase()));
  }
  const maskPcrs = pcrIndicesFromMask(mask);
  for (const idx of allowed.keys()) {
    if (!maskPcrs.includes(idx)) throw new KeylimeError('KEYLIME_BAD_REQUEST', `tpm_policy restricts PCR ${idx} but its mask does not select it`);
  }
  return { mask: maskPcrs, allowed };
}
