#!/usr/bin/env bash
# The main job for a newcomer on a machine without Docker: set up, build, then run a real
# terroir-server (SQLite) and terroir-agent attesting with a software TPM (swtpm with an EK
# certificate chain), register a workload, fetch its X.509-SVID and a JWT-SVID over the SPIFFE
# Workload API, show them, and clean up exactly what was started.
#
#   npm run demo                 # or: bash scripts/demo.sh
#   KEEP=1 npm run demo          # leave the demo running until Ctrl-C (to try the CLIs by hand)
#
# The demo runs with UNIFIED_IDENTITY_ENABLED off (no Keylime verifier or GNSS here): see docs/unified-identity.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

shopt -s nocasematch
if [[ "${UNIFIED_IDENTITY_ENABLED:-}" =~ ^(true|1|yes|on)$ ]]; then
  echo "demo: UNIFIED_IDENTITY_ENABLED is on, but this demo has no Keylime verifier or GNSS sensor to run that path" >&2
  echo "      (the server would refuse every TPM attestation). Unset it; docs/unified-identity.md shows the flag-on setup." >&2
  exit 2
fi
shopt -u nocasematch

bash scripts/setup.sh
npm run build --silent

W=$(mktemp -d /tmp/terroir-demo.XXXXXX)
chmod 0755 "$W"
SERVER_PID="" AGENT_PID="" SWTPM_STARTED=""
cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -n "$SWTPM_STARTED" ] && bash swtpm/stop.sh "$W/tpm" >/dev/null 2>&1
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
server_cli() { node "$ROOT/dist/src/cli/terroir-server.js" "$@" -socketPath "$W/server/admin.sock"; }
agent_cli() { node "$ROOT/dist/src/cli/terroir-agent.js" "$@" -socketPath "$W/agent/public/api.sock"; }
wait_for() { # wait_for SECONDS DESCRIPTION LOGFILE COMMAND...
  local secs=$1 what=$2 log=$3; shift 3
  for _ in $(seq 1 $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "demo: $what did not come up within ${secs}s; its log:" >&2; tail -n 40 "$log" >&2; exit 1
}

TD=demo.terroir
step "software TPM (swtpm) with an EK certificate from a local manufacturer CA"
TPM_PORT=""
for _ in $(seq 1 20); do
  p=$(free_port)
  if node -e "require('net').createServer().once('error',()=>process.exit(1)).listen($((p + 1)),'127.0.0.1',function(){this.close()})"; then TPM_PORT=$p; break; fi
done
[ -n "$TPM_PORT" ] || { echo "demo: no free port pair for swtpm" >&2; exit 1; }
SWTPM_OUT=$(bash swtpm/start.sh "$W/tpm" "$TPM_PORT")
SWTPM_STARTED=1
TCTI=$(sed -n 's/^TCTI=//p' <<<"$SWTPM_OUT")
CA_FILE=$(sed -n 's/^CA_FILE=//p' <<<"$SWTPM_OUT")
echo "$SWTPM_OUT"

step "terroir-server (trust domain $TD, SQLite datastore, TPM node attestation)"
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
EOF
node dist/src/cli/terroir-server.js run -c "$W/server.yaml" >"$W/server.log" 2>&1 &
SERVER_PID=$!
wait_for 30 "terroir-server" "$W/server.log" server_cli healthcheck
echo "server pid $SERVER_PID, agent API 127.0.0.1:$AGENT_API_PORT, health http://127.0.0.1:$HEALTH_PORT/ready"
server_cli bundle show -format spiffe >"$W/bootstrap-bundle.json"
echo "bootstrap bundle written (the agent trusts the server only through it)"

step "registration: every swtpm-attested node, and a workload running as uid $(id -u) on it"
server_cli entry create -node -spiffeID "spiffe://$TD/nodes/swtpm" -selector tpm:ek_model:swtpm
server_cli entry create -parentID "spiffe://$TD/nodes/swtpm" -spiffeID "spiffe://$TD/workload/demo" \
  -selector "unix:uid:$(id -u)" -x509SVIDTTL 600

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
EOF
node dist/src/cli/terroir-agent.js run -c "$W/agent.yaml" >"$W/agent.log" 2>&1 &
AGENT_PID=$!
wait_for 30 "terroir-agent" "$W/agent.log" agent_cli healthcheck
server_cli agent list

step "a workload fetches its X.509-SVID over the SPIFFE Workload API"
mkdir -p "$W/svid"
for _ in $(seq 1 50); do agent_cli api fetch x509 -write "$W/svid" >"$W/fetch.out" 2>&1 && break; sleep 0.2; done
cat "$W/fetch.out"
openssl x509 -in "$W/svid/svid.0.pem" -noout -subject -serial -dates -ext subjectAltName,keyUsage,extendedKeyUsage,basicConstraints
openssl verify -CAfile "$W/svid/bundle.0.pem" "$W/svid/svid.0.pem"

step "a JWT-SVID for audience \"demo-service\", validated through the Workload API"
agent_cli api fetch jwt -audience demo-service >"$W/jwt.out"
TOKEN=$(awk '/^token\(/ { getline; gsub(/[ \t]/, ""); print; exit }' "$W/jwt.out")
[ -n "$TOKEN" ] || { echo "demo: no JWT-SVID in the agent's answer:" >&2; cat "$W/jwt.out" >&2; exit 1; }
echo "${TOKEN:0:60}..."
agent_cli api validate jwt -audience demo-service -svid "$TOKEN"

step "done"
echo "The node was attested with its TPM; the workload got spiffe://$TD/workload/demo."
if [ "${KEEP:-}" = 1 ]; then
  echo "KEEP=1: running until Ctrl-C. Server admin socket: $W/server/admin.sock; Workload API: unix://$W/agent/public/api.sock"
  wait "$AGENT_PID"
fi
