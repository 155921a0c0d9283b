# syntax=docker/dockerfile:1
# terroir images, one multi-stage file, one target per compose service:
#
#   docker build --target server   -t terroir-server .    terroir-server          USER 10001:10001
#   docker build --target agent    -t terroir-agent .     terroir-agent           USER 10005:tss (the TPM device's group)
#   docker build --target swtpm    -t terroir-swtpm .     software TPM + EK chain USER 10002:10002
#   docker build --target gpsd     -t terroir-gpsd .      gpsd + terroir's NMEA   USER 10003:10003
#   docker build --target workload -t terroir-workload .  the demo workloads      USER 65534:65534 (compose: 10101, 10102)
#   docker build --target certs    -t terroir-certs .     deploy/certs-init.sh    USER 10004:10004
#
# No target runs as root, and none carries a compiler, npm or GTK: the build stages do the compiling,
# the Node targets get the node binary alone on debian-slim, swtpm and certs get no Node at all, and
# gpsd is fed by terroir's own NMEA source (deploy/gps/live-nmea.mjs) instead of gpsfake (whose
# gpsd-clients package pulls in GTK3, matplotlib and numpy). Goal: every image <= 200 MB. Measured with
# podman on locally built bookworm bases (docs/deployment.md, "Image sizes"): server and workload 196 MB,
# gpsd 169, swtpm 99, certs 89; the agent 214 MB (TPM libraries, libssl3, tpm2-tools) is over it.
# Compose runs every one of them read-only, with all capabilities dropped (docker-compose.yml).
#
# Every entrypoint is a script under deploy/ that the native tests (test/deploy/) run too.
ARG NODE_IMAGE=node:20-bookworm-slim
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---- build: compile TypeScript -------------------------------------------------------------------------
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
RUN npm run build

