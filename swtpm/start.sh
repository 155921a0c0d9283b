#!/usr/bin/env bash
# Start a software TPM 2.0 (swtpm) with a real EK certificate chain on loopback.
#
#   swtpm/start.sh STATE_DIR PORT [CA_DIR]
#
# STATE_DIR  the TPM's state; provisioned on first use with swtpm_setup (RSA-2048 EK at 0x81010001,
#            ECC P-384 EK at 0x81010016, their certificates in NV, signed by the local manufacturer CA)
# PORT       TPM command port on 127.0.0.1; PORT+1 is the control port
# CA_DIR     where the local "manufacturer" CA lives (default STATE_DIR/localca); share it between
#            several TPMs so they chain to one CA. It is created on first use.
#
# Prints, one per line:  TCTI=swtpm:host=127.0.0.1,port=PORT   CA_FILE=<root+issuer PEM bundle>   PID=<swtpm pid>
# Stop with swtpm/stop.sh STATE_DIR.
#
# Environment:
#   SWTPM_BIND=ADDR      listen address (default 127.0.0.1; e.g. 0.0.0.0 inside a container whose
#                        port only other containers can reach)
#   SWTPM_FOREGROUND=1   print the lines above, then run swtpm in the foreground as this process
#                        (for containers and supervisors); it stops on SIGTERM
set -euo pipefail

die() { echo "swtpm/start.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: start.sh STATE_DIR PORT [CA_DIR]"
state_dir=$1 port=$2 ca_dir=${3:-$1/localca}
bind=${SWTPM_BIND:-127.0.0.1}
tcti_host=$bind
[ "$bind" = 0.0.0.0 ] && tcti_host=127.0.0.1
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -gt 0 ] && [ "$port" -lt 65535 ] || die "PORT must be 1..65534 (PORT+1 is the control port)"
for tool in swtpm swtpm_setup swtpm_localca; do
  command -v "$tool" >/dev/null || die "$tool not found: apt-get install swtpm swtpm-tools"
done

mkdir -p "$state_dir" "$ca_dir"
state_dir=$(cd "$state_dir" && pwd) ca_dir=$(cd "$ca_dir" && pwd)
pid_file=$state_dir/swtpm.pid
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$st" ] && [ "${st:0:1}" != Z ]; }
if [ -s "$pid_file" ] && running "$(cat "$pid_file")"; then
  die "a swtpm for $state_dir is already running (pid $(cat "$pid_file"))"
fi

if [ ! -e "$state_dir/tpm2-00.permall" ]; then
  # A private swtpm_setup + swtpm_localca configuration, so nothing machine-global (/etc, /var/lib) is used.
  conf_dir=$state_dir/setup
  mkdir -p "$conf_dir"
  cat >"$ca_dir/swtpm-localca.conf" <<CONF
statedir = $ca_dir
signingkey = $ca_dir/signkey.pem
issuercert = $ca_dir/issuercert.pem
certserial = $ca_dir/certserial
CONF
  cat >"$conf_dir/swtpm-localca.options" <<CONF
--platform-manufacturer terroir
--platform-version 1.0
--platform-model swtpm
CONF
  cat >"$conf_dir/swtpm_setup.conf" <<CONF
create_certs_tool = $(command -v swtpm_localca)
create_certs_tool_config = $ca_dir/swtpm-localca.conf
create_certs_tool_options = $conf_dir/swtpm-localca.options
active_pcr_banks = sha1,sha256,sha384
CONF
  # swtpm_localca takes a lock in the CA dir, so concurrent provisioning against one CA is safe.
  swtpm_setup --tpm2 --tpmstate "$state_dir" --config "$conf_dir/swtpm_setup.conf" \
    --create-ek-cert --create-platform-cert --write-ek-cert-files "$state_dir" \
    --logfile "$state_dir/setup.log" >/dev/null 2>&1 \
    || die "swtpm_setup failed; see $state_dir/setup.log"
fi

ca_file=$ca_dir/manufacturer-ca.pem
[ -s "$ca_file" ] || cat "$ca_dir/swtpm-localca-rootca-cert.pem" "$ca_dir/issuercert.pem" >"$ca_file"

rm -f "$pid_file"
echo "$port" >"$state_dir/swtpm.port"
args=(socket --tpm2
  --server "type=tcp,port=$port,bindaddr=$bind"
  --ctrl "type=tcp,port=$((port + 1)),bindaddr=$bind"
  --tpmstate "dir=$state_dir" --flags not-need-init,startup-clear
  --pid "file=$pid_file" --log "file=$state_dir/swtpm.log")

if [ "${SWTPM_FOREGROUND:-0}" = 1 ]; then
  echo "TCTI=swtpm:host=$tcti_host,port=$port"
  echo "CA_FILE=$ca_dir/manufacturer-ca.pem"
  echo "PID=$$"
  exec swtpm "${args[@]}"
fi

swtpm "${args[@]}" --daemon || die "swtpm did not start; see $state_dir/swtpm.log"

# --daemon returns once the sockets are bound; the pid file follows immediately.
for _ in $(seq 1 100); do [ -s "$pid_file" ] && break; sleep 0.02; done
[ -s "$pid_file" ] || die "swtpm wrote no pid file"

echo "TCTI=swtpm:host=$tcti_host,port=$port"
echo "CA_FILE=$ca_file"
echo "PID=$(cat "$pid_file")"
