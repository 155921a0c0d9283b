#!/usr/bin/env bash
# Stop exactly the swtpm started by swtpm/start.sh STATE_DIR, by its PID, after an orderly
# TPM2_Shutdown(CLEAR) so the TPM clock's `safe` flag stays set on the next start.
#
#   swtpm/stop.sh STATE_DIR
set -euo pipefail

die() { echo "swtpm/stop.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: stop.sh STATE_DIR"
pid_file=$1/swtpm.pid
[ -s "$pid_file" ] || { echo "swtpm/stop.sh: no pid file in $1, nothing to stop" >&2; exit 0; }
pid=$(cat "$pid_file")
port=$(cat "$1/swtpm.port" 2>/dev/null || echo "")

if kill -0 "$pid" 2>/dev/null; then
  if [ -n "$port" ]; then
    # TPM2_Shutdown(TPM_SU_CLEAR): tag 0x8001, size 12, command code 0x145, shutdownType 0.
    # Best effort: a TPM that is already shut down answers with an error, which is fine.
    exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null && {
      printf '\x80\x01\x00\x00\x00\x0c\x00\x00\x01\x45\x00\x00' >&3
      timeout 2 head -c 10 <&3 >/dev/null || true
      exec 3>&-
    } || true
    # Ask swtpm to terminate through its control channel (CMD_SHUTDOWN).
    exec 4<>"/dev/tcp/127.0.0.1/$((port + 1))" 2>/dev/null && {
      printf '\x00\x00\x00\x03' >&4
      timeout 2 head -c 4 <&4 >/dev/null || true
      exec 4>&-
    } || true
  fi
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; fi
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
fi
rm -f "$pid_file"
