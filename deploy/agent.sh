#!/usr/bin/env bash
# terroir-agent as deployed (compose service `terroir-agent`; the native tests run it too): writes
# agent.yaml from the environment, then runs the agent in the foreground (SIGTERM stops it).
#
#   deploy/agent.sh
#
# Environment:
#   TERROIR_TRUST_DOMAIN           default demo.terroir
#   TERROIR_AGENT_SERVER_ADDRESS   default terroir-server;  TERROIR_AGENT_SERVER_PORT  default 8081
#   TERROIR_AGENT_DATA_DIR         agent SVID and key (default /var/lib/terroir/agent)
#   TERROIR_AGENT_SOCKET_DIR       the Workload API socket's directory, shared with workloads (default /run/terroir);
#                                  the socket is api.sock in it
#   TERROIR_BOOTSTRAP_BUNDLE       the server's trust anchor, PEM or SPIFFE bundle JSON, as deploy/register.sh
#                                  writes it (default /var/lib/terroir/bootstrap/bootstrap-bundle.pem); waited for
#                                  up to TERROIR_BUNDLE_WAIT seconds (default 120), as a fresh stack writes it late
#   TERROIR_TPM_TCTI               default swtpm:host=swtpm,port=2321 (a real TPM: device:/dev/tpmrm0)
#   TERROIR_TPM_EK                 rsa2048 | ecc-p256 | ecc-p384 (default rsa2048)
#   TERROIR_AGENT_JOIN_TOKEN       set: attest with this join token instead of the TPM (read by the agent itself)
#   TERROIR_AGENT_LOG_LEVEL        info
#
# Unified Identity: with UNIFIED_IDENTITY_ENABLED on (read by the agent itself; this script asks the same
# parser, feature-flags/) the agent reads a gpsd location sensor at every attestation:
#   TERROIR_GPSD_HOST / TERROIR_GPSD_PORT   the gpsd (default 127.0.0.1 / 2947: compose's gpsd shares the
#                                  agent's network namespace). Loopback only (127.0.0.0/8, ::1, localhost):
#   TERROIR_GPSD_ALLOW_REMOTE      true: a gpsd on another host is read too (anyone on the path could answer
#                                  as the receiver; its readings say link: remote). Default false
#   TERROIR_GPSD_TIMEOUT_MS        how long an attestation waits for a fix (default 10000)
#   TERROIR_GPSD_WAIT              seconds to wait at start for gpsd to accept connections (default 60; compose
#                                  starts gpsd beside the agent, in the `unified` profile, with no depends_on)
#
# Keylime continuous mode: with the flag on and TERROIR_KEYLIME_MODE=continuous (the same variable and
# values as deploy/server.sh; compose passes one value to both) the agent serves the Keylime quote
# endpoint the verifier pulls TPM quotes from (keylime.quoteEndpoint, docs/agent.md):
#   TERROIR_KEYLIME_MODE           oneshot (default: no quote endpoint) | continuous
#   TERROIR_KEYLIME_QUOTE_PORT     the endpoint's TCP port (default 9002)
#   TERROIR_KEYLIME_QUOTE_BIND     the address it listens on (default 0.0.0.0)
#   TERROIR_KEYLIME_QUOTE_ADVERTISE  the host the verifier should dial, sent to the server; required
#                                  when the bind address is a wildcard (compose: terroir-agent). A server
#                                  with the default keylime.quoteEndpointAddress "source" dials the
#                                  address the agent attested from instead.
#   TERROIR_KEYLIME_QUOTE_CERT / TERROIR_KEYLIME_QUOTE_KEY   the endpoint's certificate and key (PEM;
#                                  the server enrolls the certificate, and the verifier pins it)
#   TERROIR_KEYLIME_QUOTE_CLIENT_CA  the CA of the verifier's client certificate: only it gets a session
#                                  (these three required in continuous mode; compose: /etc/terroir/agent-pki/
#                                  quote-endpoint.crt, quote-endpoint.key, verifier-client-ca.crt, made by
#                                  deploy/certs-init.sh)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
die() { echo "deploy/agent.sh: $*" >&2; exit 1; }

