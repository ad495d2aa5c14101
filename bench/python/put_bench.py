"""pyarrow DoPut load: N streams (threads) of `id int32, vector
fixed_size_list<float32>[dim]` batches, reading one PutResult per batch.

Throughput mode writes batches back to back while a reader thread per stream
consumes PutResults. Latency mode (--one-at-a-time) sends a batch, waits for
its PutResult, and records the round trip.

How much: for --seconds, or a fixed amount (--bytes / --batches, split over
the streams) with --seconds as a time limit. A stream the server ends with an
error (UNAVAILABLE from a memory-limited server, say) is counted in `errors`
and opened again after a short pause; only acknowledged batches count, and in
fixed-amount mode the unacknowledged ones are sent again.

--rss-pid PID samples that process's resident memory (VmRSS, every 50 ms)
while the load runs and reads its peak (VmHWM) at the end. --verify then
reads every dataset back (DoGet) and compares the rows stored with the rows
acknowledged. Prints one JSON line.
"""

import argparse
import json
import math
import re
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
# Pause before opening a stream again after the server ended one with an error.
RETRY_PAUSE_S = 0.05
RSS_SAMPLE_S = 0.05


def parse_size(text):
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 256MiB, 500MB, 1048576)")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def make_batch(rows, dim):
    flat = pa.array(np.random.default_rng(1).random(rows * dim, dtype=np.float32))
    return pa.record_batch([pa.array(np.arange(rows, dtype=np.int32)),
                            pa.FixedSizeListArray.from_arrays(flat, dim)], names=["id", "vector"])


def quotas(total_batches, streams):
    """`total_batches` split over the streams (the first ones get the rest)."""
    if total_batches is None:
        return [None] * streams
    return [total_batches // streams + (1 if i < total_batches % streams else 0) for i in range(streams)]


class Stream:
    """One producer: a DoPut stream, opened again after each error."""

    def __init__(self, addr, name, batch, deadline, quota, max_errors):
        self.addr, self.name, self.batch, self.deadline, self.quota = addr, name, batch, deadline, quota
        self.max_errors = max_errors
        self.sent = self.acked = self.errors = 0
        self.first_error = None
        self.lat = []

    def more(self):
        return time.perf_counter() < self.deadline and (self.quota is None or self.acked < self.quota)

    def error(self, e):
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(e).__name__}: {str(e).split('. Detail:')[0][:200]}"
        time.sleep(RETRY_PAUSE_S)

    def run(self, one_at_a_time):
        client = fl.connect(f"grpc://{self.addr}")
        while self.more() and self.errors <= self.max_errors:
            try:
                writer, reader = client.do_put(fl.FlightDescriptor.for_path(self.name), self.batch.schema)
            except (fl.FlightError, pa.ArrowException) as e:
                self.error(e)
                continue
            err = self.one_at_a_time(writer, reader) if one_at_a_time else self.pipelined(writer, reader)
            try:
                writer.close()
            except (fl.FlightError, pa.ArrowException) as e:
                # The server's status, when all the stream saw was its end.
                err = e if err is None or isinstance(err, RuntimeError) else err
            if err is not None:
                self.error(err)
            elif self.quota is None or self.acked >= self.quota:
                break
        client.close()

    def one_at_a_time(self, writer, reader):
        try:
            while self.more():
                t0 = time.perf_counter()
                writer.write_batch(self.batch)
                self.sent += 1
                if reader.read() is None:
                    return RuntimeError("stream ended before its PutResult")
                self.lat.append(time.perf_counter() - t0)
                self.acked += 1
            writer.done_writing()
        except (fl.FlightError, pa.ArrowException) as e:
            return e
        return None

    def pipelined(self, writer, reader):
        state = {"acked": 0, "error": None, "ended": False}

        def read_acks():
            try:
                while reader.read() is not None:
                    state["acked"] += 1
            except (fl.FlightError, pa.ArrowException) as e:
                state["error"] = e
            state["ended"] = True

        t = threading.Thread(target=read_acks)
        t.start()
        base, here, err = self.acked, 0, None
        try:
            # In fixed-amount mode, what an earlier stream left unacknowledged is sent again.
            while time.perf_counter() < self.deadline and not state["ended"]:
                if self.quota is not None and here >= self.quota - base:
                    break
                writer.write_batch(self.batch)
                self.sent += 1
                here += 1
            writer.done_writing()
        except (fl.FlightError, pa.ArrowException) as e:
            err = e
        t.join()
        self.acked = base + state["acked"]
        if state["error"] is not None:
            return state["error"]
        if err is None and self.acked < base + here:
            return RuntimeError(f"stream ended with {base + here - self.acked} batches unacknowledged")
        return err


