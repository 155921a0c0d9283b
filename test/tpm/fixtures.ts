import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HashAlg, PcrValues } from '../../src/tpm/index.js';
import { pemBundleToDer } from '../support/swtpm.js';

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../data/tpm');

export function fixture(name: string): Buffer {
  return fs.readFileSync(path.join(dir, name));
}

export function manufacturerCas(): Buffer[] {
  return pemBundleToDer(fixture('manufacturer-ca.pem').toString('utf8'));
}

/** A real quote from swtpm: AK public, attest, signature, PCR values, nonce. */
export function quoteFixture(alg: 'ecc-p256' | 'rsa2048'): { akPub: Buffer; attest: Buffer; signature: Buffer; pcrs: PcrValues; nonce: Buffer } {
  const j = JSON.parse(fixture(`quote-${alg}.json`).toString('utf8')) as { nonce: string; pcrs: { alg: HashAlg; values: Record<string, string> }[] };
  return {
    akPub: fixture(`ak-${alg}.pub`),
    attest: fixture(`quote-${alg}.attest`),
    signature: fixture(`quote-${alg}.sig`),
    nonce: Buffer.from(j.nonce, 'hex'),
    pcrs: j.pcrs.map((b) => ({ alg: b.alg, values: new Map(Object.entries(b.values).map(([k, v]) => [Number(k), Buffer.from(v, 'hex')])) })),
  };
}

export function clonePcrs(p: PcrValues): PcrValues {
  return p.map((b) => ({ alg: b.alg, values: new Map([...b.values].map(([k, v]) => [k, Buffer.from(v)])) }));
}
