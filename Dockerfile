# Longbow container image.
#   docker build -t longbow .
#   docker run --ulimit memlock=-1:-1 --security-opt seccomp=deploy/seccomp/seccomp-longbow.docker.json \
#     -p 3000:3000 -p 9090:9090 -v longbow-wal:/data -v longbow-snapshots:/snapshots longbow
# io_uring needs io_uring_setup/enter/register (refused by Docker's default
# seccomp profile: use the shipped one, Docker's default plus those three in
# Docker's own conditional format, so --cap-add still unlocks what it does by
# default; or --security-opt seccomp=unconfined), and
# glommio needs >= 512 KiB of RLIMIT_MEMLOCK (--ulimit memlock, or the
# IPC_LOCK / SYS_RESOURCE capabilities).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY engine engine
COPY server server
COPY bench bench
RUN cargo build --release --locked --bin longbow --bin longbow-bench

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 longbow && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin longbow \
    && mkdir -p /data /snapshots && chown longbow:longbow /data /snapshots
COPY --from=build /src/target/release/longbow /src/target/release/longbow-bench /usr/local/bin/
USER 10001:10001
ENV LONGBOW_DATA_PATH=/data \
    LONGBOW_SNAPSHOT_PATH=/snapshots \
    LONGBOW_LISTEN_ADDR=0.0.0.0:3000 \
    LONGBOW_METRICS_ADDR=0.0.0.0:9090
VOLUME ["/data", "/snapshots"]
EXPOSE 3000 9090
ENTRYPOINT ["/usr/local/bin/longbow"]
