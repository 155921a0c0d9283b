// Who is on the other end of a Workload API call. The kernel tells us at accept time (SO_PEERCRED);
// grpc-js serves the socket afterwards, so each call has to be mapped back to its connection.
//
// grpc-js exposes a call's connection only as `call.getPeer()`, built from the socket's
// `remoteAddress` (and `remotePort`), which Unix sockets do not have. We give every accepted socket
// its own unguessable `remoteAddress` token before handing it to grpc-js, so `getPeer()` returns
// exactly that token; the token is looked up here. Tokens come from our own counter plus random
// bytes, never from the client, and are forgotten when the socket closes.
import crypto from 'node:crypto';
import type net from 'node:net';
import { peerCredentialsOfSocket, type PeerCredentials } from '../../../native/peercred.js';
import type { ProcessSnapshot } from '../attestor/unix.js';

export interface Peer {
  cred: PeerCredentials;
  /**
   * The process when the connection was accepted: its start time (pid-reuse detection) and its
   * executable (exec-after-connect detection). Every call on the connection is attested against it.
   */
  snapshot: ProcessSnapshot;
}

/** Takes a caller's snapshot at accept time (the workload attestor's `snapshot`). */
export type Snapshotter = (pid: number) => ProcessSnapshot;

export class PeerRegistry {
  private readonly peers = new Map<string, Peer>();
  private readonly prefix = `wl-${crypto.randomBytes(6).toString('hex')}-`;
  private next = 0;

  constructor(private readonly snapshotOf: Snapshotter) {}

  /**
   * Records the peer of a freshly accepted socket and tags the socket; returns false (and the
   * socket should be closed) when the peer cannot be identified.
   */
  register(socket: net.Socket): boolean {
    let peer: Peer;
    try {
      const cred = peerCredentialsOfSocket(socket);
      peer = { cred, snapshot: this.snapshotOf(cred.pid) };
    } catch {
      return false;
    }
    const token = `${this.prefix}${++this.next}`;
    Object.defineProperty(socket, 'remoteAddress', { value: token, configurable: true });
    Object.defineProperty(socket, 'remotePort', { value: undefined, configurable: true });
    this.peers.set(token, peer);
    socket.once('close', () => this.peers.delete(token));
    return true;
  }

  /** The peer for a call's `getPeer()` string, if the connection is one of ours and still open. */
  lookup(peerString: string): Peer | undefined {
    return this.peers.get(peerString);
  }

  get size(): number {
    return this.peers.size;
  }
}
