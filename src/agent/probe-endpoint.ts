// The latency probe endpoint the agent serves (latencyProbe in the config): landmarks time challenges
// answered with the agent SVID's key, or with a TPM quote by the attested AK (docs/latency-witness.md).
// It serves the agent SVID, so it starts once the node has one; the port is fixed in the config
// because the agent advertises it at attestation, before it has an SVID to serve.
import crypto from 'node:crypto';
import type { LatencyProbeEndpoint } from '../api/agent-api.js';
import { startProbeResponder, type ProbeResponder } from '../latency/responder.js';
import type { Bundle, TrustDomain } from '../spiffe/index.js';
import { SpiffeId } from '../spiffe/id.js';
import type { X509Svid } from '../spiffe/svid-source.js';
import { authorizeOneOf } from '../workload/authorizer.js';
import { WorkloadError } from '../workload/errors.js';
import type { X509SourceLike } from '../workload/source.js';
import { AgentStartError, type AgentContext } from './context.js';
import type { TpmCredentialSource } from './node-attestor.js';

/** What the agent advertises at attestation (undefined when latencyProbe is not configured). */
export function advertisedProbeEndpoint(ctx: Pick<AgentContext, 'config'>): LatencyProbeEndpoint | undefined {
  const p = ctx.config.latencyProbe;
  return p ? { host: p.advertiseAddress ?? p.bindAddress, port: p.port } : undefined;
}

/** Starts the responder (undefined when not configured). Call once the node holds an agent SVID. */
export async function startAgentProbeEndpoint(ctx: AgentContext, tpm: TpmCredentialSource | undefined): Promise<ProbeResponder | undefined> {
  const p = ctx.config.latencyProbe;
  if (!p) return undefined;
  const probeQuote = tpm?.probeQuote?.bind(tpm);
  const responder = await startProbeResponder({
    source: new AgentSvidSource(ctx),
    landmarks: authorizeOneOf(p.landmarks),
    host: p.bindAddress,
    port: p.port,
    ...(probeQuote ? { quote: probeQuote } : {}),
    logger: ctx.log.child({ component: 'latency-probe' }),
  }).catch((e: unknown) => {
    throw new AgentStartError(`latencyProbe: cannot serve the probe endpoint on ${p.bindAddress}:${p.port}: ${(e as Error).message}`, { cause: e });
  });
  ctx.log.info({ host: p.bindAddress, port: responder.port, landmarks: p.landmarks, tpm: probeQuote !== undefined }, 'latency probe endpoint listening');
  return responder;
}

/**
 * The agent SVID and own trust bundle as an X509SourceLike, read from the agent's current state. A
 * cheap one-second check tells the TLS server when the SVID or bundle changed (renewal, re-attestation).
 */
class AgentSvidSource implements X509SourceLike {
  private stateRef: AgentContext['state'];
  private svid: X509Svid | undefined;
  private bundleRef: Bundle | undefined;
  private bundles: readonly Bundle[] = [];
  private readonly listeners = new Set<() => void>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly ctx: AgentContext) {}

  getX509Svid(): X509Svid {
    const s = this.ctx.state;
    if (s === undefined) throw new WorkloadError('no-svid', 'the agent has no SVID yet (not attested)');
    if (s !== this.stateRef || this.svid === undefined) {
      this.svid = {
        id: SpiffeId.parse(s.spiffeId),
        certificatesDer: s.chain,
        privateKey: crypto.createPrivateKey({ key: s.key, format: 'der', type: 'pkcs8' }),
        expiresAt: new Date(s.notAfter),
      };
      this.stateRef = s;
    }
    return this.svid;
  }

  getX509Bundles(): readonly Bundle[] {
    const own = this.ctx.bundles.own();
    if (own !== this.bundleRef) {
      this.bundleRef = own;
      this.bundles = own ? [own] : [];
    }
    return this.bundles;
  }

  getX509BundleForTrustDomain(td: TrustDomain): Bundle | undefined {
    const own = this.ctx.bundles.own();
    return own !== undefined && own.trustDomain.equals(td) ? own : undefined;
  }

  onUpdate(fn: () => void): () => void {
    this.listeners.add(fn);
    if (this.timer === undefined) {
      let state = this.ctx.state;
      let bundle = this.ctx.bundles.own();
      this.timer = setInterval(() => {
        if (this.ctx.state === state && this.ctx.bundles.own() === bundle) return;
        state = this.ctx.state;
        bundle = this.ctx.bundles.own();
        for (const l of this.listeners) l();
      }, 1000);
      this.timer.unref();
    }
    return () => {
      this.listeners.delete(fn);
      if (this.listeners.size === 0) {
        clearInterval(this.timer);
        this.timer = undefined;
      }
    };
  }
}
