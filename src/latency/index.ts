// The latency probe (docs/latency-witness.md), shared by the agent (responder), the landmark (prober)
// and the server (its own landmark, and the client of the others). It builds on src/spiffe, src/tpm
// and the workload library's SPIFFE mTLS helpers; it never imports the server, agent or landmark.
import type { X509SourceLike } from '../workload/source.js';

/** An SVID and trust bundles that the probe's mTLS uses (the workload library's X509SourceLike). */
export type ProbeIdentity = X509SourceLike;
export { CHALLENGE_BYTES, probeDigest, type ProbeStrength } from './protocol.js';
export { probeNode, ProbeError, MAX_ROUNDS, type ProbeOptions, type ProbeResult } from './prober.js';
export { startProbeResponder, type ProbeResponder, type ProbeResponderOptions } from './responder.js';
export { signMeasurement, verifyMeasurement, MeasurementError, MAX_MEASUREMENT_BYTES, type LatencyMeasurement } from './measurement.js';
export { LandmarkClient, LandmarkAnswerError, type LandmarkProbeRequest } from './landmark-client.js';
