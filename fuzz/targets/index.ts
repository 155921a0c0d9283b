// Every fuzz target, in the order fuzz/run.ts runs them.
import type { FuzzTarget } from '../engine.js';
import { agentApiProto, workloadApiProto } from './api.js';
import { camara, claimsDocument, geojson, gpsd, nmea, policy } from './geo.js';
import { keylimeQuote, keylimeResponse } from './keylime.js';
import { landmarkConfig, measurement, probeFrames } from './latency.js';
import { csr, spiffeBundle, unifiedIdentity, x509Certificate } from './spiffe.js';
import { ekCertificate, tpmAttest, tpmPublic, tpmQuote, tpmSignature } from './tpm.js';

export const TARGETS: readonly FuzzTarget[] = [
  tpmPublic, tpmAttest, tpmSignature, tpmQuote, ekCertificate,
  x509Certificate, csr, unifiedIdentity, spiffeBundle,
  agentApiProto, workloadApiProto,
  claimsDocument, nmea, gpsd, policy, geojson, camara,
  keylimeResponse, keylimeQuote,
  probeFrames, measurement, landmarkConfig,
];
