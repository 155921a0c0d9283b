#!/usr/bin/env bash
# The demo node's network namespace (compose service `node`): terroir-agent and gpsd join it
# (network_mode: service:node) as two processes on one host would share theirs, so the agent reads gpsd
# on 127.0.0.1 and gpsd listens on loopback only, out of reach of every other container.
#
#   deploy/node-net.sh
#
# It only holds the namespace, and never exits on its own: the agent restarting (after a refused
# attestation) or gpsd restarting then rejoins the same namespace. (A container that joins another's
# namespace, e.g. gpsd with network_mode service:terroir-agent, is left in a dead one when that one
# restarts.) Stops on SIGTERM.
set -euo pipefail
trap 'exit 0' TERM INT
sleep infinity &
wait $!