data=${TERROIR_AGENT_DATA_DIR:-/var/lib/terroir/agent}
sockdir=${TERROIR_AGENT_SOCKET_DIR:-/run/terroir}
bundle=${TERROIR_BOOTSTRAP_BUNDLE:-/var/lib/terroir/bootstrap/bootstrap-bundle.pem}
wait_s=${TERROIR_BUNDLE_WAIT:-120}
[[ $wait_s =~ ^[0-9]+$ ]] || die "TERROIR_BUNDLE_WAIT must be a number of seconds, got '$wait_s'"
for _ in $(seq 1 $((wait_s * 10))); do [ -s "$bundle" ] && break; sleep 0.1; done
[ -r "$bundle" ] || die "no bootstrap bundle at $bundle after ${wait_s}s: deploy/register.sh writes it from the running server (terroir-server bundle show)"

flag=$(unified_identity_flag) || die "UNIFIED_IDENTITY_ENABLED: see the message above"
unified_yaml=""
keylime_yaml=""
if [ "$flag" = on ]; then
  [ -z "${TERROIR_AGENT_JOIN_TOKEN:-}" ] || die "UNIFIED_IDENTITY_ENABLED is on but TERROIR_AGENT_JOIN_TOKEN is set: Unified Identity claims are bound to a TPM quote; unset the join token"
  gpsd_host=${TERROIR_GPSD_HOST:-127.0.0.1}
  gpsd_port=${TERROIR_GPSD_PORT:-2947}
  gpsd_timeout=${TERROIR_GPSD_TIMEOUT_MS:-10000}
  gpsd_remote=${TERROIR_GPSD_ALLOW_REMOTE:-false}
  [[ $gpsd_host =~ ^[A-Za-z0-9.:_-]+$ ]] || die "TERROIR_GPSD_HOST must be a host name or address, got '$gpsd_host'"
  [ "$gpsd_remote" = true ] || [ "$gpsd_remote" = false ] || die "TERROIR_GPSD_ALLOW_REMOTE must be true or false, got '$gpsd_remote'"
  if [ "$gpsd_remote" = false ] && ! [[ $gpsd_host =~ ^(127\.[0-9.]+|::1|localhost)$ ]]; then
    die "TERROIR_GPSD_HOST '$gpsd_host' is not a loopback address: anyone on the network path could answer as this node's GNSS receiver. Run gpsd on this host (127.0.0.1), or set TERROIR_GPSD_ALLOW_REMOTE=true (its readings then say link: remote)"
  fi
  [[ $gpsd_port =~ ^[0-9]+$ ]] && [ "$gpsd_port" -ge 1 ] && [ "$gpsd_port" -le 65535 ] || die "TERROIR_GPSD_PORT must be a port number, got '$gpsd_port'"
  [[ $gpsd_timeout =~ ^[0-9]+$ ]] || die "TERROIR_GPSD_TIMEOUT_MS must be a number of milliseconds, got '$gpsd_timeout'"
  gpsd_wait=${TERROIR_GPSD_WAIT:-60}
  [[ $gpsd_wait =~ ^[0-9]+$ ]] || die "TERROIR_GPSD_WAIT must be a number of seconds, got '$gpsd_wait'"
  unified_yaml="
  unifiedIdentity:
    sensors:
      - { type: gpsd, id: gpsd, host: \"$gpsd_host\", port: $gpsd_port$([ "$gpsd_remote" = false ] || echo ', allowRemote: true') }
    sensorTimeoutMs: $gpsd_timeout"

  mode=${TERROIR_KEYLIME_MODE:-oneshot}
  [ "$mode" = oneshot ] || [ "$mode" = continuous ] || die "TERROIR_KEYLIME_MODE must be oneshot or continuous, got '$mode'"
  if [ "$mode" = continuous ]; then
    missing=""
    for v in TERROIR_KEYLIME_QUOTE_CERT TERROIR_KEYLIME_QUOTE_KEY TERROIR_KEYLIME_QUOTE_CLIENT_CA; do
      [ -n "${!v:-}" ] || missing="$missing $v"
    done
    [ -z "$missing" ] || die "TERROIR_KEYLIME_MODE is continuous but${missing} not set: the Keylime verifier pulls quotes from this agent over mutual TLS (the endpoint's certificate and key, and the CA of the verifier's client certificate)"
    for v in TERROIR_KEYLIME_QUOTE_CERT TERROIR_KEYLIME_QUOTE_KEY TERROIR_KEYLIME_QUOTE_CLIENT_CA; do
      # They go into agent.yaml as double-quoted strings.
      [[ ${!v} != *[\"\\]* ]] || die "$v must not contain a double quote or a backslash, got '${!v}'"
      [ -r "${!v}" ] || die "$v: cannot read ${!v} (for the compose demo deploy/certs-init.sh makes them in OUT_DIR/agent/; is the agent-pki volume mounted?)"
    done
    quote_port=${TERROIR_KEYLIME_QUOTE_PORT:-9002}
    quote_bind=${TERROIR_KEYLIME_QUOTE_BIND:-0.0.0.0}
    quote_advertise=${TERROIR_KEYLIME_QUOTE_ADVERTISE:-}
    [[ $quote_port =~ ^[0-9]+$ ]] && [ "$quote_port" -ge 1 ] && [ "$quote_port" -le 65535 ] || die "TERROIR_KEYLIME_QUOTE_PORT must be a port number, got '$quote_port'"
    [[ $quote_bind =~ ^[A-Za-z0-9.:_-]+$ ]] || die "TERROIR_KEYLIME_QUOTE_BIND must be a host name or address, got '$quote_bind'"
    if [ -n "$quote_advertise" ]; then
      [[ $quote_advertise =~ ^[A-Za-z0-9.:_-]+$ ]] || die "TERROIR_KEYLIME_QUOTE_ADVERTISE must be a host name or address, got '$quote_advertise'"
    elif [ "$quote_bind" = 0.0.0.0 ] || [ "$quote_bind" = :: ]; then
      die "TERROIR_KEYLIME_QUOTE_BIND is the wildcard $quote_bind but TERROIR_KEYLIME_QUOTE_ADVERTISE is not set: say which address the Keylime verifier can reach this node at (compose: terroir-agent)"
    fi
    keylime_yaml="
  keylime:
    quoteEndpoint:
      bindAddress: \"$quote_bind\"
      port: $quote_port${quote_advertise:+
      advertiseAddress: \"$quote_advertise\"}
      certFile: \"$TERROIR_KEYLIME_QUOTE_CERT\"
      keyFile: \"$TERROIR_KEYLIME_QUOTE_KEY\"
      clientCaFile: \"$TERROIR_KEYLIME_QUOTE_CLIENT_CA\""
  fi
  # Last, once every setting is known good: gpsd must answer (compose starts it beside the agent, in the
  # unified profile, so nothing in the plain stack waits on it).
  gpsd_up() { (exec 3<>"/dev/tcp/$gpsd_host/$gpsd_port") 2>/dev/null; }
  for ((i = 0; i < gpsd_wait * 10; i++)); do gpsd_up && break; sleep 0.1; done
  gpsd_up || die "no gpsd accepts connections at $gpsd_host:$gpsd_port after ${gpsd_wait}s: with Unified Identity on the agent reads its location from gpsd at every attestation (compose: start the unified profile, which runs gpsd: see docs/deployment.md)"
fi

mkdir -p "$data" "$sockdir"
chmod 0700 "$data"
# Workloads (other users) must reach the socket; only the agent may create files next to it.
chmod 0755 "$sockdir"
cat >"$data/agent.yaml" <<YAML
# Written by deploy/agent.sh at every start; edit the environment, not this file.
agent:
  trustDomain: ${TERROIR_TRUST_DOMAIN:-demo.terroir}
  serverAddress: ${TERROIR_AGENT_SERVER_ADDRESS:-terroir-server}
  serverPort: ${TERROIR_AGENT_SERVER_PORT:-8081}
  dataDir: $data
  socketPath: $sockdir/api.sock
  trustBundlePath: $bundle
  logLevel: ${TERROIR_AGENT_LOG_LEVEL:-info}
  nodeAttestor:
    tpm: { tcti: "${TERROIR_TPM_TCTI:-swtpm:host=swtpm,port=2321}", ekKind: ${TERROIR_TPM_EK:-rsa2048} }$unified_yaml$keylime_yaml
YAML
# The socket path comes from the file; a SPIFFE_ENDPOINT_SOCKET inherited from the caller must not move it.
unset SPIFFE_ENDPOINT_SOCKET
terroir_cmd terroir-agent
exec "${CMD[@]}" run -c "$data/agent.yaml"
