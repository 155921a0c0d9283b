// Command-line flags the way SPIRE's (Go `flag` package) take them: `-name value`, `--name value`,
// `-name=value`, bare `-name` for booleans, repeatable list flags, and parsing stops at the first
// non-flag argument or at `--`. Names match ignoring case, `-` and `_`, so `-spiffeID`,
// `-spiffe-id` and `--spiffe_id` are one flag (the kebab-case aliases come for free).

export type FlagType = 'string' | 'int' | 'bool' | 'list';

export interface FlagSpec {
  /** Canonical name as SPIRE spells it, e.g. `spiffeID`. */
  name: string;
  type: FlagType;
  usage: string;
  /** Shown in help; not applied (absent flags stay absent so callers can tell "not given"). */
  defaultText?: string;
  /** Extra names, e.g. a short `c` for `config`; a dashed one is shown in help as the kebab-case form. */
  aliases?: string[];
}

export type FlagValue = string | number | boolean | string[];

export interface ParsedFlags {
  /** Values by canonical name, only for flags that were given. */
  values: Map<string, FlagValue>;
  /** Arguments after the flags. */
  args: string[];
  /** `-h`, `-help` or `--help` was given. */
  help: boolean;
}

/** A usage mistake; the CLI prints the message (and usage) and exits 2. */
export class FlagError extends Error {
  override readonly name = 'FlagError';
  readonly code = 'bad_flag';
}

function normalize(name: string): string {
  return name.toLowerCase().replace(/[-_]/g, '');
}

/** Canonical `spiffeID` → `spiffe-id`, `socketPath` → `socket-path`; for help text. */
export function kebab(name: string): string {
  return name
    .replace(/([a-z0-9])([A-Z])/g, '$1-$2')
    .replace(/([A-Z]+)([A-Z][a-z])/g, '$1-$2')
    .toLowerCase();
}

export class FlagSet {
  private readonly byKey = new Map<string, FlagSpec>();

  constructor(readonly specs: FlagSpec[]) {
    for (const spec of specs) {
      for (const n of [spec.name, ...(spec.aliases ?? [])]) {
        const key = normalize(n);
        const clash = this.byKey.get(key);
        if (clash !== undefined && clash !== spec) throw new Error(`flag -${n} collides with -${clash.name}`);
        this.byKey.set(key, spec);
      }
    }
  }

  parse(argv: string[]): ParsedFlags {
    const values = new Map<string, FlagValue>();
    let help = false;
    let i = 0;
    for (; i < argv.length; i++) {
      const arg = argv[i]!;
      if (arg === '--') { i++; break; }
      if (!arg.startsWith('-') || arg === '-') break;
      const body = arg.replace(/^--?/, '');
      const eq = body.indexOf('=');
      const name = eq === -1 ? body : body.slice(0, eq);
      const inline = eq === -1 ? undefined : body.slice(eq + 1);
      if (name === '') throw new FlagError(`bad flag syntax: ${arg}`);
      if (['h', 'help'].includes(name) && inline === undefined) { help = true; continue; }
      const spec = this.byKey.get(normalize(name));
      if (spec === undefined) throw new FlagError(`flag provided but not defined: -${name}`);
      if (spec.type === 'bool') {
        values.set(spec.name, parseBool(spec.name, inline ?? 'true'));
        continue;
      }
      let raw = inline;
      if (raw === undefined) {
        if (i + 1 >= argv.length) throw new FlagError(`flag needs an argument: -${name}`);
        raw = argv[++i]!;
      }
      switch (spec.type) {
        case 'string':
          values.set(spec.name, raw);
          break;
        case 'int':
          values.set(spec.name, parseInt10(spec.name, raw));
          break;
        case 'list': {
          const prev = values.get(spec.name) as string[] | undefined;
          values.set(spec.name, [...(prev ?? []), raw]);
          break;
        }
      }
    }
    return { values, args: argv.slice(i), help };
  }

  /** Go-style help: one flag a line with its kebab-case alias and usage. */
  usage(): string {
    return this.specs.map((s) => {
      const dashed = s.aliases?.find((a) => a.includes('-')) ?? kebab(s.name);
      const alias = dashed !== s.name ? ` (or -${dashed})` : '';
      const arg = s.type === 'bool' ? '' : s.type === 'int' ? ' <int>' : ' <string>';
      const rep = s.type === 'list' ? ' (repeatable)' : '';
      const def = s.defaultText !== undefined ? ` (default ${s.defaultText})` : '';
      return `  -${s.name}${arg}${alias}\n      ${s.usage}${rep}${def}\n`;
    }).join('');
  }
}

function parseBool(name: string, raw: string): boolean {
  const v = raw.toLowerCase();
  if (['1', 't', 'true'].includes(v)) return true;
  if (['0', 'f', 'false'].includes(v)) return false;
  throw new FlagError(`invalid boolean value "${raw}" for flag -${name}: use true or false`);
}

function parseInt10(name: string, raw: string): number {
  if (!/^[+-]?\d+$/.test(raw)) throw new FlagError(`invalid value "${raw}" for flag -${name}: not a whole number`);
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) throw new FlagError(`invalid value "${raw}" for flag -${name}: out of range`);
  return n;
}

/** Typed accessors over ParsedFlags.values. */
export function str(f: ParsedFlags, name: string): string | undefined {
  return f.values.get(name) as string | undefined;
}
export function int(f: ParsedFlags, name: string): number | undefined {
  return f.values.get(name) as number | undefined;
}
export function bool(f: ParsedFlags, name: string): boolean {
  return (f.values.get(name) as boolean | undefined) ?? false;
}
export function list(f: ParsedFlags, name: string): string[] {
  return (f.values.get(name) as string[] | undefined) ?? [];
}
