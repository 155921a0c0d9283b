// The latency witness (docs/latency-witness.md): after a Unified Identity attestation the server asks
// every configured landmark to probe the node, checks each signed measurement, turns the smallest
// round trip into a disk around the landmark's DECLARED position, and has the pipeline re-decide the
// node's place with those disks. Only the server's config says where a landmark is; only a landmark's
// signature says what it measured; only the node's attested key can answer the challenges.
import crypto from 'node:crypto';
import type { Logger } from 'pino';
import { radiusForRttM, type LandmarkDisk, type ProbeStrength } from '../../geo/latency.js';
import {
  LandmarkAnswerError, LandmarkClient, probeNode, ProbeError, signMeasurement, verifyMeasurement,
  type LatencyMeasurement, type ProbeIdentity,
} from '../../latency/index.js';
import type { ServerConfig } from '../config.js';

export type LatencySettings = NonNullable<NonNullable<ServerConfig['unifiedIdentity']>['latency']>;

export interface ProbeTarget {
  nodeId: string;
  host: string;
  port: number;
  /** TPM2B_PUBLIC of the node's attested AK (tpm strength). */
  akPublic?: Buffer;
}

export interface LandmarkFailure {
  landmark: string;
  /** Whether trying again could help (the endpoint was not up yet); false for a bad answer. */
  transient: boolean;
  reason: string;
}

export interface LatencyRound {
  disks: LandmarkDisk[];
  /** The signed measurements behind the disks (compact JWS), for the audit log. */
  measurements: string[];
  failures: LandmarkFailure[];
}

export class LatencyWitness {
  private readonly client: LandmarkClient;
  private readonly serverId: string;

  constructor(
    private readonly settings: LatencySettings,
    /** The server's own SVID and bundle (ServerSvidSource). */
    private readonly source: ProbeIdentity,
    private readonly log: Logger,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.serverId = source.getX509Svid().id.toString();
    this.client = new LandmarkClient(source, log);
  }

  get strength(): ProbeStrength {
    return this.settings.strength;
  }

  /** Asks every landmark (in parallel), with retries while the node's endpoint is not reachable. */
  async measure(target: ProbeTarget): Promise<LatencyRound> {
    const results = await Promise.all(this.settings.landmarks.map((l) => this.withRetries(l, target)));
    const round: LatencyRound = { disks: [], measurements: [], failures: [] };
    for (const r of results) {
      if ('failure' in r) { round.failures.push(r.failure); continue; }
      round.disks.push(r.disk);
      round.measurements.push(r.jws);
    }
    return round;
  }

  close(): void {
    this.client.close();
  }

  private async withRetries(l: LatencySettings['landmarks'][number], t: ProbeTarget): Promise<{ disk: LandmarkDisk; jws: string } | { failure: LandmarkFailure }> {
    let last: LandmarkFailure | undefined;
    for (let attempt = 0; attempt < this.settings.attempts; attempt++) {
      if (attempt > 0) await new Promise((r) => setTimeout(r, 250 * 2 ** (attempt - 1)));
      try {
        const { measurement, jws } = await this.once(l, t);
        const disk: LandmarkDisk = {
          landmark: l.id, lat: l.lat, lon: l.lon, radiusM: radiusForRttM(measurement.rttMinS),
          rttS: measurement.rttMinS, strength: measurement.strength, measuredAt: measurement.measuredAt,
        };
        return { disk, jws };
      } catch (e) {
        last = failureOf(l.id, e);
        this.log.debug({ landmark: l.id, node: t.nodeId, attempt, reason: last.reason }, 'latency probe attempt failed');
        if (!last.transient) break;
      }
    }
    return { failure: last as LandmarkFailure };
  }

  private async once(l: LatencySettings['landmarks'][number], t: ProbeTarget): Promise<{ measurement: LatencyMeasurement; jws: string }> {
    const request = crypto.randomBytes(18).toString('base64url');
    const strength = this.settings.strength;
    let jws: string;
    if (l.url === undefined) {
      // This server is the landmark: probe, then sign like any landmark so the record has one shape.
      const r = await probeNode({
        source: this.source, host: t.host, port: t.port, nodeId: t.nodeId, strength, rounds: this.settings.rounds,
        timeoutMs: this.settings.timeoutMs, ...(t.akPublic ? { akPublic: t.akPublic } : {}),
      });
      jws = await signMeasurement(this.source.getX509Svid(), {
        landmark: this.serverId, node: t.nodeId, strength, rounds: r.rounds, rttMinS: r.rttMinS, rttP50S: r.rttP50S, measuredAt: this.now(), request,
      });
    } else {
      jws = await this.client.probe(l.url, l.id, {
        request, node: t.nodeId, host: t.host, port: t.port, strength, rounds: this.settings.rounds,
        ...(t.akPublic ? { akPublic: t.akPublic.toString('base64') } : {}),
      }, this.settings.timeoutMs + 2000);
    }
    const measurement = await verifyMeasurement(jws, { bundles: this.source, landmark: l.id, node: t.nodeId, request, strength, now: this.now() });
    return { measurement, jws };
  }
}

function failureOf(landmark: string, e: unknown): LandmarkFailure {
  if (e instanceof ProbeError) return { landmark, transient: e.code === 'connect' || e.code === 'timeout', reason: e.message };
  if (e instanceof LandmarkAnswerError) return { landmark, transient: e.transient, reason: e.message };
  return { landmark, transient: false, reason: (e as Error)?.message ?? String(e) };
}
