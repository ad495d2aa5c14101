"""Aggregate ingest of three one-shard nodes with clients spread over them,
against one two-shard node taking the same clients, in one run.

Each of --clients put_bench.py processes writes its own dataset through
node (i mod 3) of the cluster (so about two in three of its batches are
forwarded to another owner), then through the single node. WAL and
snapshots under --dir. Prints one JSON line: the summed MB/s of each setup.

    python bench/python/cluster_bench.py --binary target/release/longbow --dir /dev/shm/cluster-bench
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from forward_bench import HERE, free_ports, start


def load(ports, clients, seconds, prefix, cap=None):
    procs = [subprocess.Popen(
        [sys.executable, str(HERE / "put_bench.py"), "--addr", f"127.0.0.1:{ports[i % len(ports)]}",
         "--streams", "1", "--seconds", str(seconds), "--dataset", f"{prefix}{i}",
         *(["--bytes", cap] if cap else [])],
        stdout=subprocess.PIPE, text=True) for i in range(clients)]
    rates = []
    for p in procs:
        out, _ = p.communicate()
        rates.append(json.loads(out.strip().splitlines()[-1])["mb_per_s"])
    return rates


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default="target/release/longbow")
    p.add_argument("--dir", default="/dev/shm/longbow-cluster-bench")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--bytes", help="stop each client after this much as well (a tmpfs holds the WALs)")
    a = p.parse_args()
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    ports = free_ports(3)
    peers = [f"grpc://127.0.0.1:{q}" for q in ports]
    procs = [start(a.binary, root / "cluster", i, peers, ports[i]) for i in range(3)]
    try:
        cluster = load(ports, a.clients, a.seconds, "c", a.bytes)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    shutil.rmtree(root / "cluster", ignore_errors=True)
    (port,) = free_ports(1)
    d = root / "single"
    d.mkdir(parents=True)
    single = subprocess.Popen(
        [a.binary, "--data-path", str(d / "data"), "--snapshot-path", str(d / "snapshots"), "--shards", "2",
         "--listen-addr", f"127.0.0.1:{port}", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false"],
        stdout=subprocess.PIPE, stderr=open(d / "longbow.log", "ab"), text=True)
    try:
        for line in single.stdout:
            if line.startswith("longbow ready"):
                break
        one = load([port], a.clients, a.seconds, "s", a.bytes)
    finally:
        single.kill()
        single.wait()
    print(json.dumps({"three_one_shard_nodes_mb_per_s": round(sum(cluster), 1), "per_client": cluster,
                      "one_two_shard_node_mb_per_s": round(sum(one), 1), "per_client_single": one,
                      "ratio": round(sum(cluster) / sum(one), 3)}))


if __name__ == "__main__":
    main()
