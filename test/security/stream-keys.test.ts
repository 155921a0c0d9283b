// Attack: colliding stream-group keys. Streams of callers with the same selectors share one group
// (one encoded message for all). Keyed by the selectors joined with newlines, a selector value that
// contains a newline (a binary path may) makes one caller's set print exactly like another's — and
// the second caller would be served the first caller's SVIDs. Keys must be unambiguous.
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWorkloadClient, workloadMetadata, type WorkloadApiClient, type X509SvidResponse } from '../../src/api/workload-api.js';
import { IdentityCache, type CacheEntry } from '../../src/agent/cache.js';
import type { ProcessSnapshot } from '../../src/agent/attestor/unix.js';
import { SelectorSet, type Selector } from '../../src/agent/selectors.js';
import { WorkloadApiServer, streamGroupKey, type JwtProvider, type WorkloadAttestor } from '../../src/agent/workloadapi/server.js';
import { makeCa, makeSvid, type TestCa } from '../agent/fixtures.js';
import { tempDir } from '../support/tmp.js';

const unix = (value: string): Selector => ({ type: 'unix', value });
// Caller A runs a binary whose path holds a newline and the text of another selector.
const SET_A = [unix('path:/opt/x\nunix:uid:0')];
// Caller B is root running /opt/x.
const SET_B = [unix('path:/opt/x'), unix('uid:0')];

describe('attack: stream groups keyed by selectors joined with newlines', () => {
  const tmp = tempDir('terroir-sec-keys-');
  const socket = path.join(tmp.dir, 'public', 'agent.sock');
  let ca: TestCa;
  let server: WorkloadApiServer;
  const next: Selector[][] = [];

  // Attests each call as the next queued selector set (the server cannot tell the two callers apart otherwise).
  const attestor: WorkloadAttestor = {
    snapshot: (): ProcessSnapshot => ({ startTime: '0', exe: null, sha256: null }),
    attest: () => Promise.resolve(next.shift() ?? []),
  };
  const jwt: JwtProvider = {
    fetchJwtSvid: () => Promise.reject(new Error('not used')),
    validateJwtSvid: () => Promise.reject(new Error('not used')),
  };

  beforeAll(async () => {
    ca = makeCa('example.org');
    const cache = new IdentityCache('example.org');
    cache.setBundles(ca.bundle(1), []);
    const entry = (id: string, spiffeId: string, selectors: Selector[]): CacheEntry => ({ id, spiffeId, selectors, federatesWith: [], hint: '', jwtSvidTtl: 300 });
    cache.setEntries([entry('e-a', 'spiffe://example.org/a', SET_A), entry('e-b', 'spiffe://example.org/b', SET_B)]);
    cache.putSvids(new Map([['e-a', makeSvid(ca, 'spiffe://example.org/a')], ['e-b', makeSvid(ca, 'spiffe://example.org/b')]]));
    server = await WorkloadApiServer.start({ socketPath: socket, cache, attestor, jwt, logger: pino({ level: 'silent' }) });
  });

  afterAll(async () => {
    await server?.close();
    ca?.cleanup();
    tmp.cleanup();
  });

  function firstMessage(client: WorkloadApiClient): Promise<{ ids: string[]; call: grpc.ClientReadableStream<X509SvidResponse> }> {
    return new Promise((resolve, reject) => {
      const call = client.FetchX509SVID({}, workloadMetadata());
      call.once('data', (res: X509SvidResponse) => resolve({ ids: res.svids.map((s) => s.spiffe_id), call }));
      call.on('error', (e: grpc.ServiceError) => {
        if (e.code !== grpc.status.CANCELLED) reject(e);
      });
    });
  }

  it('the two selector sets get different group keys', () => {
    for (const kind of ['FetchX509SVID', 'FetchX509Bundles', 'FetchJWTBundles'] as const) {
      expect(streamGroupKey(kind, new SelectorSet(SET_A))).not.toBe(streamGroupKey(kind, new SelectorSet(SET_B)));
    }
    // Equal sets in any order still share a group.
    expect(streamGroupKey('FetchX509SVID', new SelectorSet([...SET_B].reverse()))).toBe(streamGroupKey('FetchX509SVID', new SelectorSet(SET_B)));
  });

  it('a caller whose selectors print like another\'s, opening its stream second, gets its own SVID, not the other\'s', async () => {
    const a = createWorkloadClient(`unix://${socket}`);
    const b = createWorkloadClient(`unix://${socket}`);
    try {
      next.push(SET_A);
      const first = await firstMessage(a);
      expect(first.ids).toEqual(['spiffe://example.org/a']);
      next.push(SET_B);
      const second = await firstMessage(b);
      expect(second.ids).toEqual(['spiffe://example.org/b']);
      first.call.cancel();
      second.call.cancel();
    } finally {
      a.close();
      b.close();
    }
  });
});
