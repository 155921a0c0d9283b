// The latency probe's wire format, shared by the agent (which answers) and the landmark (which times).
//
// One mTLS connection carries N rounds. Each round the landmark sends a fresh 32-byte challenge and
// the node answers with a signature over probeDigest(challenge, landmark, node) by a key bound to its
// attestation: the agent SVID's key (`agent-key`) or a TPM2_Quote by the attested AK with the digest
// as qualifyingData (`tpm`). Binary frames, not JSON, because every microsecond of parsing is a
// kilometre of radius (c/2 ≈ 150 m per µs).
//
//   challenge  0x01 | strength (1 agent-key, 2 tpm) | 32-byte challenge            (34 bytes)
//   reply      0x02 | u32 length | payload                                        (payload ≤ 4096)
//              agent-key payload: the DER ECDSA/RSA signature (SHA-256) over the digest
//              tpm payload:       u16 attest length | TPMS_ATTEST | u16 sig length | TPMT_SIGNATURE
//   refusal    0x03 | u16 length | UTF-8 reason                                    (reason ≤ 512)
import crypto from 'node:crypto';

export type ProbeStrength = 'agent-key' | 'tpm';

export const CHALLENGE_BYTES = 32;
export const MAX_REPLY_PAYLOAD = 4096;
export const MAX_REFUSAL_BYTES = 512;
const FRAME_CHALLENGE = 0x01;
const FRAME_REPLY = 0x02;
const FRAME_REFUSAL = 0x03;
const STRENGTH_CODE: Record<ProbeStrength, number> = { 'agent-key': 1, tpm: 2 };
const DOMAIN = Buffer.from('terroir-latency-probe-v1\0', 'ascii');

/** A probe frame was malformed or out of bounds. */
export class ProbeProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProbeProtocolError';
  }
}

/**
 * What the node signs: SHA-256 of the domain, the challenge, and the landmark and node SPIFFE IDs
 * (each length-prefixed, so no two pairs of IDs give the same bytes). Binding both IDs means a reply
 * cannot be replayed to another landmark nor counted for another node.
 */
export function probeDigest(challenge: Buffer, landmarkId: string, nodeId: string): Buffer {
  if (challenge.length !== CHALLENGE_BYTES) throw new ProbeProtocolError(`a challenge is ${CHALLENGE_BYTES} bytes, got ${challenge.length}`);
  const lm = Buffer.from(landmarkId, 'utf8');
  const node = Buffer.from(nodeId, 'utf8');
  const len = (b: Buffer): Buffer => {
    if (b.length > 0xffff) throw new ProbeProtocolError('SPIFFE ID too long');
    const out = Buffer.alloc(2);
    out.writeUInt16BE(b.length);
    return out;
  };
  return crypto.createHash('sha256').update(DOMAIN).update(challenge).update(len(lm)).update(lm).update(len(node)).update(node).digest();
}

export function encodeChallenge(strength: ProbeStrength, challenge: Buffer): Buffer {
  if (challenge.length !== CHALLENGE_BYTES) throw new ProbeProtocolError(`a challenge is ${CHALLENGE_BYTES} bytes, got ${challenge.length}`);
  return Buffer.concat([Buffer.from([FRAME_CHALLENGE, STRENGTH_CODE[strength]]), challenge]);
}

export function encodeReply(payload: Buffer): Buffer {
  if (payload.length === 0 || payload.length > MAX_REPLY_PAYLOAD) throw new ProbeProtocolError(`a reply payload is 1..${MAX_REPLY_PAYLOAD} bytes, got ${payload.length}`);
  const head = Buffer.alloc(5);
  head[0] = FRAME_REPLY;
  head.writeUInt32BE(payload.length, 1);
  return Buffer.concat([head, payload]);
}

