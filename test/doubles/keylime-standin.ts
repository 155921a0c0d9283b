// Runs the Keylime verifier test double as a process: the development stand-in the native demo and the
// native deployment tests use where a real Keylime verifier (Python, compose images) does not run.
//
//   node --import tsx test/doubles/keylime-standin.ts --pki DIR [--port N]
//
// DIR is deploy/certs-init.sh's keylime/ directory: verifier.crt/.key (its server certificate),
// ca.crt (the CA its admin clients, i.e. terroir-server's terroir-client.crt, must come from) and
// verifier-client.crt/.key (its client identity towards agents' quote endpoints). It listens on
// 127.0.0.1, prints one JSON line {"standIn":true,"url":...,"port":...} on stdout when ready, and
// stops on SIGTERM or SIGINT. It announces itself in GET /version, so a terroir server refuses it
// unless its configuration says keylime.allowDevelopmentStandIn: true (never with NODE_ENV=production).
import fs from 'node:fs';
import path from 'node:path';
import { TestKeylimeVerifier } from './keylime-verifier.js';

function usage(message: string): never {
  process.stderr.write(`keylime-standin: ${message}\nusage: keylime-standin.ts --pki DIR [--port N]\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): { pki: string; port: number } {
  let pki: string | undefined;
  let port = 0;
  for (let i = 0; i < argv.length; i++) {
    const value = argv[i + 1];
    switch (argv[i]) {
      case '--pki':
        if (value === undefined) usage('--pki needs a directory');
        pki = value;
        i++;
        break;
      case '--port':
        if (value === undefined || !/^\d{1,5}$/.test(value) || Number(value) > 65535) usage(`--port needs a TCP port number, got ${value ?? 'nothing'}`);
        port = Number(value);
        i++;
        break;
      default:
        usage(`unknown argument ${argv[i]}`);
    }
  }
  if (pki === undefined) usage('--pki is required');
  return { pki, port };
}

function read(dir: string, name: string): string {
  const file = path.join(dir, name);
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    usage(`cannot read ${file} (${(err as Error).message}); make the PKI with deploy/certs-init.sh OUT_DIR and pass OUT_DIR/keylime`);
  }
}

const args = parseArgs(process.argv.slice(2));
const verifier = await TestKeylimeVerifier.start({
  cert: read(args.pki, 'verifier.crt'), key: read(args.pki, 'verifier.key'), clientCa: read(args.pki, 'ca.crt'),
  pullCert: read(args.pki, 'verifier-client.crt'), pullKey: read(args.pki, 'verifier-client.key'),
  port: args.port,
});
process.stderr.write(
  `keylime-standin: DEVELOPMENT STAND-IN for a Keylime verifier on ${verifier.url} (terroir's test double: it checks quotes `
  + 'for real but is not Keylime). terroir servers refuse it unless keylime.allowDevelopmentStandIn is true.\n',
);
process.stdout.write(`${JSON.stringify({ standIn: true, url: verifier.url, port: verifier.port })}\n`);

let stopping = false;
const stop = (): void => {
  if (stopping) return;
  stopping = true;
  void verifier.close().then(() => process.exit(0));
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
