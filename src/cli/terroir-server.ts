#!/usr/bin/env node
// terroir-server command line: thin — parse, call, print.
const HELP = `terroir-server — issues SPIFFE identities rooted in hardware and place

Usage: terroir-server <command> [flags]

Commands:
  run -c server.yaml     run the server
  help                   show this help
`;

function main(argv: string[]): number {
  const cmd = argv[0];
  if (cmd === undefined || cmd === 'help' || cmd === '-h' || cmd === '--help') {
    process.stdout.write(HELP);
    return 0;
  }
  process.stderr.write(`terroir-server: unknown command "${cmd}"; run "terroir-server help" for the list\n`);
  return 2;
}

process.exitCode = main(process.argv.slice(2));
