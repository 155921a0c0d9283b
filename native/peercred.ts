// Peer credentials of a connected Unix socket: getsockopt(fd, SOL_SOCKET, SO_PEERCRED) through koffi.
// The kernel records the connecting process's pid/uid/gid at connect() time; they cannot be forged by
// the peer, which is what makes them a sound basis for workload attestation.
import koffi from 'koffi';

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
/** struct ucred { pid_t pid; uid_t uid; gid_t gid; } on Linux: three 32-bit fields. */
const UCRED_SIZE = 12;

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

export class PeerCredentialsError extends Error {
  readonly code = 'peer_credentials_unavailable';
  constructor(message: string) {
    super(message);
    this.name = 'PeerCredentialsError';
  }
}

type GetSockOpt = (fd: number, level: number, name: number, optval: Buffer, optlen: number[]) => number;
let getsockopt: GetSockOpt | undefined;

function bind(): GetSockOpt {
  if (getsockopt) return getsockopt;
  if (process.platform !== 'linux') throw new PeerCredentialsError(`SO_PEERCRED is Linux-only; this is ${process.platform}`);
  const libc = koffi.load('libc.so.6');
  getsockopt = libc.func('int getsockopt(int fd, int level, int optname, _Out_ void *optval, _Inout_ uint32_t *optlen)') as GetSockOpt;
  return getsockopt;
}

/** Peer credentials of the Unix socket with file descriptor `fd`. */
export function peerCredentialsOfFd(fd: number): PeerCredentials {
  if (!Number.isInteger(fd) || fd < 0) throw new PeerCredentialsError(`invalid file descriptor ${fd}`);
  const fn = bind();
  const buf = Buffer.alloc(UCRED_SIZE);
  const len = [UCRED_SIZE];
  const rc = fn(fd, SOL_SOCKET, SO_PEERCRED, buf, len);
  if (rc !== 0) throw new PeerCredentialsError(`getsockopt(SO_PEERCRED) failed on fd ${fd}: errno ${koffi.errno()}`);
  if (len[0] !== UCRED_SIZE) throw new PeerCredentialsError(`getsockopt(SO_PEERCRED) returned ${len[0]} bytes, expected ${UCRED_SIZE}`);
  return { pid: buf.readInt32LE(0), uid: buf.readUInt32LE(4), gid: buf.readUInt32LE(8) };
}

/**
 * Peer credentials of an accepted net.Socket on a Unix socket. Node exposes the descriptor only
 * through the libuv handle (`socket._handle.fd`), which is present for sockets accepted by a
 * net.Server in this process.
 */
export function peerCredentialsOfSocket(socket: object): PeerCredentials {
  const handle = (socket as { _handle?: { fd?: unknown } })._handle;
  const fd = handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new PeerCredentialsError('socket has no file descriptor (closed, or not a local Unix socket)');
  const cred = peerCredentialsOfFd(fd);
  if (cred.pid <= 0) throw new PeerCredentialsError('peer has no pid (it may live in another pid namespace)');
  return cred;
}
