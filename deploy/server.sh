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
#
# Unified Identity (docs/unified-identity.md). UNIFIED_IDENTITY_ENABLED is read by the server itself;
# this script asks the same parser (feature-flags/) and, with the flag on, writes the `keylime` and
# `unifiedIdentity` sections. With the flag off it writes neither: a plain SPIFFE issuer.
#   UNIFIED_IDENTITY_ENABLED   true|false (also 1/0, yes/no, on/off), default false
#   TERROIR_KEYLIME_URL        the Keylime verifier, https only (compose: https://keylime-verifier:8881)
#   TERROIR_KEYLIME_CA         the verifier's CA, PEM: the only trust anchor for it
#   TERROIR_KEYLIME_CERT / TERROIR_KEYLIME_KEY   this server's client certificate and key for the verifier
#                              (all four required with the flag on; compose: /etc/terroir/pki/keylime/
#                              ca.crt, terroir-client.crt, terroir-client.key, made by certs-init.sh)
#   TERROIR_KEYLIME_MODE       oneshot (default: each attestation's quote to POST /verify/evidence) |
#                              continuous (also enrolls each TPM node with the verifier, which then pulls
#                              quotes from the node's agent; deploy/agent.sh serves that quote endpoint when
#                              given the same TERROIR_KEYLIME_MODE; signing stops when Keylime fails the node)
#   TERROIR_KEYLIME_QUOTE_ADDRESS  continuous: where the verifier dials a node's quote endpoint: source
#                              (default: the address the agent attested from, so a node cannot point the
#                              verifier elsewhere) | advertised (the host the agent reports: agents behind
#                              NAT, e.g. through a published port)
#   TERROIR_KEYLIME_QUOTE_PORT continuous: the port agents serve their quote endpoint on; set, an agent
#                              reporting another port is refused (compose: 9002, shared with the agent)
#   TERROIR_KEYLIME_ALLOW_DEV_STANDIN  true|false (default false): accept terroir's Keylime test double
#                              (test/doubles/keylime-standin.ts) as the verifier. Development only; never
#                              in compose, which runs the real Keylime images.
#   TERROIR_KEYLIME_WAIT       seconds to wait at start for the verifier to accept connections (default 120;
#                              compose starts Keylime in the `unified` profile, with no depends_on on it)
#   TERROIR_LOCATION_POLICIES  location policy file (default deploy/location-policies.yaml next to this script)
#   TERROIR_DEFAULT_POLICY     the policy every node must satisfy (default eu)
#   TERROIR_UNIFIED_PCRS       comma-separated sha256 PCRs the agents quote (default 0,7,15)
#   TERROIR_KEYLIME_TPM_POLICY the PCR allowlist Keylime checks, JSON {"PCR": ["hex", ...]} on one line;
#                              its PCRs must be among TERROIR_UNIFIED_PCRS. Default {"15": [64 zeros]}:
#                              what a fresh software TPM, which measured nothing, holds. A real node pins
#                              its firmware and boot PCRs instead (docs/deployment.md, docs/enrollment.md).
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

