"""SQL and read benchmarks, all in one run against one longbow binary:

1. `count(*) WHERE id BETWEEN a AND b` and `sum(vector[1])` over ROWS rows
   (`id int64, vector fixed_size_list<float32>[16]`), part evicted to Parquet
   (cold) and part in memory (hot), through ADBC Flight SQL; the reference
   is DuckDB over the same rows as Parquet files (the snapshot files, after
   a final snapshot).
2. exact k-NN top-10 over KNN_ROWS x 128-d: `l2_distance ... ORDER BY d
   LIMIT 10` through ADBC vs DuckDB `array_distance ... ORDER BY ... LIMIT
   10` over the same Parquet files, and numpy brute force in memory.
3. DoGet scan MB/s: one plain ticket vs the endpoints GetFlightInfo offers,
   read by one thread each.
4. follow-stream lag: two producers put small batches; a follower reads the
   change feed; lag = delivery time - acknowledgement time, p50/p99.

Each timed figure is the best of --repeat runs. Prints one JSON document.

    .venv/bin/python bench/python/sql_bench.py --binary target/release/longbow \\
        --rows 10000000 --knn-rows 1000000 --dir /tmp/sqlbench
"""

import argparse
import concurrent.futures
import glob
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

BATCH_ROWS = 100_000


