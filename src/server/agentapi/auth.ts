// Authenticates agent API callers by their X.509-SVID (the TLS client certificate). The TLS layer
// has already verified the chain against the bundle's X.509 authorities; here the SPIFFE rules
// (verifyX509Svid), the agent's standing in the datastore and the certificate's serial are checked.
import crypto from 'node:crypto';
import type tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { Bundle, BundleSet } from '../../spiffe/bundle.js';
import { TrustDomain, type SpiffeId } from '../../spiffe/id.js';
import { verifyX509Svid } from '../../spiffe/x509svid.js';
import type { AttestedNode, DataStore } from '../datastore/types.js';
import type { CaManager } from '../ca/manager.js';
import { issuerChain, normalizeSerial } from '../ca/issuer.js';
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

/**
 * The intermediates each agent presented in its TLS handshake, by leaf fingerprint. Under an upstream
 * CA shared by several servers (HA), an agent SVID another server issued chains through that server's
 * intermediate, which this one does not hold; grpc-js hands handlers only the leaf. The chain is
 * untrusted input: verifyX509Svid checks it up to a bundle root as always.
 */
export class PresentedIntermediates {
  /** Kept while a connection with that leaf is open: bounded by the connection caps. */
  private readonly byLeaf = new Map<string, { chain: Buffer[]; sockets: number }>();

  record(socket: tls.TLSSocket): void {
    const leaf = socket.getPeerCertificate(true);
    if (!leaf?.raw) return;
    const chain: Buffer[] = [];
    for (let c = leaf.issuerCertificate; c?.raw && chain.length < 8; c = c.issuerCertificate) {
      if (c.issuerCertificate === c || c.raw.equals(chain[chain.length - 1] ?? leaf.raw)) break; // a root: in the bundle already
      chain.push(c.raw);
    }
    if (chain.length === 0) return;
    const fp = leaf.fingerprint256;
    const held = this.byLeaf.get(fp);
    if (held) held.sockets++;
    else this.byLeaf.set(fp, { chain, sockets: 1 });
    socket.once('close', () => {
      const h = this.byLeaf.get(fp);
      if (h && --h.sockets === 0) this.byLeaf.delete(fp);
    });
  }

  get(fingerprint256: string): Buffer[] | undefined {
    return this.byLeaf.get(fingerprint256)?.chain;
  }
}

/** One per process: the agent API server records, the authenticator reads. */
export const presentedIntermediates = new PresentedIntermediates();

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
      const chain = this.chainFor(peer.raw, peer.fingerprint256);
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
  private chainFor(leafDer: Buffer, fingerprint256: string): Buffer[] {
    const leaf = new crypto.X509Certificate(leafDer);
    for (const a of this.ca.authorities().x509) {
      const above = issuerChain(a);
      if (above.length === 0) continue;
      const ca = new crypto.X509Certificate(a.certificateDer);
      if (leaf.checkIssued(ca) && leaf.verify(ca.publicKey)) return [leafDer, ...above];
    }
    // Not one of ours: another server's intermediate, as the agent presented it.
    return [leafDer, ...(presentedIntermediates.get(fingerprint256) ?? [])];
  }
}

