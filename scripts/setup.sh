#!/usr/bin/env bash
# Installs everything terroir's demo and tests need on a fresh Debian 12 machine (run as root),
# then the npm dependencies. docker-compose (v1, without the Docker engine: --no-install-recommends)
# is only used to validate docker-compose.yml; systemd-analyze checks the unit files. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(
  swtpm swtpm-tools tpm2-tools
  libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-rc0 libtss2-tctildr0 libtss2-tcti-swtpm0 libtss2-tcti-device0
  gpsd gpsd-clients python3-gps
  postgresql
  openssl
  util-linux systemd procps
  docker-compose
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The distribution's gpsd service is not wanted: tests start their own gpsd through gpsfake.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet gpsd.socket 2>/dev/null; then
  systemctl stop gpsd.socket gpsd.service || true
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund
fi
