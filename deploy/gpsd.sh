#!/usr/bin/env bash
# The location sensor of the demo node (compose service `gpsd`, in the `unified` profile; the native
# tests run it too): gpsd answering on GPSD_PORT, fed by terroir's own NMEA source (gps/live-nmea.mjs, a
# TCP server on a free loopback port that gpsd reads as a network receiver, tcp://127.0.0.1:PORT).
# terroir-agent reads gpsd with Unified Identity on. No gpsfake: the gpsd image carries gpsd and Node only.
#
#   deploy/gpsd.sh
#
# By default the source sends a fix at GPS_LAT/GPS_LON every GPS_STEP_S seconds, each stamped with the
# current time, for as long as it runs: fixes never go stale against the location policy's
# maxReadingAgeS, and gpsd never needs restarting.
#
# Environment:
#   GPS_LAT, GPS_LON   the position, decimal degrees, south/west negative (default Paris: 48.8566, 2.3522)
#   GPS_STEP_S         seconds between fixes (default 1)
#   GPS_LOG            instead: replay this recorded NMEA log as is, in a loop (its fixed times go stale:
#                      for looking at gpsd, not for Unified Identity)
#   GPSD_PORT          default 2947
#   GPSD_LISTEN_ALL    0 (default): gpsd listens on loopback only (compose: the agent shares its network
#                      namespace); 1: on all addresses (-G), for agents on other hosts, which must then set
#                      allowRemote (TERROIR_GPSD_ALLOW_REMOTE) and whose readings say link: remote
#
# `node deploy/gps/healthcheck.mjs 127.0.0.1 2947` prints a current fix (the compose health check);
# `gpspipe -w localhost:2947` (gpsd-clients, on a workstation) shows them all.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "deploy/gpsd.sh: $*" >&2; exit 1; }
gpsd_bin=$(command -v gpsd || echo /usr/sbin/gpsd)
[ -x "$gpsd_bin" ] || die "gpsd not found: apt-get install gpsd"
port=${GPSD_PORT:-2947}
[[ $port =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "GPSD_PORT must be a port number, got '$port'"
listen=()
case "${GPSD_LISTEN_ALL:-0}" in
  0) ;;
  1) listen=(-G) ;;
  *) die "GPSD_LISTEN_ALL must be 0 or 1, got '${GPSD_LISTEN_ALL}'" ;;
esac

if [ -n "${GPS_LOG:-}" ]; then
  [ -r "$GPS_LOG" ] || die "NMEA log $GPS_LOG not readable"
  source_args=(replay "$GPS_LOG" 0.2)
else
  source_args=(serve "${GPS_LAT:-48.8566}" "${GPS_LON:-2.3522}" "${GPS_STEP_S:-1}")
fi

feeder="" daemon=""
stop_all() {
  for p in $daemon $feeder; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $daemon $feeder; do wait "$p" 2>/dev/null || true; done
  daemon="" feeder=""
}
trap 'stop_all; exit 0' TERM INT
trap stop_all EXIT

# The source prints its port once it listens (or its reason for refusing, on stderr, and exits).
exec {source_fd}< <(exec node "$here/gps/live-nmea.mjs" "${source_args[@]}")
feeder=$!
feed_port=""
read -r -t 30 -u "$source_fd" feed_port || true
[[ $feed_port =~ ^[0-9]+$ ]] || die "the NMEA source did not start (see its message above)"

# -N foreground, -n read the source at once (a client sees fixes from its first WATCH), -S our port.
# Non-root, without -F or -P: gpsd writes no file. ("unable to connect to the DBUS system bus": harmless.)
"$gpsd_bin" -N -n -S "$port" "${listen[@]}" "tcp://127.0.0.1:$feed_port" &
daemon=$!
echo "deploy/gpsd.sh: gpsd on port $port ($([ ${#listen[@]} -eq 0 ] && echo loopback || echo 'all addresses')), fed by live-nmea.mjs on 127.0.0.1:$feed_port"
while :; do
  if ! kill -0 "$daemon" 2>/dev/null; then
    rc=0; wait "$daemon" || rc=$?; daemon=""
    die "gpsd exited with status $rc (is port $port taken? see its messages above)"
  fi
  if ! kill -0 "$feeder" 2>/dev/null; then
    feeder=""
    die "the NMEA source (live-nmea.mjs) exited (see its messages above)"
  fi
  sleep 1 &
  wait $! || true
done
