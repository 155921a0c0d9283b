// Malformed Workload API answers change nothing: a hostile or broken endpoint (a gRPC server speaking
// the real Workload API protocol, sending what a correct agent never would) cannot make the source
// present a wrong SVID or trust a wrong bundle.
import path from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workloadServiceDefinition, type X509SvidResponse } from '../../src/api/workload-api.js';
import { X509Source } from '../../src/workload/index.js';
import { tempDir } from '../support/tmp.js';
import { makeDomain, type TestDomain, type TestSvid } from './fixtures.js';

describe('X509Source against a misbehaving Workload API', () => {
  const tmp = tempDir('terroir-wlbad-');
  const socket = path.join(tmp.dir, 'bad.sock');
  let server: grpc.Server;
  let stream: grpc.ServerWritableStream<unknown, X509SvidResponse> | undefined;
  let ex: TestDomain;
  let other: TestDomain;
  let good: TestSvid;
  let source: X509Source;
  const logLines: string[] = [];

  const response = (s: TestSvid, over: Partial<X509SvidResponse['svids'][number]> = {}, federated: Record<string, Buffer> = {}): X509SvidResponse => ({
    svids: [{ spiffe_id: s.id.toString(), x509_svid: Buffer.concat(s.chain), x509_svid_key: s.pkcs8, bundle: ex.caDer, hint: '', ...over }],
    crl: [],
    federated_bundles: federated,
  });

  async function rejected(msg: X509SvidResponse, reason: RegExp): Promise<void> {
    const before = logLines.length;
    stream!.write(msg);
    const t0 = Date.now();
    while (!logLines.slice(before).some((l) => l.includes('ignoring a malformed'))) {
      if (Date.now() - t0 > 5000) throw new Error('the source never processed the message');
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(logLines.slice(before).join('')).toMatch(reason);
    expect(source.getX509Svid().certificatesDer[0]!.equals(good.chain[0]!)).toBe(true);
    expect(source.getX509BundleForTrustDomain(ex.td)!.x509Authorities()).toEqual([ex.caDer]);
  }

  beforeAll(async () => {
    ex = makeDomain('example.org');
    other = makeDomain('other.test');
    good = ex.svid('/web');
    server = new grpc.Server();
    server.addService(workloadServiceDefinition(), {
      FetchX509SVID: (call: grpc.ServerWritableStream<unknown, X509SvidResponse>) => {
        stream = call;
        call.write(response(good));
      },
    });
    await new Promise<void>((resolve, reject) => server.bindAsync(`unix://${socket}`, grpc.ServerCredentials.createInsecure(), (e) => (e ? reject(e) : resolve())));
    const logger = pino({ level: 'error' }, new Writable({ write(c, _e, cb) { logLines.push(String(c)); cb(); } }));
    source = await X509Source.create({ endpoint: `unix://${socket}`, timeoutMs: 5000, logger });
  });

  afterAll(async () => {
    await source?.close();
    await new Promise<void>((r) => server.tryShutdown(() => r()));
    tmp.cleanup();
  });

  it('keeps the current SVID and bundles on every kind of bad message', async () => {
    const second = ex.svid('/web');
    await rejected(response(second, { x509_svid_key: ex.svid('/web').pkcs8 }), /does not match the leaf certificate/);
    await rejected(response(second, { spiffe_id: 'spiffe://example.org/admin' }), /is for spiffe:\/\/example.org\/web, not spiffe:\/\/example.org\/admin/);
    await rejected(response(second, { x509_svid: Buffer.from([0x30, 0x82, 0xff]) }), /x509_svid/);
    await rejected(response(second, { spiffe_id: 'https://example.org/web' }), /invalid spiffe_id/);
    await rejected(response(second, { x509_svid_key: Buffer.from('not a key') }), /PKCS#8/);
    await rejected(response(other.svid('/web'), { bundle: ex.caDer }), /does not verify against its bundle/);
    await rejected(response(second, {}, { 'not a trust domain!': other.caDer }), /is not a trust domain/);
    await rejected({ svids: [], crl: [], federated_bundles: {} }, /no SVIDs/);
  });

  it('a federated entry for our own trust domain is ignored, then a good message is taken', async () => {
    const next = ex.svid('/web');
    const updated = new Promise<void>((r) => { const off = source.onUpdate(() => { off(); r(); }); });
    stream!.write(response(next, {}, { 'spiffe://example.org': other.caDer, 'spiffe://other.test': other.caDer }));
    await updated;
    expect(source.getX509Svid().certificatesDer[0]!.equals(next.chain[0]!)).toBe(true);
    expect(source.getX509BundleForTrustDomain(ex.td)!.x509Authorities()).toEqual([ex.caDer]);
    expect(source.getX509BundleForTrustDomain(other.td)!.x509Authorities()).toEqual([other.caDer]);
  });
});
