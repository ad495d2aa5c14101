"""Soak test: many concurrent DoPut writers and DoGet/ListFlights/
GetFlightInfo/get_stats readers against a real longbow for a fixed time,
with a memory limit, a short snapshot interval and small WAL segments, so
that snapshots, eviction, back-pressure, WAL rotation and WAL truncation all
happen while it runs. Every second it samples the server's RSS, open file
descriptors, threads, WAL and snapshot sizes on disk and the /metrics
endpoint; at the end it checks:

  exactly_once   every acknowledged batch (its PutResult arrived) is read
                 back exactly once, in order, and nothing else is (also after
                 a clean restart)
  rss            RSS (VmHWM, the peak) never above
                     rss_start + max_memory + shards x 96 MiB + (writers + readers) x 16 MiB
                       + readers x the largest decoded snapshot file
                 i.e. the memory limit plus a fixed overhead (docs/reliability.md
                 says why each term); the last term because a DoGet of evicted
                 rows holds decoded snapshot data while it streams it. The
                 bound without it is reported too (rss_within_bound_without_reads)
  memory_metric  longbow_memory_bytes never above max_memory + shards x 4 MiB
                 (a shard checks its budget before a group commit of at most
                 GROUP_COMMIT_BYTES_MAX = 4 MiB)
  fds            open descriptors, once all clients have disconnected, within
                 8 of the count after warm-up (clients disconnected too)
  wal            WAL on disk never above max_memory + shards x (4 MiB + (3 +
                 WAL_RECYCLE_SEGMENTS) x segment size): what snapshots do not
                 cover yet is in memory; per shard the open segment (its file
                 preallocated), a partly covered one, and the free files
                 (recycled ones, plus one preallocated next file)
  errors         no error other than UNAVAILABLE (back-pressure: the writer
                 backs off and sends the same batch again), no stalled or
                 hung client, the server never exits, exits 0 on SIGTERM, and
                 logs no ERROR line

Prints one JSON summary line last and exits 1 if a check fails.

    python scripts/soak.py --writers 64 --readers 8 --seconds 600 [--binary target/release/longbow]
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
# server/tests/snapshots.rs allows 96 MiB over the limit for one shard: its
# DMA pool (SHARD_IO_MEMORY_BYTES, 8 MiB, pinned before the start figure), a Parquet row group being
# encoded, gRPC buffers. Each shard has its own pool and snapshot worker.
FIXED_OVERHEAD_PER_SHARD = 96 * MIB
# What one client connection can have in flight at the server, unacknowledged:
# the HTTP/2 stream and connection window the server sets
# (HTTP2_WINDOW_BYTES in server/src/lib.rs). Each writer and reader here has
# its own connection.
PER_STREAM = 16 * MIB
GROUP_COMMIT_BYTES_MAX = 4 * MIB  # engine/src/limits.rs
WAL_RECYCLE_SEGMENTS = 2  # the server's default (WAL_RECYCLE_SEGMENTS_DEFAULT, engine/src/limits.rs)
FD_DELTA = 8
STALL_SECONDS = 120  # a writer with no acknowledgement and no error for this long is hung

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_ERROR = re.compile(r"^\S+\s+ERROR\s")  # tracing's fmt: timestamp, level, ...
PARSE_SIZE = re.compile(r"^(\d+)\s*(|k|kib|m|mib|g|gib)$", re.I)


def parse_size(s):
    m = PARSE_SIZE.match(s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (use e.g. 256MiB)")
    unit = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": MIB, "mib": MIB, "g": 1 << 30, "gib": 1 << 30}
    return int(m.group(1)) * unit[m.group(2).lower()]


def size_arg(n):
    return f"{n // MIB}MiB" if n % MIB == 0 else str(n)


# ---------------------------------------------------------------- the server

class Server:
    def __init__(self, a, work):
        self.work = work
        self.log_path = work / "longbow.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(a.binary), "--data-path", str(work / "data"), "--snapshot-path", str(work / "snapshots"),
             "--shards", str(a.shards), "--pin-cores", "false",
             "--max-memory", size_arg(a.max_memory), "--max-wal-size", size_arg(a.wal_segment),
             "--snapshot-interval", a.snapshot_interval,
             "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=log, text=True)
        for line in self.proc.stdout:
            if line.startswith("longbow ready"):
                fields = dict(w.split("=", 1) for w in line.split()[2:])
                self.flight = "grpc://" + fields["flight"]
                self.metrics_url = f"http://{fields['metrics']}/metrics"
                return
        raise RuntimeError(f"longbow exited with {self.proc.wait()}; see {self.log_path}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    r = {"rss": out["VmRSS"] * 1024, "hwm": out["VmHWM"] * 1024, "threads": out["Threads"]}
    # Anonymous memory, and how much of it the allocator has given back with
    # MADV_FREE (still counted in RSS until the kernel needs it).
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Anonymous", "LazyFree"):
                    r[k.lower()] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return r


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def disk_usage(path):
    """Like du: allocated bytes of every file under path."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def scrape(url):
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)  # summed over labels (shards, outcomes)
        except ValueError:
            pass
    return out


