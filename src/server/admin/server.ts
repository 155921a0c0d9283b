// The admin API on a local Unix socket. Access control is the file system's: the socket is 0600
// in a directory nobody else can write to, so only the server's user (and root) can connect. The
// kernel's peer credentials name the caller in the audit log.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { peerCredentialsOfSocket } from '../../../native/peercred.js';
import { ADMIN_API_MAX_MESSAGE_BYTES, adminServiceDefinition, type AdminMethod } from '../../api/admin-api.js';
import { AdminRpcError, type AdminService } from './service.js';

export class AdminSocketError extends Error {
  override readonly name = 'AdminSocketError';
  readonly code = 'admin_socket_unsafe';
}

export interface AdminServer {
  readonly socketPath: string;
  close(): Promise<void>;
}

export interface AdminServerOptions {
  logger?: Logger;
}

/** Is something accepting connections on this Unix socket? */
function socketAlive(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(socketPath);
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/**
 * Makes sure the socket's directory is private (creating it 0700 if missing, refusing one that is
 * group/world-writable or a symlink) and clears a stale socket left by a previous run.
 */
async function prepareSocketPath(socketPath: string): Promise<void> {
  const dir = path.dirname(socketPath);
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(dir);
  } catch {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700);
    st = fs.lstatSync(dir);
  }
  if (!st.isDirectory()) throw new AdminSocketError(`admin socket directory ${dir} is not a directory (symlinks are refused)`);
  if ((st.mode & 0o022) !== 0) {
    throw new AdminSocketError(`admin socket directory ${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}); ` +
      `use a private directory (chmod 700 ${dir})`);
  }
  const euid = process.geteuid?.() ?? 0;
  if (st.uid !== euid && st.uid !== 0) {
    throw new AdminSocketError(`admin socket directory ${dir} belongs to uid ${st.uid}, not to this server (uid ${euid}) or root`);
  }
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!existing.isSocket()) throw new AdminSocketError(`${socketPath} exists and is not a socket; refusing to replace it`);
  if (await socketAlive(socketPath)) throw new AdminSocketError(`another server is already listening on ${socketPath}`);
  fs.unlinkSync(socketPath);
}

/** Serves `service` on `socketPath` (mode 0600). */
export async function startAdminServer(socketPath: string, service: AdminService, opts: AdminServerOptions = {}): Promise<AdminServer> {
  const file = path.resolve(socketPath);
  await prepareSocketPath(file);
  const logger = opts.logger;
  const euid = process.geteuid?.() ?? 0;

  // grpc-js only shows a call's connection through getPeer(), built from the socket's
  // remoteAddress; each accepted socket gets its own random token there, mapped to its caller.
  const callers = new Map<string, string>();
  const prefix = `admin-${crypto.randomBytes(6).toString('hex')}-`;
  let next = 0;
  const sockets = new Set<net.Socket>();

  const grpcServer = new grpc.Server({
    'grpc.max_receive_message_length': ADMIN_API_MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': ADMIN_API_MAX_MESSAGE_BYTES,
  });
  const definition = adminServiceDefinition();
  const handlers: grpc.UntypedServiceImplementation = {};
  for (const method of Object.keys(definition) as AdminMethod[]) {
    handlers[method] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      const caller = callers.get(call.getPeer()) ?? 'admin-socket';
      service.invoke(method, call.request as never, caller).then(
        (res) => callback(null, res),
        (err: unknown) => {
          const e = err instanceof AdminRpcError ? err : new AdminRpcError(grpc.status.INTERNAL, String(err));
          callback({ code: e.grpcCode, details: e.message, metadata: new grpc.Metadata() });
        });
    };
  }
  grpcServer.addService(definition, handlers);
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());

  const netServer = net.createServer((socket) => {
    let caller = 'admin-socket';
    try {
      const cred = peerCredentialsOfSocket(socket);
      // The socket mode already keeps others out; this also holds if someone loosens it by hand.
      if (cred.uid !== euid && cred.uid !== 0) {
        logger?.warn({ uid: cred.uid, pid: cred.pid }, 'admin connection refused: caller is neither this server\'s user nor root');
        socket.destroy();
        return;
      }
      caller = `uid:${cred.uid}`;
    } catch {
      // Peer credentials unavailable (not Linux): the file permissions still apply.
    }
    const token = `${prefix}${++next}`;
    Object.defineProperty(socket, 'remoteAddress', { value: token, configurable: true });
    Object.defineProperty(socket, 'remotePort', { value: undefined, configurable: true });
    callers.set(token, caller);
    sockets.add(socket);
    socket.once('close', () => { callers.delete(token); sockets.delete(socket); });
    injector.injectConnection(socket);
  });

  await new Promise<void>((resolve, reject) => {
    netServer.once('error', reject);
    netServer.listen(file, () => {
      netServer.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(file, 0o600);
  logger?.info({ socket: file }, 'admin API listening');

  let closed = false;
  return {
    socketPath: file,
    async close() {
      if (closed) return;
      closed = true;
      grpcServer.forceShutdown();
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => netServer.close(() => resolve()));
      fs.rmSync(file, { force: true });
    },
  };
}
