#!/usr/bin/env bash
# The demo workloads (compose services `workload-consumer` and `workload-client`; the native tests
# run them too). Each gets its X.509-SVID from the agent's Workload API and they talk mutual TLS,
# each side checking the other's SPIFFE ID (deploy/workload/mtls-demo.mjs).
#
#   deploy/workload.sh consumer          listen on CONSUMER_PORT, answer only spiffe://TD/workload/client
#   deploy/workload.sh client [--once]   call CONSUMER_ADDR every 5 s (once with --once), expecting spiffe://TD/workload/consumer
#
# Environment:
#   SPIFFE_ENDPOINT_SOCKET  the agent's Workload API (default unix:///run/terroir/api.sock)
#   TERROIR_TRUST_DOMAIN    default demo.terroir
#   CONSUMER_PORT           default 8443;  CONSUMER_ADDR  default workload-consumer:8443
#   SVID_DIR                where the SVID files go (default /tmp/svid-<uid>)
#
# Pending (issue 8): "the consumer accepts only Unified Identity claims from its policy". The SVIDs
# carry no such claims yet, so the consumer authorizes by SPIFFE ID only, and says so in its answers.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
td=${TERROIR_TRUST_DOMAIN:-demo.terroir}
export SPIFFE_ENDPOINT_SOCKET=${SPIFFE_ENDPOINT_SOCKET:-unix:///run/terroir/api.sock}
# How mtls-demo.mjs runs `terroir-agent`: node's arguments, one per line.
terroir_cmd terroir-agent
TERROIR_AGENT_ARGV=$(printf '%s\n' "${CMD[@]:1}")
export TERROIR_AGENT_ARGV
case "${1:-}" in
  consumer) exec node "$here/workload/mtls-demo.mjs" serve "${CONSUMER_PORT:-8443}" "spiffe://$td/workload/client" ;;
  client) exec node "$here/workload/mtls-demo.mjs" call "${CONSUMER_ADDR:-workload-consumer:8443}" "spiffe://$td/workload/consumer" ${2:+"$2"} ;;
  *) echo "usage: deploy/workload.sh consumer | client [--once]" >&2; exit 2 ;;
esac
