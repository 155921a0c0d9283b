// Attack: ValidateJWTSVID with bundles the caller is not entitled to. The agent holds the bundles of
// every trust domain any entry of this node federates with; a caller with no identity, or one whose
// entries do not federate with trust domain X, must not be able to have a token signed by X's key
// accepted (its own FetchJWTBundles does not give it X's bundle either). As SPIRE does: the caller's
// own trust domain and the trust domains its entries federate with, nothing else; and a foreign
// token's non-standard claims are removed unless the agent allows them (allowedForeignJwtClaims).
import crypto from 'node:crypto';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createWorkloadClient, fromProtoStruct, workloadMetadata, type ValidateJwtSvidResponse, type WorkloadApiClient } from '../../src/api/workload-api.js';
import { IdentityCache, type CacheEntry, type TrustBundle } from '../../src/agent/cache.js';
import type { AgentContext } from '../../src/agent/context.js';
import type { NodeIdentity } from '../../src/agent/node-identity.js';
import { SvidSync } from '../../src/agent/svid-sync.js';
import { UnixAttestor } from '../../src/agent/attestor/unix.js';
import { WorkloadApiServer } from '../../src/agent/workloadapi/server.js';
import { Bundle, BundleSet, SpiffeId, TrustDomain, mintJwtSvid, validateJwtSvid } from '../../src/spiffe/index.js';
import { makeCa, makeSvid, type TestCa } from '../agent/fixtures.js';
import { tempDir } from '../support/tmp.js';

const uid = process.getuid!();

interface TdKeys {
  bundle: Bundle;
  key: crypto.KeyObject;
  kid: string;
}

function trustDomain(name: string): TdKeys {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const bundle = new Bundle(TrustDomain.parse(name));
  const kid = `${name}-k1`;
  bundle.addJwtAuthority(kid, publicKey);
  return { bundle, key: privateKey, kid };
}

function token(td: TdKeys, id: string, extraClaims: Record<string, unknown> = {}): Promise<string> {
  return mintJwtSvid({ id: SpiffeId.parse(id), audience: ['db'], ttlSeconds: 300, key: { kid: td.kid, privateKey: td.key, alg: 'ES256' }, extraClaims });
}

function validate(client: WorkloadApiClient, svid: string): Promise<{ spiffe_id: string; claims: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    client.ValidateJWTSVID({ audience: 'db', svid }, workloadMetadata(), {}, (err: grpc.ServiceError | null, res?: ValidateJwtSvidResponse) => {
      if (err) reject(err);
      else resolve({ spiffe_id: res!.spiffe_id, claims: res!.claims ? fromProtoStruct(res!.claims) : {} });
    });
  });
}

