// A TCP relay that holds every chunk for a set time in each direction before passing it on: the
// stand-in for distance on a kernel without netem (machine-notes). Order is kept; delay only adds.
import net from 'node:net';

export interface DelayRelay {
  port: number;
  /** Connections relayed so far. */
  connections(): number;
  close(): Promise<void>;
}

export async function startDelayRelay(o: { listenHost: string; targetHost: string; targetPort: number; delayMs: number; listenPort?: number }): Promise<DelayRelay> {
  const sockets = new Set<net.Socket>();
  let count = 0;
  const pipeDelayed = (from: net.Socket, to: net.Socket): void => {
    // Node's timers wait at least 1 ms: no delay means no timer at all.
    from.on('data', (chunk: Buffer) => {
      if (o.delayMs === 0) { if (!to.destroyed) to.write(chunk); return; }
      setTimeout(() => { if (!to.destroyed) to.write(chunk); }, o.delayMs);
    });
    from.on('end', () => setTimeout(() => to.end(), o.delayMs));
    from.on('error', () => to.destroy());
    from.on('close', () => setTimeout(() => to.destroy(), o.delayMs + 5));
  };
  const server = net.createServer((client) => {
    count++;
    client.setNoDelay(true);
    const upstream = net.connect({ host: o.targetHost, port: o.targetPort });
    upstream.setNoDelay(true);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
    }
    pipeDelayed(client, upstream);
    pipeDelayed(upstream, client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.listenPort ?? 0, o.listenHost, () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => count,
    close: () => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }),
  };
}
