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
    // Node's timers run on the event loop's cached clock and can fire early against the real one:
    // each chunk keeps its arrival time and waits until the real delay has passed, in order.
    const queue: { at: number; chunk: Buffer }[] = [];
    let timer: NodeJS.Timeout | undefined;
    const flush = (): void => {
      timer = undefined;
      const now = performance.now();
      while (queue.length > 0 && now - (queue[0] as { at: number }).at >= o.delayMs) {
        const { chunk } = queue.shift() as { chunk: Buffer };
        if (!to.destroyed) to.write(chunk);
      }
      if (queue.length > 0) timer = setTimeout(flush, Math.max(1, Math.ceil(o.delayMs - (now - (queue[0] as { at: number }).at))));
    };
    from.on('data', (chunk: Buffer) => {
      // Node's timers wait at least 1 ms: no delay means no timer at all.
      if (o.delayMs === 0) { if (!to.destroyed) to.write(chunk); return; }
      queue.push({ at: performance.now(), chunk });
      timer ??= setTimeout(flush, o.delayMs);
    });
    from.on('end', () => setTimeout(() => to.end(), o.delayMs + 2));
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
