// The gRPC target the agent dials. One server: "host:port", left to grpc-js's DNS resolver (a name
// with several addresses already fails over: pick_first tries them in turn). Several servers (an HA
// group on one datastore): a target of our own scheme, resolved here to every address of every
// server, so that one channel's pick_first connects to the first server that answers and, when that
// connection breaks, to the next one that does. The rest of the agent keeps one client and never
// needs to know which server it is talking to; each server is still authenticated by its SVID.
import dns from 'node:dns';
import net from 'node:net';
import { experimental, Metadata, status, type ChannelOptions } from '@grpc/grpc-js';

export interface ServerAddress {
  address: string;
  port: number;
}

const SCHEME = 'terroir-servers';

/** "host:port", with an IPv6 literal in brackets. */
export function hostPort(address: string, port: number): string {
  const host = address.includes(':') && !address.startsWith('[') ? `[${address}]` : address;
  return `${host}:${port}`;
}

/** The target string for grpc-js: plain for one server, our resolver's scheme for several. */
export function serverTarget(servers: readonly ServerAddress[]): string {
  const [first] = servers;
  if (first === undefined) throw new Error('no terroir server to connect to: the server list is empty');
  if (servers.length === 1) return hostPort(first.address, first.port);
  ensureRegistered();
  return `${SCHEME}:${servers.map((s) => hostPort(s.address, s.port)).join(',')}`;
}

/**
 * Channel options for the target: with several servers, pick_first takes them in a random order, so
 * that a fleet configured with one list spreads over the servers instead of all landing on the first
 * (and all moving at once when it dies). Each agent stays on its server until the connection breaks.
 */
export function serverChannelOptions(servers: readonly ServerAddress[]): ChannelOptions {
  if (servers.length < 2) return {};
  return { 'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ pick_first: { shuffleAddressList: true } }] }) };
}

type Endpoint = experimental.Endpoint;

/** Every address of every server, in list order; servers whose name does not resolve are left out (and named in the note). */
async function resolveAll(servers: readonly ServerAddress[]): Promise<{ endpoints: Endpoint[]; failures: string[] }> {
  const results = await Promise.all(servers.map(async (s): Promise<Endpoint | string> => {
    if (net.isIP(s.address) !== 0) return { addresses: [{ host: s.address, port: s.port }] };
    try {
      const found = await dns.promises.lookup(s.address, { all: true });
      return { addresses: found.map((a) => ({ host: a.address, port: s.port })) };
    } catch (e) {
      return `${s.address}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
    }
  }));
  return {
    endpoints: results.filter((r): r is Endpoint => typeof r !== 'string' && r.addresses.length > 0),
    failures: results.filter((r): r is string => typeof r === 'string'),
  };
}

/**
 * Re-resolves whenever the channel asks (after a connection broke, or every address failed), so a
 * server whose DNS record moved is found again. grpc-js's resolving balancer already spaces the
 * requests out with its reconnect backoff, and an answer is never delivered after destroy().
 */
class ServerListResolver implements experimental.Resolver {
  private readonly servers: ServerAddress[];
  private generation = 0;
  private resolving = false;

  constructor(target: experimental.GrpcUri, private readonly listener: experimental.ResolverListener, _options: ChannelOptions) {
    this.servers = target.path.split(',').map((hp) => {
      const parsed = experimental.splitHostPort(hp);
      if (!parsed || parsed.port === undefined) throw new Error(`${SCHEME} target: "${hp}" is not host:port`);
      return { address: parsed.host, port: parsed.port };
    });
  }

  updateResolution(): void {
    if (this.resolving) return; // the lookup under way answers this request too
    this.resolving = true;
    const generation = this.generation;
    void resolveAll(this.servers).then(({ endpoints, failures }) => {
      this.resolving = false;
      if (generation !== this.generation) return;
      const note = failures.join('; ');
      if (endpoints.length === 0) {
        this.listener(experimental.statusOrFromError({ code: status.UNAVAILABLE, details: `no terroir server name resolved (${note})`, metadata: new Metadata() }), {}, null, note);
      } else {
        this.listener(experimental.statusOrFromValue(endpoints), {}, null, note);
      }
    });
  }

  destroy(): void {
    this.generation++;
    this.resolving = false;
  }

  static getDefaultAuthority(): string {
    // Never sent: the agent sets grpc.default_authority (servers are authenticated by SPIFFE ID).
    return 'terroir-server';
  }
}

let registered = false;
function ensureRegistered(): void {
  if (registered) return;
  experimental.registerResolver(SCHEME, ServerListResolver);
  registered = true;
}
