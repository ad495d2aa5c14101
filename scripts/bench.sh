#!/usr/bin/env bash
# The standard benchmark suite, all measured in one run on this machine so
# that ratios are comparable: pyarrow and Rust (longbow-bench) clients against
# longbow and reference servers, mixed/snapshot/recovery jobs
# (bench/jobs/standard.ini), WAL replay, fio on the same volume, and (on
# machines with >= 16 cores) shard scaling. It then rewrites the block between
# `<!-- bench.sh:begin -->` and `<!-- bench.sh:end -->` in docs/benchmarks.md
# with this run's figures, date, commit and machine; the prose around it stays.
#
# Usage: scripts/bench.sh [seconds-per-run]      (default 8)
#   BENCH_DIR=…     where servers keep their data (default target/bench; same volume as fio)
#   BENCH_DOCS=0    measure and print, but leave docs/benchmarks.md alone
# Needs fio (apt-get installed if missing) and the Python venv.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
DIR=${BENCH_DIR:-$PWD/target/bench}
OUT=$DIR/results
# Shard scaling needs a core per shard; both overridable to try the path on a small machine.
SCALING_MIN_CPUS=${BENCH_SCALING_MIN_CPUS:-16}
SCALING_SHARDS=${BENCH_SCALING_SHARDS:-1 2 4 8 16}
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }
scripts/setup-python.sh
cargo build --release --locked -p longbow-server -p longbow-bench --bin longbow --bin longbow-bench 2>&1 | tail -1
ulimit -l unlimited 2>/dev/null || true
PY=.venv/bin/python
BENCH=./target/release/longbow-bench
rm -rf "$DIR" && mkdir -p "$DIR/tmp" "$OUT"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# Servers longbow-bench spawns keep their data under $DIR too (not /tmp, which may be another volume).
export TMPDIR=$DIR/tmp
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start_longbow() {
    ./target/release/longbow --data-path "$DIR/data" --snapshot-path "$DIR/snapshots" \
        --listen-addr 127.0.0.1:3000 --metrics-addr 127.0.0.1:9090 \
        >"$DIR/longbow.out" 2>>"$DIR/longbow.log" &
    LB=$!; pids+=($LB)
    until grep -q "longbow ready" "$DIR/longbow.out" 2>/dev/null; do
        kill -0 "$LB" 2>/dev/null || { tail -20 "$DIR/longbow.log"; exit 1; }
        sleep 0.1
    done
}

echo "## pyarrow client, 2 streams of 1000-row x 128-d batches, ${SECS}s each"
$PY bench/python/ref_server.py --mode null --port 3200 >/dev/null 2>&1 & pids+=($!)
$PY bench/python/ref_server.py --mode fsync --port 3300 --data "$DIR/ref-fsync" >/dev/null 2>&1 & pids+=($!)
$BENCH null-server --listen 127.0.0.1:3100 >/dev/null 2>&1 & pids+=($!)
start_longbow
sleep 2
for target in "pyarrow-null-sink 3200" "rust-null-sink 3100" "pyarrow-fsync-server 3300" "longbow 3000"; do
    set -- $target
    $PY bench/python/put_bench.py --addr 127.0.0.1:$2 --streams 2 --seconds "$SECS" --label "$1" --dataset "tp" | tee -a "$OUT/py-throughput.jsonl"
done
# Group commit size during the throughput runs.
curl -s 127.0.0.1:9090/metrics | grep -E "^longbow_wal_commit_(duration_seconds|batches)_(sum|count)" | tee "$OUT/commit-metrics.txt" || true
echo "## pyarrow client, 10-row batches one at a time (ack latency)"
for target in "pyarrow-null-sink 3200" "longbow 3000"; do
    set -- $target
    $PY bench/python/put_bench.py --addr 127.0.0.1:$2 --streams 1 --rows 10 --one-at-a-time --seconds "$SECS" --label "$1" --dataset "lat" | tee -a "$OUT/py-latency.jsonl"
done

echo "## longbow-bench (Rust client): bench/jobs/standard.ini"
BENCH_SECS=$SECS BENCH_NULL_SINK=http://127.0.0.1:3100 $BENCH run bench/jobs/standard.ini --output-format json >"$OUT/rust.json"

