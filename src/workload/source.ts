// The small interfaces the TLS helpers consume, so the Workload API source and a static source are
// interchangeable (as go-spiffe's x509svid.Source / x509bundle.Source are).
import type { Bundle, X509BundleSource } from '../spiffe/bundle.js';
import type { X509SvidSource } from '../spiffe/svid-source.js';

/** A bundle source that can also list its bundles (node:tls needs every trusted CA up front). */
export interface X509BundleSetSource extends X509BundleSource {
  /**
   * Every X.509 bundle. Implementations return the same array object until their bundles change,
   * which lets the TLS helpers rebuild a SecureContext only after a real update.
   */
  getX509Bundles(): readonly Bundle[];
}

/** An SVID source and bundle source in one, as both sources of this library are. */
export interface X509SourceLike extends X509SvidSource, X509BundleSetSource {
  /** Calls `fn` after every change of SVID or bundles; returns an unsubscribe function. */
  onUpdate(fn: () => void): () => void;
}
