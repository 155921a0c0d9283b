// The node's side of the latency probe: an mTLS endpoint serving the agent SVID that answers each
// challenge of an authorized landmark at once, with a signature the landmark can check after timing.
// It never decides anything: a slow or wrong answer only makes the node look farther away or fail.
import crypto from 'node:crypto';
import type net from 'node:net';
import type tls from 'node:tls';
import pino, { type Logger } from 'pino';
import type { Authorizer } from '../workload/authorizer.js';
import type { X509SourceLike } from '../workload/source.js';
import { createTlsServer } from '../workload/tls.js';
import {
  encodeRefusal, encodeReply, encodeTpmPayload, FrameReader, probeDigest, ProbeProtocolError, type ProbeStrength,
} from './protocol.js';

/** Signs a probe digest with the TPM: a TPM2_Quote by the attested AK with the digest as qualifyingData. */
export type ProbeQuoter = (digest: Buffer) => Promise<{ attest: Buffer; signature: Buffer }>;

export interface ProbeResponderOptions {
  /** The agent SVID and the bundles landmarks are verified against. */
  source: X509SourceLike;
  /** Which landmarks may probe this node (after SPIFFE verification). */
  landmarks: Authorizer;
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Present when the node answers `tpm` probes. */
  quote?: ProbeQuoter;
  logger?: Logger;
  /** Rounds one connection may ask for (default 256). */
  maxRounds?: number;
  /** A connection idle this long is closed (default 10 s). */
  idleTimeoutMs?: number;
  /** Concurrent connections (default 16). */
  maxConnections?: number;
}

export interface ProbeResponder {
  readonly port: number;
  close(): Promise<void>;
}

export async function startProbeResponder(o: ProbeResponderOptions): Promise<ProbeResponder> {
  const log = o.logger ?? pino({ level: 'silent' });
  const maxRounds = o.maxRounds ?? 256;
  const idleMs = o.idleTimeoutMs ?? 10_000;
  const sockets = new Set<net.Socket>();
  const server = createTlsServer({ source: o.source, authorizer: o.landmarks, logger: log }, (socket, peer) => {
    serve(socket, peer.id.toString());
  });
  server.maxConnections = o.maxConnections ?? 16;
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });

  function serve(socket: tls.TLSSocket, landmark: string): void {
    socket.setNoDelay(true);
    socket.setTimeout(idleMs, () => socket.destroy());
    // The key answering agent-key probes must be the one in the certificate this connection showed;
    // a rotation between handshake and here is refused (the landmark probes again).
    const svid = o.source.getX509Svid();
    const shown = socket.getCertificate() as { raw?: Buffer } | null;
    const sameCert = shown?.raw !== undefined && svid.certificatesDer[0] !== undefined && shown.raw.equals(svid.certificatesDer[0]);
    const nodeId = svid.id.toString();
    const reader = new FrameReader();
    let rounds = 0;
    let busy: Promise<void> | undefined;
    const refuse = (why: string): void => {
      log.warn({ landmark, why }, 'latency probe refused');
      socket.end(encodeRefusal(why));
    };
    socket.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = reader.push(chunk);
      } catch (e) {
        refuse((e as ProbeProtocolError).message);
        return;
      }
      for (const f of frames) {
        if (f.type !== 'challenge') { refuse(`expected a challenge frame, got ${f.type}`); return; }
        if (++rounds > maxRounds) { refuse(`more than ${maxRounds} rounds on one connection`); return; }
        // agent-key with nothing queued: answer here and now (each microsecond is 150 m of radius).
        if (busy === undefined && f.strength === 'agent-key') {
          try {
            socket.write(answerWithKey(f.challenge));
          } catch (e) {
            refuse((e as Error).message);
            return;
          }
          continue;
        }
        // Otherwise in order, behind the TPM.
        const next: Promise<void> = (busy ?? Promise.resolve()).then(() => answer(f.strength, f.challenge)).then(
          (reply) => { if (!socket.destroyed) socket.write(reply); },
          (e: unknown) => refuse((e as Error).message),
        ).finally(() => { if (busy === next) busy = undefined; });
        busy = next;
      }
    });
    socket.on('error', () => undefined);

    function answerWithKey(challenge: Buffer): Buffer {
      if (!sameCert) throw new Error('the agent SVID rotated during the handshake; probe again');
      return encodeReply(crypto.sign('sha256', probeDigest(challenge, landmark, nodeId), svid.privateKey));
    }

    async function answer(strength: ProbeStrength, challenge: Buffer): Promise<Buffer> {
      if (strength === 'agent-key') return answerWithKey(challenge);
      if (o.quote === undefined) throw new Error('this node does not answer tpm probes (no TPM quoter)');
      const q = await o.quote(probeDigest(challenge, landmark, nodeId));
      return encodeReply(encodeTpmPayload(q.attest, q.signature));
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => { server.off('error', reject); resolve(); });
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
