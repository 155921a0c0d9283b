// The EK certificate chain from the TPM's NV, end to end: a real server that trusts ONLY the swtpm
// manufacturer root (not the intermediate that signed the EK certificate), the agent's TPM session
// and node attestor over real TLS gRPC, and tpm2-tools writing the chain into NV as firmware would.
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createCsr, generateKeyPair } from '../../src/agent/csr.js';
import { attestNode } from '../../src/agent/node-attestor.js';
import { connectToServer } from '../../src/agent/server-conn.js';
import { MAX_EK_INTERMEDIATES, openTpmCredentialSource } from '../../src/agent/tpm-session.js';
import type { AttestationResult } from '../../src/api/agent-api.js';
import type { RunningServer } from '../../src/server/index.js';
import { Bundle, BundleSet } from '../../src/spiffe/bundle.js';
import { TrustDomain } from '../../src/spiffe/id.js';
import { verifyX509Svid } from '../../src/spiffe/x509svid.js';
import { pemBundleToDer, startSwtpm, type Swtpm } from '../support/swtpm.js';
import { tempDir } from '../support/tmp.js';
import { startTestServer } from './fixtures.js';

const TD = 'ekchain.test';

describe('agent sends the EK certificate chain stored in TPM NV', () => {
  const tmp = tempDir('terroir-ekchain-e2e-');
  let swtpm: Swtpm;
  let server: RunningServer;
  let roots: Buffer[];
  let intermediate: Buffer;

  function nvWrite(index: number, data: Buffer): void {
    const h = `0x${index.toString(16)}`;
    const env = { ...process.env, TPM2TOOLS_TCTI: swtpm.tcti, TSS2_LOG: 'all+NONE' };
    const file = path.join(tmp.dir, `nv-${h}.bin`);
    fs.writeFileSync(file, data);
    execFileSync('tpm2_nvdefine', [h, '-C', 'p', '-s', String(data.length), '-a', 'ppwrite|ppread|ownerread|authread|no_da|platformcreate'], { env, stdio: 'ignore' });
    execFileSync('tpm2_nvwrite', [h, '-C', 'p', '-i', file], { env, stdio: 'ignore' });
  }

  /** One agent session: open the TPM, attest, close; the session's warnings are collected. */
  async function attestOnce(): Promise<{ result: Promise<AttestationResult>; sent: Buffer[]; warnings: string[] }> {
    const warnings: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => { warnings.push(String(JSON.parse(line).msg)); } });
    const tpm = await openTpmCredentialSource({ tcti: swtpm.tcti, ekKind: 'rsa2048' }, { logger });
    const client = connectToServer({ address: '127.0.0.1', port: server.agentApiPort, trustDomain: TD, roots });
    try {
      const sent = (await tpm.attestationData()).ekIntermediates;
      const result = attestNode(client, { csr: createCsr(generateKeyPair()), tpm });
      await result.catch(() => undefined);
      return { result, sent, warnings };
    } finally {
      client.close();
      await tpm.close();
    }
  }

  beforeAll(async () => {
    swtpm = await startSwtpm();
    const [root, inter] = pemBundleToDer(fs.readFileSync(swtpm.caFile, 'utf8'));
    intermediate = inter as Buffer;
    const rootFile = path.join(tmp.dir, 'root-only.pem');
    fs.writeFileSync(rootFile, new X509Certificate(root as Buffer).toString());
    ({ server, roots } = await startTestServer(tmp.dir, TD, {
      nodeAttestation: { tpm: { enabled: true, manufacturerCaFiles: [rootFile] } },
    }));
  });

  afterAll(async () => {
    await server?.stop();
    await swtpm?.stop();
    tmp.cleanup();
  });

  it('is refused with only the EK certificate, and attests once the intermediate is in NV 0x01C00100', async () => {
    const before = await attestOnce();
    expect(before.sent).toEqual([]);
    await expect(before.result).rejects.toMatchObject({ code: 'refused', message: expect.stringMatching(/EK not trusted: .*no chain to a configured manufacturer CA/) });
    expect(await server.store.listNodes()).toHaveLength(0);

    nvWrite(0x01c00100, intermediate);
    const after = await attestOnce();
    expect(after.sent.map((c) => c.toString('hex'))).toEqual([intermediate.toString('hex')]);
    expect(after.warnings).toEqual([]);
    const r = await after.result;
    expect(r.spiffeId).toMatch(new RegExp(`^spiffe://${TD.replace('.', '\\.')}/agent/tpm/[0-9a-f]{64}$`));
    const issuer = new X509Certificate(intermediate).subject.replace(/\n/g, ',');
    expect(r.selectors.map((s) => `${s.type}:${s.value}`)).toContain(`tpm:ek_issuer:${issuer}`);
    const bundles = new BundleSet(Bundle.parse(TrustDomain.parse(TD), r.bundle));
    expect(verifyX509Svid(r.svidChain, bundles).id.toString()).toBe(r.spiffeId);
  });

  it('still attests past a damaged index and a chain longer than the server accepts, with warnings', async () => {
    // 0x01C00100 holds the intermediate (previous test); add garbage and nine more certificates.
    nvWrite(0x01c00101, Buffer.from('garbage, not DER'));
    for (let i = 0; i < 9; i++) nvWrite(0x01c00102 + i, intermediate);
    const { result, sent, warnings } = await attestOnce();
    expect(sent).toHaveLength(MAX_EK_INTERMEDIATES);
    expect(sent[0]!.equals(intermediate)).toBe(true);
    expect(warnings).toEqual([
      expect.stringMatching(/EK certificate chain: index 0x01c00101 at byte 0: expected a DER SEQUENCE/),
      `the TPM's EK certificate chain has more certificates than the server accepts; sending the first ${MAX_EK_INTERMEDIATES}`,
    ]);
    expect((await result).spiffeId).toMatch(/\/agent\/tpm\/[0-9a-f]{64}$/);
  });
});
