// terroir-server audit: the evidence log from outside the server (docs/evidence-log.md).
//   audit key    -c server.yaml                  print the audit public key (C2SP verifier key)
//   audit export -c server.yaml --out FILE       write the log and its checkpoints (signs a fresh one)
//   audit verify --export FILE --key KEY …       check an export offline: no server, no database
import fs from 'node:fs';
import readline from 'node:readline';
import { FlagError, FlagSet, list, str, type ParsedFlags } from './flags.js';

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

const USAGE = `Usage:
  terroir-server audit key -c server.yaml
  terroir-server audit export -c server.yaml --out evidence.jsonl
  terroir-server audit verify --export evidence.jsonl --key <verifier key | @file> [--key …] [--checkpoint pinned.note …] [--output json]
`;

const FLAGS: Record<string, FlagSet> = {
  key: new FlagSet([{ name: 'config', type: 'string', usage: 'server config file', aliases: ['c'] }]),
  export: new FlagSet([
    { name: 'config', type: 'string', usage: 'server config file', aliases: ['c'] },
    { name: 'out', type: 'string', usage: 'file to write (refused if it exists)' },
  ]),
  verify: new FlagSet([
    { name: 'export', type: 'string', usage: 'the export file (audit export)' },
    { name: 'key', type: 'list', usage: 'a verifier key <name>+<hash>+<key>, or @file holding one per line' },
    { name: 'checkpoint', type: 'list', usage: 'a signed checkpoint kept from earlier (file): the export must contain its tree' },
    { name: 'output', type: 'string', usage: 'pretty or json', defaultText: 'pretty' },
  ]),
};

class UsageError extends Error {}

function need(f: ParsedFlags, name: string, verb: string | undefined): string {
  const v = str(f, name);
  if (!v) throw new UsageError(`audit ${verb ?? ""} needs -${name}`);
  return v;
}

async function openLog(configFile: string): Promise<{ log: import('../server/evidence/log.js').EvidenceLog; verifierKey: string; close: () => Promise<void> }> {
  const { loadServerConfig } = await import('../server/config.js');
  const { openDataStore } = await import('../server/datastore/index.js');
  const { EvidenceLog } = await import('../server/evidence/log.js');
  const { loadOrCreateAuditKey } = await import('../server/evidence/key.js');
  const pino = (await import('pino')).default;
  const config = loadServerConfig(configFile);
  if (!config.evidenceLog.enabled) throw new Error(`the evidence log is off in ${configFile} (evidenceLog.enabled: false)`);
  if (!fs.existsSync(config.evidenceLog.keyFile)) throw new Error(`no audit key at ${config.evidenceLog.keyFile}: has this server run yet (terroir-server run creates it)?`);
  const key = loadOrCreateAuditKey(config.evidenceLog.keyFile, config.evidenceLog.origin);
  const store = await openDataStore(config.dataStore);
  const log = new EvidenceLog({ store: store.evidence, origin: config.evidenceLog.origin, serverName: 'audit-cli', signer: key.signer, logger: pino({ level: 'silent' }) });
  return { log, verifierKey: key.verifierKey, close: () => store.close() };
}

function readKeys(values: string[]): string[] {
  return values.flatMap((v) => (v.startsWith('@') ? fs.readFileSync(v.slice(1), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#')) : [v]));
}

export async function auditCommand(argv: string[], io: Io): Promise<number> {
  const verb = argv[0];
  const flags = verb === undefined ? undefined : FLAGS[verb];
  if (flags === undefined) {
    io.err(USAGE);
    return verb === '-h' || verb === '--help' ? 0 : 2;
  }
  let f: ParsedFlags;
  try {
    f = flags.parse(argv.slice(1));
    if (f.help) { io.out(`${USAGE}\nFlags:\n${flags.usage()}`); return 0; }
    if (f.args.length > 0) throw new UsageError(`unexpected argument "${f.args[0]}"`);
  } catch (err) {
    if (err instanceof FlagError || err instanceof UsageError) { io.err(`terroir-server audit ${verb}: ${err.message}\n`); return 2; }
    throw err;
  }
  try {
    if (verb === 'key') {
      const { verifierKey, close } = await openLog(need(f, 'config', verb));
      await close();
      io.out(`${verifierKey}\n`);
      return 0;
    }
    if (verb === 'export') {
      const out = need(f, 'out', verb);
      const { exportLog } = await import('../server/evidence/export.js');
      const { log, close } = await openLog(need(f, 'config', verb));
      // wx: an export never overwrites another (an auditor's earlier copy is evidence too).
      const fd = fs.openSync(out, 'wx', 0o600);
      try {
        const r = await exportLog(log, (line) => { fs.writeSync(fd, line); });
        io.out(`exported ${r.size} records and ${r.checkpoints} checkpoints of ${log.origin} to ${out}\n`);
      } finally {
        fs.closeSync(fd);
        await close();
      }
      return 0;
    }
    // verify
    const file = need(f, 'export', verb);
    const keys = readKeys(list(f, 'key'));
    if (keys.length === 0) throw new UsageError('audit verify needs -key (the audit public key: terroir-server audit key)');
    const pinned = list(f, 'checkpoint').map((p) => fs.readFileSync(p, 'utf8'));
    const { verifyExport } = await import('../server/evidence/verify.js');
    const started = performance.now();
    const lines = readline.createInterface({ input: fs.createReadStream(file), crlfDelay: Infinity });
    const report = await verifyExport(lines, { verifierKeys: keys, pinnedCheckpoints: pinned });
    const seconds = (performance.now() - started) / 1000;
    if (str(f, 'output') === 'json') {
      io.out(`${JSON.stringify({ ...report, seconds })}\n`);
    } else if (report.ok) {
      io.out(`OK: ${report.origin} — ${report.size} records (${report.attestations.accepted} accepted and ${report.attestations.refused} refused attestations, `
        + `${report.records.issuance} issuances, ${report.records.policy} policies, ${report.records.event} events, ${report.pruned} pruned bodies), `
        + `${report.checkpoints} checkpoints; ${report.attestations.reverified} attestation${report.attestations.reverified === 1 ? '' : 's'} re-verified in ${seconds.toFixed(2)} s\n`);
    } else {
      const f0 = report.failure!;
      io.err(`FAILED${f0.index !== undefined ? ` at record ${f0.index}` : ''}: ${f0.reason}\n(${report.size} records read before it)\n`);
    }
    return report.ok ? 0 : 1;
  } catch (err) {
    if (err instanceof UsageError) { io.err(`terroir-server audit ${verb}: ${err.message}\n`); return 2; }
    throw err;
  }
}
