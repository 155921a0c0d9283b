// TPM node attestation variants against a real server and swtpm: the ECC P-384 EK, and an AK kept
// at a persistent handle across agent restarts (tpm2-tools as the independent check that it is there).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCsr, generateKeyPair } from '../../src/agent/csr.js';
import { attestNode } from '../../src/agent/node-attestor.js';
import { connectToServer } from '../../src/agent/server-conn.js';
import { openTpmCredentialSource } from '../../src/agent/tpm-session.js';
import type { RunningServer } from '../../src/server/index.js';
import { startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';
import { startTestServer } from './fixtures.js';

const run = promisify(execFile);
const TD = 'tpm.test';
const AK_HANDLE = 0x81010042;

describe('TPM node attestation variants', () => {
  const tmp = tempDir('terroir-tpm-agent-');
  let swtpm: Swtpm;
  let server: RunningServer;
  let roots: Buffer[];

  beforeAll(async () => {
    swtpm = await startSwtpm();
    ({ server, roots } = await startTestServer(tmp.dir, TD, {
      nodeAttestation: { tpm: { enabled: true, manufacturerCaFiles: [swtpm.caFile] } },
    }));
  });

  afterAll(async () => {
    await server?.stop();
    await swtpm?.stop();
    tmp.cleanup();
  });

  async function attestWith(ekKind: 'rsa2048' | 'ecc-p384', akHandle?: number): Promise<{ id: string; akPublic: Buffer }> {
    const tpm = await openTpmCredentialSource({ tcti: swtpm.tcti, ekKind, ...(akHandle !== undefined ? { akHandle } : {}) });
    const client = connectToServer({ address: '127.0.0.1', port: server.agentApiPort, trustDomain: TD, roots });
    try {
      const data = await tpm.attestationData();
      const res = await attestNode(client, { csr: createCsr(generateKeyPair()), tpm });
      return { id: res.spiffeId, akPublic: data.akPublic };
    } finally {
      client.close();
      await tpm.close();
    }
  }

  it('attests with the ECC P-384 EK (a different node identity than the RSA EK)', async () => {
    const ecc = await attestWith('ecc-p384');
    const rsa = await attestWith('rsa2048');
    expect(ecc.id).toMatch(new RegExp(`^spiffe://${TD.replace('.', '\\.')}/agent/tpm/[0-9a-f]{64}$`));
    expect(rsa.id).toMatch(/\/agent\/tpm\/[0-9a-f]{64}$/);
    expect(ecc.id).not.toBe(rsa.id);
  });

  it('keeps the AK at a persistent handle across sessions and attests with it', async () => {
    const first = await attestWith('rsa2048', AK_HANDLE);
    const { stdout } = await run('tpm2_getcap', ['-T', swtpm.tcti, 'handles-persistent'], { timeout: 10_000 });
    expect(stdout.toLowerCase()).toContain(`0x${AK_HANDLE.toString(16)}`);
    const second = await attestWith('rsa2048', AK_HANDLE);
    expect(second.akPublic.equals(first.akPublic)).toBe(true);
    expect(second.id).toBe(first.id);
  });
});
