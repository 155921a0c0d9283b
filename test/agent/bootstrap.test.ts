// Trust in the server before and during attestation, against a real server: a wrong bootstrap CA
// fails closed (and the join token is not spent), a server with another SPIFFE ID is refused, and
// the explicit development-only insecure bootstrap works and says so loudly.
import crypto from 'node:crypto';
import path from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { createCsr, generateKeyPair } from '../../src/agent/csr.js';
import { presentedServerChain } from '../../src/agent/insecure-bootstrap.js';
import { attestNode, NodeAttestationError } from '../../src/agent/node-attestor.js';
import { connectToServer, spiffeServerIdentityCheck } from '../../src/agent/server-conn.js';
import type { RunningServer } from '../../src/server/index.js';
import { tempDir } from '../support/tmp.js';
import { makeCa, makeSvid, startTestServer } from './fixtures.js';

const TD = 'boot.test';

describe('server authentication at bootstrap', () => {
  const tmp = tempDir('terroir-boot-');
  let server: RunningServer;
  let roots: Buffer[];

  beforeAll(async () => {
    ({ server, roots } = await startTestServer(tmp.dir, TD));
  });

  afterAll(async () => {
    await server?.stop();
    tmp.cleanup();
  });

  it('a wrong bootstrap CA fails closed and the join token stays unspent', async () => {
    await server.store.createJoinToken({ token: 'tok-wrong-ca', expiresAt: new Date(Date.now() + 60_000) });
    const other = makeCa('boot.test');
    const bad = connectToServer({ address: '127.0.0.1', port: server.agentApiPort, trustDomain: TD, roots: [other.der] });
    const err = await attestNode(bad, { csr: createCsr(generateKeyPair()), joinToken: 'tok-wrong-ca', timeoutMs: 10_000 }).catch((e: unknown) => e);
    bad.close();
    other.cleanup();
    expect(err).toBeInstanceOf(NodeAttestationError);
    expect((err as Error).message).toMatch(/certificate/i);

    const good = connectToServer({ address: '127.0.0.1', port: server.agentApiPort, trustDomain: TD, roots });
    const result = await attestNode(good, { csr: createCsr(generateKeyPair()), joinToken: 'tok-wrong-ca' });
    good.close();
    expect(result.spiffeId).toBe(`spiffe://${TD}/agent/join_token/tok-wrong-ca`);
  });

  it('a server presenting another SPIFFE ID than spiffe://<td>/spire/server is refused', async () => {
    // The real server's ID passes; the same check against another trust domain fails the handshake.
    await server.store.createJoinToken({ token: 'tok-wrong-id', expiresAt: new Date(Date.now() + 60_000) });
    const wrongTd = connectToServer({ address: '127.0.0.1', port: server.agentApiPort, trustDomain: 'other.test', roots });
    const err = await attestNode(wrongTd, { csr: createCsr(generateKeyPair()), joinToken: 'tok-wrong-id', timeoutMs: 10_000 }).catch((e: unknown) => e);
    wrongTd.close();
    expect((err as Error).message).toContain('expected spiffe://other.test/spire/server');

    const ca = makeCa(TD);
    const workload = new crypto.X509Certificate(makeSvid(ca, `spiffe://${TD}/workload`).chain[0]!);
    const check = spiffeServerIdentityCheck(TD);
    expect(check('x', { raw: workload.raw } as never)?.message).toContain(`server presented spiffe://${TD}/workload`);
    const serverLeaf = (await presentedServerChain('127.0.0.1', server.agentApiPort))[0]!;
    expect(check('x', { raw: serverLeaf } as never)).toBeUndefined();
    ca.cleanup();
  });

  it('insecureBootstrap: learns the server CA on first use, attests, and logs it loudly', async () => {
    await server.store.createJoinToken({ token: 'tok-insecure', expiresAt: new Date(Date.now() + 60_000) });
    const chain = await presentedServerChain('127.0.0.1', server.agentApiPort);
    expect(chain.at(-1)!.equals(roots[0]!)).toBe(true);

    let logs = '';
    const sink = new Writable({ write(chunk: Buffer, _e, cb) { logs += chunk.toString(); cb(); } });
    const socketDir = path.join(tmp.dir, 'insecure-public');
    const agent = await Agent.start(parseAgentConfig({
      trustDomain: TD,
      serverAddress: '127.0.0.1',
      serverPort: server.agentApiPort,
      dataDir: path.join(tmp.dir, 'insecure-agent'),
      socketPath: path.join(socketDir, 'api.sock'),
      insecureBootstrap: true,
      nodeAttestor: { joinToken: { token: 'tok-insecure' } },
    }, {}), { logger: pino({ level: 'info' }, sink) });
    await agent.stop();
    expect(agent.spiffeId).toBe(`spiffe://${TD}/agent/join_token/tok-insecure`);
    expect(logs).toContain('INSECURE BOOTSTRAP');
    expect(logs).toContain(new crypto.X509Certificate(roots[0]!).fingerprint256);
  });
});
