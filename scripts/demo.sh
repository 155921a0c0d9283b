#!/usr/bin/env bash
# The main job for a newcomer on a machine without Docker: set up, build, then run a real
# terroir-server (SQLite) and terroir-agent attesting with a software TPM (swtpm with an EK
# certificate chain), register a workload, fetch its X.509-SVID and a JWT-SVID over the SPIFFE
# Workload API, show them, and clean up exactly what was started.
#
#   npm run demo                                   # plain SPIFFE issuance (flag off)
#   UNIFIED_IDENTITY_ENABLED=true npm run demo     # Unified Identity: TPM + Keylime + location
#   KEEP=1 npm run demo                            # leave it running until Ctrl-C (to try the CLIs by hand)
#
# With UNIFIED_IDENTITY_ENABLED on, the demo also starts gpsd fed by gpsfake (deploy/gpsd.sh: a live
# fix in Paris) as the node's location sensor, and a Keylime verifier: the one you name with
# TERROIR_KEYLIME_URL + TERROIR_KEYLIME_CA + TERROIR_KEYLIME_CERT + TERROIR_KEYLIME_KEY (its CA, and a
# client certificate it trusts), or else terroir's DEVELOPMENT STAND-IN (test/doubles/keylime-verifier.ts:
# real quote checks, but not Keylime), which the server accepts only because this demo's configuration
# says keylime.allowDevelopmentStandIn: true; a production configuration refuses it.
#
# DEMO_SKIP_SETUP=1 skips scripts/setup.sh and the build, TERROIR_FROM_SOURCE=1 runs the TypeScript
# sources through tsx instead of dist/ (how test/demo/ runs this script).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=../deploy/lib.sh
. deploy/lib.sh

UI=""
shopt -s nocasematch
case "${UNIFIED_IDENTITY_ENABLED:-}" in
  ""|false|0|no|off) ;;
  true|1|yes|on) UI=1 ;;
  *) echo "demo: UNIFIED_IDENTITY_ENABLED must be true or false, got '$UNIFIED_IDENTITY_ENABLED'" >&2; exit 2 ;;
esac
shopt -u nocasematch
KL_URL=${TERROIR_KEYLIME_URL:-}
if [ -n "$KL_URL" ]; then
  [ -n "$UI" ] || { echo "demo: TERROIR_KEYLIME_URL is set but UNIFIED_IDENTITY_ENABLED is off: Keylime is used only with the flag on" >&2; exit 2; }
  for v in TERROIR_KEYLIME_CA TERROIR_KEYLIME_CERT TERROIR_KEYLIME_KEY; do
    [ -r "${!v:-}" ] || { echo "demo: TERROIR_KEYLIME_URL needs $v (a readable PEM file: the verifier's CA, and a client certificate and key it trusts)" >&2; exit 2; }
  done
fi

if [ "${DEMO_SKIP_SETUP:-0}" != 1 ]; then
  bash scripts/setup.sh
  npm run build --silent
fi

