#!/usr/bin/env bash
# Makes the PKI a terroir deployment needs before anything else starts (compose service
# `certs-init`; the native tests run it too):
#
#   deploy/certs-init.sh OUT_DIR
#
# OUT_DIR/keylime/   the Keylime mTLS PKI: one CA (ca.crt), the verifier's and registrar's server
#                    certificates (verifier.crt, registrar.crt), the verifier's client certificate for
#                    the registrar and the agents' quote endpoints (verifier-client.crt) and
#                    terroir-server's client certificate for the verifier (terroir-client.crt); each
#                    with its .key.
# OUT_DIR/agent/     what terroir-agent needs for Keylime continuous mode, and nothing else (the agent
#                    runs as root in compose, so it must not see the CA key): its quote endpoint's
#                    self-signed certificate (quote-endpoint.crt/.key; the verifier pins it, as Keylime
#                    does with its own agents' certificates) and the CA of the verifier's client
#                    certificate (verifier-client-ca.crt, a copy of keylime/ca.crt), the only clients
#                    the endpoint accepts. Compose mounts a volume of its own here.
#
# terroir's own bootstrap material (the bundle agents trust the server by) is the server's CA,
# exported by deploy/register.sh once the server runs: see docs/deployment.md "Bootstrap".
#
# Idempotent: material that exists and still verifies is kept (a restarted init container must not
# replace a CA that agents already trust). Anything partial or invalid is an error, not overwritten.
#
# Environment:
#   KEYLIME_VERIFIER_HOST   DNS name in the verifier certificate   (default keylime-verifier)
#   KEYLIME_REGISTRAR_HOST  DNS name in the registrar certificate  (default keylime-registrar)
#   TERROIR_AGENT_HOST      DNS name in the agent's quote endpoint certificate (default terroir-agent)
#   TERROIR_UID, TERROIR_GID  who reads terroir-client.key, i.e. terroir-server. Run as root with TERROIR_UID:
#                           the key is handed to TERROIR_UID:TERROIR_GID (0600). Without TERROIR_UID (compose:
#                           an unprivileged user that is a member of TERROIR_GID): the key stays the caller's
#                           and becomes group TERROIR_GID, mode 0640 (chgrp needs no privilege)
#   TERROIR_AGENT_GID       likewise for the agent's quote-endpoint.key (compose: the agent's group 10005);
#                           the other keys stay the caller's, 0600
#   CERT_DAYS               validity of leaf certificates (default 365); CAs get 10 years
set -euo pipefail
umask 077

