#!/usr/bin/env bash
# Stop exactly the swtpm started by swtpm/start.sh STATE_DIR, by its PID, after an orderly
# TPM2_Shutdown(CLEAR) and swtpm's control-channel shutdown, so the TPM clock's `safe` flag stays
# set on the next start. SIGTERM, then SIGKILL, only if it has not exited after 2 s each.
#
#   swtpm/stop.sh STATE_DIR
set -euo pipefail

die() { echo "swtpm/stop.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: stop.sh STATE_DIR"
pid_file=$1/swtpm.pid
[ -s "$pid_file" ] || { echo "swtpm/stop.sh: no pid file in $1, nothing to stop" >&2; exit 0; }
pid=$(cat "$pid_file")
port=$(cat "$1/swtpm.port" 2>/dev/null || echo "")
state_dir=$(cd "$1" && pwd)

# Alive = exists and is not a zombie (a daemonised swtpm is reaped by PID 1, which may be slow).
alive() { local st; st=$(ps -o stat= -p "$pid" 2>/dev/null) && [ -n "$st" ] && [ "${st:0:1}" != Z ]; }

# Only ever signal the swtpm serving this state dir, never a process that reused the PID.
if alive && ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "swtpm.*dir=$state_dir"; then
  echo "swtpm/stop.sh: pid $pid is not the swtpm of $state_dir; not touching it" >&2
  rm -f "$pid_file"
  exit 0
fi

if alive; then
  if [ -n "$port" ]; then
    # TPM2_Shutdown(TPM_SU_CLEAR): tag 0x8001, size 12, command code 0x145, shutdownType 0.
    # Best effort: a TPM that is already shut down answers with an error, which is fine.
    if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
      printf '\x80\x01\x00\x00\x00\x0c\x00\x00\x01\x45\x00\x00' >&3
      timeout 2 dd bs=10 count=1 status=none <&3 >/dev/null || true
      exec 3>&-
    fi
    # Then swtpm's own shutdown through the control channel (CMD_SHUTDOWN = 3): it writes the state
    # out; a bare SIGTERM after TPM2_Shutdown leaves `safe` cleared on the next start.
    if { exec 4<>"/dev/tcp/127.0.0.1/$((port + 1))"; } 2>/dev/null; then
      printf '\x00\x00\x00\x03' >&4
      timeout 2 dd bs=4 count=1 status=none <&4 >/dev/null || true
      exec 4>&-
    fi
  fi
  for _ in $(seq 1 100); do alive || break; sleep 0.02; done
  if alive; then kill -TERM "$pid"; fi
  for _ in $(seq 1 100); do alive || break; sleep 0.02; done
  if alive; then kill -KILL "$pid"; fi
fi
rm -f "$pid_file"
