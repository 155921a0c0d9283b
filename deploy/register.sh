#!/usr/bin/env bash
# Once the server is up (compose one-shot service `register`; the native tests run it too):
#  1. exports the server's trust bundle (PEM) to TERROIR_BUNDLE_OUT, the bootstrap bundle agents
#     trust the server by, delivered through a volume (never fetched over an unauthenticated network);
#  2. registers the demo's identities. Idempotent: an entry that already exists for a SPIFFE ID is left alone.
#
#   deploy/register.sh
#
#   spiffe://TD/nodes/swtpm        node entry: every agent whose TPM matches TERROIR_NODE_SELECTOR
#   spiffe://TD/workload/consumer  the demo consumer, on those nodes, TERROIR_CONSUMER_SELECTOR
#   spiffe://TD/workload/client    the demo client, on those nodes, TERROIR_CLIENT_SELECTOR
#
# Environment:
#   TERROIR_TRUST_DOMAIN       default demo.terroir
#   TERROIR_ADMIN_SOCKET       the server's admin socket (default /var/lib/terroir/server/admin/api.sock)
#   TERROIR_BUNDLE_OUT         where to write the bootstrap bundle (default /var/lib/terroir/bootstrap/bootstrap-bundle.pem)
#   TERROIR_NODE_SELECTOR      default tpm:ek_model:swtpm (a real TPM: tpm:ek_hash:<hex> or tpm:ek_issuer:<DN>)
#   TERROIR_CONSUMER_SELECTOR  default unix:uid:10101 (the consumer container's user)
#   TERROIR_CLIENT_SELECTOR    default unix:uid:10102
#   TERROIR_SVID_TTL           X.509-SVID lifetime in seconds for the workloads (default 600)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
die() { echo "deploy/register.sh: $*" >&2; exit 1; }

td=${TERROIR_TRUST_DOMAIN:-demo.terroir}
sock=${TERROIR_ADMIN_SOCKET:-/var/lib/terroir/server/admin/api.sock}
cli() { terroir_cli terroir-server "$@" -socketPath "$sock"; }

ok=""
for _ in $(seq 1 300); do cli healthcheck >/dev/null 2>&1 && { ok=1; break; }; sleep 0.1; done
[ -n "$ok" ] || die "terroir-server does not answer on $sock after 30 s (is the server up? see its log)"

out=${TERROIR_BUNDLE_OUT:-/var/lib/terroir/bootstrap/bootstrap-bundle.pem}
mkdir -p "$(dirname "$out")"
# Written aside and renamed, so an agent waiting for the file never reads half of it.
cli bundle show -format pem >"$out.tmp"
grep -q "BEGIN CERTIFICATE" "$out.tmp" || die "the server returned no CA certificate for the bundle"
chmod 0644 "$out.tmp"
mv -f "$out.tmp" "$out"
echo "register: bootstrap bundle written to $out"

# ensure SPIFFE_ID ARGS...: create the entry unless one exists for that SPIFFE ID.
ensure() {
  local id=$1; shift
  if cli entry show -spiffeID "$id" -output json | grep -qF "\"spiffeId\": \"$id\""; then
    echo "register: $id exists"
  else
    cli entry create -spiffeID "$id" "$@" >/dev/null
    echo "register: $id created"
  fi
}
node_id="spiffe://$td/nodes/swtpm"
ensure "$node_id" -node -selector "${TERROIR_NODE_SELECTOR:-tpm:ek_model:swtpm}"
ensure "spiffe://$td/workload/consumer" -parentID "$node_id" \
  -selector "${TERROIR_CONSUMER_SELECTOR:-unix:uid:10101}" -x509SVIDTTL "${TERROIR_SVID_TTL:-600}"
ensure "spiffe://$td/workload/client" -parentID "$node_id" \
  -selector "${TERROIR_CLIENT_SELECTOR:-unix:uid:10102}" -x509SVIDTTL "${TERROIR_SVID_TTL:-600}"
