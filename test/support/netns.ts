// A test host of its own: a network namespace joined to the root namespace by a veth pair, with a
// unique name and a /30 of 10.x addresses no one else uses (machine-notes: ip netns as root). The
// caller removes it (namespace and link) when the test ends.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';

export interface NetNs {
  name: string;
  /** The root namespace's end of the veth pair. */
  hostIp: string;
  /** The namespace's address. */
  nsIp: string;
  remove(): void;
}

const ip = (...args: string[]): void => { execFileSync('ip', args, { stdio: 'pipe' }); };

export function createNetNs(prefix = 'tr'): NetNs {
  const id = crypto.randomBytes(3).toString('hex');
  const name = `${prefix}-${id}`;
  const hostIf = `v${id}h`;
  const nsIf = `v${id}n`;
  // 10.<a>.<b>.0/30 from the random id: two test runs at once get different subnets.
  const a = 200 + (parseInt(id.slice(0, 2), 16) % 50);
  const b = parseInt(id.slice(2, 4), 16);
  const hostIp = `10.${a}.${b}.1`;
  const nsIp = `10.${a}.${b}.2`;
  ip('netns', 'add', name);
  try {
    ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    ip('link', 'set', nsIf, 'netns', name);
    ip('addr', 'add', `${hostIp}/30`, 'dev', hostIf);
    ip('link', 'set', hostIf, 'up');
    ip('-n', name, 'addr', 'add', `${nsIp}/30`, 'dev', nsIf);
    ip('-n', name, 'link', 'set', nsIf, 'up');
    ip('-n', name, 'link', 'set', 'lo', 'up');
  } catch (e) {
    try { ip('link', 'del', hostIf); } catch { /* not created */ }
    ip('netns', 'del', name);
    throw e;
  }
  return {
    name, hostIp, nsIp,
    remove() {
      try { ip('link', 'del', hostIf); } catch { /* gone with the namespace */ }
      try { ip('netns', 'del', name); } catch { /* already removed */ }
    },
  };
}
