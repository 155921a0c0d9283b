// Lint rules, including the architecture's import boundaries (see ../shared/DESIGN.md "Layout"):
// server and agent never import each other; the shared layers never import the processes above them;
// product code never imports test doubles.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const boundary = (files, forbidden, why) => ({
  files,
  rules: {
    'no-restricted-imports': ['error', {
      patterns: forbidden.map((group) => ({ group: [`**/${group}/**`, `**/${group}`], message: why })),
    }],
  },
});

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  boundary(['src/spiffe/**', 'src/tpm/**', 'src/keylime/**', 'src/geo/**', 'src/api/**', 'native/**', 'feature-flags/**'],
    ['server', 'agent', 'workload', 'cli', 'test'],
    'shared layers (spiffe/tpm/keylime/geo/api/native) must not depend on server, agent, workload, cli or test code'),
  boundary(['src/translog/**'], ['server', 'agent', 'workload', 'cli', 'landmark', 'test'], 'src/translog (transparency-log toolkit) is a shared layer: it imports no server, agent, workload, cli, landmark or test code'),
  boundary(['src/server/**'], ['agent', 'workload', 'landmark', 'test'], 'the server never imports the agent, the workload library, the landmark or test code (the latency probe reaches SPIFFE mTLS through src/latency)'),
  // The latency probe protocol: shared by agent, landmark and server; builds on spiffe, tpm and the
  // workload library's SPIFFE mTLS helpers (the one mTLS implementation for node:tls).
  boundary(['src/latency/**'], ['server', 'agent', 'landmark', 'cli', 'test'], 'src/latency is shared by agent, landmark and server and imports none of them'),
  // A landmark is a process of its own (terroir-server landmark run): a SPIFFE workload that probes.
  boundary(['src/landmark/**'], ['server', 'agent', 'test'], 'the landmark never imports the server, the agent or test code'),
  boundary(['src/agent/**'], ['server', 'landmark', 'test'], 'the agent never imports the server, the landmark or test code'),
  boundary(['src/workload/**'], ['server', 'agent', 'test'], 'the workload library only builds on src/spiffe (and the Workload API protocol)'),
  boundary(['src/cli/**'], ['test'], 'product code never imports test doubles'),
);
