#!/usr/bin/env bash
# The location sensor of the demo node (compose service `gpsd`; the native tests run it too): a gpsd
# fed by gpsfake, answering on GPSD_PORT; terroir-agent reads it with Unified Identity on.
#
#   deploy/gpsd.sh
#
# By default gpsfake replays a log written at start by gps/live-nmea.mjs: a fix at GPS_LAT/GPS_LON every
# GPS_STEP_S seconds, stamped with the current time, replayed at the pace of its timestamps (one sentence
# every GPS_STEP_S/3 s). When it has been played out (after GPS_LOG_SECONDS) a fresh one is written and
# gpsd restarts; the agent reconnects. A log with fixed times would soon be older than the location
# policy's maxReadingAgeS, and the node would lose its identity.
#
# Environment:
#   GPS_LAT, GPS_LON   the position, decimal degrees, south/west negative (default Paris: 48.8566, 2.3522)
#   GPS_STEP_S         seconds between fixes (default 1)
#   GPS_LOG_SECONDS    length of each generated log (default 600)
#   GPS_LOG            instead: replay this recorded NMEA log as is, in a loop (its fixed times go stale:
#                      for looking at gpsd, not for Unified Identity)
#   GPSD_PORT          default 2947
#   GPSD_LISTEN_ALL    0 (default): gpsd listens on loopback only (compose: the agent shares its network
#                      namespace); 1: on all addresses (-G), for agents on other hosts, which must then set
#                      allowRemote (TERROIR_GPSD_ALLOW_REMOTE) and whose readings say link: remote
#
# `gpspipe -w localhost:2947` shows its fixes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "deploy/gpsd.sh: $*" >&2; exit 1; }
command -v gpsfake >/dev/null || die "gpsfake not found: apt-get install gpsd gpsd-clients python3-gps"
port=${GPSD_PORT:-2947}
[[ $port =~ ^[0-9]+$ ]] || die "GPSD_PORT must be a port number, got '$port'"
# -n: open the fake device at once, so a client sees fixes from its first WATCH.
args=(-q -P "$port" -n)
# -G (all addresses) through a gpsd wrapper: gpsfake's -o cannot pass it (see gps/listen-all/gpsd).
if [ "${GPSD_LISTEN_ALL:-0}" = 1 ]; then
  export GPSD_HOME=$here/gps/listen-all
else
  unset GPSD_HOME
fi

if [ -n "${GPS_LOG:-}" ]; then
  [ -r "$GPS_LOG" ] || die "NMEA log $GPS_LOG not readable"
  exec gpsfake "${args[@]}" -c 0.2 "$GPS_LOG"
fi

lat=${GPS_LAT:-48.8566}
lon=${GPS_LON:-2.3522}
step=${GPS_STEP_S:-1}
seconds=${GPS_LOG_SECONDS:-600}
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || die "GPS_LOG_SECONDS must be a positive number of seconds, got '$seconds'"
# The sentence delay and the number of fixes, from the step (validated again, with the position, by live-nmea.mjs).
read -r cycle epochs < <(node -e '
  const [step, seconds] = process.argv.slice(1).map(Number);
  if (!(step >= 0.05 && step <= 60)) { console.error(`GPS_STEP_S must be a number of seconds in [0.05, 60], got "${process.argv[1]}"`); process.exit(1); }
  console.log((step / 3).toFixed(6), Math.max(1, Math.ceil(seconds / step)));' "$step" "$seconds") \
  || die "GPS_STEP_S: see the message above"
[ -n "${epochs:-}" ] || die "GPS_STEP_S must be a number of seconds in [0.05, 60], got '$step'"

work=$(mktemp -d "${TMPDIR:-/tmp}/terroir-gpsd.XXXXXX")
player="" timer=""
# gpsfake stops its own gpsd on SIGTERM (it does not when replaying once, -1, and the log has run out:
# hence a looping gpsfake restarted on a timer rather than -1).
stop_player() {
  [ -z "$timer" ] || kill "$timer" 2>/dev/null || true
  if [ -n "$player" ]; then
    kill -TERM "$player" 2>/dev/null || true
    wait "$player" 2>/dev/null || true
  fi
  player="" timer=""
}
trap 'stop_player; rm -rf "$work"; exit 0' TERM INT
trap 'stop_player; rm -rf "$work"' EXIT
# A minute more log than the timer: a replay running behind the clock never wraps to old times.
epochs=$(( epochs + $(node -e 'console.log(Math.ceil(60 / Number(process.argv[1])))' "$step") ))
while :; do
  node "$here/gps/live-nmea.mjs" "$work/live.nmea" "$lat" "$lon" "$step" "$epochs" || die "cannot write the NMEA log (GPS_LAT, GPS_LON: see the message above)"
  # TMPDIR: gpsfake's control socket (gpsfake-<pid>.sock), left behind on stop, goes with $work.
  TMPDIR=$work gpsfake "${args[@]}" -c "$cycle" "$work/live.nmea" &
  player=$!
  sleep "$seconds" &
  timer=$!
  wait -n "$player" "$timer" || true
  if ! kill -0 "$player" 2>/dev/null; then
    rc=0
    wait "$player" || rc=$?
    player=""
    die "gpsfake exited with status $rc (is port $port taken? see its messages above)"
  fi
  # Time for a log stamped from now: gpsd restarts, the agent's sensor reconnects.
  stop_player
done
