#!/usr/bin/env bash
# The demo workloads (compose services `workload-consumer` and `workload-client`; the native tests
# run them too). Each gets its X.509-SVID from the agent's Workload API and they talk mutual TLS
# through terroir's workload library (deploy/workload/mtls-demo.mjs).
#
#   deploy/workload.sh consumer          listen on CONSUMER_PORT, answer only spiffe://TD/workload/client
#   deploy/workload.sh client [--once]   call CONSUMER_ADDR every 5 s (once with --once), expecting spiffe://TD/workload/consumer
#
# With UNIFIED_IDENTITY_ENABLED on, the consumer also requires the caller's Unified Identity claims to
# satisfy its policy, and refuses plain SVIDs; off, it authorizes by SPIFFE ID only and says so.
#
# Environment:
#   SPIFFE_ENDPOINT_SOCKET  the agent's Workload API (default unix:///run/terroir/api.sock)
#   TERROIR_TRUST_DOMAIN    default demo.terroir
#   CONSUMER_PORT           default 8443;  CONSUMER_ADDR  default workload-consumer:8443
#   UNIFIED_IDENTITY_ENABLED  read through terroir's feature-flag parser (default false)
#   CONSUMER_REQUIRE_REGION, CONSUMER_REQUIRE_COUNTRY, CONSUMER_REQUIRE_POLICY
#                           comma-separated: the claims a caller must carry with the flag on (at least
#                           one of them then; e.g. CONSUMER_REQUIRE_REGION=EU)
#   CONSUMER_ALLOW_DEV_STANDIN  true: accept claims checked by terroir's development Keylime stand-in
#                           (native demo and tests; never in compose). Default: refused
#   SVID_FETCH_TIMEOUT_S    how long to wait for a first SVID (default 120)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
td=${TERROIR_TRUST_DOMAIN:-demo.terroir}
export SPIFFE_ENDPOINT_SOCKET=${SPIFFE_ENDPOINT_SOCKET:-unix:///run/terroir/api.sock}
TERROIR_WORKLOAD_MODULE=$(terroir_module src/workload/index)
TERROIR_FLAGS_MODULE=$(terroir_module feature-flags/index)
export TERROIR_WORKLOAD_MODULE TERROIR_FLAGS_MODULE
demo=(node "${TERROIR_NODE_IMPORT[@]}" "$here/workload/mtls-demo.mjs")
case "${1:-}" in
  consumer) exec "${demo[@]}" serve "${CONSUMER_PORT:-8443}" "spiffe://$td/workload/client" ;;
  client) exec "${demo[@]}" call "${CONSUMER_ADDR:-workload-consumer:8443}" "spiffe://$td/workload/consumer" ${2:+"$2"} ;;
  *) echo "usage: deploy/workload.sh consumer | client [--once]" >&2; exit 2 ;;
esac