class Server:
    def __init__(self, binary, root: Path, max_memory):
        self.log = open(root / "longbow.log", "ab")
        self.snapshots = root / "snapshots"
        self.proc = subprocess.Popen(
            [binary, "--data-path", str(root / "data"), "--snapshot-path", str(self.snapshots),
             "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false",
             "--max-memory", max_memory, "--max-wal-size", "256MiB", "--snapshot-interval", "1h"],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        for line in self.proc.stdout:
            if line.startswith("longbow ready"):
                self.flight = dict(w.split("=", 1) for w in line.split()[2:])["flight"]
                return
        raise RuntimeError(f"longbow exited with {self.proc.wait()}")

    def client(self):
        return fl.connect(f"grpc://{self.flight}")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def action(client, name, body=b""):
    return json.loads(next(iter(client.do_action(fl.Action(name, body)))).body.to_pybytes())


def table(first, rows, dim, seed):
    rng = np.random.default_rng(seed)
    flat = pa.array(rng.random(rows * dim, dtype=np.float32))
    return pa.table({"id": pa.array(np.arange(first, first + rows, dtype=np.int64)),
                     "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})


def put(client, name, tables):
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), tables[0].schema)
    acks = []
    for t in tables:
        writer.write_table(t)
        acks.append((json.loads(reader.read().to_pybytes()), time.perf_counter()))
    writer.done_writing()
    writer.close()
    return acks


def load(client, name, rows, dim, cold_fraction=0.5):
    """Stores `rows` rows; the first `cold_fraction` are snapshotted and
    evicted, the rest stay in memory."""
    n = rows // BATCH_ROWS
    cold = int(n * cold_fraction)
    for i in range(n):
        put(client, name, [table(i * BATCH_ROWS, BATCH_ROWS, dim, i)])
        if i + 1 == cold:
            action(client, "force_snapshot", name.encode())
    return n


def best(f, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default="target/release/longbow")
    p.add_argument("--dir", default="/tmp/longbow-sqlbench")
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--knn-rows", type=int, default=1_000_000)
    p.add_argument("--max-memory", default="1GiB")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--follow-batches", type=int, default=2000)
    a = p.parse_args()
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    s = Server(a.binary, root, a.max_memory)
    out = {"rows": a.rows, "knn_rows": a.knn_rows}
    try:
        client = s.client()
        load(client, "scan", a.rows, 16)
        load(client, "knn", a.knn_rows, 128)
        stats = {d["name"]: d for d in action(client, "get_stats")["per_dataset"]}
        out["datasets"] = stats
        conn = flightsql.connect(f"grpc://{s.flight}")
        cur = conn.cursor()

        def sql(q, params=None):
            cur.execute(q, parameters=params)
            return cur.fetchall()

        lo, hi = a.rows // 4, a.rows // 4 * 3
        q_count = f"SELECT count(*) FROM scan WHERE id BETWEEN {lo} AND {hi}"
        q_sum = "SELECT sum(vector[1]) FROM scan"
        query = np.random.default_rng(1).random(128, dtype=np.float32)
        q_knn = "SELECT id, l2_distance(vector, $1) AS d FROM knn ORDER BY d LIMIT 10"

        out["longbow_count_s"], r_count = best(lambda: sql(q_count), a.repeat)
        out["longbow_sum_s"], r_sum = best(lambda: sql(q_sum), a.repeat)
        out["longbow_knn_s"], r_knn = best(lambda: sql(q_knn, (query.tolist(),)), a.repeat)
        out["explain_knn"] = "\n".join(str(r) for r in sql(
            "EXPLAIN SELECT id, l2_distance(vector, [" + ",".join(map(str, query.tolist())) + "]) AS d "
            "FROM knn ORDER BY d LIMIT 10"))

        # Everything into Parquet: DuckDB reads the same files.
        action(client, "force_snapshot")
        db = duckdb.connect()
        db.execute(f"PRAGMA threads={os.cpu_count()}")
        scan_files = sorted(glob.glob(str(s.snapshots / "scan" / "*.parquet")))
        knn_files = sorted(glob.glob(str(s.snapshots / "knn" / "*.parquet")))
        out["duckdb_count_s"], d_count = best(lambda: db.execute(
            f"SELECT count(*) FROM read_parquet({scan_files}) WHERE id BETWEEN {lo} AND {hi}").fetchall(), a.repeat)
        out["duckdb_sum_s"], d_sum = best(lambda: db.execute(
            f"SELECT sum(vector[1]) FROM read_parquet({scan_files})").fetchall(), a.repeat)
        out["duckdb_knn_s"], d_knn = best(lambda: db.execute(
            f"SELECT id, array_distance(vector::FLOAT[128], $1::FLOAT[128]) AS d FROM read_parquet({knn_files}) "
            "ORDER BY d LIMIT 10", [query.tolist()]).fetchall(), a.repeat)
        assert r_count[0][0] == d_count[0][0], (r_count, d_count)
        assert abs(r_sum[0][0] - d_sum[0][0]) <= 1e-3 * abs(d_sum[0][0]), (r_sum, d_sum)
        assert [r[0] for r in r_knn] == [r[0] for r in d_knn], (r_knn, d_knn)

        knn_table = client.do_get(fl.Ticket(b"knn")).read_all()
        vecs = knn_table["vector"].combine_chunks().flatten().to_numpy().reshape(-1, 128)
        ids = knn_table["id"].to_numpy()
        out["numpy_knn_s"], n_knn = best(
            lambda: ids[np.argsort(((vecs - query) ** 2).sum(axis=1))[:10]], a.repeat)
        assert n_knn.tolist() == [r[0] for r in r_knn]
        del vecs, knn_table

        # DoGet: one plain ticket vs the endpoints, in parallel.
        info = client.get_flight_info(fl.FlightDescriptor.for_path("scan"))

        def read_one():
            return client.do_get(fl.Ticket(b"scan")).read_all().nbytes

        def read_parallel():
            with concurrent.futures.ThreadPoolExecutor(len(info.endpoints)) as pool:
                return sum(pool.map(lambda e: s.client().do_get(e.ticket).read_all().nbytes, info.endpoints))

        t1, bytes1 = best(read_one, a.repeat)
        tn, bytesn = best(read_parallel, a.repeat)
        out["doget_endpoints"] = len(info.endpoints)
        out["doget_1_mb_s"] = bytes1 / t1 / 1e6
        out["doget_n_mb_s"] = bytesn / tn / 1e6

        # Follow lag under two producers.
        put(client, "feed", [table(0, 10, 16, 0)])
        delivered = {}
        follower = s.client().do_get(fl.Ticket(json.dumps({"dataset": "feed", "after_lsn": 0, "follow": True}).encode()))
        follower.read_chunk()  # the first batch

        def follow():
            for _ in range(a.follow_batches):
                c = follower.read_chunk()
                delivered[json.loads(c.app_metadata.to_pybytes())["lsn"]] = time.perf_counter()

        acked = {}

        def produce(k):
            for i in range(a.follow_batches // 2):
                for ack, at in put(s.client(), "feed", [table(k * 10**6 + i * 10, 10, 16, i)]):
                    acked[ack["lsn"]] = at

        f = threading.Thread(target=follow)
        f.start()
        producers = [threading.Thread(target=produce, args=(k,)) for k in (1, 2)]
        for t in producers:
            t.start()
        for t in producers:
            t.join()
        f.join(timeout=60)
        lags = np.array([delivered[l] - acked[l] for l in acked if l in delivered]) * 1e3
        out["follow_batches"] = len(lags)
        out["follow_lag_ms_p50"] = float(np.percentile(lags, 50))
        out["follow_lag_ms_p99"] = float(np.percentile(lags, 99))
        out["ratios"] = {
            "count_vs_duckdb": out["duckdb_count_s"] / out["longbow_count_s"],
            "sum_vs_duckdb": out["duckdb_sum_s"] / out["longbow_sum_s"],
            "knn_vs_duckdb": out["duckdb_knn_s"] / out["longbow_knn_s"],
            "knn_vs_numpy": out["numpy_knn_s"] / out["longbow_knn_s"],
        }
        cur.close()
        conn.close()
    finally:
        s.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
