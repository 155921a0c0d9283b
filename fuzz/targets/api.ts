// The gRPC messages of the agent API and the Workload API, decoded exactly as grpc-js does on receipt:
// the method definition's requestDeserialize (server side) or responseDeserialize (client side), i.e.
// protobufjs decode + toObject with the project's loader options. A decode error is the expected
// rejection (grpc-js answers INTERNAL); what is checked is that it is an Error, is bounded in time,
// and that whatever decodes also re-encodes (the agent and server hand decoded objects on).
import type * as grpc from '@grpc/grpc-js';
import { agentServiceDefinition } from '../../src/api/agent-api.js';
import { workloadServiceDefinition } from '../../src/api/workload-api.js';
import { below, chance, mutateBytes, type FuzzTarget } from '../engine.js';
import { testPki } from './seeds.js';

// What protobufjs itself throws on bad wire data (reader.js, and the generated decoders).
const PROTOBUF_ERRORS = /^(index out of range|invalid wire type|illegal|invalid varint encoding|missing required|max depth exceeded|Maximum call stack size exceeded)/;

// Thrown inside protobufjs's generated decoders/converters (e.g. its toObject of a map entry that has
// no value: a TypeError). grpc-js catches whatever a deserializer throws and fails the call with
// INTERNAL, so these are bounded rejections by the library, not crashes of terroir code.
const LIBRARY_FRAME = /eval at Codegen|node_modules\/(protobufjs|@protobufjs|@grpc\/proto-loader)\//;

function protobufRejection(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if (PROTOBUF_ERRORS.test(e.message)) return true;
  const top = (e.stack ?? '').split('\n').find((l) => l.trim().startsWith('at ')) ?? '';
  return LIBRARY_FRAME.test(top);
}

interface Endpoint {
  name: string;
  decode: (b: Buffer) => unknown;
  encode: (v: unknown) => Buffer;
}

function endpoints(def: grpc.ServiceDefinition): Endpoint[] {
  const out: Endpoint[] = [];
  for (const [name, m] of Object.entries(def)) {
    out.push({ name: `${name}.request`, decode: (b) => m.requestDeserialize(b), encode: (v) => m.requestSerialize(v) });
    out.push({ name: `${name}.response`, decode: (b) => m.responseDeserialize(b), encode: (v) => m.responseSerialize(v) });
  }
  return out;
}

function protoTarget(name: string, description: string, def: () => grpc.ServiceDefinition, samples: () => Record<string, unknown[]>): FuzzTarget {
  return {
    name,
    description,
    async setup() {
      const eps = endpoints(def());
      const byName = new Map(eps.map((e) => [e.name, e]));
      const s = samples();
      // Seeds: each sample encoded by its own method's serializer.
      const seeds: Buffer[] = [];
      const seedsByEp = eps.map((e) => {
        const list = (s[e.name] ?? [{}]).map((v) => e.encode(v));
        seeds.push(...list);
        return list;
      });
      return {
        // Byte 0 picks the method and direction; the rest is the message, mostly one of that method's seeds mutated.
        generate(r) {
          const i = below(r, eps.length);
          const own = seedsByEp[i]!.filter((b) => b.length > 0);
          const body = chance(r, 0.8) && own.length > 0 ? mutateBytes(r, own) : mutateBytes(r, seeds.length > 0 ? seeds : [Buffer.alloc(1)]);
          return Buffer.concat([Buffer.from([i]), body]);
        },
        run(b) {
          const ep = eps[(b[0] ?? 0) % eps.length]!;
          const v = ep.decode(b.subarray(1));
          // Anything that decodes must encode again (it is handed on as an object).
          try {
            byName.get(ep.name)!.encode(v);
          } catch (err) {
            throw new Error(`decoded ${ep.name} does not re-encode: ${(err as Error).message}`, { cause: err });
          }
        },
        expected: protobufRejection,
      };
    },
  };
}

