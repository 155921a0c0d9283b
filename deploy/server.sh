#!/usr/bin/env bash
# terroir-server as deployed (compose service `terroir-server`; the native tests run it too):
# writes server.yaml from the environment into the data directory, then runs the server in the
# foreground (SIGTERM stops it cleanly).
#
#   deploy/server.sh
#
# Environment (defaults are the compose file's paths):
#   TERROIR_TRUST_DOMAIN       trust domain (default demo.terroir)
#   TERROIR_DATA_DIR           state: SQLite datastore, CA keys, admin socket (default /var/lib/terroir/server)
#   TERROIR_AGENT_API_PORT     agent API port, all interfaces (default 8081)
#   TERROIR_HEALTH_BIND_ADDRESS / TERROIR_HEALTH_PORT   /live and /ready (default 127.0.0.1 / 8080)
#   TERROIR_TPM_CA_FILES       colon-separated PEM files of TPM manufacturer CAs; empty = TPM attestation off
#                              (default /var/lib/terroir/swtpm/ca/manufacturer-ca.pem)
#                              (waited for up to TERROIR_TPM_CA_WAIT seconds, default 10: swtpm writes it on first start)
#   TERROIR_JOIN_TOKENS        true|false: join-token attestation (default true)
#   TERROIR_LOG_LEVEL          info
#   UNIFIED_IDENTITY_ENABLED   read by the server itself (feature-flags/); see docs/deployment.md for
#                              what it does and does not do yet
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
die() { echo "deploy/server.sh: $*" >&2; exit 1; }

td=${TERROIR_TRUST_DOMAIN:-demo.terroir}
data=${TERROIR_DATA_DIR:-/var/lib/terroir/server}
tpm_cas=${TERROIR_TPM_CA_FILES-/var/lib/terroir/swtpm/ca/manufacturer-ca.pem}
join=${TERROIR_JOIN_TOKENS:-true}
ca_wait=${TERROIR_TPM_CA_WAIT:-10}
[[ $ca_wait =~ ^[0-9]+$ ]] || die "TERROIR_TPM_CA_WAIT must be a number of seconds, got '$ca_wait'"
[ "$join" = true ] || [ "$join" = false ] || die "TERROIR_JOIN_TOKENS must be true or false, got '$join'"

tpm_yaml="tpm: { enabled: false }"
if [ -n "$tpm_cas" ]; then
  list=""
  IFS=: read -r -a cas <<<"$tpm_cas"
  for f in "${cas[@]}"; do
    # The swtpm service writes its CA on first start; wait a little for it rather than fail a fresh stack.
    for _ in $(seq 1 $((ca_wait * 10))); do [ -s "$f" ] && break; sleep 0.1; done
    [ -r "$f" ] || die "TPM manufacturer CA file $f is missing (TERROIR_TPM_CA_FILES; empty turns TPM attestation off)"
    list="$list${list:+, }\"$f\""
  done
  tpm_yaml="tpm: { enabled: true, manufacturerCaFiles: [$list] }"
fi

mkdir -p "$data"
chmod 0700 "$data"
cat >"$data/server.yaml" <<YAML
# Written by deploy/server.sh at every start; edit the environment, not this file.
trustDomain: $td
dataDir: $data
logLevel: ${TERROIR_LOG_LEVEL:-info}
dataStore: { type: sqlite, path: $data/datastore.sqlite3 }
ca:
  keyType: ec-p256
  ttl: 24h
  x509SvidTtl: 1h
  jwtSvidTtl: 5m
  keyStore: disk
agentApi: { bindAddress: 0.0.0.0, port: ${TERROIR_AGENT_API_PORT:-8081} }
adminApi: { socketPath: $data/admin/api.sock }
health: { enabled: true, bindAddress: ${TERROIR_HEALTH_BIND_ADDRESS:-127.0.0.1}, port: ${TERROIR_HEALTH_PORT:-8080} }
nodeAttestation:
  joinToken: { enabled: $join }
  $tpm_yaml
YAML
terroir_cmd terroir-server
exec "${CMD[@]}" run -c "$data/server.yaml"
