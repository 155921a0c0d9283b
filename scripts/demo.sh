#!/usr/bin/env bash
# The main job for a newcomer: set up, build, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
npm run build
node dist/src/cli/selfcheck.js
