// deploy/systemd units: systemd's own parser (`systemd-analyze verify`) accepts them without a
// single warning, and the hardening the enrollment guide promises is there.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../support/tmp.js';

const UNITS = path.resolve(import.meta.dirname, '../../deploy/systemd');
const tmp = tempDir('terroir-deploy-systemd-');
afterAll(() => tmp.cleanup());

/** The [Service] settings of a unit, key → values (keys may repeat). */
function settings(unit: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const line of fs.readFileSync(path.join(UNITS, unit), 'utf8').split('\n')) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (m?.[1] !== undefined) out.set(m[1], [...(out.get(m[1]) ?? []), m[2] ?? '']);
  }
  return out;
}

/** systemd-analyze verify on a copy whose ExecStart uses this machine's node (the unit expects /usr/bin/node). */
function verify(unit: string, edit: (text: string) => string = (t) => t): { status: number | null; output: string } {
  const text = fs.readFileSync(path.join(UNITS, unit), 'utf8').replace(/^ExecStart=\/usr\/bin\/node /m, `ExecStart=${process.execPath} `);
  const copy = path.join(tmp.dir, unit);
  fs.writeFileSync(copy, edit(text));
  const r = spawnSync('systemd-analyze', ['verify', '--man=no', copy]);
  if (r.error) throw new Error(`systemd-analyze not found (Debian package systemd): ${r.error.message}`);
  return { status: r.status, output: (r.stdout.toString() + r.stderr.toString()).trim() };
}

describe('deploy/systemd units', () => {
  it.each(['terroir-agent.service', 'terroir-server.service'])('%s passes systemd-analyze verify without warnings', (unit) => {
    expect(verify(unit)).toEqual({ status: 0, output: '' });
  });

  it('the check catches a misspelt directive (it is not a check that cannot fail)', () => {
    const r = verify('terroir-agent.service', (t) => t.replace('DeviceAllow=', 'DeviceAlow='));
    expect(r.output).toContain("Unknown key 'DeviceAlow'");
  });

  it('the agent: dedicated user in tss, only /dev/tpmrm0, only CAP_SYS_PTRACE, read-only system', () => {
    const s = settings('terroir-agent.service');
    expect(s.get('User')).toEqual(['terroir-agent']);
    expect(s.get('SupplementaryGroups')).toEqual(['tss']);
    expect(s.get('DevicePolicy')).toEqual(['closed']);
    expect(s.get('DeviceAllow')).toEqual(['/dev/tpmrm0 rw']);
    expect(s.get('CapabilityBoundingSet')).toEqual(['CAP_SYS_PTRACE']);
    expect(s.get('ProtectSystem')).toEqual(['strict']);
    expect(s.get('PrivateTmp')).toEqual(['yes']);
    expect(s.get('NoNewPrivileges')).toEqual(['yes']);
    expect(s.get('RuntimeDirectoryMode')).toEqual(['0755']);
    expect(s.has('PrivateDevices')).toBe(false); // it would hide /dev/tpmrm0
  });

  it('the server: dedicated user, no capabilities, no devices, private state and admin socket', () => {
    const s = settings('terroir-server.service');
    expect(s.get('User')).toEqual(['terroir-server']);
    expect(s.get('CapabilityBoundingSet')).toEqual(['']);
    expect(s.get('PrivateDevices')).toEqual(['yes']);
    expect(s.get('ProtectSystem')).toEqual(['strict']);
    expect(s.get('PrivateTmp')).toEqual(['yes']);
    expect(s.get('StateDirectoryMode')).toEqual(['0700']);
    expect(s.get('RuntimeDirectoryMode')).toEqual(['0700']);
  });
});
