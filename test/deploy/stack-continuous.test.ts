// The compose services' scripts, run natively with Unified Identity on and Keylime in continuous mode
// (bring-up: stack-fixture.ts with keylimeMode 'continuous'): certs-init.sh makes the agent's quote
// endpoint certificate; server.sh enrolls each TPM node with the Keylime development stand-in, which
// then pulls quotes from the endpoint agent.sh configured, over mutual TLS, every second. A workload
// (the client user, through `terroir-agent api watch`) holds its SVID until a policy PCR is extended in
// the swtpm with tpm2-tools: Keylime fails the node, the server withdraws its SVIDs, and the agent's
// immediate re-attestation is refused. Every process is stopped by its PID.
import { execFile, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLIENT_UID, DEPLOY, ROOT, startStack, type Stack } from './stack-fixture.js';

const run = promisify(execFile);
const TSX = `file://${ROOT}/node_modules/tsx/dist/loader.mjs`;
const AGENT_CLI = path.join(ROOT, 'src/cli/terroir-agent.ts');
const ZERO = '0'.repeat(64);
/** The PCR deploy/server.sh's default Keylime policy pins (all zeros on a TPM that measured nothing). */
const POLICY_PCR = 15;

let s: Stack;
let keylimeId: string;
let agentId: string;
let verifierPort: number;

const pki = (f: string): string => path.join(s.dir, 'pki', f);

/** The stand-in's admin API, as terroir-server calls it: its CA pinned, terroir-server's client certificate. */
function verifierGet(route: string): Promise<{ status: number; body: { results: Record<string, unknown> } }> {
  return new Promise((resolve, reject) => {
    const req = https.request({
      host: 'localhost', port: verifierPort, path: route, method: 'GET', agent: false,
      ca: fs.readFileSync(pki('keylime/ca.crt')), cert: fs.readFileSync(pki('keylime/terroir-client.crt')), key: fs.readFileSync(pki('keylime/terroir-client.key')),
    }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as { results: Record<string, unknown> } }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A TLS client on the agent's quote endpoint: resolves with the HTTP status line, rejects when refused. */
function quoteEndpoint(client: { cert?: Buffer; key?: Buffer }): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port: s.ports.quote, ca: fs.readFileSync(pki('agent/quote-endpoint.crt')), ...client }, () => {
      socket.write('GET /version HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n');
    });
    let text = '';
    socket.on('data', (c: Buffer) => { text += c.toString(); });
    socket.on('end', () => (text ? resolve(text.split('\r\n')[0] ?? '') : reject(new Error('closed without an answer'))));
    socket.on('error', reject);
  });
}

const tpmTools = (args: string[]) => spawnSync(args[0] as string, [...args.slice(1), '-T', `swtpm:host=127.0.0.1,port=${s.ports.swtpm}`], { timeout: 20_000 });

beforeAll(async () => {
  s = await startStack({
    unified: true,
    keylimeMode: 'continuous',
    consumerEnv: { CONSUMER_REQUIRE_REGION: 'EU', CONSUMER_REQUIRE_POLICY: 'eu', CONSUMER_ALLOW_DEV_STANDIN: 'true' },
  });
  const attested = s.log('agent').split('\n').find((l) => l.includes('"msg":"node attested"')) ?? '';
  agentId = (JSON.parse(attested) as { spiffeId: string }).spiffeId;
  keylimeId = /\/agent\/tpm\/([0-9a-f]{64})$/.exec(agentId)?.[1] ?? '';
  const standIn = s.log('keylime-standin').split('\n').find((l) => l.includes('"standIn":true')) ?? '';
  verifierPort = (JSON.parse(standIn) as { port: number }).port;
}, 150_000);

afterAll(async () => {
  await s?.stop();
}, 30_000);

