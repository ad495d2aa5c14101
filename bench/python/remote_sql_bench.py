"""Flight SQL over a table another node owns, against the same query sent to
the owner, in one run.

Starts two nodes (one shard each, WAL and snapshots under --dir), writes
--rows rows of `id int64, vector fixed_size_list<float32>[16]` into a
dataset node 1 owns, then times each query through node 1 (the owner) and
through node 0 (which does not own the table), --repeat times each, taking
the best. Prints one JSON line: seconds per query and node, and the ratio
through-the-other-node / through-the-owner (1.0: no cost for asking the
wrong node).

    .venv/bin/python bench/python/remote_sql_bench.py --binary target/release/longbow --dir /dev/shm/rsql
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import numpy as np
import pyarrow as pa
import pyarrow.flight as fl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forward_bench import free_ports, owned_by, start  # noqa: E402

DIM = 16
BATCH_ROWS = 100_000


def batches(rows):
    rng = np.random.default_rng(7)
    for start_id in range(0, rows, BATCH_ROWS):
        n = min(BATCH_ROWS, rows - start_id)
        values = rng.random(n * DIM, dtype=np.float32)
        vector = pa.FixedSizeListArray.from_arrays(pa.array(values), DIM)
        yield pa.record_batch({"id": pa.array(np.arange(start_id, start_id + n, dtype=np.int64)), "vector": vector})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", default="target/release/longbow")
    p.add_argument("--dir", default="/dev/shm/longbow-remote-sql-bench")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    root = Path(a.dir)
    shutil.rmtree(root, ignore_errors=True)
    ports = free_ports(2)
    peers = [f"grpc://127.0.0.1:{q}" for q in ports]
    procs = [start(a.binary, root, i, peers, ports[i]) for i in range(2)]
    try:
        name = owned_by(fl.connect(peers[0]), peers[1], 1) + "-0"
        owner = fl.connect(peers[1])
        first = next(batches(1))
        w, r = owner.do_put(fl.FlightDescriptor.for_path(name), first.schema)
        for b in batches(a.rows):
            w.write_batch(b)
        w.done_writing()
        while r.read() is not None:
            pass
        w.close()
        probe = ", ".join(f"{x:.3f}" for x in np.full(DIM, 0.5))
        queries = {
            "aggregate": f'SELECT count(*), sum(id), avg(vector[1]) FROM "{name}" WHERE id % 7 = 0',
            "group_by": f'SELECT id % 100 AS k, count(*), max(vector[2]) FROM "{name}" GROUP BY id % 100',
            "knn_top10": f'SELECT id FROM "{name}" ORDER BY l2_distance(vector, [{probe}]) LIMIT 10',
        }
        seconds = {q: {} for q in queries}
        answers = {}
        for q, sql in queries.items():
            for label, url in (("owner", peers[1]), ("other_node", peers[0])):
                with flightsql.connect(url, autocommit=True) as conn, conn.cursor() as cur:
                    best = None
                    for _ in range(a.repeat):
                        t0 = time.perf_counter()
                        cur.execute(sql)
                        rows = cur.fetchall()
                        dt = time.perf_counter() - t0
                        best = dt if best is None else min(best, dt)
                    answers.setdefault(q, sorted(map(str, rows)))
                    assert answers[q] == sorted(map(str, rows)), f"{q}: the two nodes answered differently"
                    seconds[q][label] = round(best, 4)
        ratios = {q: round(s["other_node"] / s["owner"], 2) for q, s in seconds.items()}
        print(json.dumps({"rows": a.rows, "seconds": seconds, "other_node_vs_owner": ratios}))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