# ------------------------------------------------------------------ the data

def dataset_of(w, datasets):
    return f"soak-{w % datasets}"


def schema_of(d):
    """Even datasets carry float vectors, odd ones strings."""
    payload = pa.list_(pa.float32(), 16) if d % 2 == 0 else pa.string()
    return pa.schema([("writer", pa.int64()), ("seq", pa.int64()), ("payload", payload)])


def make_batch(schema, w, seq, rows, rng):
    if pa.types.is_fixed_size_list(schema.field("payload").type):
        payload = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(rows * 16, dtype=np.float32)), 16)
    else:
        payload = pa.array([f"w{w}-s{seq}-r{r}-" + "x" * int(n) for r, n in enumerate(rng.integers(0, 64, rows))])
    return pa.record_batch([pa.array(np.full(rows, w, np.int64)), pa.array(np.full(rows, seq, np.int64)), payload],
                           schema=schema)


class WriterState:
    """What one writer has had acknowledged; survives between phases."""

    def __init__(self, w):
        self.w = w
        self.next_seq = 0  # every seq below it was acknowledged, except those in uncertain
        self.acked = 0
        self.uncertain = set()  # sent, then an unexpected error: may or may not be stored
        self.last_progress = time.monotonic()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.c = {}
        self.errors = []

    def inc(self, key, n=1):
        with self.lock:
            self.c[key] = self.c.get(key, 0) + n

    def error(self, what):
        with self.lock:
            self.errors.append(what)
        print(json.dumps({"error": what}), file=sys.stderr, flush=True)


def is_unavailable(e):
    return isinstance(e, fl.FlightUnavailableError)


def writer_thread(addr, st, a, stats, stop):
    rng = np.random.default_rng(st.w * 7919 + st.next_seq)
    prng = random.Random(st.w)
    d = st.w % a.datasets
    schema = schema_of(d)
    descriptor = fl.FlightDescriptor.for_path(dataset_of(st.w, a.datasets))
    client = fl.connect(addr)
    try:
        while not stop.is_set():
            stream = None
            try:
                stream, acks = client.do_put(descriptor, schema)
                for _ in range(prng.randint(20, 400)):  # then reopen
                    if stop.is_set():
                        break
                    seq = st.next_seq
                    stream.write_batch(make_batch(schema, st.w, seq, a.batch_rows, rng))
                    if acks.read() is None:
                        stream.close()  # raises the server's error
                        raise RuntimeError("DoPut ended without an acknowledgement or an error")
                    st.next_seq = seq + 1
                    st.acked += 1
                    st.last_progress = time.monotonic()
                    stats.inc("batches_acked")
                    if a.writer_pause:
                        time.sleep(prng.uniform(0, 2 * a.writer_pause))
                stream.done_writing()
                stream.close()
                stats.inc("put_streams")
            except Exception as e:  # noqa: BLE001 - classified below
                if stream is not None:
                    try:
                        stream.close()
                    except Exception:  # noqa: BLE001 - already failed; the first error is the one that counts
                        pass
                st.last_progress = time.monotonic()
                if is_unavailable(e):
                    # Refused, not stored: back off and send the same seq again.
                    stats.inc("unavailable_retries")
                    time.sleep(prng.uniform(0.05, 0.3))
                else:
                    stats.error(f"writer {st.w} seq {st.next_seq}: {type(e).__name__}: {e}")
                    st.uncertain.add(st.next_seq)
                    st.next_seq += 1
                    time.sleep(0.5)
    finally:
        client.close()