export function encodeRefusal(reason: string): Buffer {
  const text = Buffer.from(reason, 'utf8').subarray(0, MAX_REFUSAL_BYTES);
  const head = Buffer.alloc(3);
  head[0] = FRAME_REFUSAL;
  head.writeUInt16BE(text.length, 1);
  return Buffer.concat([head, text]);
}

/** The TPM reply payload: a quote's attest and signature, each u16-length-prefixed. */
export function encodeTpmPayload(attest: Buffer, signature: Buffer): Buffer {
  if (attest.length > 0xffff || signature.length > 0xffff) throw new ProbeProtocolError('quote too large');
  const a = Buffer.alloc(2);
  a.writeUInt16BE(attest.length);
  const s = Buffer.alloc(2);
  s.writeUInt16BE(signature.length);
  return Buffer.concat([a, attest, s, signature]);
}

export function decodeTpmPayload(payload: Buffer): { attest: Buffer; signature: Buffer } {
  if (payload.length < 4) throw new ProbeProtocolError('tpm reply is shorter than its length fields');
  const al = payload.readUInt16BE(0);
  if (2 + al + 2 > payload.length) throw new ProbeProtocolError('tpm reply: attest length runs past the payload');
  const attest = payload.subarray(2, 2 + al);
  const sl = payload.readUInt16BE(2 + al);
  if (2 + al + 2 + sl !== payload.length) throw new ProbeProtocolError('tpm reply: signature length does not end the payload');
  return { attest, signature: payload.subarray(4 + al) };
}

export type ProbeFrame =
  | { type: 'challenge'; strength: ProbeStrength; challenge: Buffer }
  | { type: 'reply'; payload: Buffer }
  | { type: 'refusal'; reason: string };

/**
 * Splits a byte stream into frames. Bounded: a frame longer than the protocol allows, or an unknown
 * type, is an error and the caller closes the connection; nothing is buffered beyond one frame.
 */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  /** Appends `chunk` and returns every complete frame; throws ProbeProtocolError on a bad frame. */
  push(chunk: Buffer): ProbeFrame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: ProbeFrame[] = [];
    for (;;) {
      const f = this.next();
      if (f === undefined) break;
      out.push(f);
    }
    return out;
  }

  private next(): ProbeFrame | undefined {
    const b = this.buf;
    if (b.length === 0) return undefined;
    switch (b[0]) {
      case FRAME_CHALLENGE: {
        if (b.length < 2 + CHALLENGE_BYTES) return undefined;
        const code = b[1];
        const strength = code === 1 ? 'agent-key' : code === 2 ? 'tpm' : undefined;
        if (strength === undefined) throw new ProbeProtocolError(`unknown probe strength code ${code}`);
        this.buf = b.subarray(2 + CHALLENGE_BYTES);
        return { type: 'challenge', strength, challenge: Buffer.from(b.subarray(2, 2 + CHALLENGE_BYTES)) };
      }
      case FRAME_REPLY: {
        if (b.length < 5) return undefined;
        const n = b.readUInt32BE(1);
        if (n === 0 || n > MAX_REPLY_PAYLOAD) throw new ProbeProtocolError(`reply frame of ${n} bytes; at most ${MAX_REPLY_PAYLOAD}`);
        if (b.length < 5 + n) return undefined;
        this.buf = b.subarray(5 + n);
        return { type: 'reply', payload: Buffer.from(b.subarray(5, 5 + n)) };
      }
      case FRAME_REFUSAL: {
        if (b.length < 3) return undefined;
        const n = b.readUInt16BE(1);
        if (n > MAX_REFUSAL_BYTES) throw new ProbeProtocolError(`refusal frame of ${n} bytes; at most ${MAX_REFUSAL_BYTES}`);
        if (b.length < 3 + n) return undefined;
        this.buf = b.subarray(3 + n);
        return { type: 'refusal', reason: b.subarray(3, 3 + n).toString('utf8') };
      }
      default:
        throw new ProbeProtocolError(`unknown probe frame type 0x${(b[0] as number).toString(16)}`);
    }
  }
}
