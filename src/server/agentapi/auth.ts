// Authenticates agent API callers by their X.509-SVID (the TLS client certificate). The TLS layer
// has already verified the chain against the bundle's X.509 authorities; here the SPIFFE rules
// (verifyX509Svid), the agent's standing in the datastore and the certificate's serial are checked.
import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { Bundle, BundleSet } from '../../spiffe/bundle.js';
import { TrustDomain, type SpiffeId } from '../../spiffe/id.js';
import { verifyX509Svid } from '../../spiffe/x509svid.js';
import type { AttestedNode, DataStore } from '../datastore/types.js';
import type { CaManager } from '../ca/manager.js';
import { normalizeSerial } from '../ca/issuer.js';
import { rpcError } from './status.js';

export interface AuthenticatedAgent {
  id: SpiffeId;
  node: AttestedNode;
  serial: string;
}

interface VerifiedLeaf {
  id: SpiffeId;
  serial: string;
  notAfter: number;
}

type CallWithAuth = Pick<grpc.ServerUnaryCall<unknown, unknown>, 'getAuthContext'>;

export class AgentAuthenticator {
  // Verified leaves by fingerprint: the chain checks run once per certificate, not per call.
  private readonly verified = new Map<string, VerifiedLeaf>();
  private bundles: { sequence: bigint; set: BundleSet } | undefined;
  private readonly td: TrustDomain;

  constructor(
    private readonly ca: CaManager,
    private readonly store: Pick<DataStore, 'getNode' | 'updateNode'>,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.td = TrustDomain.parse(ca.trustDomain);
  }

  private bundleSet(): BundleSet {
    const b = this.ca.bundle();
    if (!this.bundles || this.bundles.sequence !== b.sequence) {
      const bundle = Bundle.parse(this.td, b.bundleJson);
      this.bundles = { sequence: b.sequence, set: new BundleSet(bundle) };
      this.verified.clear();
    }
    return this.bundles.set;
  }

  /** The calling agent, or a gRPC error (UNAUTHENTICATED / PERMISSION_DENIED) to return. */
  async authenticate(call: CallWithAuth): Promise<AuthenticatedAgent> {
    const peer = call.getAuthContext()?.sslPeerCertificate;
    if (!peer?.raw) {
      throw rpcError(grpc.status.UNAUTHENTICATED, 'this RPC needs the agent X.509-SVID as TLS client certificate (attest first with AttestAgent)');
    }
    const set = this.bundleSet();
    const nowMs = this.now().getTime();
    let leaf = this.verified.get(peer.fingerprint256);
    if (!leaf || leaf.notAfter <= nowMs) {
      const chain = this.chainFor(peer.raw);
      let id: SpiffeId;
      let notAfter: number;
      try {
        const v = verifyX509Svid(chain, set, { now: this.now() });
        id = v.id;
        notAfter = new Date(v.leaf.validTo).getTime();
      } catch (err) {
        throw rpcError(grpc.status.UNAUTHENTICATED, `client certificate is not a valid X.509-SVID of this trust domain: ${(err as Error).message}`);
      }
      // Any ID of our trust domain may belong to an agent (join tokens can name one); what makes it an
      // agent is the attested-node record and its current serial, checked below.
      if (!id.memberOf(this.td) || id.path === '/spire/server') {
        throw rpcError(grpc.status.PERMISSION_DENIED, `${id.toString()} is not an agent of trust domain ${this.ca.trustDomain}`);
      }
      leaf = { id, serial: normalizeSerial(new crypto.X509Certificate(peer.raw).serialNumber), notAfter };
      if (this.verified.size > 50_000) this.verified.clear();
      this.verified.set(peer.fingerprint256, leaf);
    }
    const agentId = leaf.id.toString();
    let node = await this.store.getNode(agentId);
    if (!node) throw rpcError(grpc.status.UNAUTHENTICATED, `agent ${agentId} is not attested (evicted or never attested); attest again with AttestAgent`);
    if (node.banned) throw rpcError(grpc.status.PERMISSION_DENIED, `agent ${agentId} is banned; an operator must evict it before it may attest again`);
    if (node.serialNumber !== leaf.serial) {
      if (node.newSerialNumber === leaf.serial) {
        // The agent uses the SVID from its last renewal: that one becomes current, the old one stops working.
        node = await this.store.updateNode(agentId, { serialNumber: leaf.serial, newSerialNumber: null });
      } else {
        throw rpcError(grpc.status.UNAUTHENTICATED, `agent ${agentId} presented an SVID that is no longer its current one (serial ${leaf.serial}); use the latest SVID or attest again`);
      }
    }
    return { id: leaf.id, node, serial: leaf.serial };
  }

  /**
   * The chain to verify: the leaf alone when a bundle root signed it, or the leaf plus our
   * intermediate (and what lies above it) when the CA is under an upstream CA.
   */
  private chainFor(leafDer: Buffer): Buffer[] {
    const leaf = new crypto.X509Certificate(leafDer);
    for (const a of this.ca.authorities().x509) {
      if (a.chainDer.length === 0) continue;
      const ca = new crypto.X509Certificate(a.certificateDer);
      if (leaf.checkIssued(ca) && leaf.verify(ca.publicKey)) return [leafDer, a.certificateDer, ...a.chainDer];
    }
    return [leafDer];
  }
}

