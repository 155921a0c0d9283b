// The server's side of the landmark API: POST /v1/probe over SPIFFE mTLS, where the landmark must
// present exactly its declared SPIFFE ID. Answers are bounded and every failure says whether another
// try could help (the node's endpoint was not up yet) or not (a bad answer).
import https from 'node:https';
import type { Logger } from 'pino';
import { authorizeId } from '../workload/authorizer.js';
import { SpiffeHttpsAgent } from '../workload/https.js';
import type { X509SourceLike } from '../workload/source.js';
import { MAX_MEASUREMENT_BYTES } from './measurement.js';

const MAX_RESPONSE_BYTES = MAX_MEASUREMENT_BYTES + 4096;

/** What the server asks a landmark (the landmark's request schema: src/landmark/landmark.ts). */
export interface LandmarkProbeRequest {
  request: string;
  node: string;
  host: string;
  port: number;
  strength: 'agent-key' | 'tpm';
  rounds: number;
  akPublic?: string;
}

export class LandmarkAnswerError extends Error {
  constructor(message: string, readonly transient = false) {
    super(message);
    this.name = 'LandmarkAnswerError';
  }
}

export class LandmarkClient {
  private readonly agents = new Map<string, SpiffeHttpsAgent>();

  constructor(private readonly source: X509SourceLike, private readonly log?: Logger) {}

  /** The landmark's signed measurement (compact JWS; the caller verifies it). */
  probe(url: string, landmarkId: string, body: LandmarkProbeRequest, timeoutMs: number): Promise<string> {
    const text = JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = https.request(new URL('/v1/probe', url), {
        method: 'POST', agent: this.agentFor(landmarkId), timeout: timeoutMs,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
      }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_RESPONSE_BYTES) { req.destroy(new LandmarkAnswerError(`landmark ${landmarkId} answered more than ${MAX_RESPONSE_BYTES} bytes`)); return; }
          chunks.push(c);
        });
        res.on('end', () => {
          let parsed: { measurement?: unknown; error?: { code?: unknown; message?: unknown } };
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof parsed;
          } catch {
            reject(new LandmarkAnswerError(`landmark ${landmarkId} answered ${res.statusCode} with a body that is not JSON`));
            return;
          }
          if (res.statusCode === 200 && typeof parsed.measurement === 'string') { resolve(parsed.measurement); return; }
          const code = typeof parsed.error?.code === 'string' ? parsed.error.code : `http_${res.statusCode}`;
          const message = typeof parsed.error?.message === 'string' ? parsed.error.message.slice(0, 500) : 'no reason given';
          const transient = res.statusCode === 503 || code === 'probe_connect' || code === 'probe_timeout';
          reject(new LandmarkAnswerError(`landmark ${landmarkId}: ${code}: ${message}`, transient));
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new LandmarkAnswerError(`landmark ${landmarkId} did not answer within ${timeoutMs} ms`, true)));
      req.on('error', (e) => reject(e instanceof LandmarkAnswerError ? e : new LandmarkAnswerError(`cannot reach landmark ${landmarkId} at ${url}: ${e.message}`, true)));
      req.end(text);
    });
  }

  close(): void {
    for (const a of this.agents.values()) a.destroy();
    this.agents.clear();
  }

  private agentFor(id: string): SpiffeHttpsAgent {
    let a = this.agents.get(id);
    if (a === undefined) {
      a = new SpiffeHttpsAgent({ source: this.source, authorizer: authorizeId(id), ...(this.log ? { logger: this.log } : {}) }, { keepAlive: true, maxSockets: 4 });
      this.agents.set(id, a);
    }
    return a;
  }
}
