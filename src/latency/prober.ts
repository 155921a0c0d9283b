// The landmark's side of the latency probe: one mTLS connection to the node's probe endpoint, N
// fresh challenges one after another, each timed from the write to the arrival of the whole reply.
// Replies are checked only after the last round (checking costs time that must not count), and one
// bad reply fails the whole probe: a node that cannot sign every challenge proves nothing.
import crypto from 'node:crypto';
import type tls from 'node:tls';
import { parseTpm2bPublic, type TpmPublic } from '../tpm/public.js';
import { verifyQuoteBinding } from '../tpm/quote.js';
import { authorizeId } from '../workload/authorizer.js';
import type { X509SourceLike } from '../workload/source.js';
import { peerOf, tlsConnect } from '../workload/tls.js';
import {
  CHALLENGE_BYTES, decodeTpmPayload, encodeChallenge, FrameReader, probeDigest, type ProbeFrame, type ProbeStrength,
} from './protocol.js';

export type ProbeErrorCode = 'connect' | 'refused' | 'timeout' | 'protocol' | 'bad-signature' | 'invalid-argument';

/** A probe that proved nothing; `code` says why. */
export class ProbeError extends Error {
  constructor(readonly code: ProbeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ProbeError';
  }
}

export interface ProbeOptions {
  /** The landmark's SVID and the bundles the node is verified against. */
  source: X509SourceLike;
  host: string;
  port: number;
  /** The node's SPIFFE ID: the endpoint must serve exactly this SVID. */
  nodeId: string;
  strength: ProbeStrength;
  /** Rounds (default 10, at most 256). */
  rounds?: number;
  /** The node's attested AK (TPM2B_PUBLIC), needed for `tpm`. */
  akPublic?: Buffer;
  /** The whole probe, connection included (default 10 s). */
  timeoutMs?: number;
}

export interface ProbeResult {
  nodeId: string;
  landmarkId: string;
  strength: ProbeStrength;
  rounds: number;
  /** Smallest round trip of a valid reply, in seconds: what bounds the distance. */
  rttMinS: number;
  rttP50S: number;
  /** The TLS handshake, connection setup included (not used for the bound). */
  connectS: number;
}

export const MAX_ROUNDS = 256;

