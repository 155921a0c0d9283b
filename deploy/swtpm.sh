#!/usr/bin/env bash
# The agent's software TPM (compose service `swtpm`; the native tests run it too): swtpm/start.sh
# in the foreground, provisioned on first start with an RSA-2048 and an ECC P-384 EK whose
# certificates are signed by a local "manufacturer" CA. terroir-server trusts that CA through
# CA_DIR/manufacturer-ca.pem, exactly as it would trust Infineon's or Nuvoton's for a real TPM.
#
#   deploy/swtpm.sh
#
# Environment:
#   SWTPM_STATE_DIR  TPM state (default /var/lib/terroir/swtpm/state)
#   SWTPM_CA_DIR     the local manufacturer CA, shared read-only with the server (default /var/lib/terroir/swtpm/ca)
#   SWTPM_PORT       TPM command port; SWTPM_PORT+1 is the control port (default 2321)
#   SWTPM_BIND       listen address (default 0.0.0.0: in compose only the `tpm` network reaches it;
#                    use 127.0.0.1 on a shared host)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${SWTPM_STATE_DIR:-/var/lib/terroir/swtpm/state}
ca=${SWTPM_CA_DIR:-/var/lib/terroir/swtpm/ca}
SWTPM_BIND=${SWTPM_BIND:-0.0.0.0} SWTPM_FOREGROUND=1 \
  exec bash "$here/../swtpm/start.sh" "$state" "${SWTPM_PORT:-2321}" "$ca"
