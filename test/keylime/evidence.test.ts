import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KeylimeVerifierClient } from '../../src/keylime/client.js';
import { KeylimeError, KeylimeEvidenceRejectedError } from '../../src/keylime/errors.js';
import { keylimeNonce, verifyEvidence, type EvidenceInput } from '../../src/keylime/evidence.js';
import { decodeQuoteString, encodeQuoteString } from '../../src/keylime/quote-string.js';
import { parseTpm2bPublic } from '../../src/tpm/index.js';
import type { TestKeylimeVerifier } from '../doubles/keylime-verifier.js';
import { checkQuote } from '../doubles/keylime/checks.js';
import { ProcessGroup } from '../support/proc.js';
import { tempDir } from '../support/tmp.js';
import { clientFor, createPki, startVerifier, type KeylimePki } from './helpers/fixture.js';
import { startTpm, type TestTpm } from './helpers/tpm.js';

const group = new ProcessGroup();
let tmp: { dir: string; cleanup: () => void };
let pki: KeylimePki;
let verifier: TestKeylimeVerifier;
let client: KeylimeVerifierClient;
let tpm: TestTpm;
const nonce = 'Zr4nd0mN0nce0000001';
let quote: string;
let pcr0: string;

beforeAll(async () => {
  tmp = tempDir('terroir-keylime-evidence-');
  pki = await createPki(tmp.dir);
  [verifier, tpm] = await Promise.all([startVerifier(pki), startTpm(group, tmp.dir)]);
  client = clientFor(pki, verifier);
  await tpm.quoter.pcrExtend(7, crypto.createHash('sha256').update('secure boot state').digest());
  const q = await tpm.quoter.quote([0, 7, 16], Buffer.from(nonce));
  quote = encodeQuoteString(q);
  pcr0 = Buffer.from(q.pcrs[0]?.values.get(0) ?? []).toString('hex');
});
afterAll(async () => {
  await client.close();
  await verifier.close();
  await group.stopAll();
  tmp.cleanup();
});

function input(over: Partial<EvidenceInput> = {}): EvidenceInput {
  return { quote, nonce, akPublic: tpm.akPublic, ekPublic: tpm.ekPublic, hashAlg: 'sha256', tpmPolicy: { 0: [pcr0] }, ...over };
}

async function rejection(p: Promise<unknown>): Promise<KeylimeEvidenceRejectedError> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(KeylimeEvidenceRejectedError);
  return err as KeylimeEvidenceRejectedError;
}

