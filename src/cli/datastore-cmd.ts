// terroir-server datastore backup|restore (docs/backup.md). Unlike the admin commands these work on the
// server's files and database directly, not over the admin socket: a backup is taken next to the
// running server, a restore is made before a server starts on the restored state.
import { FlagError, FlagSet, str, type FlagSpec, type ParsedFlags } from './flags.js';
import { formatJson, parseOutputFormat, type OutputFormat } from './output.js';

interface Io {
  out: (s: string) => void;
  err: (s: string) => void;
}

const CONFIG: FlagSpec = { name: 'config', type: 'string', usage: 'server config file (YAML or JSON) of the server to back up / restore', aliases: ['c'] };
const PG_BIN_DIR: FlagSpec = { name: 'pgBinDir', type: 'string', usage: 'directory of pg_dump and pg_restore (PostgreSQL datastore)', defaultText: '$PG_BIN_DIR, else PATH' };
const OUTPUT: FlagSpec = { name: 'output', type: 'string', usage: 'output format: pretty or json', defaultText: 'pretty' };

const VERBS: Record<string, { flags: FlagSet; usage: string }> = {
  backup: {
    flags: new FlagSet([CONFIG, { name: 'out', type: 'string', usage: 'new (or empty) directory to write the backup into' }, PG_BIN_DIR, OUTPUT]),
    usage: 'terroir-server datastore backup -c server.yaml --out <dir>',
  },
  restore: {
    flags: new FlagSet([CONFIG, { name: 'from', type: 'string', usage: 'backup directory (made by datastore backup)' }, PG_BIN_DIR, OUTPUT]),
    usage: 'terroir-server datastore restore -c server.yaml --from <dir>',
  },
};

/** A usage mistake: exit 2 with the verb's usage. */
class UsageError extends Error {}

export async function datastoreCommand(argv: string[], io: Io): Promise<number> {
  const verb = argv[0];
  const spec = verb === undefined ? undefined : VERBS[verb];
  if (spec === undefined) {
    const help = verb === undefined || verb === '-h' || verb === '--help' || verb === 'help';
    (help ? io.out : io.err)(`${help ? '' : `terroir-server: unknown datastore command "${verb}"; `}`
      + `Usage: terroir-server datastore backup|restore -c server.yaml …\n  ${VERBS.backup!.usage}\n  ${VERBS.restore!.usage}\n`);
    return help ? 0 : 2;
  }
  let f: ParsedFlags;
  let out: OutputFormat;
  try {
    f = spec.flags.parse(argv.slice(1));
    if (f.help) {
      io.out(`Usage: ${spec.usage}\n\nFlags:\n${spec.flags.usage()}`);
      return 0;
    }
    if (f.args.length > 0) throw new UsageError(`unexpected argument "${f.args[0]}" (flags start with -)`);
    try {
      out = parseOutputFormat(str(f, 'output'));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  } catch (err) {
    if (!(err instanceof FlagError) && !(err instanceof UsageError)) throw err;
    io.err(`terroir-server datastore ${verb}: ${(err as Error).message}\n\nUsage: ${spec.usage}\n\nFlags:\n${spec.flags.usage()}`);
    return 2;
  }
  const need = (name: string): string | undefined => {
    const v = str(f, name);
    if (v === undefined || v === '') io.err(`terroir-server datastore ${verb}: -${name} is required\n\nUsage: ${spec.usage}\n`);
    return v || undefined;
  };
  const configFile = need('config');
  const dir = configFile && need(verb === 'backup' ? 'out' : 'from');
  if (!configFile || !dir) return 2;
  const pgBinDir = str(f, 'pgBinDir') || process.env.PG_BIN_DIR || undefined;
  try {
    const { loadServerConfig } = await import('../server/config.js');
    const config = loadServerConfig(configFile);
    const backup = await import('../server/datastore/backup.js');
    if (verb === 'backup') {
      const r = await backup.backupServer(config, dir, { pgBinDir });
      for (const w of r.warnings) io.err(`Warning: ${w}\n`);
      if (out === 'json') { io.out(formatJson({ dir: r.dir, manifest: r.manifest })); return 0; }
      const m = r.manifest;
      io.out(`Backup of ${m.trustDomain} written to ${r.dir}\n`
        + `  ${m.datastore} datastore, schema version ${m.schemaVersion}, terroir ${m.terroirVersion}, ${m.createdAt}\n`
        + m.files.map((x) => `  ${x.path}  ${x.size} bytes  sha256:${x.sha256}\n`).join('')
        + 'It holds the CA private keys and every node record: keep it where only the server\'s operators can read it.\n');
      return 0;
    }
    const r = await backup.restoreServer(config, dir, { pgBinDir });
    for (const w of r.warnings) io.err(`Warning: ${w}\n`);
    if (out === 'json') { io.out(formatJson({ manifest: r.manifest, written: r.written, entries: r.entries, nodes: r.nodes })); return 0; }
    const target = config.dataStore.type === 'sqlite' ? config.dataStore.path : 'the PostgreSQL database of dataStore.connectionString';
    io.out(`Restored the backup of ${r.manifest.trustDomain} made ${r.manifest.createdAt} (terroir ${r.manifest.terroirVersion}) into ${target}\n`
      + `  ${r.entries} registration ${r.entries === 1 ? 'entry' : 'entries'}, ${r.nodes} attested ${r.nodes === 1 ? 'node' : 'nodes'}\n`
      + r.written.map((p) => `  wrote ${p}\n`).join('')
      + `Start the server with: terroir-server run -c ${configFile}\n`);
    return 0;
  } catch (err) {
    const e = err as Error & { code?: unknown };
    // Our own refusals and config mistakes speak for themselves; anything else says where it came from.
    const known = ['BackupError', 'ConfigError', 'DataStoreError'].includes(e.name);
    io.err(`Error: ${known ? '' : `datastore ${verb} failed: `}${e.message}\n`);
    return 1;
  }
}
