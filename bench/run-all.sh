#!/usr/bin/env bash
# Runs every benchmark in turn; each prints its own figures. Benchmarks are not tests: run them on
# an otherwise idle machine for meaningful numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in spiffe name-constraints tpm tpm-attestation keylime keylime-e2e geo datastore server agent workload unified-identity evidence security k8s-attestor latency tracing metrics dashboard crash fleet; do
  [ -f "bench/$b.ts" ] || continue
  printf '\n===== bench/%s.ts =====\n' "$b"
  npx tsx "bench/$b.ts"
done