# ---- Unified Identity ------------------------------------------------------------------------------
flag=$(unified_identity_flag) || die "UNIFIED_IDENTITY_ENABLED: see the message above"
unified_yaml=""
if [ "$flag" = on ]; then
  [ -n "$tpm_cas" ] || die "UNIFIED_IDENTITY_ENABLED is on but TPM attestation is off (TERROIR_TPM_CA_FILES is empty): Unified Identity claims are bound to a TPM quote"
  missing=""
  for v in TERROIR_KEYLIME_URL TERROIR_KEYLIME_CA TERROIR_KEYLIME_CERT TERROIR_KEYLIME_KEY; do
    [ -n "${!v:-}" ] || missing="$missing $v"
  done
  [ -z "$missing" ] || die "UNIFIED_IDENTITY_ENABLED is on but${missing} not set: the server needs a Keylime verifier (URL, its CA, a client certificate and key) to verify TPM quotes"
  [[ $TERROIR_KEYLIME_URL =~ ^https://[^[:space:]]+$ ]] || die "TERROIR_KEYLIME_URL must be an https:// URL, got '$TERROIR_KEYLIME_URL'"
  for v in TERROIR_KEYLIME_URL TERROIR_KEYLIME_CA TERROIR_KEYLIME_CERT TERROIR_KEYLIME_KEY TERROIR_LOCATION_POLICIES; do
    # They go into server.yaml as double-quoted strings.
    [[ ${!v:-} != *[\"\\]* ]] || die "$v must not contain a double quote or a backslash, got '${!v}'"
  done
  for v in TERROIR_KEYLIME_CA TERROIR_KEYLIME_CERT TERROIR_KEYLIME_KEY; do
    [ -r "${!v}" ] || die "$v: cannot read ${!v} (deploy/certs-init.sh makes the Keylime PKI; is its volume mounted?)"
  done
  mode=${TERROIR_KEYLIME_MODE:-oneshot}
  [ "$mode" = oneshot ] || [ "$mode" = continuous ] || die "TERROIR_KEYLIME_MODE must be oneshot or continuous, got '$mode'"
  standin=${TERROIR_KEYLIME_ALLOW_DEV_STANDIN:-false}
  [ "$standin" = true ] || [ "$standin" = false ] || die "TERROIR_KEYLIME_ALLOW_DEV_STANDIN must be true or false, got '$standin'"
  policies=${TERROIR_LOCATION_POLICIES:-$root/deploy/location-policies.yaml}
  [ -r "$policies" ] || die "TERROIR_LOCATION_POLICIES: cannot read $policies"
  default_policy=${TERROIR_DEFAULT_POLICY:-eu}
  [[ $default_policy =~ ^[A-Za-z0-9._-]+$ ]] || die "TERROIR_DEFAULT_POLICY must be a policy name, got '$default_policy'"
  pcrs=${TERROIR_UNIFIED_PCRS:-0,7,15}
  [[ $pcrs =~ ^[0-9]+(,[0-9]+)*$ ]] || die "TERROIR_UNIFIED_PCRS must be comma-separated PCR numbers, got '$pcrs'"
  zero=0000000000000000000000000000000000000000000000000000000000000000
  tpm_policy=${TERROIR_KEYLIME_TPM_POLICY:-"{\"15\": [\"$zero\"]}"}
  # JSON is YAML: the server validates the values; here only that it is one object on one line.
  [[ $tpm_policy =~ ^\{[^$'\n']*\}$ ]] || die "TERROIR_KEYLIME_TPM_POLICY must be a JSON object on one line, {\"PCR\": [\"hex digest\", ...]}, got '$tpm_policy'"
  keylime_wait=${TERROIR_KEYLIME_WAIT:-120}
  [[ $keylime_wait =~ ^[0-9]+$ ]] || die "TERROIR_KEYLIME_WAIT must be a number of seconds, got '$keylime_wait'"
  keylime_extra=""
  if [ "$mode" = continuous ]; then
    quote_address=${TERROIR_KEYLIME_QUOTE_ADDRESS:-source}
    [ "$quote_address" = source ] || [ "$quote_address" = advertised ] || die "TERROIR_KEYLIME_QUOTE_ADDRESS must be source or advertised, got '$quote_address'"
    quote_port=${TERROIR_KEYLIME_QUOTE_PORT:-}
    if [ -n "$quote_port" ]; then
      [[ $quote_port =~ ^[0-9]+$ ]] && [ "$quote_port" -ge 1 ] && [ "$quote_port" -le 65535 ] || die "TERROIR_KEYLIME_QUOTE_PORT must be a port number, got '$quote_port'"
    fi
    keylime_extra="
  tpmPolicy: $tpm_policy
  quoteEndpointAddress: $quote_address${quote_port:+
  quoteEndpointPort: $quote_port}"
  fi
  [ "$standin" = true ] && keylime_extra="$keylime_extra
  allowDevelopmentStandIn: true   # TERROIR_KEYLIME_ALLOW_DEV_STANDIN: terroir's test verifier, development only"
  unified_yaml="
keylime:
  verifierUrl: \"$TERROIR_KEYLIME_URL\"
  caFile: \"$TERROIR_KEYLIME_CA\"
  certFile: \"$TERROIR_KEYLIME_CERT\"
  keyFile: \"$TERROIR_KEYLIME_KEY\"
  mode: $mode$keylime_extra
unifiedIdentity:
  locationPolicies: { file: \"$policies\" }
  defaultPolicy: \"$default_policy\"
  pcrs: [$pcrs]
  tpmPolicy: $tpm_policy"
fi

if [ "$flag" = on ]; then
  # Last, once every setting is known good: the verifier must accept connections (compose starts it in the
  # unified profile; nothing in the plain stack waits on Keylime). host:port of https://host[:port]/...
  hostport=${TERROIR_KEYLIME_URL#https://}
  hostport=${hostport%%/*}
  if [[ $hostport =~ ^([A-Za-z0-9._-]+)(:([0-9]+))?$ ]]; then
    kl_host=${BASH_REMATCH[1]} kl_port=${BASH_REMATCH[3]:-443}
    keylime_up() { (exec 3<>"/dev/tcp/$kl_host/$kl_port") 2>/dev/null; }
    for ((i = 0; i < keylime_wait * 10; i++)); do keylime_up && break; sleep 0.1; done
    keylime_up || die "the Keylime verifier at $kl_host:$kl_port accepts no connection after ${keylime_wait}s: with Unified Identity on it checks every attestation (compose: start the unified profile, which runs Keylime: see docs/deployment.md)"
  fi
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
  $tpm_yaml$unified_yaml
YAML
terroir_cmd terroir-server
exec "${CMD[@]}" run -c "$data/server.yaml"