export const agentApiProto = protoTarget(
  'agent-api-proto',
  'Agent API protobuf messages (proto/agent.proto), every method\'s request and response, through grpc-js\'s deserializers with terroir\'s loader options',
  agentServiceDefinition,
  () => {
    const pki = testPki();
    const csr = pki.csrs[0]!;
    const quote = { attest: Buffer.alloc(120, 1), signature: Buffer.alloc(70, 2), pcrs: { 16: Buffer.alloc(32), 0: Buffer.alloc(32, 3) } };
    return {
      'AttestAgent.request': [
        { params: { joinToken: { token: 'abcdef0123456789' }, csr } },
        { params: { tpm: { ekCertificate: Buffer.alloc(900, 4), ekIntermediates: [pki.caDer], ekPublic: Buffer.alloc(314, 5), akPublic: Buffer.alloc(90, 6),
          keylimeQuoteEndpoint: { host: '10.0.0.1', port: 9002, tlsCertificatePem: '-----BEGIN CERTIFICATE-----', apiVersion: '2.3' }, latencyProbeEndpoint: { host: 'node1', port: 8444 } }, csr } },
        { challengeResponse: { activatedSecret: Buffer.alloc(32, 7), unifiedIdentity: { quote, claimsDocument: Buffer.from('{"readings":[],"v":1}'), sensorEvidence: Buffer.alloc(10) }, pcrQuote: quote } },
      ],
      'AttestAgent.response': [
        { challenge: { credentialBlob: Buffer.alloc(68, 1), encryptedSecret: Buffer.alloc(256, 2), nonce: Buffer.alloc(32, 3), expiresAt: 1_900_000_000, quotePcrs: [0, 1, 7], selectorPcrs: [16] } },
        { result: { spiffeId: 'spiffe://example.org/spire/agent/tpm/abc', svidChain: pki.leaves.slice(0, 2), selectors: [{ type: 'tpm', value: 'ek_hash:ab' }], bundle: Buffer.from('{"keys":[]}'), canRenew: true, unifiedIdentityClaims: Buffer.from('{}') } },
      ],
      'RenewAgent.request': [{ csr }],
      'RenewAgent.response': [{ svid: { spiffeId: 'spiffe://example.org/a', certChain: [pki.leaves[0]!], expiresAt: 1_900_000_000 } }],
      'SyncEntries.request': [{ knownRevision: '42' }],
      'SyncEntries.response': [{ revision: '43', unchanged: false, entries: [{ id: 'e1', spiffeId: 'spiffe://example.org/w', parentId: 'spiffe://example.org/a', selectors: [{ type: 'unix', value: 'uid:1000' }],
        x509SvidTtl: 3600, jwtSvidTtl: 300, federatesWith: ['other.org'], dnsNames: ['w.example.org'], admin: false, downstream: false, expiresAt: 0, hint: 'h', revisionNumber: 9 }] }],
      'FetchBundles.request': [{ knownSequence: 3 }],
      'FetchBundles.response': [{ trustDomain: 'example.org', sequence: 4, bundle: Buffer.from('{"keys":[]}'), federatedBundles: { 'other.org': Buffer.from('{"keys":[]}') } }],
      'BatchNewX509Svid.request': [{ params: [{ entryId: 'e1', csr }, { entryId: 'e2', csr }] }],
      'BatchNewX509Svid.response': [{ results: [{ entryId: 'e1', svid: { spiffeId: 'spiffe://example.org/w', certChain: [pki.leaves[0]!], expiresAt: 1 } }] }],
      'NewJwtSvid.request': [{ entryId: 'e1', audience: ['a', 'b'] }],
      'NewJwtSvid.response': [{ svid: { token: 'eyJ.x.y', expiresAt: 1 } }],
      'WatchAgent.request': [{}],
      'WatchAgent.response': [{ kind: 'ENTRIES_CHANGED' }],
    };
  },
);

export const workloadApiProto = protoTarget(
  'workload-api-proto',
  'Workload API protobuf messages (proto/workload.proto, including google.protobuf.Struct claims), every method\'s request and response, through grpc-js\'s deserializers',
  workloadServiceDefinition,
  () => {
    const pki = testPki();
    const claims = { fields: { sub: { stringValue: 'spiffe://example.org/w' }, aud: { listValue: { values: [{ stringValue: 'a' }] } }, exp: { numberValue: 1.9e9 },
      nested: { structValue: { fields: { ok: { boolValue: true }, n: { nullValue: 'NULL_VALUE' } } } } } };
    return {
      'FetchX509SVID.response': [{ svids: [{ spiffe_id: 'spiffe://example.org/w', x509_svid: Buffer.concat(pki.leaves.slice(0, 1)), x509_svid_key: Buffer.alloc(138, 1), bundle: pki.caDer, hint: 'h' }],
        crl: [], federated_bundles: { 'other.org': pki.caDer } }],
      'FetchX509Bundles.response': [{ crl: [], bundles: { 'example.org': pki.caDer } }],
      'FetchJWTSVID.request': [{ audience: ['a', 'b'], spiffe_id: 'spiffe://example.org/w' }],
      'FetchJWTSVID.response': [{ svids: [{ spiffe_id: 'spiffe://example.org/w', svid: 'eyJ.x.y', hint: '' }] }],
      'FetchJWTBundles.response': [{ bundles: { 'example.org': Buffer.from('{"keys":[]}') } }],
      'ValidateJWTSVID.request': [{ audience: 'a', svid: 'eyJ.x.y' }],
      'ValidateJWTSVID.response': [{ spiffe_id: 'spiffe://example.org/w', claims }],
    };
  },
);