W=$(mktemp -d /tmp/terroir-demo.XXXXXX)
chmod 0755 "$W"
SERVER_PID="" AGENT_PID="" SWTPM_STARTED="" GPSD_PID="" VERIFIER_PID=""
cleanup() {
  set +e
  for pid in "$AGENT_PID" "$SERVER_PID" "$VERIFIER_PID" "$GPSD_PID"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  [ -n "$SWTPM_STARTED" ] && bash swtpm/stop.sh "$W/tpm" >/dev/null 2>&1
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
server_cli() { terroir_cli terroir-server "$@" -socketPath "$W/server/admin.sock"; }
agent_cli() { terroir_cli terroir-agent "$@" -socketPath "$W/agent/public/api.sock"; }
wait_for() { # wait_for SECONDS DESCRIPTION LOGFILE PID COMMAND...: until COMMAND succeeds, while PID lives
  # Bounded by the clock, not by a count of tries: a slow COMMAND (a CLI starting) must not stretch it.
  local secs=$1 what=$2 log=$3 pid=$4 deadline=$((SECONDS + $1)); shift 4
  while [ "$SECONDS" -lt "$deadline" ]; do
    "$@" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "demo: $what exited; its log:" >&2; tail -n 40 "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "demo: $what did not come up within ${secs}s; its log:" >&2; tail -n 40 "$log" >&2; exit 1
}
wait_for_agent() { # until the agent is healthy; when the server refuses the node, stop at once with its reason
  local secs=$1 deadline=$((SECONDS + $1)) out=""
  while [ "$SECONDS" -lt "$deadline" ]; do
    out=$(agent_cli healthcheck 2>&1) && return 0
    # The agent keeps retrying a refused node (backing off); a demo has nothing to wait for.
    if grep -q 'node attestation refused' <<<"$out"; then
      echo "demo: the server refused this node's attestation, so no workload can get an SVID. terroir-agent healthcheck says:" >&2
      echo "  $out" >&2
      echo "demo: the agent's log (last lines):" >&2; tail -n 10 "$W/agent.log" >&2
      exit 1
    fi
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "demo: terroir-agent exited; its log:" >&2; tail -n 40 "$W/agent.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "demo: terroir-agent did not come up within ${secs}s; healthcheck says: $out" >&2
  echo "demo: its log:" >&2; tail -n 40 "$W/agent.log" >&2; exit 1
}

TD=demo.terroir
step "software TPM (swtpm) with an EK certificate from a local manufacturer CA"
TPM_PORT=$(swtpm_port_pair) || { echo "demo: no free port pair for swtpm" >&2; exit 1; }
SWTPM_OUT=$(bash swtpm/start.sh "$W/tpm" "$TPM_PORT")
SWTPM_STARTED=1
TCTI=$(sed -n 's/^TCTI=//p' <<<"$SWTPM_OUT")
CA_FILE=$(sed -n 's/^CA_FILE=//p' <<<"$SWTPM_OUT")
echo "$SWTPM_OUT"

SERVER_EXTRA="" AGENT_EXTRA=""
if [ -n "$UI" ]; then
  step "location sensor: gpsd fed by gpsfake (deploy/gpsd.sh), a GNSS fix in Paris stamped with the current time"
  GPSD_PORT=$(free_port)
  GPSD_PORT=$GPSD_PORT GPSD_LISTEN_ALL=0 bash deploy/gpsd.sh >"$W/gpsd.log" 2>&1 &
  GPSD_PID=$!
  wait_for 20 "gpsd" "$W/gpsd.log" "$GPSD_PID" bash -c "exec 3<>/dev/tcp/127.0.0.1/$GPSD_PORT"
  echo "gpsd pid $GPSD_PID on 127.0.0.1:$GPSD_PORT"

  if [ -n "$KL_URL" ]; then
    step "Keylime verifier: $KL_URL (yours; strict mTLS with TERROIR_KEYLIME_CA / _CERT / _KEY)"
    KL_CA=$TERROIR_KEYLIME_CA KL_CERT=$TERROIR_KEYLIME_CERT KL_KEY=$TERROIR_KEYLIME_KEY KL_STANDIN=false
  else
    step "Keylime verifier: DEVELOPMENT STAND-IN (terroir's test double, not Keylime; name a real one with TERROIR_KEYLIME_URL)"
    KEYLIME_VERIFIER_HOST=localhost bash deploy/certs-init.sh "$W/pki" >/dev/null
    node --import "file://$ROOT/node_modules/tsx/dist/loader.mjs" test/doubles/keylime-standin.ts --pki "$W/pki/keylime" >"$W/verifier.out" 2>"$W/verifier.log" &
    VERIFIER_PID=$!
    wait_for 30 "the Keylime stand-in" "$W/verifier.log" "$VERIFIER_PID" grep -q '"standIn":true' "$W/verifier.out"
    KL_URL=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8").split("\n")[0]).url)' "$W/verifier.out")
    KL_CA=$W/pki/keylime/ca.crt KL_CERT=$W/pki/keylime/terroir-client.crt KL_KEY=$W/pki/keylime/terroir-client.key KL_STANDIN=true
    cat "$W/verifier.log"
  fi
  # A fresh swtpm has measured nothing: PCR 15 is all zeros, and that is the PCR policy Keylime checks
  # here. A real node pins its firmware and boot PCRs instead (docs/enrollment.md).
  ZERO=$(printf '0%.0s' $(seq 1 64))
  # The latency witness (docs/latency-witness.md): the server is also a landmark, declared in Paris,
  # that times the node's signed answers on loopback. The demo workload asks for policy eu-latency
  # (EU, latency-bounded), so its SVID is signed only once the speed of light placed the node.
  PROBE_PORT=$(free_port)
  { cat deploy/location-policies.yaml; cat <<'POL'
  eu-latency:
    description: inside the European Union, placed by landmarks timing the node (latency-bounded)
    area: { regions: [EU] }
    minAssurance: latency-bounded
    maxReadingAgeS: 120
POL
  } >"$W/location-policies.yaml"
  SERVER_EXTRA="keylime:
  verifierUrl: $KL_URL
  caFile: $KL_CA
  certFile: $KL_CERT
  keyFile: $KL_KEY
  mode: oneshot
  allowDevelopmentStandIn: $KL_STANDIN
unifiedIdentity:
  locationPolicies: { file: $W/location-policies.yaml }
  defaultPolicy: eu
  pcrs: [0, 7, 15]
  tpmPolicy: { \"15\": [\"$ZERO\"] }
  latency:
    landmarks: [{ id: \"spiffe://$TD/spire/server\", lat: 48.8566, lon: 2.3522 }]
    rounds: 30"
  AGENT_EXTRA="  unifiedIdentity:
    sensors:
      - { type: gpsd, host: 127.0.0.1, port: $GPSD_PORT }
  latencyProbe: { bindAddress: 127.0.0.1, port: $PROBE_PORT, landmarks: [\"spiffe://$TD/spire/server\"] }"
fi

step "terroir-server (trust domain $TD, SQLite datastore, TPM node attestation${UI:+, Unified Identity on})"
AGENT_API_PORT=$(free_port)
HEALTH_PORT=$(free_port)
mkdir -p "$W/server"
cat >"$W/server.yaml" <<EOF
trustDomain: $TD
dataDir: $W/server
logLevel: info
dataStore: { type: sqlite, path: $W/server/datastore.sqlite3 }
ca: { keyType: ec-p256, ttl: 24h, x509SvidTtl: 1h, jwtSvidTtl: 5m, keyStore: disk }
agentApi: { bindAddress: 127.0.0.1, port: $AGENT_API_PORT }
adminApi: { socketPath: $W/server/admin.sock }
health: { enabled: true, bindAddress: 127.0.0.1, port: $HEALTH_PORT }
nodeAttestation:
  joinToken: { enabled: true }
  tpm: { enabled: true, manufacturerCaFiles: [$CA_FILE] }
$SERVER_EXTRA
EOF
terroir_cmd terroir-server
"${CMD[@]}" run -c "$W/server.yaml" >"$W/server.log" 2>&1 &
SERVER_PID=$!
wait_for 30 "terroir-server" "$W/server.log" "$SERVER_PID" server_cli healthcheck
echo "server pid $SERVER_PID, agent API 127.0.0.1:$AGENT_API_PORT, health http://127.0.0.1:$HEALTH_PORT/ready"
server_cli bundle show -format spiffe >"$W/bootstrap-bundle.json"
echo "bootstrap bundle written (the agent trusts the server only through it)"

step "registration: every swtpm-attested node, and a workload running as uid $(id -u) on it"
server_cli entry create -node -spiffeID "spiffe://$TD/nodes/swtpm" -selector tpm:ek_model:swtpm
server_cli entry create -parentID "spiffe://$TD/nodes/swtpm" -spiffeID "spiffe://$TD/workload/demo" \
  -selector "unix:uid:$(id -u)" -x509SVIDTTL 600 ${UI:+-locationPolicy eu-latency}

step "terroir-agent: TPM node attestation (EK certificate, credential activation) and the Workload API"
mkdir -p "$W/agent/public"
chmod 0755 "$W/agent" "$W/agent/public"
cat >"$W/agent.yaml" <<EOF
agent:
  trustDomain: $TD
  serverAddress: 127.0.0.1
  serverPort: $AGENT_API_PORT
  dataDir: $W/agent/data
  socketPath: $W/agent/public/api.sock
  trustBundlePath: $W/bootstrap-bundle.json
  logLevel: info
  syncIntervalMs: 1000
  nodeAttestor:
    tpm: { tcti: "$TCTI", ekKind: rsa2048 }
$AGENT_EXTRA
EOF
terroir_cmd terroir-agent
"${CMD[@]}" run -c "$W/agent.yaml" >"$W/agent.log" 2>&1 &
AGENT_PID=$!
wait_for_agent 40
server_cli agent list

step "a workload fetches its X.509-SVID over the SPIFFE Workload API"
mkdir -p "$W/svid"
for _ in $(seq 1 50); do agent_cli api fetch x509 -write "$W/svid" >"$W/fetch.out" 2>&1 && break; sleep 0.2; done
cat "$W/fetch.out"
if [ ! -s "$W/svid/svid.0.pem" ]; then
  echo "demo: the workload got no X.509-SVID; the agent's log:" >&2; tail -n 40 "$W/agent.log" >&2; exit 1
fi
openssl x509 -in "$W/svid/svid.0.pem" -noout -subject -serial -dates -ext subjectAltName,keyUsage,extendedKeyUsage,basicConstraints
openssl verify -CAfile "$W/svid/bundle.0.pem" "$W/svid/svid.0.pem"
if [ -n "$UI" ]; then
  echo "The Unified Identity extension as openssl sees it (OID 2.25.250341728606082657925786220697128205103, DER UTF8String of canonical JSON):"
  openssl x509 -in "$W/svid/svid.0.pem" -noout -text | grep -A1 '2\.25\.250341728606082657925786220697128205103'
fi

step "a JWT-SVID for audience \"demo-service\", validated through the Workload API"
agent_cli api fetch jwt -audience demo-service >"$W/jwt.out"
TOKEN=$(awk '/^token\(/ { getline; gsub(/[ \t]/, ""); print; exit }' "$W/jwt.out")
[ -n "$TOKEN" ] || { echo "demo: no JWT-SVID in the agent's answer:" >&2; cat "$W/jwt.out" >&2; exit 1; }
echo "${TOKEN:0:60}..."
agent_cli api validate jwt -audience demo-service -svid "$TOKEN" | tee "$W/jwt-validate.out"

step "the evidence behind the identity: the SVID names its attestation record; an auditor checks the log offline"
echo "The JWT-SVID names the log and the index of its node's attestation record (the X.509-SVID too, extension 2.25.305423284964344341615238004651143903300):"
grep -o '"terroir_evidence":{[^}]*}' "$W/jwt-validate.out"
openssl x509 -in "$W/svid/svid.0.pem" -noout -text | grep -c '2\.25\.305423284964344341615238004651143903300' >/dev/null \
  || { echo "demo: the X.509-SVID carries no evidence reference" >&2; exit 1; }
terroir_cli terroir-server audit key -c "$W/server.yaml" >"$W/audit.pub"
echo "audit public key: $(cat "$W/audit.pub")"
terroir_cli terroir-server audit export -c "$W/server.yaml" --out "$W/evidence.jsonl"
terroir_cli terroir-server audit verify --export "$W/evidence.jsonl" --key "@$W/audit.pub"

step "done"
if [ -n "$UI" ]; then
  verifier_label="the Keylime verifier at $KL_URL"
  [ "$KL_STANDIN" = true ] && verifier_label="the DEVELOPMENT STAND-IN Keylime verifier (not Keylime)"
  echo "The node was attested with its TPM, $verifier_label accepted its quote, and its GNSS fix satisfied location policy eu;"
  echo "the landmark declared in Paris then bounded its distance by the speed of light (assurance latency-bounded, policy eu-latency)."
  echo "The workload got spiffe://$TD/workload/demo carrying these claims:"
  sed -n 's/^Unified Identity:[[:space:]]*//p' "$W/fetch.out" | head -n 1
else
  echo "The node was attested with its TPM; the workload got spiffe://$TD/workload/demo."
  echo "Run again with UNIFIED_IDENTITY_ENABLED=true for TPM + Keylime + location claims in the SVID."
fi
if [ "${KEEP:-}" = 1 ]; then
  echo "KEEP=1: running until Ctrl-C. Server admin socket: $W/server/admin.sock; Workload API: unix://$W/agent/public/api.sock"
  wait "$AGENT_PID"
fi
