// A real software TPM (swtpm) driven by tpm2-tools, the independent implementation the Keylime tests
// quote with: an ECC EK and a restricted ECDSA AK under it, both persistent.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { freePortPair, waitForPort } from '../../support/ports.js';
import { captureOutput, type ProcessGroup } from '../../support/proc.js';
import { decodePcrBlob, type KeylimeQuote } from '../../../src/keylime/quote-string.js';
import type { NodeQuoter } from '../../../src/keylime/quote-endpoint.js';

const run = promisify(execFile);
export const AK_HANDLE = '0x81010002';

export interface TestTpm {
  tcti: string;
  dir: string;
  /** TPM2B_PUBLIC of the AK and of the (ECC) EK. */
  akPublic: Buffer;
  ekPublic: Buffer;
  tools(args: string[]): Promise<string>;
  quoter: NodeQuoter;
}

export async function startTpm(group: ProcessGroup, dir: string): Promise<TestTpm> {
  const port = await freePortPair();
  const state = path.join(dir, 'tpmstate');
  fs.mkdirSync(state, { recursive: true });
  const child = group.start('swtpm', [
    'socket', '--tpm2',
    '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`,
    '--ctrl', `type=tcp,port=${port + 1},bindaddr=127.0.0.1`,
    '--tpmstate', `dir=${state}`,
    '--flags', 'not-need-init,startup-clear',
  ]);
  const output = captureOutput(child);
  try {
    await waitForPort(port);
  } catch (err) {
    throw new Error(`swtpm did not start: ${output()}`, { cause: err });
  }
  const tcti = `swtpm:host=127.0.0.1,port=${port}`;
  const env = { ...process.env, TPM2TOOLS_TCTI: tcti, TSS2_LOG: 'all+NONE' };
  const tools = async (args: string[]): Promise<string> => {
    const [cmd, ...rest] = args as [string, ...string[]];
    const { stdout } = await run(cmd, rest, { env, cwd: dir });
    return stdout;
  };
  await tools(['tpm2_createek', '-c', '0x81010001', '-G', 'ecc', '-u', 'ek.pub']);
  await tools(['tpm2_flushcontext', '-t']);
  await tools(['tpm2_createak', '-C', '0x81010001', '-c', 'ak.ctx', '-G', 'ecc', '-g', 'sha256', '-s', 'ecdsa', '-u', 'ak.pub', '-n', 'ak.name', '-f', 'tss']);
  await tools(['tpm2_flushcontext', '-t']);
  await tools(['tpm2_flushcontext', '-s']);
  await tools(['tpm2_evictcontrol', '-c', 'ak.ctx', AK_HANDLE]);
  await tools(['tpm2_flushcontext', '-t']);
  const akPublic = fs.readFileSync(path.join(dir, 'ak.pub'));

  let seq = 0;
  const quoter: NodeQuoter = {
    async quote(pcrs, qualifyingData) {
      const tag = `q${seq++}`;
      await tools(['tpm2_quote', '-c', AK_HANDLE, '-l', `sha256:${pcrs.join(',')}`, '-q', Buffer.from(qualifyingData).toString('hex'),
        '-m', `${tag}.msg`, '-s', `${tag}.sig`, '-o', `${tag}.pcrs`, '-g', 'sha256']);
      const read = (ext: string): Buffer => fs.readFileSync(path.join(dir, `${tag}.${ext}`));
      const quote: KeylimeQuote = { attest: read('msg'), signature: read('sig'), pcrs: decodePcrBlob(read('pcrs')) };
      for (const ext of ['msg', 'sig', 'pcrs']) fs.rmSync(path.join(dir, `${tag}.${ext}`));
      return quote;
    },
    async pcrReset(index) {
      await tools(['tpm2_pcrreset', String(index)]);
    },
    async pcrExtend(index, digest) {
      await tools(['tpm2_pcrextend', `${index}:sha256=${Buffer.from(digest).toString('hex')}`]);
    },
  };
  const ekPublic = fs.readFileSync(path.join(dir, 'ek.pub'));
  return { tcti, dir, akPublic, ekPublic, tools, quoter };
}
