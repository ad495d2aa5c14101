# Longbow container image: the server only (the load generator,
# longbow-bench, stays in the repository).
#   docker build -t longbow .
#   docker run --ulimit memlock=-1:-1 --security-opt seccomp=deploy/seccomp/seccomp-longbow.docker.json \
#     -p 3000:3000 -p 9090:9090 -v longbow-wal:/data -v longbow-snapshots:/snapshots longbow
#   docker exec <container> kill -HUP 1     # reload LONGBOW_CONFIG (procps' kill)
# io_uring needs io_uring_setup/enter/register (refused by Docker's default
# seccomp profile: use the shipped one, Docker's default plus those three in
# Docker's own conditional format, so --cap-add still unlocks what it does by
# default; or --security-opt seccomp=unconfined), and
# glommio needs >= 512 KiB of RLIMIT_MEMLOCK: --ulimit memlock (the
# IPC_LOCK / SYS_RESOURCE capabilities do nothing for this non-root user).
# scripts/image.sh builds the same runtime image without a registry or a
# compiler: podman, a Debian rootfs from mmdebstrap and the prebuilt binary
# (deploy/image/Containerfile).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY engine engine
COPY server server
# A workspace member: cargo reads its manifest; nothing of it is built.
COPY bench bench
RUN cargo build --release --locked -p longbow-server --bin longbow

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="longbow" \
      org.opencontainers.image.description="Durable, high-ingest Arrow store behind an Apache Arrow Flight server" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# procps: `kill`, for `kill -HUP 1` through docker/kubectl exec.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates procps && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 longbow && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin longbow \
    && mkdir -p /data /snapshots && chown longbow:longbow /data /snapshots
COPY --from=build /src/target/release/longbow /usr/local/bin/
COPY deploy/image/healthcheck.sh /usr/local/bin/longbow-healthcheck
USER 10001:10001
ENV LONGBOW_DATA_PATH=/data \
    LONGBOW_SNAPSHOT_PATH=/snapshots \
    LONGBOW_LISTEN_ADDR=0.0.0.0:3000 \
    LONGBOW_METRICS_ADDR=0.0.0.0:9090
VOLUME ["/data", "/snapshots"]
EXPOSE 3000 9090
# GET /healthz on the metrics port with bash's /dev/tcp (no curl here).
# Kubernetes ignores it (the chart has its own probes); WAL replay after a
# crash may outlast the start period, during which failures do not count.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5m --retries=3 CMD ["/usr/local/bin/longbow-healthcheck"]
ENTRYPOINT ["/usr/local/bin/longbow"]
