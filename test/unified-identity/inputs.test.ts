// Bad inputs to the Unified Identity pipeline and configuration: each gets a clear error.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAgentConfig } from '../../src/agent/config.js';
import { canonicalClaims } from '../../src/geo/index.js';
import { AttestationError } from '../../src/server/attestation/errors.js';
import { parseClaimsDocument } from '../../src/server/attestation/unified.js';
import { parseServerConfig } from '../../src/server/config.js';
import { unifiedIdentityQualifyingData } from '../../src/api/agent-api.js';

const reading = { kind: 'gnss', sensorId: 'gpsd:1', time: '2026-11-22T12:00:00.000Z', lat: 52.52, lon: 13.405, horizontalErrorM: 5, attested: true };

function refused(doc: Buffer): AttestationError {
  try {
    parseClaimsDocument(doc);
  } catch (e) {
    expect(e).toBeInstanceOf(AttestationError);
    expect((e as AttestationError).code).toBe('invalid_argument');
    return e as AttestationError;
  }
  throw new Error('document was accepted');
}

describe('claims document', () => {
  it('accepts the canonical document and returns its readings', () => {
    const rs = parseClaimsDocument(canonicalClaims({ v: 1, readings: [reading] }));
    expect(rs).toHaveLength(1);
    expect(rs[0]!.time.toISOString()).toBe(reading.time);
  });

  it.each([
    ['empty', Buffer.alloc(0), /is missing/],
    ['oversized', Buffer.alloc(16 * 1024 + 1, 0x20), /more than 16384/],
    ['invalid UTF-8', Buffer.from([0x7b, 0xff, 0x7d]), /not UTF-8 JSON/],
    ['not JSON', Buffer.from('{"v":1,'), /not UTF-8 JSON/],
    ['an array', Buffer.from('[1]'), /must be a JSON object/],
    ['unknown member', canonicalClaims({ v: 1, readings: [reading], x: 1 }), /unknown member\(s\) x/],
    ['wrong version', canonicalClaims({ v: 2, readings: [reading] }), /"v": 1/],
    ['no readings', canonicalClaims({ v: 1, readings: [] }), /1\.\.16 readings/],
    ['too many readings', canonicalClaims({ v: 1, readings: Array.from({ length: 17 }, () => reading) }), /1\.\.16 readings/],
    ['not canonical', Buffer.from(JSON.stringify({ v: 1, readings: [reading] })), /not in RFC 8785 canonical form/],
    ['bad reading', canonicalClaims({ v: 1, readings: [{ ...reading, lat: 91 }] }), /readings\[0\]/],
  ])('refuses %s', (_name, doc, msg) => {
    expect(refused(doc).message).toMatch(msg);
  });

  it('binds nonce and document: changing either changes the qualifying data (64 ASCII hex bytes)', () => {
    const nonce = Buffer.alloc(32, 1);
    const doc = canonicalClaims({ v: 1, readings: [reading] });
    const q = unifiedIdentityQualifyingData(nonce, doc);
    expect(q.toString('ascii')).toMatch(/^[0-9a-f]{64}$/);
    expect(unifiedIdentityQualifyingData(Buffer.alloc(32, 2), doc).equals(q)).toBe(false);
    expect(unifiedIdentityQualifyingData(nonce, canonicalClaims({ v: 1, readings: [{ ...reading, lon: 2.35 }] })).equals(q)).toBe(false);
  });
});

describe('configuration', () => {
  const base = {
    trustDomain: 'example.org',
    dataStore: { type: 'sqlite', path: '/tmp/x.sqlite3' },
    nodeAttestation: { joinToken: { enabled: false }, tpm: { enabled: true, enrolledEkHashes: ['a'.repeat(64)] } },
  };
  it('refuses a Keylime PCR policy pinning a PCR the agents are not asked to quote', () => {
    expect(() => parseServerConfig({
      ...base,
      unifiedIdentity: { locationPolicies: { inline: 'policies: {}' }, defaultPolicy: 'x', pcrs: [7], tpmPolicy: { 15: ['00'.repeat(32)] } },
    }, '/tmp', {})).toThrow(/pins PCR 15, which is not in unifiedIdentity.pcrs/);
  });
  it('refuses PCR 16 and a missing policy source', () => {
    expect(() => parseServerConfig({ ...base, unifiedIdentity: { locationPolicies: { inline: 'x' }, defaultPolicy: 'x', pcrs: [16] } }, '/tmp', {})).toThrow(/PCR 16 is reserved/);
    expect(() => parseServerConfig({ ...base, unifiedIdentity: { locationPolicies: {}, defaultPolicy: 'x' } }, '/tmp', {})).toThrow(/exactly one of locationPolicies.file or locationPolicies.inline/);
  });
  it('resolves the flag (env beats file) into the server config', () => {
    expect(parseServerConfig({ ...base, featureFlags: { unifiedIdentity: true } }, '/tmp', { UNIFIED_IDENTITY_ENABLED: 'false' }).flags?.flags.unifiedIdentity).toBe(false);
    expect(parseServerConfig({ ...base, featureFlags: { unifiedIdentity: true } }, '/tmp', {}).flags?.sources.unifiedIdentity).toBe('config');
  });

  const agent = {
    trustDomain: 'example.org', serverAddress: '127.0.0.1', dataDir: '/tmp/a', socketPath: '/tmp/a.sock', insecureBootstrap: true,
    nodeAttestor: { tpm: { tcti: 'swtpm:host=127.0.0.1,port=1' } },
  };
  it('agent: flag on needs sensors and a TPM; bad sensor configs are named', () => {
    expect(() => parseAgentConfig(agent, { UNIFIED_IDENTITY_ENABLED: 'true' }, path.sep)).toThrow(/unifiedIdentity.sensors is not configured/);
    expect(() => parseAgentConfig({ ...agent, nodeAttestor: { joinToken: { token: 't' } }, unifiedIdentity: { sensors: [{ type: 'static', lat: 1, lon: 1 }] } }, { UNIFIED_IDENTITY_ENABLED: 'true' }, path.sep)).toThrow(/nodeAttestor is not tpm/);
    expect(() => parseAgentConfig({ ...agent, unifiedIdentity: { sensors: [{ type: 'gpsd', port: 99999 }] } }, {}, path.sep)).toThrow(/unifiedIdentity.sensors.0.port/);
    const ok = parseAgentConfig({ ...agent, unifiedIdentity: { sensors: [{ type: 'gpsd' }] } }, { UNIFIED_IDENTITY_ENABLED: '1' }, path.sep);
    expect(ok.flags?.flags.unifiedIdentity).toBe(true);
    expect(ok.unifiedIdentity?.readingMaxAgeMs).toBe(2000);
  });
});
