#!/usr/bin/env bash
# WAL commits into a segment file, by how the file was prepared: one job,
# sequential O_DIRECT pwrite of BS bytes followed by fdatasync, through one
# file (32 MiB for 8 KiB commits, 128 MiB for 1 MiB ones), on the volume of
# DIR (put it on the WAL volume). The four cases run back to back in each
# round, so that a noisy disk affects them alike. Cases:
#   extend     new empty file: every commit extends it (size metadata per fdatasync)
#   fallocate  fallocate(1)d first: unwritten extents, converted by each commit
#   zeroed     zeros written (O_DIRECT) and synced first: plain overwrites
#   recycled   the file the previous `extend` run wrote, renamed: plain overwrites
# Usage: bench/wal_prealloc.sh [DIR] [ROUNDS]   (default /work/fio-bench, 3)
# Prints one JSON line per run and a median table. Needs fio and python3.
set -euo pipefail
DIR=${1:-/work/fio-bench}
ROUNDS=${2:-3}
mkdir -p "$DIR"
cd "$DIR"
command -v fio >/dev/null || { echo "fio missing (apt-get install -y fio)" >&2; exit 1; }
RESULTS=$(mktemp)
trap 'rm -f "$RESULTS" seg seg.old run.json' EXIT

prepare() {
    rm -f seg
    case $1 in
        extend) ;;
        fallocate) fallocate -l "${SIZE_MIB}MiB" seg ;;
        zeroed) dd if=/dev/zero of=seg bs=1M count="$SIZE_MIB" oflag=direct conv=fdatasync status=none ;;
        recycled) mv seg.old seg ;;
    esac
    sync
}

for round in $(seq "$ROUNDS"); do
    for bs in 8k 1m; do
        if [ "$bs" = 8k ]; then SIZE_MIB=32; else SIZE_MIB=128; fi
        for case in extend fallocate zeroed recycled; do
            prepare "$case"
            fio --name=commit --filename=seg --ioengine=psync --direct=1 --rw=write --bs="$bs" \
                --size="${SIZE_MIB}m" --fdatasync=1 --fallocate=none --output-format=json >run.json
            # The extended file is fully written now: the next `recycled` run reuses it.
            if [ "$case" = extend ]; then mv seg seg.old; fi
            python3 - "$round" "$bs" "$case" >>"$RESULTS" <<'EOF'
import json, sys
j = json.load(open("run.json"))["jobs"][0]
w, s = j["write"], j["sync"]["lat_ns"]
print(json.dumps({
    "round": int(sys.argv[1]), "bs": sys.argv[2], "case": sys.argv[3],
    "commits_per_s": round(w["iops"], 1), "mib_per_s": round(w["bw"] / 1024, 1),
    "write_p50_us": w["clat_ns"]["percentile"]["50.000000"] / 1000,
    "write_p99_us": w["clat_ns"]["percentile"]["99.000000"] / 1000,
    "fdatasync_p50_us": s["percentile"]["50.000000"] / 1000,
    "fdatasync_p99_us": s["percentile"]["99.000000"] / 1000,
}))
EOF
            tail -1 "$RESULTS"
        done
    done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds = sorted({x["round"] for x in rows})
print("\n| commit | file | commits/s | write p50 / p99 µs | fdatasync p50 / p99 µs | commits/s vs extend, same round |")
print("|---|---|---|---|---|---|")
for bs in ("8k", "1m"):
    one = lambda case, r: next(x for x in rows if x["bs"] == bs and x["case"] == case and x["round"] == r)
    for case in ("extend", "fallocate", "zeroed", "recycled"):
        r = [one(case, n) for n in rounds]
        med = lambda k: statistics.median(x[k] for x in r)
        ratio = statistics.median(one(case, n)["commits_per_s"] / one("extend", n)["commits_per_s"] for n in rounds)
        size = "8 KiB" if bs == "8k" else "1 MiB"
        print(f"| {size} | {case} | {med('commits_per_s'):,.0f} | {med('write_p50_us'):,.0f} / {med('write_p99_us'):,.0f} "
              f"| {med('fdatasync_p50_us'):,.0f} / {med('fdatasync_p99_us'):,.0f} | {ratio:.2f}x |")
print(f"\nmedians of {len(rounds)} rounds; the last column is the median of each round's ratio")
EOF
