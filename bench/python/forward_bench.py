"""DoPut forwarded through a node that does not own the dataset, against the
same load sent to the owner, in one run. Every stream's dataset is one node 1
owns.

Starts two nodes (one shard each, WAL and snapshots under --dir, so a
tmpfs puts the disk out of the way), picks a dataset name node 1 owns, then
runs put_bench.py alternately against node 1 (the owner) and node 0 (which
proxies every batch to node 1), --rounds times each. Prints one JSON line:
MB/s per round and the ratio of the medians.

    python bench/python/forward_bench.py --binary target/release/longbow --dir /dev/shm/fwd
"""

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl

HERE = Path(__file__).resolve().parent


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start(binary, root, node, peers, port):
    d = root / f"node-{node}"
    d.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--data-path", str(d / "data"), "--snapshot-path", str(d / "snapshots"), "--shards", "1",
         "--listen-addr", f"127.0.0.1:{port}", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false",
         "--node-id", str(node), "--peers", ",".join(peers)],
        stdout=subprocess.PIPE, stderr=open(d / "longbow.log", "ab"), text=True)
    for line in proc.stdout:
        if line.startswith("longbow ready"):
            return proc
    raise RuntimeError(f"node {node} exited with {proc.wait()}")


def owned_by(client, owner_url, streams, tries=500):
    """A put_bench dataset prefix whose every stream's dataset
    (`<prefix>-<k>`) `owner_url` owns."""
    table = pa.table({"id": pa.array([0], pa.int32())})
    for j in range(tries):
        owners = set()
        for k in range(streams):
            name = f"fwd{j}-{k}"
            w, _ = client.do_put(fl.FlightDescriptor.for_path(name), table.schema)
            w.write_table(table)
            w.close()
            info = client.get_flight_info(fl.FlightDescriptor.for_path(name))
            owners |= {loc.uri.decode() for e in info.endpoints for loc in e.locations}
            list(client.do_action(fl.Action("drop_dataset", name.encode())))
        if owners == {owner_url}:
            return f"fwd{j}"
    raise RuntimeError("no dataset prefix owned by node 1")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default="target/release/longbow")
    p.add_argument("--dir", default="/dev/shm/longbow-forward-bench")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--bytes", help="stop each run after this much as well (a tmpfs holds the WAL)")
    a = p.parse_args()
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    ports = free_ports(2)
    peers = [f"grpc://127.0.0.1:{q}" for q in ports]
    procs = [start(a.binary, root, i, peers, ports[i]) for i in range(2)]
    try:
        prefix = owned_by(fl.connect(peers[0]), peers[1], a.streams)
        runs = {"owner": [], "forwarded": []}
        for r in range(a.rounds):
            for label, port in (("owner", ports[1]), ("forwarded", ports[0])):
                out = subprocess.run(
                    [sys.executable, str(HERE / "put_bench.py"), "--addr", f"127.0.0.1:{port}",
                     "--streams", str(a.streams), "--seconds", str(a.seconds), "--dataset", prefix,
                     "--label", label, *(["--bytes", a.bytes] if a.bytes else [])],
                    capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                runs[label].append(res["mb_per_s"])
                # Each run starts on an empty WAL: drop what it wrote, and a
                # snapshot run releases the segments.
                for k in range(a.streams):
                    list(fl.connect(peers[1]).do_action(fl.Action("drop_dataset", f"{prefix}-{k}".encode())))
                for url in peers:
                    list(fl.connect(url).do_action(fl.Action("force_snapshot", b"")))
        med = {k: statistics.median(v) for k, v in runs.items()}
        print(json.dumps({"runs_mb_per_s": runs, "median_mb_per_s": med,
                          "forwarded_vs_owner": round(med["forwarded"] / med["owner"], 3)}))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
