"""Restart time and snapshot cost against a real longbow binary (issue #3).

1. restart: a data directory holding S GiB of snapshots plus a W GiB WAL
   tail, killed with SIGKILL, page cache dropped, restarted: time until it
   answers. Reference in the same run: the same W GiB WAL tail alone.
   Restart should follow the WAL tail, not the snapshots.
2. proportionality: `force_snapshot` after a dataset grew by X MB, on top of
   a small and a large base already in snapshots: the time should follow X,
   not the base.

Prints one JSON line per measurement.
"""

import argparse
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

ROOT = Path(__file__).resolve().parents[2]
ROWS = 1000
RNG = np.random.default_rng(7)
# One pool of distinct random vectors, rotated through: random floats are
# what embeddings look like to a compressor, and generating them per batch
# would make the client, not the server, the bottleneck.
POOL = [
    pa.record_batch(
        [pa.array(np.arange(ROWS, dtype=np.int32)),
         pa.FixedSizeListArray.from_arrays(pa.array(RNG.random(ROWS * 128, dtype=np.float32)), 128)],
        names=["id", "vector"])
    for _ in range(64)
]
BATCH_BYTES = POOL[0].get_total_buffer_size()


class Server:
    def __init__(self, binary, work, extra=()):
        self.binary, self.work, self.extra = binary, Path(work), list(extra)

    def start(self):
        t0 = time.monotonic()
        self.p = subprocess.Popen(
            [self.binary, "--data-path", str(self.work / "data"), "--snapshot-path", str(self.work / "snapshots"),
             "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", *self.extra],
            stdout=subprocess.PIPE, stderr=open(self.work / "log", "ab"), text=True)
        for line in self.p.stdout:
            if line.startswith("longbow ready"):
                self.addr = "grpc://" + line.split()[2].split("=", 1)[1]
                break
        else:
            raise RuntimeError("longbow did not start: see " + str(self.work / "log"))
        self.client = fl.connect(self.addr)
        list(self.client.list_flights())  # answers
        return time.monotonic() - t0

    def kill9(self):
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def action(self, name, body=b""):
        return json.loads(next(iter(self.client.do_action(fl.Action(name, body)))).body.to_pybytes())


def ingest(client, name, nbytes):
    w, r = client.do_put(fl.FlightDescriptor.for_path(name), POOL[0].schema)
    n = max(1, int(nbytes / BATCH_BYTES))
    for i in range(n):
        w.write_batch(POOL[i % len(POOL)])
    w.done_writing()
    while r.read() is not None:
        pass
    w.close()
    return n * BATCH_BYTES


def dir_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def drop_caches():
    subprocess.run(["sync"])
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def restart(binary, work, snap_gib, wal_gib, chunk_gib):
    shutil.rmtree(work, ignore_errors=True)
    Path(work).mkdir(parents=True)
    s = Server(binary, work, ["--max-wal-size", "128MiB", "--max-memory", "6GiB"])
    s.start()
    written = 0
    while written < snap_gib * 2**30:
        # Several datasets, snapshotted (and evicted) chunk by chunk, so
        # memory stays bounded while the snapshots grow.
        written += ingest(s.client, f"old{int(written // (chunk_gib * 2**30)) % 4}", chunk_gib * 2**30)
        s.action("force_snapshot")
    ingest(s.client, "tail", wal_gib * 2**30)
    stats = s.action("get_stats")
    s.kill9()
    cache_dropped = drop_caches()
    seconds = s.start()
    got = s.action("get_stats")
    assert got["records"] == stats["records"], (got["records"], stats["records"])
    out = {"bench": "restart", "snapshot_gib": snap_gib, "wal_tail_gib": wal_gib,
           "snapshot_bytes": dir_bytes(Path(work) / "snapshots"), "wal_bytes": got["wal_bytes"],
           "records": got["records"], "restart_to_answer_s": round(seconds, 3), "cache_dropped": cache_dropped}
    s.p.send_signal(signal.SIGTERM)
    s.p.wait()
    return out


def proportional(binary, work, base_mb, growth_mb):
    shutil.rmtree(work, ignore_errors=True)
    Path(work).mkdir(parents=True)
    s = Server(binary, work, ["--shards", "1"])
    s.start()
    ingest(s.client, "grow", base_mb * 1e6)
    s.action("force_snapshot")
    out = []
    for mb in growth_mb:
        ingest(s.client, "grow", mb * 1e6)
        t0 = time.monotonic()
        report = s.action("force_snapshot", b"grow")
        dt = time.monotonic() - t0
        out.append({"bench": "snapshot_growth", "base_mb": base_mb, "growth_mb": mb, "seconds": round(dt, 3),
                    "mb_per_s": round(mb / dt, 1), "rows_written": report.get("rows_written")})
    s.p.send_signal(signal.SIGTERM)
    s.p.wait()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(ROOT / "target/release/longbow"))
    ap.add_argument("--work", default=str(ROOT / "target/bench/restart"))
    ap.add_argument("--snapshot-gib", type=float, default=10)
    ap.add_argument("--wal-gib", type=float, default=1)
    ap.add_argument("--chunk-gib", type=float, default=1)
    ap.add_argument("--base-mb", type=int, nargs=2, default=[100, 2000], help="small and large base")
    ap.add_argument("--growth-mb", type=int, nargs="+", default=[25, 100, 400])
    ap.add_argument("--skip-restart", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    if not args.skip_restart:
        print(json.dumps(restart(args.binary, work / "wal-only", 0, args.wal_gib, args.chunk_gib)), flush=True)
        print(json.dumps(restart(args.binary, work / "with-snapshots", args.snapshot_gib, args.wal_gib,
                                 args.chunk_gib)), flush=True)
    for base in args.base_mb:
        for line in proportional(args.binary, work / f"grow-{base}", base, args.growth_mb):
            print(json.dumps(line), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
