"""Snapshot benchmarks against a real longbow binary:

1. per compression (none, snappy, zstd): ingest N MB of 128-d random float
   vectors, time `force_snapshot`, report Arrow MB/s and file size;
2. ack latency of 10-row batches sent one at a time, with and without a
   snapshot of a large dataset running on the same shard.
Prints JSON lines.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

ROOT = Path(__file__).resolve().parents[2]


def start(binary, work, compression):
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    p = subprocess.Popen([binary, "--data-path", str(work / "data"), "--snapshot-path", os.environ.get("SNAPSHOT_DIR", str(work / "snapshots")),
                          "--shards", "1", "--snapshot-compression", compression,
                          "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=open(work / "log", "wb"), text=True)
    for line in p.stdout:
        if line.startswith("longbow ready"):
            addr = "grpc://" + line.split()[2].split("=", 1)[1]
            return p, addr
    raise RuntimeError("longbow did not start")


def vectors(rows, seed):
    flat = pa.array(np.random.default_rng(seed).random(rows * 128, dtype=np.float32))
    return pa.record_batch([pa.array(np.arange(rows, dtype=np.int32)),
                            pa.FixedSizeListArray.from_arrays(flat, 128)], names=["id", "vector"])


def ingest(client, name, mb):
    b = vectors(1000, 1)
    w, r = client.do_put(fl.FlightDescriptor.for_path(name), b.schema)
    n = int(mb * 1e6 / b.get_total_buffer_size())
    for i in range(n):
        w.write_batch(vectors(1000, i))  # distinct random vectors, like real embeddings
    w.done_writing()
    while r.read() is not None:
        pass
    w.close()
    return n * b.get_total_buffer_size()


def snapshot(client, body=b""):
    t = time.perf_counter()
    res = json.loads(next(iter(client.do_action(fl.Action("force_snapshot", body)))).body.to_pybytes())
    return time.perf_counter() - t, res


def latencies(client, name, seconds, stop=None):
    b = vectors(10, 2)
    w, r = client.do_put(fl.FlightDescriptor.for_path(name), b.schema)
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and not (stop and stop.is_set()):
        t = time.perf_counter()
        w.write_batch(b)
        r.read()
        lat.append(time.perf_counter() - t)
    w.close()
    lat.sort()
    return {"n": len(lat), "p50_us": round(lat[len(lat) // 2] * 1e6), "p99_us": round(lat[int(len(lat) * 0.99)] * 1e6)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/release/longbow"))
    ap.add_argument("--work", default=str(ROOT / "target/bench/snap"))
    ap.add_argument("--mb", type=float, default=400)
    a = ap.parse_args()
    work = Path(a.work)
    for comp in ["none", "snappy", "zstd"]:
        p, addr = start(a.binary, work, comp)
        c = fl.connect(addr)
        arrow_bytes = ingest(c, "vec", a.mb)
        secs, res = snapshot(c)
        print(json.dumps({"bench": "snapshot", "compression": comp, "arrow_mb": round(arrow_bytes / 1e6),
                          "seconds": round(secs, 2), "arrow_mb_per_s": round(arrow_bytes / 1e6 / secs),
                          "file_mb": round(res["bytes_written"] / 1e6, 1),
                          "size_ratio": round(res["bytes_written"] / arrow_bytes, 3)}), flush=True)
        p.send_signal(signal.SIGTERM)
        p.wait()
    # Ack latency while a snapshot runs on the same shard.
    p, addr = start(a.binary, work, "none")
    ingest(fl.connect(addr), "big", a.mb)
    base = latencies(fl.connect(addr), "lat", 4)
    stop = threading.Event()
    during = {}
    t = threading.Thread(target=lambda: during.update(latencies(fl.connect(addr), "lat", 60, stop)))
    t.start()
    time.sleep(0.3)
    secs, res = snapshot(fl.connect(addr), b"big")
    stop.set()
    t.join()
    print(json.dumps({"bench": "ack_latency_during_snapshot", "without": base, "during": during,
                      "snapshot_seconds": round(secs, 2), "snapshot_rows": res["rows_written"],
                      "p99_rise": round(during["p99_us"] / base["p99_us"] - 1, 3)}), flush=True)
    p.send_signal(signal.SIGTERM)
    p.wait()


if __name__ == "__main__":
    main()
