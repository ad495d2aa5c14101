"""A/B of two longbow binaries on the same ingest load, alternating, in one
run: pyarrow DoPut (bench/python/put_bench.py) into a fresh server per
measurement, WAL on the data volume and on a tmpfs, and the server's CPU
seconds per GB acknowledged (utime + stime from /proc, so a change in the
CPU path shows even where the disk or the shared cores cap throughput).

    .venv/bin/python bench/python/ab_ingest.py --a OLD/longbow --b target/release/longbow \\
        --dir target/ab --tmpfs /dev/shm/ab --rounds 3 --seconds 8

Prints one JSON line per measurement, then a summary line (medians).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def metric(addr, name):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def measure(binary, root, args, label):
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    proc = subprocess.Popen(
        [binary, "--data-path", str(root / "data"), "--snapshot-path", str(root / "snapshots"),
         "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--snapshot-interval", "1h"],
        stdout=subprocess.PIPE, stderr=open(root.parent / f"{label}.log", "ab"), text=True)
    try:
        fields = {}
        for line in proc.stdout:
            if line.startswith("longbow ready"):
                fields = dict(w.split("=", 1) for w in line.split()[2:])
                break
        if not fields:
            raise RuntimeError(f"{binary} exited with {proc.wait()}")
        before = cpu_seconds(proc.pid)
        out = subprocess.run([sys.executable, str(HERE / "put_bench.py"), "--addr", fields["flight"],
                              "--streams", str(args.streams), "--seconds", str(args.seconds), "--label", label],
                             capture_output=True, text=True, check=True).stdout
        cpu = cpu_seconds(proc.pid) - before
        r = json.loads(out.strip().splitlines()[-1])
        gb = r["batches"] * r["batch_bytes"] / 1e9
        r.update(server_cpu_s=round(cpu, 2), cpu_s_per_gb=round(cpu / gb, 3) if gb else None,
                 in_place_bytes=metric(fields["metrics"], "longbow_wal_bytes_written_in_place_total"),
                 wal_bytes=metric(fields["metrics"], "longbow_wal_bytes_written_total"),
                 # Commits written while the one before them synced (None:
                 # a binary without the metric).
                 overlapped=metric(fields["metrics"], "longbow_wal_commits_overlapped_total"),
                 commits=metric(fields["metrics"], "longbow_wal_commit_batches_count"))
        return r
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--a", required=True, help="binary A (the reference)")
    p.add_argument("--b", required=True, help="binary B")
    p.add_argument("--dir", default="target/ab", help="data volume directory")
    p.add_argument("--tmpfs", default="/dev/shm/longbow-ab", help="a directory on tmpfs")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--streams", type=int, default=2)
    args = p.parse_args()
    results = []
    for rnd in range(args.rounds):
        order = [("a", args.a), ("b", args.b)] if rnd % 2 == 0 else [("b", args.b), ("a", args.a)]
        for where, base in (("disk", Path(args.dir)), ("tmpfs", Path(args.tmpfs))):
            for name, binary in order:
                r = measure(binary, base / f"{name}-{where}", args, f"{name}-{where}")
                r.update(binary=name, wal=where, round=rnd)
                print(json.dumps(r), flush=True)
                results.append(r)
    summary = {}
    for where in ("disk", "tmpfs"):
        for name in ("a", "b"):
            rs = [r for r in results if r["wal"] == where and r["binary"] == name]
            summary[f"{name}-{where}"] = {
                "mb_per_s": statistics.median(r["mb_per_s"] for r in rs),
                "cpu_s_per_gb": statistics.median(r["cpu_s_per_gb"] for r in rs),
                "in_place_share": round(statistics.median((r["in_place_bytes"] or 0) / r["wal_bytes"] for r in rs), 3),
            }
    print(json.dumps({"summary": summary, "streams": args.streams, "seconds": args.seconds, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