describe('the deployment scripts, natively, Keylime continuous mode', () => {
  it('server.sh wrote continuous mode with its PCR policy; agent.sh the quote endpoint with certs-init\'s material', () => {
    const server = fs.readFileSync(path.join(s.dir, 'server', 'server.yaml'), 'utf8');
    expect(server).toContain(`  mode: continuous\n  tpmPolicy: {"15": ["${ZERO}"]}\n  quoteEndpointAddress: source\n  quoteEndpointPort: ${s.ports.quote}\n`);
    const agent = fs.readFileSync(path.join(s.dir, 'agent', 'agent.yaml'), 'utf8');
    expect(agent).toContain(`  keylime:\n    quoteEndpoint:\n      bindAddress: "127.0.0.1"\n      port: ${s.ports.quote}\n`
      + `      certFile: "${pki('agent/quote-endpoint.crt')}"\n      keyFile: "${pki('agent/quote-endpoint.key')}"\n`
      + `      clientCaFile: "${pki('agent/verifier-client-ca.crt')}"\n`);
    expect(keylimeId).toMatch(/^[0-9a-f]{64}$/);
  });

  it('the node is enrolled: the verifier keeps pulling and verifying quotes from the agent\'s endpoint', async () => {
    // The server admitted the node only once Keylime had verified a quote from that endpoint.
    const verifiedLine = (): string | undefined => s.log('server').split('\n').find((l) => l.includes('"msg":"Keylime verified the node"'));
    await s.until('the server did not log the Keylime verification', () => verifiedLine() !== undefined, 5_000);
    const verified = verifiedLine();
    expect(JSON.parse(verified as string)).toMatchObject({ agent: agentId, keylimeId, endpoint: `127.0.0.1:${s.ports.quote}` });
    const first = await verifierGet(`/v2.2/agents/${keylimeId}`);
    expect(first.status).toBe(200);
    expect(first.body.results).toMatchObject({ ip: '127.0.0.1', port: s.ports.quote, attestation_status: 'PASS' });
    // 3 Get Quote (4-6: a retry or a quote in flight on a busy machine); never 7 Failed or 9 Invalid Quote.
    expect([3, 4, 5, 6]).toContain(first.body.results['operational_state']);
    expect(JSON.parse(first.body.results['tpm_policy'] as string)).toMatchObject({ [POLICY_PCR]: [ZERO] });
    // Continuous: the count goes on rising, one pull a second.
    const count = first.body.results['attestation_count'] as number;
    expect(count).toBeGreaterThanOrEqual(1);
    await s.until('the verifier did not verify another quote', async () => ((await verifierGet(`/v2.2/agents/${keylimeId}`)).body.results['attestation_count'] as number) > count, 10_000);
  }, 20_000);

  it('the quote endpoint serves the verifier\'s client certificate only', async () => {
    expect(await quoteEndpoint({ cert: fs.readFileSync(pki('keylime/verifier-client.crt')), key: fs.readFileSync(pki('keylime/verifier-client.key')) })).toBe('HTTP/1.1 200 OK');
    await expect(quoteEndpoint({})).rejects.toThrow();
    const other = path.join(s.dir, 'other-pki');
    await run('bash', [path.join(DEPLOY, 'certs-init.sh'), other]);
    await expect(quoteEndpoint({ cert: fs.readFileSync(path.join(other, 'keylime', 'verifier-client.crt')), key: fs.readFileSync(path.join(other, 'keylime', 'verifier-client.key')) })).rejects.toThrow();
  }, 20_000);

  it('a workload holds its SVID until a policy PCR is extended; then Keylime fails the node and the SVID is withdrawn', async () => {
    s.start('watch', 'setpriv', ['--reuid', String(CLIENT_UID), '--regid', String(CLIENT_UID), '--clear-groups',
      process.execPath, '--import', TSX, AGENT_CLI, 'api', 'watch'], s.workloadEnv());
    await s.until('the client did not get its SVID', () => s.log('watch').includes('received 1 SVID(s): spiffe://deploy.test/workload/client '), 30_000);

    // What a tampered boot chain would do: a measurement the policy does not allow, through tpm2-tools
    // (each tpm2-tss connection to swtpm lasts one command, so this runs beside the agent's).
    const measurement = crypto.createHash('sha256').update('unexpected bootloader').digest('hex');
    const ext = tpmTools(['tpm2_pcrextend', `${POLICY_PCR}:sha256=${measurement}`]);
    expect(ext.status, ext.stderr.toString()).toBe(0);
    const expected = crypto.createHash('sha256').update(Buffer.concat([Buffer.alloc(32), Buffer.from(measurement, 'hex')])).digest('hex');
    expect(tpmTools(['tpm2_pcrread', `sha256:${POLICY_PCR}`]).stdout.toString()).toContain(`0x${expected.toUpperCase()}`);

    // Every Workload API stream of the node ends at once (the agent drops its whole cache).
    await s.until('the workload did not lose its SVID', () => /watch ended: PERMISSION_DENIED|received 0 SVID\(s\)/.test(s.log('watch')), 20_000);
    // Why: the verifier's failed quote, audited by the server before it told the agent to drop its SVIDs.
    const audits = (): Record<string, unknown>[] => s.log('server').split('\n').filter((l) => l.includes('"action":"keylime"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    const failed = (a: Record<string, unknown>): boolean => a['result'] === 'denied' && a['subject'] === agentId && (a['details'] as { kind?: string }).kind === 'invalid_quote';
    await s.until('the server did not audit Keylime\'s failure', () => audits().some(failed), 5_000);
    expect(audits().find(failed)).toMatchObject({ caller: 'keylime-verifier', details: { kind: 'invalid_quote', keylimeId, lastEventId: `pcr_validation.invalid_pcr_${POLICY_PCR}` } });

    // The agent attests again at once, and Keylime refuses the tampered node: it stays without SVIDs.
    await s.until('the re-attestation was not refused', () => /node attestation refused: .*invalid_pcr_15/.test(s.log('agent')), 20_000);
    const fetch = spawnSync('setpriv', ['--reuid', String(CLIENT_UID), '--regid', String(CLIENT_UID), '--clear-groups',
      process.execPath, '--import', TSX, AGENT_CLI, 'api', 'fetch', 'x509'], { env: s.workloadEnv(), timeout: 30_000 });
    expect(fetch.status).toBe(1);
    expect(fetch.stderr.toString()).toContain('PERMISSION_DENIED: no identity issued (caller selectors: unix:uid:10102');
    expect(fetch.stdout.toString()).not.toContain('spiffe://deploy.test/workload/client');
  }, 90_000);
});