echo "## WAL replay after restart (page cache dropped)"
kill -TERM "$LB"; wait "$LB" || true
du -sb "$DIR/data" | awk '{printf "WAL on disk: %.2f GiB\n", $1/2^30}'
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null && dropped=true || { dropped=false; echo "(could not drop caches: not root)"; }
: >"$DIR/longbow.out"; start_longbow
replay=$(grep "WAL replayed" "$DIR/longbow.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g')
echo "$replay"
shards=$(curl -s 127.0.0.1:9090/metrics | grep -c '^longbow_shard_queue_depth{') || true
[ "${shards:-0}" -gt 0 ] || shards=2
kill -TERM "$LB"; wait "$LB" || true
bytes=$(sed -n 's/.*bytes=\([0-9]*\).*/\1/p' <<<"$replay"); seconds=$(sed -n 's/.*seconds=\([0-9.e-]*\).*/\1/p' <<<"$replay")
printf '{"bytes": %s, "seconds": %s, "shards": %s, "caches_dropped": %s}\n' "${bytes:-null}" "${seconds:-null}" "$shards" "$dropped" >"$OUT/replay.json"

echo "## fio references on the same volume"
F="$DIR/fio"; mkdir -p "$F"
fio_bw() { fio --directory="$F" --output-format=terse --terse-version=3 --group_reporting "$@" 2>/dev/null | awk -F';' '{print ($7>0?$7:$48)/1024}'; }
read_mib=$(fio_bw --name=r --rw=read --direct=1 --bs=8m --ioengine=io_uring --iodepth=4 --size=1g --numjobs="$shards")
echo "O_DIRECT sequential read, 8 MiB, ${shards} jobs (replay reference): $read_mib MiB/s"
rm -f "$F"/*
write_new=$(fio_bw --name=w --rw=write --direct=1 --bs=4m --fdatasync=1 --size=1g --numjobs="$shards")
echo "O_DIRECT write 4 MiB + fdatasync, new files, ${shards} jobs: $write_new MiB/s"
write_over=$(fio_bw --name=w --rw=write --direct=1 --bs=4m --fdatasync=1 --size=1g --numjobs="$shards")
echo "O_DIRECT write 4 MiB + fdatasync, overwrite, ${shards} jobs: $write_over MiB/s"
rm -f "$F"/*
small=$(fio --directory="$F" --name=l --rw=write --direct=1 --bs=8k --fdatasync=1 --size=64m --runtime=4 --time_based --output-format=json 2>/dev/null | $PY -c '
import json,sys; j=json.load(sys.stdin)["jobs"][0]; w=j["write"]["clat_ns"]["percentile"]; s=j["sync"]["lat_ns"]["percentile"]
print(json.dumps({"write_p50_us": w["50.000000"]/1e3, "write_p99_us": w["99.000000"]/1e3, "fdatasync_p50_us": s["50.000000"]/1e3, "fdatasync_p99_us": s["99.000000"]/1e3}))')
echo "O_DIRECT write 8 KiB + fdatasync, 1 job: $small"
rm -rf "$F"
printf '{"jobs": %s, "read_mib_s": %s, "write_new_mib_s": %s, "write_overwrite_mib_s": %s, "small_sync": %s}\n' \
    "$shards" "${read_mib:-null}" "${write_new:-null}" "${write_over:-null}" "${small:-null}" >"$OUT/fio.json"

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

mem_kib=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)
model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
$PY - "$OUT/machine.json" <<EOF
import json, sys
json.dump({"date": "$(date -u '+%Y-%m-%d %H:%M')", "commit": "$(git rev-parse --short HEAD)",
           "subject": $(git log -1 --format=%s | $PY -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))'),
           "dirty": $([ -n "$(git status --porcelain --untracked-files=no)" ] && echo True || echo False),
           "host": "$(hostname)", "cpus": $cpus, "cpu_model": "$model", "mem_gib": round($mem_kib / 2**20),
           "kernel": "$(uname -r)", "load_start": "$load_start", "load_end": "$(cut -d' ' -f1-3 /proc/loadavg)", "fs": "$(df -T "$DIR" | awk 'NR==2 {print $2 " on " $1}')", "secs": $SECS},
          open(sys.argv[1], "w"))
EOF
if [ "${BENCH_DOCS:-1}" != 0 ]; then
    $PY bench/python/bench_report.py "$OUT" docs/benchmarks.md
    echo "## docs/benchmarks.md: generated block rewritten from $OUT"
fi
