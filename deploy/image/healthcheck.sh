#!/bin/bash
# The image's HEALTHCHECK: GET /healthz on the metrics port, plain HTTP.
# Healthy on 200: once the WAL is replayed, "ok" or "degraded" (snapshots
# failing, still serving); unhealthy on 503, once a shard is poisoned after
# a failed fsync, or when nothing answers. The image has no curl: bash's
# /dev/tcp does the request, to LONGBOW_METRICS_ADDR (0.0.0.0 and [::] are
# asked on loopback).
set -eu
addr=${LONGBOW_METRICS_ADDR:-0.0.0.0:9090}
host=${addr%:*} port=${addr##*:}
host=${host#[} host=${host%]}
case $host in 0.0.0.0 | ::) host=127.0.0.1 ;; esac
exec 3<>"/dev/tcp/$host/$port"
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
read -r _ status _ <&3
[ "$status" = 200 ]
