"""Outside readers of the snapshot directory: DuckDB (`read_parquet` over a
glob), polars (`read_parquet(dir)`, which reads every file under a
directory, hidden ones and subdirectories included) and pyarrow.dataset
read a dataset's directory as it is between snapshots and merges: complete
Parquet files only (manifests and temporary files live under `.longbow/`),
each row once. While a merge swaps its files a glob reader can still meet
both sets or a file just deleted (there is no atomic swap of several files
in a directory); a consistent view during merges needs the manifest's list
or a table format (docs/architecture.md)."""

import json
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as fl
import pyarrow.parquet  # noqa: F401  (pa.parquet)

from test_pyarrow_e2e import Server


def read_all_ways(dataset: Path):
    """(rows, distinct ids) as DuckDB, polars and pyarrow.dataset see them."""
    n, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{dataset}/*.parquet')").fetchall()[0]
    df = pl.read_parquet(str(dataset))
    t = ds.dataset(str(dataset)).to_table(columns=["id"])
    return {"duckdb": (n, distinct), "polars": (df.height, df["id"].n_unique()),
            "pyarrow": (t.num_rows, len(set(t.column("id").to_pylist())))}


def test_readers_see_each_row_once_between_snapshots_and_merges(tmp_path: Path):
    s = Server(tmp_path / "data", shards=1)
    dataset = tmp_path / "snapshots" / "live"
    try:
        c = s.client()
        schema = pa.schema([("id", pa.int64())])
        w, r = c.do_put(fl.FlightDescriptor.for_path("live"), schema)
        merged_seen = False
        # 24 snapshots of 200 rows each: a merge of 8 files every 8 of them.
        for i in range(24):
            ids = pa.array(range(i * 200, (i + 1) * 200), pa.int64())
            w.write_batch(pa.record_batch([ids], schema=schema))
            r.read()
            next(c.do_action(fl.Action("force_snapshot", b"live")))
            # force_snapshot answers before the merge it may start (8 small
            # files make one); wait until none is due and the rows are all there.
            expected = (i + 1) * 200
            for _ in range(500):
                files = sorted(p.name for p in dataset.iterdir())
                try:
                    if len(files) < 8 and all(f.endswith(".parquet") for f in files) and sum(
                            pa.parquet.ParquetFile(dataset / f).metadata.num_rows for f in files) == expected:
                        break
                except FileNotFoundError:
                    pass  # a merge swapped files under the listing: look again
                time.sleep(0.01)
            assert all(f.endswith(".parquet") for f in files), files
            merged_seen |= any(f.count("-") == 2 for f in files)
            got = read_all_ways(dataset)
            assert got == {k: (expected, expected) for k in got}, (i, got, files)
        w.close()
        stats = json.loads(next(c.do_action(fl.Action("get_stats", b""))).body.to_pybytes())
    finally:
        s.stop()
    assert merged_seen, "merges ran"
    assert stats["records"] == 24 * 200
    assert (tmp_path / "snapshots" / ".longbow" / "manifests" / "live.json").exists()
    assert not list((tmp_path / "snapshots" / ".longbow" / "tmp").iterdir())
