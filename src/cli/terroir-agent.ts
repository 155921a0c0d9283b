#!/usr/bin/env node
// terroir-agent command line: thin — parse, call, print.
const HELP = `terroir-agent — proves its node (TPM, location) and serves the SPIFFE Workload API

Usage: terroir-agent <command> [flags]

Commands:
  run -c agent.yaml      run the agent
  help                   show this help
`;

function main(argv: string[]): number {
  const cmd = argv[0];
  if (cmd === undefined || cmd === 'help' || cmd === '-h' || cmd === '--help') {
    process.stdout.write(HELP);
    return 0;
  }
  process.stderr.write(`terroir-agent: unknown command "${cmd}"; run "terroir-agent help" for the list\n`);
  return 2;
}

process.exitCode = main(process.argv.slice(2));