die() { echo "certs-init: $*" >&2; exit 1; }
[ $# -eq 1 ] || die "usage: certs-init.sh OUT_DIR"
command -v openssl >/dev/null || die "openssl not found: apt-get install openssl"
out=$1
verifier_host=${KEYLIME_VERIFIER_HOST:-keylime-verifier}
registrar_host=${KEYLIME_REGISTRAR_HOST:-keylime-registrar}
agent_host=${TERROIR_AGENT_HOST:-terroir-agent}
days=${CERT_DAYS:-365}
[[ $days =~ ^[0-9]+$ ]] && [ "$days" -gt 0 ] || die "CERT_DAYS must be a positive number of days, got '$days'"
for h in "$verifier_host" "$registrar_host" "$agent_host"; do
  [[ $h =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "host names (KEYLIME_VERIFIER_HOST, KEYLIME_REGISTRAR_HOST, TERROIR_AGENT_HOST) must be DNS names, got '$h'"
done

kl=$out/keylime
ag=$out/agent
mkdir -p "$kl" "$ag"
chmod 0755 "$out" "$kl" "$ag"

# P-256 everywhere: accepted by Python's ssl (Keylime), Node and grpc-js, and cheap to handshake.
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 0600 "$1"; }

# make_ca NAME CN: a self-signed CA that signs leaves only.
make_ca() {
  local name=$1 cn=$2
  new_key "$name.key"
  openssl req -x509 -new -key "$name.key" -out "$name.crt" -days 3650 -sha256 -subj "/O=terroir/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null
  chmod 0644 "$name.crt"
}

# make_leaf CA NAME CN EKU [SAN]: a leaf signed by CA (serverAuth or clientAuth).
make_leaf() {
  local ca=$1 name=$2 cn=$3 eku=$4 san=${5:-}
  local ext
  ext=$(mktemp)
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$eku"
    echo "subjectKeyIdentifier=hash"
    echo "authorityKeyIdentifier=keyid"
    [ -n "$san" ] && echo "subjectAltName=$san"
  } >"$ext"
  new_key "$name.key"
  openssl req -new -key "$name.key" -subj "/O=terroir/CN=$cn" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA "$ca.crt" -CAkey "$ca.key" -CAcreateserial -CAserial "$ca.srl" \
    -out "$name.crt" -days "$days" -sha256 -extfile "$ext" 2>/dev/null
  rm -f "$name.csr" "$ext"
  chmod 0644 "$name.crt"
}

# valid CA NAME: the certificate exists, verifies against CA and matches its key.
valid() {
  local ca=$1 name=$2
  [ -s "$name.crt" ] && [ -s "$name.key" ] || return 1
  openssl verify -CAfile "$ca.crt" "$name.crt" >/dev/null 2>&1 || return 1
  [ "$(openssl x509 -in "$name.crt" -noout -pubkey)" = "$(openssl pkey -in "$name.key" -pubout 2>/dev/null)" ]
}

# ---- Keylime mTLS PKI ----------------------------------------------------------------------------
if [ -e "$kl/ca.crt" ] || [ -e "$kl/ca.key" ]; then
  valid "$kl/ca" "$kl/ca" || die "$kl/ca.crt/ca.key exist but are not a matching self-signed CA; move $kl away to start over"
  echo "certs-init: keeping the Keylime CA in $kl"
else
  make_ca "$kl/ca" "terroir keylime CA"
fi

leaf() { # leaf NAME CN EKU [SAN]
  if [ -e "$kl/$1.crt" ] || [ -e "$kl/$1.key" ]; then
    valid "$kl/ca" "$kl/$1" || die "$kl/$1.crt/.key exist but do not verify against $kl/ca.crt; delete them to reissue"
  else
    make_leaf "$kl/ca" "$kl/$1" "$2" "$3" "${4:-}"
  fi
}
leaf verifier "$verifier_host" serverAuth "DNS:$verifier_host,DNS:localhost,IP:127.0.0.1"
leaf registrar "$registrar_host" serverAuth "DNS:$registrar_host,DNS:localhost,IP:127.0.0.1"
leaf verifier-client "keylime verifier (client)" clientAuth
leaf terroir-client "terroir-server (keylime client)" clientAuth

rm -f "$kl"/*.srl

# ---- the agent's quote endpoint --------------------------------------------------------------------
# Self-signed, as a Keylime agent's own certificate is: terroir-server enrolls it with the verifier as
# the node's mtls_cert, and the verifier trusts exactly that certificate for this node. Not a CA.
qe=$ag/quote-endpoint
if [ -e "$qe.crt" ] || [ -e "$qe.key" ]; then
  valid "$qe" "$qe" || die "$qe.crt/.key exist but are not a matching self-signed certificate; delete them to reissue"
else
  new_key "$qe.key"
  openssl req -x509 -new -key "$qe.key" -out "$qe.crt" -days "$days" -sha256 -subj "/O=terroir/CN=$agent_host (keylime quote endpoint)" \
    -addext "basicConstraints=critical,CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=serverAuth" \
    -addext "subjectKeyIdentifier=hash" \
    -addext "subjectAltName=DNS:$agent_host,DNS:localhost,IP:127.0.0.1" 2>/dev/null
  chmod 0644 "$qe.crt"
fi
# The endpoint accepts the verifier's client certificate (verifier-client.crt) and no one else's CA.
if [ -e "$ag/verifier-client-ca.crt" ]; then
  cmp -s "$kl/ca.crt" "$ag/verifier-client-ca.crt" || die "$ag/verifier-client-ca.crt is not a copy of $kl/ca.crt; delete it to copy it again"
else
  cp "$kl/ca.crt" "$ag/verifier-client-ca.crt"
  chmod 0644 "$ag/verifier-client-ca.crt"
fi

# share_key KEY GID: KEY readable by group GID too (the caller owns it and is a member of GID).
share_key() {
  [[ $2 =~ ^[0-9]+$ ]] || die "group ids (TERROIR_GID, TERROIR_AGENT_GID) must be numbers, got '$2'"
  chgrp "$2" "$1" || die "cannot give $1 to group $2: run as a member of that group (compose: group_add) or as root"
  chmod 0640 "$1"
}
if [ -n "${TERROIR_UID:-}" ]; then
  chown "$TERROIR_UID:${TERROIR_GID:-$TERROIR_UID}" "$kl/terroir-client.key"
elif [ -n "${TERROIR_GID:-}" ]; then
  share_key "$kl/terroir-client.key" "$TERROIR_GID"
fi
[ -z "${TERROIR_AGENT_GID:-}" ] || share_key "$qe.key" "$TERROIR_AGENT_GID"

echo "KEYLIME_CA=$kl/ca.crt"
echo "KEYLIME_TERROIR_CLIENT=$kl/terroir-client.crt"
echo "AGENT_QUOTE_ENDPOINT_CERT=$qe.crt"
