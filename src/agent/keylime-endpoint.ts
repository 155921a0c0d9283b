// The Keylime quote endpoint the agent serves (keylime.quoteEndpoint), backed by the attestation TPM
// and AK, and what the agent makes of the verifier's revocation notifications.
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { Logger } from 'pino';
import type { KeylimeQuoteEndpoint } from '../api/agent-api.js';
import { startQuoteEndpoint, type QuoteEndpoint } from '../keylime/index.js';
import type { RevocationNotification } from '../keylime/quote-endpoint.js';
import type { AgentConfig } from './config.js';
import { AgentStartError } from './context.js';
import type { TpmCredentialSource } from './node-attestor.js';

export interface AgentQuoteEndpoint {
  server: QuoteEndpoint;
  /** What the agent tells the server at attestation (the server enrolls it with the verifier). */
  advertised: KeylimeQuoteEndpoint;
}

/** The SPIFFE ID of a TPM node ends in its EK hash, which is also its Keylime agent id (server: keylimeIdOf). */
const TPM_NODE_ID = /\/agent\/tpm\/([0-9a-f]{64})$/;

/**
 * Serves the Keylime quote endpoint (undefined when not configured); the key bound into PCR 16 is
 * the endpoint certificate's, which the verifier pins.
 */
export async function startAgentQuoteEndpoint(
  config: AgentConfig, tpm: TpmCredentialSource | undefined, log: Logger, onRevocation: (n: RevocationNotification) => void,
): Promise<AgentQuoteEndpoint | undefined> {
  const qe = config.keylime?.quoteEndpoint;
  if (!qe) return undefined;
  const quoter = tpm?.quoter?.();
  if (!quoter) throw new AgentStartError('keylime.quoteEndpoint is configured but the TPM session cannot quote (open it with openTpmCredentialSource)');
  const read = (file: string, what: string): string => {
    try {
      return fs.readFileSync(file, 'utf8');
    } catch (e) {
      throw new AgentStartError(`keylime.quoteEndpoint.${what}: cannot read ${file}: ${(e as Error).message}`);
    }
  };
  const cert = read(qe.certFile, 'certFile');
  const key = read(qe.keyFile, 'keyFile');
  const clientCa = read(qe.clientCaFile, 'clientCaFile');
  let pubkeyPem: string;
  try {
    const x = new crypto.X509Certificate(cert);
    if (!x.checkPrivateKey(crypto.createPrivateKey(key))) throw new Error('the key does not belong to the certificate');
    pubkeyPem = x.publicKey.export({ type: 'spki', format: 'pem' }).toString();
  } catch (e) {
    throw new AgentStartError(`keylime.quoteEndpoint: certFile/keyFile unusable: ${(e as Error).message}`);
  }
  const server = await startQuoteEndpoint({
    quoter, pubkeyPem, encAlg: 'ecc', signAlg: 'ecdsa', cert, key, clientCa,
    host: qe.bindAddress, port: qe.port, logger: log.child({ component: 'keylime-quote-endpoint' }),
    onRevocation,
  });
  log.info({ host: qe.bindAddress, port: server.port }, 'Keylime quote endpoint listening');
  return {
    server,
    advertised: { host: qe.advertiseAddress ?? qe.bindAddress, port: server.port, tlsCertificatePem: cert, apiVersion: '2.2' },
  };
}

/**
 * Whether a revocation notification (authenticated by the endpoint's mTLS: the verifier's client CA
 * only) is about this node. Keylime notifies every node it polls about any node's failure, so only
 * one naming this node's Keylime agent id counts; the rest are logged and ignored.
 */
export function revocationIsForThisNode(n: RevocationNotification, spiffeId: string | undefined, log: Logger): boolean {
  const own = TPM_NODE_ID.exec(spiffeId ?? '')?.[1];
  const fields = { type: n.type, keylimeAgentId: n.agentId, eventId: n.eventId, severity: n.severityLabel };
  if (own === undefined || n.agentId !== own) {
    log.info(fields, 'Keylime revocation notification about another node: nothing to drop here');
    return false;
  }
  log.warn(fields, 'Keylime revoked this node: dropping every SVID and attesting again');
  return true;
}
