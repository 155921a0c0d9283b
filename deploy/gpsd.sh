#!/usr/bin/env bash
# The location sensor of the demo node (compose service `gpsd`; the native tests run it too): a
# gpsd fed by gpsfake, replaying GPS_LOG in a loop, answering on GPSD_PORT.
#
#   deploy/gpsd.sh
#
# Environment:
#   GPS_LOG     NMEA log (default deploy/gps/demo.nmea: a fix in Paris, 48.8566 N 2.3522 E)
#   GPSD_PORT   default 2947
#   GPSD_LISTEN_ALL  1 (default): gpsd listens on all addresses (-G), for other containers; 0: loopback only
#
# Until Unified Identity (issue 8) lands, nothing in terroir reads this gpsd yet: the service is here
# so the compose topology is the final one. `gpspipe -w localhost:2947` shows its fixes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log=${GPS_LOG:-$here/gps/demo.nmea}
[ -r "$log" ] || { echo "deploy/gpsd.sh: NMEA log $log not readable" >&2; exit 1; }
command -v gpsfake >/dev/null || { echo "deploy/gpsd.sh: gpsfake not found: apt-get install gpsd gpsd-clients python3-gps" >&2; exit 1; }
args=(-q -P "${GPSD_PORT:-2947}" -c 0.2)
# -n: open the fake device at once, so a client sees fixes from its first WATCH.
args+=(-n)
# -G (all addresses) through a gpsd wrapper: gpsfake's -o cannot pass it (see gps/listen-all/gpsd).
if [ "${GPSD_LISTEN_ALL:-1}" = 1 ]; then
  export GPSD_HOME=$here/gps/listen-all
else
  unset GPSD_HOME
fi
exec gpsfake "${args[@]}" "$log"
