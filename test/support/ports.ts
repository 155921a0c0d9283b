import net from 'node:net';

/**
 * A free TCP port on 127.0.0.1, chosen at random below the kernel's ephemeral range (32768-60999 here)
 * and checked by binding it. A port the kernel hands out for port 0 comes from the ephemeral range,
 * where any outgoing connection of a parallel test may take it as its local port between our check and
 * the real listen (seen: EADDRINUSE with three vitest workers); below the range only another test's
 * choice can collide, one chance in thousands.
 */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    if (await isFree(port)) return port;
  }
  throw new Error('no free TCP port found on 127.0.0.1 between 20000 and 31999');
}

/** Two consecutive free ports (swtpm wants server port N and control port N+1). */
export async function freePortPair(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const p = await freePort();
    if (p >= 65535) continue;
    if (await isFree(p + 1)) return p;
  }
  throw new Error('could not find two consecutive free ports on 127.0.0.1');
}

export async function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** Resolves once something accepts TCP connections on host:port, or rejects after timeoutMs. */
export async function waitForPort(port: number, host = '127.0.0.1', timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ port, host });
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listening on ${host}:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
