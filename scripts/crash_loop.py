"""Crash loop: repeated `kill -9` of a real longbow under concurrent DoPut
load (with snapshots forced at random moments, and small WAL segments so
that rotation happens), verifying after every restart that every
acknowledged batch is present exactly once and in order.

    python scripts/crash_loop.py --cycles 100 [--binary target/release/longbow]
"""

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl

ROOT = Path(__file__).resolve().parents[1]


def start(binary, work):
    log = open(work / "longbow.log", "ab")
    p = subprocess.Popen([str(binary), "--data-path", str(work / "data"), "--snapshot-path", str(work / "snapshots"),
                          "--shards", "2", "--max-wal-size", "1MiB", "--pin-cores", "false",
                          "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=log, text=True)
    for line in p.stdout:
        if line.startswith("longbow ready"):
            return p, "grpc://" + line.split()[2].split("=", 1)[1]
    raise RuntimeError(f"longbow exited with {p.wait()}; see {work / 'longbow.log'}")


def writer(addr, w, first_seq, acked, stop):
    """Streams one-row batches (writer, seq) and counts acknowledgements."""
    schema = pa.schema([("writer", pa.int64()), ("seq", pa.int64())])
    try:
        client = fl.connect(addr)
        stream, reader = client.do_put(fl.FlightDescriptor.for_path(f"crash-{w % 3}"), schema)
        seq = first_seq
        while not stop.is_set():
            stream.write_batch(pa.record_batch([pa.array([w]), pa.array([seq])], schema=schema))
            if reader.read() is None:
                break
            acked[w] = seq + 1
            seq += 1
    except Exception:
        pass  # the server died under us: that is the point


def recovered(addr, writers):
    client = fl.connect(addr)
    seen = {w: [] for w in range(writers)}
    for d in range(3):
        try:
            t = client.do_get(fl.Ticket(f"crash-{d}".encode())).read_all()
        except (fl.FlightError, KeyError, pa.ArrowKeyError):
            continue  # not created yet
        for w, s in zip(t.column("writer").to_pylist(), t.column("seq").to_pylist()):
            seen[w].append(s)
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--writers", type=int, default=6)
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "longbow"))
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="longbow-crash-"))
    acked = {w: 0 for w in range(a.writers)}
    next_seq = dict(acked)
    total_verified = 0
    try:
        for cycle in range(1, a.cycles + 1):
            p, addr = start(a.binary, work)
            seen = recovered(addr, a.writers)
            for w in range(a.writers):
                got = seen[w]
                if got != list(range(len(got))) or len(got) < acked[w]:
                    print(json.dumps({"cycle": cycle, "writer": w, "acked": acked[w], "recovered": len(got),
                                      "error": "lost, duplicated or out of order"}))
                    sys.exit(1)
                next_seq[w] = len(got)
                acked[w] = len(got)
            total_verified = sum(acked.values())
            stop = threading.Event()
            threads = [threading.Thread(target=writer, args=(addr, w, next_seq[w], acked, stop))
                       for w in range(a.writers)]
            for t in threads:
                t.start()
            if rng.random() < 0.5:
                def snap():
                    try:
                        next(iter(fl.connect(addr).do_action(fl.Action("force_snapshot", b""))))
                    except Exception:
                        pass
                threading.Timer(rng.uniform(0.05, 0.4), snap).start()
            time.sleep(rng.uniform(0.2, 0.8))
            p.send_signal(signal.SIGKILL)
            p.wait()
            stop.set()
            for t in threads:
                t.join()
            print(json.dumps({"cycle": cycle, "acked_total": sum(acked.values()), "verified_before": total_verified}),
                  flush=True)
        p, addr = start(a.binary, work)
        seen = recovered(addr, a.writers)
        ok = all(seen[w] == list(range(len(seen[w]))) and len(seen[w]) >= acked[w] for w in range(a.writers))
        p.send_signal(signal.SIGTERM)
        p.wait()
        print(json.dumps({"cycles": a.cycles, "batches_verified": sum(len(v) for v in seen.values()),
                          "acked": sum(acked.values()), "lost": 0 if ok else "SOME", "ok": ok}))
        sys.exit(0 if ok else 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
