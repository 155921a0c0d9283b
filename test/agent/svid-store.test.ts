// The agent's on-disk state: private permissions, round trip, and refusal of damaged or mismatched files.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { SvidStore } from '../../src/agent/svid-store.js';
import { makeCa, makeSvid } from './fixtures.js';
import { tempDir } from '../support/tmp.js';

describe('agent SVID store', () => {
  it('saves with 0700/0600 permissions, loads back, and refuses a key that does not match the certificate', () => {
    const { dir, cleanup } = tempDir('terroir-store-');
    const ca = makeCa('store.test');
    try {
      const svid = makeSvid(ca, 'spiffe://store.test/agent/join_token/x');
      const store = new SvidStore(path.join(dir, 'agent'));
      store.init();
      expect(store.load()).toBeUndefined();
      store.save({ spiffeId: svid.spiffeId, chain: svid.chain, key: svid.key, bundle: Buffer.from('{"keys":[]}'), canRenew: true, notAfter: svid.notAfter });
      expect(fs.statSync(store.dir).mode & 0o777).toBe(0o700);
      for (const f of fs.readdirSync(store.dir)) expect(fs.statSync(path.join(store.dir, f)).mode & 0o777).toBe(0o600);
      const back = store.load()!;
      expect(back.spiffeId).toBe(svid.spiffeId);
      expect(back.chain[0]!.equals(svid.chain[0]!)).toBe(true);
      expect(back.key.equals(svid.key)).toBe(true);
      expect(back.canRenew).toBe(true);

      // Another key in place of the real one: the state is unusable, the agent must attest again.
      const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'pem', type: 'pkcs8' });
      fs.writeFileSync(path.join(store.dir, 'agent-svid.key'), other);
      expect(store.load()).toBeUndefined();

      fs.writeFileSync(path.join(store.dir, 'agent-svid.json'), '{not json');
      expect(store.load()).toBeUndefined();
      store.clear();
      expect(fs.readdirSync(store.dir)).toEqual([]);
    } finally {
      ca.cleanup();
      cleanup();
    }
  });
});
