"""A local tour of Longbow with pyarrow: put, list, get, snapshot, stats,
then read the snapshot with DuckDB.

    scripts/run.sh &            # or: cargo run --release --bin longbow
    .venv/bin/python scripts/demo.py [--addr localhost:3000] [--snapshots ./snapshots]
"""

import argparse
import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.flight as fl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="localhost:3000")
    ap.add_argument("--snapshots", default="./snapshots")
    a = ap.parse_args()
    client = fl.connect(f"grpc://{a.addr}")

    rng = np.random.default_rng(0)
    table = pa.table({
        "id": pa.array(np.arange(10_000, dtype=np.int32)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(10_000 * 128, dtype=np.float32)), 128),
    })
    writer, reader = client.do_put(fl.FlightDescriptor.for_path("demo-vectors"), table.schema)
    for batch in table.to_batches(max_chunksize=1000):
        writer.write_batch(batch)
        print("durable:", json.loads(reader.read().to_pybytes()))
    writer.close()

    for info in client.list_flights():
        print(f"{info.descriptor.path[0].decode()}: {info.total_records} rows, {info.total_bytes} bytes")
    got = client.do_get(fl.Ticket(b"demo-vectors")).read_all()
    print("read back:", got.num_rows, "rows, equal:", got.equals(table))

    snap = json.loads(next(iter(client.do_action(fl.Action("force_snapshot", b"demo-vectors")))).body.to_pybytes())
    print("snapshot:", snap)
    stats = json.loads(next(iter(client.do_action(fl.Action("get_stats", b"")))).body.to_pybytes())
    print("stats:", json.dumps(stats, indent=2))

    rows = duckdb.sql(
        f"SELECT count(*) AS n, avg(list_sum(vector::FLOAT[128])) AS avg_sum "
        f"FROM read_parquet('{a.snapshots}/demo-vectors/*.parquet')").fetchall()
    print("DuckDB over the snapshot:", rows)


if __name__ == "__main__":
    main()