def expected_rows(states, a, d):
    return sum(st.acked for st in states if st.w % a.datasets == d) * a.batch_rows


def reader_thread(addr, r, states, a, stats, stop):
    prng = random.Random(1000 + r)
    client = fl.connect(addr)
    opts = fl.FlightCallOptions(timeout=300)

    def call(name, f):
        try:
            f()
            stats.inc(f"reads_{name}")
        except Exception as e:  # noqa: BLE001 - classified
            if is_unavailable(e):
                stats.inc("reads_unavailable")
            else:
                stats.error(f"reader {r} {name}: {type(e).__name__}: {e}")

    def do_get():
        d = prng.randrange(a.datasets)
        at_least = expected_rows(states, a, d)
        rows = 0
        try:
            for chunk in client.do_get(fl.Ticket(dataset_of(d, a.datasets).encode()), opts):
                rows += chunk.data.num_rows
        except pa.ArrowKeyError:
            if at_least:
                raise
            stats.inc("reads_not_created_yet")  # NOT_FOUND before its first acknowledged batch is right
            return
        stats.inc("rows_scanned", rows)
        if rows < at_least:
            stats.error(f"reader {r}: DoGet {dataset_of(d, a.datasets)} gave {rows} rows, "
                        f"{at_least} were acknowledged before it started")

    def list_flights():
        created = sum(1 for d in range(a.datasets) if expected_rows(states, a, d))
        n = sum(1 for _ in client.list_flights(options=opts))
        if n < created:
            raise RuntimeError(f"ListFlights gave {n} flights, {created} datasets had acknowledged batches")

    def info():
        d = prng.randrange(a.datasets)
        at_least = expected_rows(states, a, d)
        try:
            i = client.get_flight_info(fl.FlightDescriptor.for_path(dataset_of(d, a.datasets)), opts)
        except pa.ArrowKeyError:
            if at_least:
                raise
            stats.inc("reads_not_created_yet")
            return
        if i.total_records < at_least:
            raise RuntimeError(f"GetFlightInfo total_records {i.total_records} < {at_least} acknowledged")

    def get_stats():
        s = json.loads(next(iter(client.do_action(fl.Action("get_stats", b""), opts))).body.to_pybytes())
        stats.inc("stats_memory_max", 0)
        with stats.lock:
            stats.c["stats_memory_max"] = max(stats.c["stats_memory_max"], s["memory_bytes"])

    try:
        while not stop.is_set():
            call("do_get", do_get)
            call("list_flights", list_flights)
            call("get_flight_info", info)
            call("get_stats", get_stats)
            stop.wait(prng.uniform(0, 0.5))
    finally:
        client.close()


# ---------------------------------------------------------------- sampling

class Sampler:
    def __init__(self, server, work, out):
        self.server, self.work, self.out = server, work, out
        self.samples = []
        self.decoded = {}  # snapshot file -> uncompressed bytes (row groups' total_byte_size)
        self.max_decoded_file = 0
        self.metric_errors = 0

    def snapshot_files(self):
        for p in (self.work / "snapshots").glob("*/*.parquet"):
            if p.name.startswith(".") or p in self.decoded:
                continue
            try:
                md = pq.read_metadata(p)
                self.decoded[p] = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
                self.max_decoded_file = max(self.max_decoded_file, self.decoded[p])
            except Exception:  # noqa: BLE001 - merged away meanwhile
                pass

    def sample(self, phase, t0):
        pid = self.server.proc.pid
        s = {"t": round(time.monotonic() - t0, 1), "phase": phase}
        s.update(proc_status(pid))
        s["fds"] = open_fds(pid)
        s["wal"] = disk_usage(self.work / "data")
        s["snapshots"] = disk_usage(self.work / "snapshots")
        try:
            m = scrape(self.server.metrics_url)
            for k in ("longbow_memory_bytes", "longbow_memory_refusals_total", "longbow_evicted_bytes_total",
                      "longbow_wal_segments_created_total", "longbow_wal_segments_deleted_total",
                      "longbow_snapshot_compactions_total", "longbow_snapshot_operations_total",
                      "process_open_fds"):
                s[k] = m.get(k)
        except Exception:  # noqa: BLE001 - counted; a dead server is caught elsewhere
            self.metric_errors += 1
        self.snapshot_files()
        self.samples.append(s)
        self.out.write(json.dumps(s) + "\n")
        self.out.flush()
        return s


