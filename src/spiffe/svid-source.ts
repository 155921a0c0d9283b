// The shapes through which SVIDs are handed around (agent cache, Workload API, workload library),
// mirroring go-spiffe's x509svid.Source and jwtsvid.Source.
import type { KeyObject } from 'node:crypto';
import type { SpiffeId } from './id.js';

export interface X509Svid {
  id: SpiffeId;
  /** Leaf first, then intermediates (DER). */
  certificatesDer: Buffer[];
  privateKey: KeyObject;
  /** Workload API hint distinguishing several SVIDs of one workload. */
  hint?: string;
  expiresAt: Date;
}

export interface X509SvidSource {
  getX509Svid(): X509Svid;
}

export interface JwtSvid {
  id: SpiffeId;
  token: string;
  audience: string[];
  expiry: Date;
  claims: Record<string, unknown>;
}

export interface JwtSvidSource {
  fetchJwtSvid(p: { audience: string[]; subject?: SpiffeId }): Promise<JwtSvid>;
}
