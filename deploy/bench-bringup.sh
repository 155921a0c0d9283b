#!/usr/bin/env bash
# How long a fresh deployment takes to come up, phase by phase, running the compose services'
# scripts natively on this machine (no containers): the answer to "how long until my workloads have
# identities?", minus image pulls and container start-up. Prints a table; starts and stops everything
# itself (by PID) in a temporary directory.
#
#   deploy/bench-bringup.sh            # the TypeScript sources through tsx (no build needed)
#   BENCH_DIST=1 deploy/bench-bringup.sh   # the compiled dist/ (npm run build first), as in the images
#   UNIFIED_IDENTITY_ENABLED=true deploy/bench-bringup.sh   # flag on: gpsd.sh and the Keylime development
#                                      # stand-in (test/doubles, through tsx) join the bring-up
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
[ "${BENCH_DIST:-0}" = 1 ] || export TERROIR_FROM_SOURCE=1
# After TERROIR_FROM_SOURCE: lib.sh decides how to run terroir from it.
# shellcheck source=lib.sh
. "$here/lib.sh"
[ "$(id -u)" -eq 0 ] || { echo "bench-bringup: run as root (the workloads run as uids 10101/10102 via setpriv)" >&2; exit 1; }

W=$(mktemp -d /tmp/terroir-bringup.XXXXXX)
chmod 0755 "$W"
pids=()
cleanup() {
  set +e
  bash "$root/swtpm/stop.sh" "$W/tpm" >/dev/null 2>&1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }
wait_for() { # wait_for SECONDS WHAT COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 50))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.02; done
  echo "bench-bringup: $what did not happen within ${secs}s" >&2; tail -n 20 "$W"/*.log >&2; exit 1
}
rows=()
t0=$(now_ms)
last=$t0
phase() { local t; t=$(now_ms); rows+=("$(printf '%-52s %7d ms %8d ms' "$1" $((t - last)) $((t - t0)))"); last=$t; }

tpm_port=$(swtpm_port_pair) || { echo "bench-bringup: no free port pair for swtpm" >&2; exit 1; }
api_port=$(free_port) health_port=$(free_port) consumer_port=$(free_port) gpsd_port=$(free_port)
flag=$(unified_identity_flag) || exit 1
export UNIFIED_IDENTITY_ENABLED=$([ "$flag" = on ] && echo true || echo false)
t0=$(now_ms) last=$t0

bash "$here/certs-init.sh" "$W/pki" >/dev/null
phase "certs-init.sh (mTLS PKI, 6 keys)"

if [ "$flag" = on ]; then
  GPSD_PORT=$gpsd_port GPSD_LISTEN_ALL=0 bash "$here/gpsd.sh" >"$W/gpsd.log" 2>&1 &
  pids+=($!)
  node --import "file://$root/node_modules/tsx/dist/loader.mjs" "$root/test/doubles/keylime-standin.ts" --pki "$W/pki/keylime" >"$W/standin.out" 2>"$W/standin.log" &
  pids+=($!)
  wait_for 30 "Keylime stand-in ready" grep -q '"standIn":true' "$W/standin.out"
  wait_for 30 "gpsd listening" bash -c "exec 3<>/dev/tcp/127.0.0.1/$gpsd_port"
  phase "gpsd.sh + Keylime stand-in, in parallel, until ready"
  export TERROIR_KEYLIME_URL
  TERROIR_KEYLIME_URL=$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1], "utf8").split("\n")[0]).url)' "$W/standin.out")
  export TERROIR_KEYLIME_CA=$W/pki/keylime/ca.crt TERROIR_KEYLIME_CERT=$W/pki/keylime/terroir-client.crt \
    TERROIR_KEYLIME_KEY=$W/pki/keylime/terroir-client.key TERROIR_KEYLIME_ALLOW_DEV_STANDIN=true \
    TERROIR_GPSD_HOST=127.0.0.1 TERROIR_GPSD_PORT=$gpsd_port CONSUMER_REQUIRE_REGION=EU CONSUMER_ALLOW_DEV_STANDIN=true
fi

SWTPM_STATE_DIR=$W/tpm SWTPM_CA_DIR=$W/tpm-ca SWTPM_PORT=$tpm_port SWTPM_BIND=127.0.0.1 \
  bash "$here/swtpm.sh" >"$W/swtpm.log" 2>&1 &
pids+=($!)
wait_for 60 "swtpm listening" bash -c "exec 3<>/dev/tcp/127.0.0.1/$tpm_port"
phase "swtpm.sh first start (EK provisioning + certificates)"

export TERROIR_DATA_DIR=$W/server TERROIR_AGENT_API_PORT=$api_port TERROIR_HEALTH_PORT=$health_port \
  TERROIR_TPM_CA_FILES=$W/tpm-ca/manufacturer-ca.pem TERROIR_ADMIN_SOCKET=$W/server/admin/api.sock \
  TERROIR_BUNDLE_OUT=$W/bootstrap/bundle.pem
bash "$here/server.sh" >"$W/server.log" 2>&1 &
pids+=($!)
wait_for 60 "server /ready" node -e "fetch('http://127.0.0.1:$health_port/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
phase "server.sh until /ready (SQLite, CA)"

bash "$here/register.sh" >"$W/register.log" 2>&1
phase "register.sh (bundle export + 3 entries)"

TERROIR_AGENT_SERVER_ADDRESS=127.0.0.1 TERROIR_AGENT_SERVER_PORT=$api_port TERROIR_AGENT_DATA_DIR=$W/agent \
  TERROIR_AGENT_SOCKET_DIR=$W/run TERROIR_BOOTSTRAP_BUNDLE=$W/bootstrap/bundle.pem \
  TERROIR_TPM_TCTI="swtpm:host=127.0.0.1,port=$tpm_port" bash "$here/agent.sh" >"$W/agent.log" 2>&1 &
pids+=($!)
wait_for 60 "node attestation" grep -q '"msg":"node attested"' "$W/agent.log"
phase "$([ "$flag" = on ] && echo "agent.sh: TPM + Keylime + location attestation" || echo "agent.sh until TPM node attestation succeeded")"

mkdir -p "$W/svid-c" "$W/svid-k"
chown 10101:10101 "$W/svid-c"
chown 10102:10102 "$W/svid-k"
setpriv --reuid 10101 --regid 10101 --clear-groups env SPIFFE_ENDPOINT_SOCKET="unix://$W/run/api.sock" \
  CONSUMER_PORT="$consumer_port" bash "$here/workload.sh" consumer >"$W/consumer.log" 2>&1 &
pids+=($!)
wait_for 60 "consumer SVID" grep -q "listening on" "$W/consumer.log"
phase "consumer: first X.509-SVID, TLS listener up"

setpriv --reuid 10102 --regid 10102 --clear-groups env SPIFFE_ENDPOINT_SOCKET="unix://$W/run/api.sock" \
  CONSUMER_ADDR="127.0.0.1:$consumer_port" bash "$here/workload.sh" client --once >"$W/client.log" 2>&1
phase "client: SVID + first mutual-TLS call answered"

echo "terroir bring-up, native, Unified Identity $flag, $( [ "${BENCH_DIST:-0}" = 1 ] && echo "compiled dist/" || echo "sources via tsx"), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
printf '%-52s %10s %11s\n' "phase" "took" "elapsed"
printf '%s\n' "${rows[@]}"
echo "client answer: $(cat "$W/client.log")"