# --------------------------------------------------------------- the phases

def run_load(server, addr, states, a, stats, seconds, sampler, phase, t0):
    stop = threading.Event()
    writers = [threading.Thread(target=writer_thread, args=(addr, st, a, stats, stop), daemon=True) for st in states]
    readers = [threading.Thread(target=reader_thread, args=(addr, r, states, a, stats, stop), daemon=True)
               for r in range(a.readers)]
    for t in writers + readers:
        t.start()
    end = time.monotonic() + seconds
    last_print = time.monotonic()
    while time.monotonic() < end:
        time.sleep(1)
        if server.proc.poll() is not None:
            stats.error(f"the server exited with {server.proc.returncode} during {phase}")
            break
        s = sampler.sample(phase, t0)
        now = time.monotonic()
        for st in states:
            if now - st.last_progress > STALL_SECONDS:
                stats.error(f"writer {st.w} made no progress for {now - st.last_progress:.0f} s")
                st.last_progress = now
        if now - last_print >= 30:
            last_print = now
            print(json.dumps({"t": s["t"], "phase": phase, "acked": stats.c.get("batches_acked", 0),
                              "unavailable": stats.c.get("unavailable_retries", 0), "errors": len(stats.errors),
                              "rss_mib": round(s["rss"] / MIB, 1), "fds": s["fds"],
                              "wal_mib": round(s["wal"] / MIB, 1),
                              "memory_mib": round((s.get("longbow_memory_bytes") or 0) / MIB, 1)}),
                  file=sys.stderr, flush=True)
    stop.set()
    for t in writers + readers:
        t.join(timeout=STALL_SECONDS)
        if t.is_alive():
            stats.error(f"{t.name} did not finish within {STALL_SECONDS} s of the end")


def settled_fds(pid, seconds=15):
    """Open descriptors once they stop changing (connections wind down)."""
    last, stable_since = open_fds(pid), time.monotonic()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
        n = open_fds(pid)
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since >= 3:
            break
    return last


