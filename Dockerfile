# syntax=docker/dockerfile:1
# terroir images, one multi-stage file, one target per compose service:
#
#   docker build --target server   -t terroir-server .    terroir-server          (non-root: uid 10001)
#   docker build --target agent    -t terroir-agent .     terroir-agent           (root: see below)
#   docker build --target swtpm    -t terroir-swtpm .     software TPM + EK chain (non-root: uid 10002)
#   docker build --target gpsd     -t terroir-gpsd .      gpsd fed by gpsfake     (non-root: uid 10003)
#   docker build --target workload -t terroir-workload .  the demo workloads      (user set per service)
#   docker build --target certs    -t terroir-certs .     deploy/certs-init.sh    (root: sets key ownership)
#
# Every entrypoint is a script under deploy/ that the native tests (test/deploy/) run too.
ARG NODE_IMAGE=node:20-bookworm-slim

# ---- build: compile TypeScript, keep production dependencies only --------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
# better-sqlite3 and koffi install prebuilt binaries; the toolchain is their fallback for other platforms.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
COPY native ./native
COPY feature-flags ./feature-flags
COPY proto ./proto
RUN npm run build && npm prune --omit=dev --no-audit --no-fund

# ---- runtime: what every Node service shares --------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY proto ./proto
COPY deploy ./deploy
COPY swtpm ./swtpm
RUN chmod 0755 deploy/*.sh swtpm/*.sh

# ---- terroir-server ------------------------------------------------------------------------------------
FROM runtime AS server
RUN groupadd --system --gid 10001 terroir \
 && useradd --system --uid 10001 --gid terroir --home-dir /var/lib/terroir --shell /usr/sbin/nologin terroir \
 && mkdir -p /var/lib/terroir/server /var/lib/terroir/bootstrap \
 && chown -R terroir:terroir /var/lib/terroir
USER terroir
EXPOSE 8081
ENTRYPOINT ["/app/deploy/server.sh"]

# ---- terroir-agent -------------------------------------------------------------------------------------
# Runs as root, because the unix workload attestor must read /proc/<pid>/exe and /proc/<pid>/status
# of workloads running as OTHER users (the kernel allows that to the same uid or to CAP_SYS_PTRACE),
# and a real TPM (/dev/tpmrm0) is root:tss 0660. With only swtpm and workloads of one uid it could run
# unprivileged; the systemd unit (deploy/systemd) shows the least-privilege setup on a host.
FROM runtime AS agent
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-rc0 libtss2-tctildr0 libtss2-tcti-swtpm0 libtss2-tcti-device0 \
      tpm2-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/terroir/agent /run/terroir
ENTRYPOINT ["/app/deploy/agent.sh"]

# ---- software TPM ----------------------------------------------------------------------------------------
FROM runtime AS swtpm
RUN apt-get update \
 && apt-get install -y --no-install-recommends swtpm swtpm-tools procps \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10002 swtpmd \
 && useradd --system --uid 10002 --gid swtpmd --home-dir /var/lib/terroir/swtpm --shell /usr/sbin/nologin swtpmd \
 && mkdir -p /var/lib/terroir/swtpm/state /var/lib/terroir/swtpm/ca \
 && chown -R swtpmd:swtpmd /var/lib/terroir/swtpm
USER swtpmd
EXPOSE 2321 2322
ENTRYPOINT ["/app/deploy/swtpm.sh"]

# ---- gpsd fed by gpsfake -------------------------------------------------------------------------------
# On the Node runtime: deploy/gps/live-nmea.mjs writes the NMEA log, stamped with the current time.
FROM runtime AS gpsd
RUN apt-get update \
 && apt-get install -y --no-install-recommends gpsd gpsd-clients python3-gps \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10003 gpsfake \
 && useradd --system --uid 10003 --gid gpsfake --no-create-home --shell /usr/sbin/nologin gpsfake
USER gpsfake
EXPOSE 2947
ENTRYPOINT ["/app/deploy/gpsd.sh"]

# ---- demo workloads --------------------------------------------------------------------------------------
# deploy/workload/mtls-demo.mjs on terroir's workload library (dist/src/workload) and feature flags.
FROM runtime AS workload
ENTRYPOINT ["/app/deploy/workload.sh"]

# ---- certificate init ------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS certs
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/certs-init.sh /usr/local/bin/certs-init.sh
RUN chmod 0755 /usr/local/bin/certs-init.sh
ENTRYPOINT ["/usr/local/bin/certs-init.sh"]