describe('one-shot verification (POST /verify/evidence) of swtpm quotes', () => {
  it('accepts a good quote and sends exactly the Keylime body keys', async () => {
    const verdict = await verifyEvidence(client, input({ mbLog: Buffer.from('eventlog'), mbPolicy: '{}', runtimePolicy: '' }));
    expect(verdict).toEqual({ valid: true, failures: [], apiVersion: '2.6' });
    const body = verifier.lastEvidenceBody as { type: string; data: Record<string, unknown> };
    expect(body.type).toBe('tpm');
    expect(Object.keys(body.data).sort()).toEqual(['hash_alg', 'mb_log', 'mb_policy', 'nonce', 'quote', 'runtime_policy', 'tpm_ak', 'tpm_ek', 'tpm_policy'].sort());
    expect(body.data.mb_log).toBe(Buffer.from('eventlog').toString('base64'));
    expect(JSON.parse(body.data.tpm_policy as string)).toEqual({ 0: [pcr0], mask: '0x1' });
  });

  it('accepts a quote over a binary challenge passed as keylimeNonce (hex as ASCII qualifyingData)', async () => {
    const challenge = crypto.createHash('sha256').update('terroir-unified-identity-v1').update('server nonce').digest();
    const n = keylimeNonce(challenge);
    expect(n).toHaveLength(64);
    const q = encodeQuoteString(await tpm.quoter.quote([0], Buffer.from(n, 'ascii')));
    await expect(verifyEvidence(client, input({ quote: q, nonce: n }))).resolves.toBeDefined();
    expect(() => keylimeNonce(Buffer.alloc(33))).toThrow(/1\.\.32/);
  });

  it('a PCR outside the allowlist is refused with the failing PCR named', async () => {
    const err = await rejection(verifyEvidence(client, input({ tpmPolicy: { 0: [pcr0], 7: ['00'.repeat(32)] } })));
    expect(err.failures.map((f) => f.type)).toEqual(['pcr_validation.invalid_pcr_7']);
    expect(err.code).toBe('KEYLIME_EVIDENCE_REJECTED');
    expect(err.message).toMatch(/invalid_pcr_7/);
  });

  it('a PCR the policy needs but the quote lacks is refused', async () => {
    const err = await rejection(verifyEvidence(client, input({ tpmPolicy: { 0: [pcr0], 4: ['00'.repeat(32)] } })));
    expect(err.failures.map((f) => f.type)).toContain('pcr_validation.missing_pcrs');
    expect(err.message).toMatch(/"data":\[4\]/);
  });

  it('another nonce is refused (replay)', async () => {
    const err = await rejection(verifyEvidence(client, input({ nonce: 'AnotherNonce123' })));
    expect(err.failures[0]?.type).toBe('qoute_validation.quote_validation');
    expect(err.failures[0]?.context).toMatch(/extra-data-mismatch/);
  });

  it('a PCR value changed in the blob is refused (digest mismatch)', async () => {
    const q = decodeQuoteString(quote);
    const values = new Map(q.pcrs[0]?.values);
    values.set(7, Buffer.alloc(32, 0xaa));
    const forged = encodeQuoteString({ ...q, pcrs: [{ alg: 'sha256', values }] });
    const err = await rejection(verifyEvidence(client, input({ quote: forged, tpmPolicy: { 7: ['aa'.repeat(32)] } })));
    expect(err.failures[0]?.type).toBe('qoute_validation.quote_validation');
    expect(err.failures[0]?.context).toMatch(/pcr-digest-mismatch/);
  });

  it('a quote checked with another AK is refused (signature)', async () => {
    const dir = path.join(tmp.dir, 'other-tpm');
    fs.mkdirSync(dir);
    const other = await startTpm(group, dir);
    const err = await rejection(verifyEvidence(client, input({ akPublic: other.akPublic })));
    expect(err.failures[0]?.type).toBe('qoute_validation.quote_validation');
    expect(err.failures[0]?.context).toMatch(/bad-signature/);
  });

  it('a hash algorithm other than the quoted bank is refused', async () => {
    const err = await rejection(verifyEvidence(client, input({ hashAlg: 'sha1' })));
    expect(err.failures[0]?.type).toBe('qoute_validation.quote_validation');
    expect(err.failures[0]?.context).toMatch(/expected to use sha1 but used sha256/);
  });

  it('malformed input is refused before anything is sent', async () => {
    const before = verifier.counters.evidenceChecks;
    await expect(verifyEvidence(client, input({ nonce: 'has space' }))).rejects.toThrow(KeylimeError);
    await expect(verifyEvidence(client, input({ nonce: 'x'.repeat(65) }))).rejects.toThrow(/1\.\.64/);
    await expect(verifyEvidence(client, input({ quote: quote.slice(1) }))).rejects.toThrow(/start with "r"/);
    await expect(verifyEvidence(client, input({ tpmPolicy: { 0: [] } }))).rejects.toThrow(/allows no value/);
    await expect(verifyEvidence(client, input({ akPublic: Buffer.from('not a key') }))).rejects.toThrow(/akPublic is not a TPM2B_PUBLIC/);
    await expect(verifyEvidence(client, input({ ekPublic: Buffer.alloc(3) }))).rejects.toThrow(/ekPublic is not a TPM2B_PUBLIC/);
    expect(verifier.counters.evidenceChecks).toBe(before);
  });

  it('a verifier answering valid:true together with failures is not trusted', async () => {
    verifier.fault = { mode: 'contradiction' };
    try {
      const err = await rejection(verifyEvidence(client, input()));
      expect(err.failures[0]?.type).toBe('pcr_validation.invalid_pcr_0');
      verifier.fault = { mode: 'wrong-shape' };
      await expect(verifyEvidence(client, input())).rejects.toMatchObject({ code: 'KEYLIME_MALFORMED' });
    } finally {
      verifier.fault = { mode: 'none' };
    }
  });
});

describe('the test verifier is honest in pull mode (checks.ts)', () => {
  const nk = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;

  async function boundQuote(n: string, pem: string): Promise<string> {
    await tpm.quoter.pcrReset(16);
    await tpm.quoter.pcrExtend(16, crypto.createHash('sha256').update(pem).digest());
    return encodeQuoteString(await tpm.quoter.quote([0, 16], Buffer.from(n)));
  }

  it('accepts PCR16 bound to the node key, refuses another key', async () => {
    const q = await boundQuote('bind1', nk);
    const base = { quote: q, nonce: 'bind1', hashAlg: 'sha256', akPublic: parseTpm2bPublic(tpm.akPublic), policy: { mask: [0, 16], allowed: new Map() } };
    expect(checkQuote({ ...base, pubkeyPem: nk }).failures).toEqual([]);
    const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    expect(checkQuote({ ...base, pubkeyPem: other }).failures.map((f) => f.type)).toEqual(['pcr_validation.invalid_pcr_16']);
  });

  it('refuses a TPM clock that did not move forward', async () => {
    const q = await boundQuote('clock1', nk);
    const base = { quote: q, nonce: 'clock1', hashAlg: 'sha256', akPublic: parseTpm2bPublic(tpm.akPublic), policy: { mask: [0], allowed: new Map() }, pubkeyPem: nk };
    const first = checkQuote(base);
    expect(first.failures).toEqual([]);
    const clock = first.info?.clockInfo;
    if (clock === undefined) throw new Error('no clock info');
    expect(checkQuote({ ...base, previousClock: { ...clock, clock: clock.clock - 1n } }).failures).toEqual([]);
    expect(checkQuote({ ...base, previousClock: clock }).failures.map((f) => f.type)).toEqual(['qoute_validation.clock_not_increasing']);
    expect(checkQuote({ ...base, previousClock: { ...clock, resetCount: clock.resetCount + 1 } }).failures.map((f) => f.type)).toEqual(['qoute_validation.clock_counters_decreased']);
  });
});
