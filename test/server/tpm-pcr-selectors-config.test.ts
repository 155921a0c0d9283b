// nodeAttestation.tpm.pcrSelectors: what the config loader and the TPM attestor accept and refuse.
import { describe, expect, it } from 'vitest';
import { ConfigError, parseServerConfig } from '../../src/server/config.js';
import { TpmAttestor } from '../../src/server/attestation/tpm.js';
import { TrustDomain } from '../../src/spiffe/id.js';

const EK_HASH = 'ab'.repeat(32);
const parse = (tpm: Record<string, unknown>) => parseServerConfig({ trustDomain: 'example.org', nodeAttestation: { tpm } }, '/tmp', {});
const attestor = (pcrSelectors: number[]) => new TpmAttestor({
  trustDomain: TrustDomain.parse('example.org'), manufacturerCasDer: [], enrolledEkHashes: [EK_HASH], challengeTtlSeconds: 60,
  pcrSelectors, store: { consumeNonce: () => Promise.resolve(true) },
});

describe('nodeAttestation.tpm.pcrSelectors', () => {
  it('defaults to none, and keeps the PCRs given', () => {
    expect(parse({ enabled: true, enrolledEkHashes: [EK_HASH] }).nodeAttestation.tpm.pcrSelectors).toEqual([]);
    expect(parse({ enabled: true, enrolledEkHashes: [EK_HASH], pcrSelectors: [7, 0, 23] }).nodeAttestation.tpm.pcrSelectors).toEqual([7, 0, 23]);
  });

  it.each([
    [[7, 7], /pcrSelectors: a PCR is listed twice/],
    [[24], /pcrSelectors\.0: PCR indexes are 0\.\.23/],
    [[-1], /PCR indexes are 0\.\.23/],
    [[1.5], /a PCR index is a whole number/],
    [['7'], /pcrSelectors\.0/],
  ])('refuses %j with a ConfigError saying why', (pcrSelectors, message) => {
    expect(() => parse({ enabled: true, enrolledEkHashes: [EK_HASH], pcrSelectors })).toThrow(ConfigError);
    expect(() => parse({ enabled: true, enrolledEkHashes: [EK_HASH], pcrSelectors })).toThrow(message);
  });

  it('refuses PCR selectors while TPM attestation is off', () => {
    expect(() => parse({ enabled: false, pcrSelectors: [7] })).toThrow(/pcrSelectors is set but nodeAttestation\.tpm is disabled/);
  });

  it('the attestor sorts the PCRs (the order a TPM quotes them in) and refuses bad ones', () => {
    expect(attestor([23, 0, 7]).selectorPcrs).toEqual([0, 7, 23]);
    expect(attestor([]).selectorPcrs).toEqual([]);
    expect(() => attestor([3, 3])).toThrow(/listed twice/);
    expect(() => attestor([30])).toThrow(/PCR 30 is not an index 0\.\.23/);
  });
});
