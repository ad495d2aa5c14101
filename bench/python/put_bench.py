"""pyarrow DoPut load: N streams (threads) of `id int32, vector
fixed_size_list<float32>[dim]` batches, reading one PutResult per batch.

Throughput mode writes batches back to back while a reader thread per stream
consumes PutResults. Latency mode (--one-at-a-time) sends a batch, waits for
its PutResult, and records the round trip.
Prints one JSON line.
"""

import argparse
import json
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl


def make_batch(rows, dim):
    flat = pa.array(np.random.default_rng(1).random(rows * dim, dtype=np.float32))
    return pa.record_batch([pa.array(np.arange(rows, dtype=np.int32)),
                            pa.FixedSizeListArray.from_arrays(flat, dim)], names=["id", "vector"])


def stream(addr, name, batch, deadline, one_at_a_time, out, idx):
    client = fl.connect(f"grpc://{addr}")
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), batch.schema)
    sent = acked = 0
    lat = []
    if one_at_a_time:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write_batch(batch)
            if reader.read() is None:
                break
            lat.append(time.perf_counter() - t0)
            sent += 1
        acked = sent
    else:
        counter = {"acked": 0}

        def read_acks():
            while reader.read() is not None:
                counter["acked"] += 1

        t = threading.Thread(target=read_acks)
        t.start()
        while time.perf_counter() < deadline:
            writer.write_batch(batch)
            sent += 1
        writer.done_writing()
        t.join()
        acked = counter["acked"]
    writer.close()
    out[idx] = (sent, acked, lat)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", default="127.0.0.1:3000")
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--dataset", default="pybench")
    p.add_argument("--one-at-a-time", action="store_true")
    p.add_argument("--label", default="")
    a = p.parse_args()
    batch = make_batch(a.rows, a.dim)
    batch_bytes = batch.get_total_buffer_size()
    out = [None] * a.streams
    start = time.perf_counter()
    deadline = start + a.seconds
    threads = [threading.Thread(target=stream, args=(a.addr, f"{a.dataset}-{i}", batch, deadline, a.one_at_a_time, out, i))
               for i in range(a.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - start
    acked = sum(o[1] for o in out)
    result = {"label": a.label, "streams": a.streams, "rows_per_batch": a.rows, "seconds": round(secs, 2),
              "batches": acked, "rows_per_s": round(acked * a.rows / secs),
              "mb_per_s": round(acked * batch_bytes / secs / 1e6, 1)}
    lat = sorted(x for o in out for x in o[2])
    if lat:
        q = lambda f: round(lat[min(len(lat) - 1, int(f * len(lat)))] * 1e6)
        result.update({"p50_us": q(0.5), "p95_us": q(0.95), "p99_us": q(0.99), "p999_us": q(0.999),
                       "max_us": round(lat[-1] * 1e6)})
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