describe('attack: ValidateJWTSVID with a trust domain the caller does not federate with', () => {
  const tmp = tempDir('terroir-sec-jwt-');
  const own = trustDomain('example.org');
  const partner = trustDomain('partner.test');
  let ca: TestCa;
  let cache: IdentityCache;
  const servers: WorkloadApiServer[] = [];
  const clients: WorkloadApiClient[] = [];
  let client: WorkloadApiClient;

  const entry = (id: string, selectors: string[], federatesWith: string[]): CacheEntry => ({
    id, spiffeId: `spiffe://example.org/${id}`, selectors: selectors.map((value) => ({ type: 'unix', value })), federatesWith, hint: '', jwtSvidTtl: 300,
  });
  const asTrustBundle = (b: Bundle, x509: Buffer[]): TrustBundle => ({ trustDomain: b.trustDomain.name, x509Authorities: x509, jwks: Buffer.from(b.toJSON()), sequence: 1 });

  async function start(name: string, allowedForeignJwtClaims?: string[]): Promise<WorkloadApiClient> {
    // The agent's real JWT provider (svid-sync), over the agent's whole bundle set, as the agent wires it.
    const sync = new SvidSync({ bundles: { all: new BundleSet(own.bundle, partner.bundle) } } as unknown as AgentContext, undefined as unknown as NodeIdentity);
    const socketPath = path.join(tmp.dir, 'public', `${name}.sock`);
    servers.push(await WorkloadApiServer.start({
      socketPath, cache, attestor: new UnixAttestor({ sha256: false }), jwt: sync.jwtProvider(), logger: pino({ level: 'silent' }),
      ...(allowedForeignJwtClaims ? { allowedForeignJwtClaims } : {}),
    }));
    const c = createWorkloadClient(`unix://${socketPath}`);
    clients.push(c);
    return c;
  }

  beforeAll(async () => {
    ca = makeCa('example.org');
    cache = new IdentityCache('example.org');
    cache.setBundles(asTrustBundle(own.bundle, [ca.der]), [asTrustBundle(partner.bundle, [])]);
    // Another workload of this node federates with partner.test: the agent holds partner.test's bundle.
    cache.setEntries([entry('other', ['uid:4242'], ['partner.test'])]);
    cache.putSvids(new Map([['other', makeSvid(ca, 'spiffe://example.org/other')]]));
    client = await start('agent');
  });

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const s of servers) await s.close();
    ca?.cleanup();
    tmp.cleanup();
  });

  it('an unregistered caller cannot validate a token signed by a federated trust domain\'s key', async () => {
    const t = await token(partner, 'spiffe://partner.test/svc');
    await expect(validate(client, t)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/partner\.test/) });
  });

  it('the Workload API refuses it even with a provider that validates against every bundle it holds', async () => {
    const naive = path.join(tmp.dir, 'public', 'naive.sock');
    const all = new BundleSet(own.bundle, partner.bundle);
    servers.push(await WorkloadApiServer.start({
      socketPath: naive, cache, attestor: new UnixAttestor({ sha256: false }), logger: pino({ level: 'silent' }),
      jwt: {
        fetchJwtSvid: () => Promise.reject(new Error('not used')),
        validateJwtSvid: async (t, audience) => {
          const v = await validateJwtSvid(t, all, audience);
          return { spiffeId: v.id.toString(), claims: v.claims };
        },
      },
    }));
    const c = createWorkloadClient(`unix://${naive}`);
    clients.push(c);
    const t = await token(partner, 'spiffe://partner.test/svc');
    await expect(validate(c, t)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/partner\.test/) });
  });

  it('a registered caller whose entries do not federate with that trust domain cannot either', async () => {
    cache.setEntries([entry('other', ['uid:4242'], ['partner.test']), entry('me', [`uid:${uid}`], [])]);
    cache.putSvids(new Map([['other', makeSvid(ca, 'spiffe://example.org/other')], ['me', makeSvid(ca, 'spiffe://example.org/me')]]));
    const t = await token(partner, 'spiffe://partner.test/svc');
    await expect(validate(client, t)).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/partner\.test/) });
  });

  it('any caller validates a token of the agent\'s own trust domain, with all its claims', async () => {
    const t = await token(own, 'spiffe://example.org/peer', { custom: 'kept' });
    const res = await validate(client, t);
    expect(res.spiffe_id).toBe('spiffe://example.org/peer');
    expect(res.claims['custom']).toBe('kept');
  });

  it('a caller federated with the trust domain validates its token; non-standard foreign claims are removed', async () => {
    cache.setEntries([entry('me', [`uid:${uid}`], ['partner.test'])]);
    cache.putSvids(new Map([['me', makeSvid(ca, 'spiffe://example.org/me')]]));
    const t = await token(partner, 'spiffe://partner.test/svc', { custom: 'foreign', groups: ['admin'] });
    const res = await validate(client, t);
    expect(res.spiffe_id).toBe('spiffe://partner.test/svc');
    expect(res.claims['custom']).toBeUndefined();
    expect(res.claims['groups']).toBeUndefined();
    expect(Object.keys(res.claims).sort()).toEqual(['aud', 'exp', 'iat', 'sub']);
  });

  it('allowedForeignJwtClaims keeps the claims it names, and only those', async () => {
    const c = await start('allowing', ['custom']);
    const t = await token(partner, 'spiffe://partner.test/svc', { custom: 'foreign', groups: ['admin'] });
    const res = await validate(c, t);
    expect(res.claims['custom']).toBe('foreign');
    expect(res.claims['groups']).toBeUndefined();
  });
});