export async function probeNode(o: ProbeOptions): Promise<ProbeResult> {
  const rounds = o.rounds ?? 10;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > MAX_ROUNDS) throw new ProbeError('invalid-argument', `rounds must be 1..${MAX_ROUNDS}, got ${rounds}`);
  let ak: TpmPublic | undefined;
  if (o.strength === 'tpm') {
    if (o.akPublic === undefined) throw new ProbeError('invalid-argument', 'a tpm probe needs the node\'s attested AK public');
    try {
      ak = parseTpm2bPublic(o.akPublic);
    } catch (e) {
      throw new ProbeError('invalid-argument', `the node's AK public is malformed: ${(e as Error).message}`, { cause: e });
    }
  }
  const landmarkId = o.source.getX509Svid().id.toString();
  const timeoutMs = o.timeoutMs ?? 10_000;
  const started = process.hrtime.bigint();
  const socket = tlsConnect({ source: o.source, authorizer: authorizeId(o.nodeId), host: o.host, port: o.port });
  const timer = setTimeout(() => socket.destroy(new ProbeError('timeout', `probe of ${o.nodeId} at ${o.host}:${o.port} did not finish within ${timeoutMs} ms`)), timeoutMs);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', () => resolve());
      socket.once('error', (e) => reject(e instanceof ProbeError ? e : new ProbeError('connect', `cannot open the probe connection to ${o.host}:${o.port}: ${e.message}`, { cause: e })));
    });
    if (socket.destroyed) throw new ProbeError('connect', `the probe endpoint at ${o.host}:${o.port} is not ${o.nodeId}`);
    socket.setNoDelay(true);
    const connectS = Number(process.hrtime.bigint() - started) / 1e9;
    const nodeCert = peerOf(socket)?.x509Chain?.[0];
    if (nodeCert === undefined) throw new ProbeError('connect', 'the probe endpoint presented no verified certificate');

    const frames = frameQueue(socket);
    const samples: { challenge: Buffer; payload: Buffer; rttS: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      const challenge = crypto.randomBytes(CHALLENGE_BYTES);
      const frame = encodeChallenge(o.strength, challenge);
      const t0 = process.hrtime.bigint();
      socket.write(frame);
      // The arrival time is taken in the data handler, so awaiting the frame adds nothing to the RTT.
      const { frame: reply, at } = await frames.next();
      const rttS = Number(at - t0) / 1e9;
      if (reply.type === 'refusal') throw new ProbeError('refused', `node ${o.nodeId} refused the probe: ${reply.reason}`);
      if (reply.type !== 'reply') throw new ProbeError('protocol', `node ${o.nodeId} sent a ${reply.type} frame, not a reply`);
      samples.push({ challenge, payload: reply.payload, rttS });
    }
    socket.end();

    const nodeKey = new crypto.X509Certificate(nodeCert).publicKey;
    samples.forEach((s, i) => {
      const digest = probeDigest(s.challenge, landmarkId, o.nodeId);
      if (o.strength === 'agent-key') {
        if (!crypto.verify('sha256', digest, nodeKey, s.payload)) {
          throw new ProbeError('bad-signature', `reply ${i + 1} of ${o.nodeId} is not signed by the key of its agent SVID over this challenge`);
        }
        return;
      }
      let q;
      try {
        q = decodeTpmPayload(s.payload);
        verifyQuoteBinding({ akPublic: ak as TpmPublic, attest: q.attest, signature: q.signature, expectedExtraData: digest });
      } catch (e) {
        throw new ProbeError('bad-signature', `reply ${i + 1} of ${o.nodeId} is not a quote by its attested AK over this challenge: ${(e as Error).message}`, { cause: e });
      }
    });
    const sorted = samples.map((s) => s.rttS).sort((a, b) => a - b);
    return {
      nodeId: o.nodeId, landmarkId, strength: o.strength, rounds,
      rttMinS: sorted[0] as number, rttP50S: sorted[Math.floor((sorted.length - 1) / 2)] as number, connectS,
    };
  } catch (e) {
    if (e instanceof ProbeError) throw e;
    throw new ProbeError('protocol', `probe of ${o.nodeId} failed: ${(e as Error).message}`, { cause: e });
  } finally {
    clearTimeout(timer);
    socket.destroy();
  }
}

interface Arrived { frame: ProbeFrame; at: bigint }

/** Frames from a socket with their arrival times, one await at a time; a bad frame, an error or the end rejects the wait. */
function frameQueue(socket: tls.TLSSocket): { next(): Promise<Arrived> } {
  const reader = new FrameReader();
  const ready: Arrived[] = [];
  let failure: Error | undefined;
  let waiter: { resolve: (f: Arrived) => void; reject: (e: Error) => void } | undefined;
  const fail = (e: Error): void => {
    failure ??= e;
    waiter?.reject(failure);
    waiter = undefined;
  };
  socket.on('data', (chunk: Buffer) => {
    const at = process.hrtime.bigint();
    try {
      for (const frame of reader.push(chunk)) ready.push({ frame, at });
    } catch (e) {
      fail(new ProbeError('protocol', `malformed reply: ${(e as Error).message}`));
      socket.destroy();
      return;
    }
    if (waiter !== undefined && ready.length > 0) {
      const w = waiter;
      waiter = undefined;
      w.resolve(ready.shift() as Arrived);
    }
  });
  socket.on('error', (e) => fail(e instanceof ProbeError ? e : new ProbeError('protocol', `probe connection failed: ${e.message}`, { cause: e })));
  socket.on('close', () => fail(new ProbeError('protocol', 'the node closed the probe connection early')));
  return {
    next: () => {
      const f = ready.shift();
      if (f !== undefined) return Promise.resolve(f);
      if (failure !== undefined) return Promise.reject(failure);
      return new Promise((resolve, reject) => { waiter = { resolve, reject }; });
    },
  };
}
