#!/usr/bin/env bash
# Ingest, latency, replay and disk references, all measured in one run on
# this machine so that ratios are comparable. Needs fio (apt-get installed if
# missing) and the Python venv. Usage: scripts/bench.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
DIR=${BENCH_DIR:-$PWD/target/bench}
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio >/dev/null; }
scripts/setup-python.sh
cargo build --release --locked --bin longbow --bin longbow-bench 2>&1 | tail -1
ulimit -l unlimited 2>/dev/null || true
PY=.venv/bin/python
rm -rf "$DIR" && mkdir -p "$DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start_longbow() {
    ./target/release/longbow --data-path "$DIR/data" --listen-addr 127.0.0.1:3000 --metrics-addr 127.0.0.1:9090 \
        >"$DIR/longbow.out" 2>>"$DIR/longbow.log" &
    LB=$!; pids+=($LB)
    until grep -q "longbow ready" "$DIR/longbow.out" 2>/dev/null; do sleep 0.1; done
}

echo "## pyarrow client, 2 streams of 1000-row x 128-d batches, ${SECS}s each"
$PY bench/python/ref_server.py --mode null --port 3200 >/dev/null 2>&1 & pids+=($!)
$PY bench/python/ref_server.py --mode fsync --port 3300 --data "$DIR/ref-fsync" >/dev/null 2>&1 & pids+=($!)
./target/release/longbow-bench null-server --listen 127.0.0.1:3100 >/dev/null 2>&1 & pids+=($!)
start_longbow
sleep 2
for target in "pyarrow-null-sink 3200" "rust-null-sink 3100" "pyarrow-fsync-server 3300" "longbow 3000"; do
    set -- $target
    $PY bench/python/put_bench.py --addr 127.0.0.1:$2 --streams 2 --seconds "$SECS" --label "$1" --dataset "tp"
done
echo "## pyarrow client, 10-row batches one at a time (ack latency)"
for target in "pyarrow-null-sink 3200" "longbow 3000"; do
    set -- $target
    $PY bench/python/put_bench.py --addr 127.0.0.1:$2 --streams 1 --rows 10 --one-at-a-time --seconds "$SECS" --label "$1" --dataset "lat"
done
echo "## longbow-bench (Rust client), 4 streams, 1000-row batches"
./target/release/longbow-bench put --addr http://127.0.0.1:3100 --streams 4 --duration "$SECS" --dataset-per-stream 2>/dev/null | sed 's/^/rust-null-sink /'
./target/release/longbow-bench put --addr http://127.0.0.1:3000 --streams 4 --duration "$SECS" --dataset-per-stream --dataset rb 2>/dev/null | sed 's/^/longbow /'
curl -s 127.0.0.1:9090/metrics | grep -E "^longbow_wal_commit_(duration_seconds|batches)_(sum|count)" || true

echo "## WAL replay after restart (page cache dropped)"
kill -TERM "$LB"; wait "$LB" || true
du -sb "$DIR/data" | awk '{printf "WAL on disk: %.2f GiB\n", $1/2^30}'
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(could not drop caches: not root)"
: >"$DIR/longbow.out"; start_longbow
grep "WAL replayed" "$DIR/longbow.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g'
shards=$(curl -s 127.0.0.1:9090/metrics | grep -c '^longbow_shard_queue_depth{' || echo 2)

echo "## fio references on the same volume"
F="$DIR/fio"; mkdir -p "$F"
fio_bw() { fio --directory="$F" --output-format=terse --terse-version=3 --group_reporting "$@" 2>/dev/null | awk -F';' '{print ($7>0?$7:$48)/1024}'; }
echo "O_DIRECT sequential read, 8 MiB, ${shards} jobs (replay reference): $(fio_bw --name=r --rw=read --direct=1 --bs=8m --ioengine=io_uring --iodepth=4 --size=1g --numjobs="$shards") MiB/s"
rm -f "$F"/*
echo "O_DIRECT write 4 MiB + fdatasync, new files, ${shards} jobs: $(fio_bw --name=w --rw=write --direct=1 --bs=4m --fdatasync=1 --size=1g --numjobs="$shards") MiB/s"
echo "O_DIRECT write 4 MiB + fdatasync, overwrite, ${shards} jobs: $(fio_bw --name=w --rw=write --direct=1 --bs=4m --fdatasync=1 --size=1g --numjobs="$shards") MiB/s"
rm -f "$F"/*
echo "O_DIRECT write 8 KiB + fdatasync, 1 job: $(fio --directory="$F" --name=l --rw=write --direct=1 --bs=8k --fdatasync=1 --size=64m --runtime=4 --time_based --output-format=json 2>/dev/null | $PY -c '
import json,sys; j=json.load(sys.stdin)["jobs"][0]; w=j["write"]["clat_ns"]["percentile"]; s=j["sync"]["lat_ns"]["percentile"]
print("write p50/p99 %d/%d us, fdatasync p50/p99 %d/%d us" % (w["50.000000"]/1e3, w["99.000000"]/1e3, s["50.000000"]/1e3, s["99.000000"]/1e3))')"
rm -rf "$F"