# ---- deps: production dependencies only ----------------------------------------------------------------
FROM build AS deps
RUN rm -rf node_modules && npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
# Nothing Node loads at run time goes: type declarations, TypeScript sources, source maps, docs, tests
# and examples; @types; the @opentelemetry packages' esm/esnext builds (their exports give Node
# build/src, checked per package); better-sqlite3's C sources, SQLite amalgamation and build
# intermediates (its stripped addon stays where `bindings` looks). The same for dist/.
RUN cd node_modules \
 && find . -type f \( -name '*.map' -o -name '*.ts' -o -name '*.mts' -o -name '*.cts' -o -name '*.md' -o -name '*.markdown' \) -delete \
 && find . -depth -type d \( -name test -o -name tests -o -name __tests__ -o -name example -o -name examples -o -name benchmark -o -name benchmarks \) -exec rm -rf {} + \
 && rm -rf @types \
 && for p in @opentelemetry/*/; do \
      grep -Eq '"(import|require|node|default)": *"\./build/es(m|next)/' "$p/package.json" || rm -rf "$p/build/esm" "$p/build/esnext"; \
    done \
 && cd better-sqlite3 \
 && mv build/Release/better_sqlite3.node . && rm -rf build deps src binding.gyp \
 && mkdir -p build/Release && mv better_sqlite3.node build/Release/ && strip --strip-unneeded build/Release/better_sqlite3.node \
 && cd /app && find dist -type f \( -name '*.map' -o -name '*.d.ts' \) -delete \
 && node -e "require('better-sqlite3')(':memory:').prepare('select 1').get()"

# ---- node: the node binary without its symbols and debug information (measured: 99 MB -> 86 MB;
# .dynsym, which native addons link against, stays). strip comes with the build stage's toolchain.
FROM build AS node
RUN strip /usr/local/bin/node && node -e "process.exit(0)"

# ---- runtime: what every Node service shares: debian-slim plus the node binary (no npm, yarn, corepack) --
FROM ${DEBIAN_IMAGE} AS runtime
ENV NODE_ENV=production
COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
COPY --from=deps /app/package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=deps /app/dist ./dist
COPY proto ./proto
COPY deploy ./deploy
COPY swtpm ./swtpm
RUN chmod 0755 deploy/*.sh swtpm/*.sh

# ---- terroir-server ------------------------------------------------------------------------------------
FROM runtime AS server
RUN groupadd --system --gid 10001 terroir \
 && useradd --system --uid 10001 --gid terroir --home-dir /var/lib/terroir --shell /usr/sbin/nologin terroir \
 && mkdir -p /var/lib/terroir/server /var/lib/terroir/bootstrap \
 && chown -R 10001:10001 /var/lib/terroir
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["/app/deploy/server.sh"]

# ---- terroir-agent -------------------------------------------------------------------------------------
# uid 10005 with group tss: a real TPM (/dev/tpmrm0) is root:tss 0660. The device's group inside a
# container is the host's numeric gid: with a real TPM add `devices: [/dev/tpmrm0]` and
# `group_add: ["<the host's tss gid>"]`. Group 10005 (compose's group_add) reads the quote endpoint's key.
# tpm2-tools: the operator's tool in docs/deployment.md (e.g. tpm2_pcrextend in the continuous-mode demo).
# Not root, so the unix attestor reads /proc/<pid>/exe only of workloads of its own uid (selectors by
# uid/gid work for all; the systemd unit, deploy/systemd, grants CAP_SYS_PTRACE for path/sha256).
FROM runtime AS agent
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtss2-esys-3.0.2-0 libtss2-mu0 libtss2-rc0 libtss2-tctildr0 libtss2-tcti-swtpm0 libtss2-tcti-device0 \
      tpm2-tools \
 && rm -rf /var/lib/apt/lists/* /usr/lib/udev/hwdb.d /usr/lib/udev/hwdb.bin \
 && (getent group tss >/dev/null || groupadd --system tss) \
 && groupadd --system --gid 10005 terroir-agent \
 && useradd --system --uid 10005 --gid tss --groups terroir-agent --home-dir /var/lib/terroir/agent --shell /usr/sbin/nologin terroir-agent \
 && mkdir -p /var/lib/terroir/agent /run/terroir \
 && chown 10005:10005 /var/lib/terroir/agent /run/terroir
USER 10005:tss
ENTRYPOINT ["/app/deploy/agent.sh"]

# ---- software TPM (no Node) ------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS swtpm
RUN apt-get update \
 && apt-get install -y --no-install-recommends swtpm swtpm-tools procps \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10002 swtpmd \
 && useradd --system --uid 10002 --gid swtpmd --home-dir /var/lib/terroir/swtpm --shell /usr/sbin/nologin swtpmd \
 && mkdir -p /var/lib/terroir/swtpm/state /var/lib/terroir/swtpm/ca \
 && chown -R 10002:10002 /var/lib/terroir/swtpm
WORKDIR /app
COPY deploy/swtpm.sh ./deploy/swtpm.sh
COPY swtpm ./swtpm
RUN chmod 0755 deploy/swtpm.sh swtpm/*.sh
USER 10002:10002
EXPOSE 2321 2322
ENTRYPOINT ["/app/deploy/swtpm.sh"]

# ---- gpsd fed by terroir's NMEA source ------------------------------------------------------------------
# Debian's gpsd depends on python3 (for ubxtool, 27 MB): it is installed in gpsd-bin only, and the gpsd
# image gets the daemon and the shared libraries it links that debian-slim lacks (libusb, libbluetooth,
# libdbus), like the node binary. No gpsd-clients, python3-gps or gpsfake; deploy/gps/live-nmea.mjs
# (Node's standard library only: no dist/ or node_modules) serves gpsd live fixes over loopback TCP,
# and deploy/gps/healthcheck.mjs is the health check.
FROM ${DEBIAN_IMAGE} AS gpsd-bin
RUN ls -1 /usr/lib/*-linux-gnu/ > /tmp/base-libs \
 && apt-get update \
 && apt-get install -y --no-install-recommends gpsd \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /out/usr/sbin \
 && cp /usr/sbin/gpsd /out/usr/sbin/gpsd \
 && ldd /usr/sbin/gpsd | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do \
      grep -qx "$name" /tmp/base-libs && continue; \
      dir=$(dirname "$(readlink -f "$path")"); mkdir -p "/out$dir"; cp -L "$path" "/out$dir/$name"; \
    done

FROM ${DEBIAN_IMAGE} AS gpsd
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=gpsd-bin /out/ /
WORKDIR /app
COPY deploy/gpsd.sh ./deploy/gpsd.sh
COPY deploy/gps ./deploy/gps
RUN chmod 0755 deploy/gpsd.sh \
 && gpsd -V \
 && groupadd --system --gid 10003 gpsfeed \
 && useradd --system --uid 10003 --gid gpsfeed --no-create-home --shell /usr/sbin/nologin gpsfeed
USER 10003:10003
EXPOSE 2947
ENTRYPOINT ["/app/deploy/gpsd.sh"]

# ---- demo workloads --------------------------------------------------------------------------------------
# deploy/workload/mtls-demo.mjs on terroir's workload library (dist/src/workload) and feature flags.
# nobody by default; compose gives each workload the uid its registration entry selects.
FROM runtime AS workload
USER 65534:65534
ENTRYPOINT ["/app/deploy/workload.sh"]

# ---- certificate init (no Node) ----------------------------------------------------------------------------
# /pki and /pki/agent are the compose volumes' mount points: a fresh named volume takes their owner.
FROM ${DEBIAN_IMAGE} AS certs
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10004 certs \
 && useradd --system --uid 10004 --gid certs --no-create-home --shell /usr/sbin/nologin certs \
 && mkdir -p /pki/agent \
 && chown 10004:10004 /pki /pki/agent
COPY deploy/certs-init.sh /usr/local/bin/certs-init.sh
RUN chmod 0755 /usr/local/bin/certs-init.sh
USER 10004:10004
ENTRYPOINT ["/usr/local/bin/certs-init.sh"]