def rss_sampler(pid, stop, out):
    def status():
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                    if k in ("VmRSS", "VmHWM")}

    out.update(status(), peak=0, samples=0)
    out["start"] = out["VmRSS"]
    while not stop.wait(RSS_SAMPLE_S):
        try:
            s = status()
        except OSError:
            break
        out["peak"] = max(out["peak"], s["VmRSS"])
        out["samples"] += 1
    try:
        out.update(status())
    except OSError:
        pass


def stored_rows(addr, names):
    """Rows a DoGet of each dataset returns (0 for one that does not exist)."""
    client = fl.connect(f"grpc://{addr}")
    total = 0
    for name in names:
        try:
            for chunk in client.do_get(fl.Ticket(name.encode())):
                total += chunk.data.num_rows
        except fl.FlightError as e:
            if "not found" not in str(e).lower():
                raise
    client.close()
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", default="127.0.0.1:3000")
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seconds", type=float, help="how long (default 10); with --bytes/--batches, a time limit")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--bytes", type=parse_size, help="write this much (Arrow buffer bytes), all streams together")
    amount.add_argument("--batches", type=int, help="write this many batches, all streams together")
    p.add_argument("--max-errors", type=int, default=10_000, help="give up a stream after this many errors")
    p.add_argument("--dataset", default="pybench", help="stream i writes dataset NAME-i")
    p.add_argument("--one-at-a-time", action="store_true")
    p.add_argument("--rss-pid", type=int, help="sample this process's RSS during the load")
    p.add_argument("--verify", action="store_true", help="afterwards, DoGet every dataset and count its rows")
    p.add_argument("--label", default="")
    a = p.parse_args(argv)
    batch = make_batch(a.rows, a.dim)
    batch_bytes = batch.get_total_buffer_size()
    total = a.batches if a.batches is not None else (math.ceil(a.bytes / batch_bytes) if a.bytes is not None else None)
    seconds = a.seconds if a.seconds is not None else (10 if total is None else 3600)
    names = [f"{a.dataset}-{i}" for i in range(a.streams)]

    rss, stop = {}, threading.Event()
    sampler = None
    if a.rss_pid:
        sampler = threading.Thread(target=rss_sampler, args=(a.rss_pid, stop, rss), daemon=True)
        sampler.start()
    start = time.perf_counter()
    streams = [Stream(a.addr, n, batch, start + seconds, q, a.max_errors) for n, q in zip(names, quotas(total, a.streams))]
    threads = [threading.Thread(target=s.run, args=(a.one_at_a_time,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - start
    if sampler:
        stop.set()
        sampler.join()

    acked = sum(s.acked for s in streams)
    result = {"label": a.label, "streams": a.streams, "rows_per_batch": a.rows, "batch_bytes": batch_bytes,
              "seconds": round(secs, 2), "batches": acked, "rows_per_s": round(acked * a.rows / secs),
              "mb_per_s": round(acked * batch_bytes / secs / 1e6, 1),
              "batches_sent": sum(s.sent for s in streams), "errors": sum(s.errors for s in streams),
              "rows_acked": acked * a.rows}
    if total is not None:
        result.update({"target_batches": total, "complete": acked >= total})
    first = next((s.first_error for s in streams if s.first_error), None)
    if first:
        result["first_error"] = first
    lat = sorted(x for s in streams for x in s.lat)
    if lat:
        q = lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1e6)
        result.update({"p50_us": q(0.5), "p95_us": q(0.95), "p99_us": q(0.99), "p999_us": q(0.999),
                       "max_us": round(lat[-1] * 1e6)})
    if rss:
        result.update({"rss_start_mib": round(rss["start"] / 2**20, 1),
                       "rss_peak_mib": round(max(rss["peak"], rss["VmRSS"]) / 2**20, 1),
                       "rss_hwm_mib": round(rss["VmHWM"] / 2**20, 1), "rss_samples": rss["samples"]})
    if a.verify:
        try:
            stored = stored_rows(a.addr, names)
            result.update({"rows_stored": stored, "stored_equals_acked": stored == acked * a.rows})
        except (fl.FlightError, pa.ArrowException) as e:
            result.update({"rows_stored": None, "stored_equals_acked": False,
                           "verify_error": f"{type(e).__name__}: {str(e).split('. Detail:')[0][:200]}"})
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