def verify(addr, states, a):
    """Every acknowledged (writer, seq) batch exactly once, in order, all
    rows of a batch together; nothing that was never sent."""
    client = fl.connect(addr)
    problems = []
    rows_total = 0
    try:
        for d in range(a.datasets):
            ws, ss = [], []
            for chunk in client.do_get(fl.Ticket(dataset_of(d, a.datasets).encode())):
                b = chunk.data
                ws.append(b.column(0).to_numpy())
                ss.append(b.column(1).to_numpy())
            w = np.concatenate(ws) if ws else np.empty(0, np.int64)
            s = np.concatenate(ss) if ss else np.empty(0, np.int64)
            rows_total += len(w)
            for st in states:
                if st.w % a.datasets != d:
                    continue
                mine = s[w == st.w]
                if len(mine) % a.batch_rows or (len(mine) and (mine.reshape(-1, a.batch_rows) != mine[::a.batch_rows, None]).any()):
                    problems.append(f"writer {st.w}: rows of a batch not together")
                    continue
                seqs = mine[::a.batch_rows]
                if len(seqs) > 1 and (np.diff(seqs) <= 0).any():
                    problems.append(f"writer {st.w}: duplicated or out of order")
                    continue
                got = set(seqs.tolist())
                want = set(range(st.next_seq)) - st.uncertain
                if not want <= got:
                    problems.append(f"writer {st.w}: {len(want - got)} acknowledged batches missing, "
                                    f"first {sorted(want - got)[:5]}")
                extra = got - want - st.uncertain
                if extra:
                    problems.append(f"writer {st.w}: {len(extra)} batches never acknowledged nor in doubt, "
                                    f"first {sorted(extra)[:5]}")
            known = set(st.w for st in states if st.w % a.datasets == d)
            if len(w) and not set(np.unique(w).tolist()) <= known:
                problems.append(f"{dataset_of(d, a.datasets)}: rows of unknown writers")
    finally:
        client.close()
    return problems, rows_total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--writers", type=int, default=64, help="concurrent DoPut streams")
    ap.add_argument("--readers", type=int, default=8, help="concurrent reader threads")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=None, help="seconds of load before the fd baseline (default: 5%% of --seconds, 5..30)")
    ap.add_argument("--datasets", type=int, default=8)
    ap.add_argument("--batch-rows", type=int, default=64)
    ap.add_argument("--writer-pause", type=float, default=0.0, help="mean seconds a writer waits between batches")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--max-memory", type=parse_size, default=256 * MIB)
    ap.add_argument("--wal-segment", type=parse_size, default=8 * MIB)
    ap.add_argument("--snapshot-interval", default="5s")
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "longbow"))
    ap.add_argument("--samples", default=None, help="keep the per-second samples (JSON lines) at this path")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (data, snapshots, log)")
    a = ap.parse_args()
    if a.warmup is None:
        a.warmup = min(30.0, max(5.0, a.seconds * 0.05))
    work = Path(tempfile.mkdtemp(prefix="longbow-soak-"))
    samples_path = Path(a.samples) if a.samples else work / "samples.jsonl"
    stats = Stats()
    states = [WriterState(w) for w in range(a.writers)]
    checks = {}
    summary = {}
    server = Server(a, work)
    try:
        t0 = time.monotonic()
        with open(samples_path, "w") as out:
            sampler = Sampler(server, work, out)
            pid = server.proc.pid
            c = fl.connect(server.flight)
            next(iter(c.do_action(fl.Action("get_stats", b""))))
            c.close()
            rss_start = proc_status(pid)["rss"]
            sampler.sample("start", t0)

            run_load(server, server.flight, states, a, stats, a.warmup, sampler, "warmup", t0)
            fd_baseline = settled_fds(pid)
            sampler.sample("baseline", t0)

            run_load(server, server.flight, states, a, stats, a.seconds, sampler, "soak", t0)
            alive = server.proc.poll() is None
            fd_end = settled_fds(pid) if alive else None
            if alive:
                sampler.sample("end", t0)
                time.sleep(20)  # idle: does resident memory come back down?
                sampler.sample("idle", t0)

        problems, rows = verify(server.flight, states, a) if alive else (["server died"], 0)
        metrics = scrape(server.metrics_url) if alive else {}
        code = server.stop() if alive else server.proc.returncode
        if code != 0:
            stats.error(f"the server exited with {code} on SIGTERM")
        # The same data after a clean restart: snapshots + the WAL tail.
        again = Server(a, work)
        problems_after, rows_after = verify(again.flight, states, a)
        code = again.stop()
        if code != 0:
            stats.error(f"the restarted server exited with {code} on SIGTERM")
        if rows_after != rows:
            problems_after.append(f"{rows} rows before the restart, {rows_after} after")

        log = ANSI.sub("", server.log_path.read_text(errors="replace"))
        log_errors = [ln for ln in log.splitlines() if LOG_ERROR.match(ln)]
        for ln in log_errors[:5]:
            stats.error(f"server log: {ln[:300]}")

        smp = sampler.samples
        soak = [s for s in smp if s["phase"] == "soak"]
        # VmHWM: the peak resident set since start, so a spike between two samples counts too.
        rss_max = max(max(s["rss"], s["hwm"]) for s in smp)
        rss_bound = rss_start + a.max_memory + a.shards * FIXED_OVERHEAD_PER_SHARD + (a.writers + a.readers) * PER_STREAM
        rss_bound_with_reads = rss_bound + a.readers * sampler.max_decoded_file
        mem_max = max((s.get("longbow_memory_bytes") or 0) for s in smp)
        mem_bound = a.max_memory + a.shards * GROUP_COMMIT_BYTES_MAX
        wal_max = max(s["wal"] for s in smp)
        wal_bound = a.max_memory + a.shards * (GROUP_COMMIT_BYTES_MAX + (3 + WAL_RECYCLE_SEGMENTS) * a.wal_segment)
        half = len(soak) // 2
        checks = {
            "exactly_once": not problems and not problems_after,
            "rss": rss_max <= rss_bound_with_reads,
            "memory_metric": mem_max <= mem_bound,
            "fds": fd_end is not None and fd_end <= fd_baseline + FD_DELTA,
            "wal": wal_max <= wal_bound,
            "errors": not stats.errors and sampler.metric_errors == 0,
            # These show that the soak exercised what it is meant to.
            "snapshots_and_truncation_happened": bool(metrics.get("longbow_wal_segments_deleted_total")),
        }
        summary = {
            "writers": a.writers, "readers": a.readers, "streams": a.writers + a.readers, "seconds": a.seconds,
            "warmup_seconds": a.warmup, "datasets": a.datasets, "shards": a.shards,
            "max_memory_mib": a.max_memory // MIB, "wal_segment_mib": a.wal_segment / MIB,
            "snapshot_interval": a.snapshot_interval,
            "batches_acked": stats.c.get("batches_acked", 0), "rows_acked": stats.c.get("batches_acked", 0) * a.batch_rows,
            "rows_verified": rows, "rows_verified_after_restart": rows_after,
            "put_streams": stats.c.get("put_streams", 0),
            "unavailable_retries": stats.c.get("unavailable_retries", 0),
            "memory_refusals": metrics.get("longbow_memory_refusals_total"),
            "reads": {k[6:]: v for k, v in stats.c.items() if k.startswith("reads_")},
            "rows_scanned": stats.c.get("rows_scanned", 0),
            "errors": len(stats.errors), "first_errors": stats.errors[:5] + (problems + problems_after)[:5],
            "rss_start_mib": round(rss_start / MIB, 1), "rss_max_mib": round(rss_max / MIB, 1),
            "rss_max_first_half_mib": round(max((s["rss"] for s in soak[:half]), default=0) / MIB, 1),
            "rss_max_second_half_mib": round(max((s["rss"] for s in soak[half:]), default=0) / MIB, 1),
            "rss_end_mib": round(next((s["rss"] for s in smp if s["phase"] == "end"), 0) / MIB, 1),
            "rss_idle_20s_later_mib": round(smp[-1]["rss"] / MIB, 1),
            "anonymous_idle_mib": round(smp[-1].get("anonymous", 0) / MIB, 1),
            "lazyfree_idle_mib": round(smp[-1].get("lazyfree", 0) / MIB, 1),
            "memory_metric_idle_mib": round((smp[-1].get("longbow_memory_bytes") or 0) / MIB, 1),
            "rss_bound_mib": round(rss_bound / MIB, 1),
            # Not checked: the bound if each reader may hold one decoded snapshot file.
            "rss_bound_with_reads_mib": round(rss_bound_with_reads / MIB, 1),
            "rss_within_bound_without_reads": rss_max <= rss_bound,
            "rss_baseline_idle_mib": round(next(s["rss"] for s in smp if s["phase"] == "baseline") / MIB, 1),
            "largest_decoded_snapshot_file_mib": round(sampler.max_decoded_file / MIB, 1),
            "memory_metric_max_mib": round(mem_max / MIB, 1), "memory_metric_bound_mib": round(mem_bound / MIB, 1),
            "fd_baseline": fd_baseline, "fd_max": max(s["fds"] for s in smp), "fd_end": fd_end,
            "threads_baseline": next(s["threads"] for s in smp if s["phase"] == "baseline"),
            "threads_max": max(s["threads"] for s in smp), "threads_end": smp[-1]["threads"],
            "wal_max_mib": round(wal_max / MIB, 1), "wal_bound_mib": round(wal_bound / MIB, 1),
            "wal_end_mib": round(smp[-1]["wal"] / MIB, 1),
            "snapshots_end_mib": round(smp[-1]["snapshots"] / MIB, 1),
            "wal_segments_created": metrics.get("longbow_wal_segments_created_total"),
            "wal_segments_deleted": metrics.get("longbow_wal_segments_deleted_total"),
            "evicted_mib": round((metrics.get("longbow_evicted_bytes_total") or 0) / MIB, 1),
            "snapshot_compactions": metrics.get("longbow_snapshot_compactions_total"),
            "samples": len(smp), "samples_file": str(samples_path),
            "checks": checks, "ok": all(checks.values()),
        }
    except BaseException:
        if server.proc.poll() is None:
            server.proc.kill()
        raise
    finally:
        if a.keep or not summary.get("ok"):
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary), flush=True)
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
