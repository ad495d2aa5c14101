"""Outside readers of the snapshot tables: every dataset is a Delta Lake
table at `<snapshot path>/<dataset>/`, read by DuckDB (`delta_scan`), Python
`deltalake`, Polars (`read_delta`) and `pyarrow.dataset` over the table's
current files. Each sees every row once at any moment, also while
compactions rewrite the table: a compaction is one commit, and the files it
replaces stay for the retention period, so a reader on an older version
still reads them."""

import json
import time
from pathlib import Path

import duckdb
import duckdb_extension_delta
import duckdb_extension_httpfs
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as fl
from deltalake import DeltaTable

from test_pyarrow_e2e import Server, put, vectors


def duckdb_connection(storage_options: dict | None = None):
    """A DuckDB connection with the delta and httpfs extensions that the
    PyPI packages duckdb-extension-delta and -httpfs ship (no download)."""
    con = duckdb.connect()
    for package, name in [(duckdb_extension_httpfs, "httpfs"), (duckdb_extension_delta, "delta")]:
        ext = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
        con.execute(f"LOAD '{ext}'")
    if storage_options:
        endpoint = storage_options["AWS_ENDPOINT_URL"].removeprefix("http://")
        con.execute(f"""CREATE SECRET s3 (TYPE s3, KEY_ID '{storage_options["AWS_ACCESS_KEY_ID"]}',
            SECRET '{storage_options["AWS_SECRET_ACCESS_KEY"]}', REGION '{storage_options["AWS_REGION"]}',
            ENDPOINT '{endpoint}', URL_STYLE 'path', USE_SSL false)""")
    return con


def read_all_ways(uri: str, storage_options: dict | None = None):
    """(rows, distinct ids) as each reader sees the table's current version."""
    con = duckdb_connection(storage_options)
    n, distinct = con.sql(f"SELECT count(*), count(DISTINCT id) FROM delta_scan('{uri}')").fetchall()[0]
    t = DeltaTable(uri, storage_options=storage_options).to_pyarrow_table(columns=["id"])
    df = pl.read_delta(uri, storage_options=storage_options)
    got = {"duckdb": (n, distinct), "deltalake": (t.num_rows, len(set(t.column("id").to_pylist()))),
           "polars": (df.height, df["id"].n_unique())}
    if storage_options is None:
        files = DeltaTable(uri).file_uris()
        p = ds.dataset(files, format="parquet").to_table(columns=["id"])
        got["pyarrow"] = (p.num_rows, len(set(p.column("id").to_pylist())))
    return got


def test_readers_see_each_row_once_while_snapshots_and_compactions_commit(tmp_path: Path):
    s = Server(tmp_path / "data", shards=1, extra=["--snapshot-retention", "1h"])
    table = tmp_path / "snapshots" / "live"
    try:
        c = s.client()
        schema = pa.schema([("id", pa.int64())])
        w, r = c.do_put(fl.FlightDescriptor.for_path("live"), schema)
        old_version = None
        # 24 snapshots of 200 rows each: a compaction of 8 files every 8 of them.
        for i in range(24):
            ids = pa.array(range(i * 200, (i + 1) * 200), pa.int64())
            w.write_batch(pa.record_batch([ids], schema=schema))
            r.read()
            next(c.do_action(fl.Action("force_snapshot", b"live")))
            expected = (i + 1) * 200
            got = read_all_ways(str(table))
            assert got == {k: (expected, expected) for k in got}, (i, got)
            if i == 3:
                old_version = DeltaTable(str(table))
        # Compactions run after force_snapshot answers: wait for the last.
        for _ in range(500):
            ops = [h.get("operation") for h in DeltaTable(str(table)).history()]
            if ops.count("OPTIMIZE") >= 3:
                break
            time.sleep(0.02)
        assert ops.count("OPTIMIZE") >= 3, ops
        w.close()
        # A reader that loaded version 4 before the compactions still reads it.
        old = old_version.to_pyarrow_table(columns=["id"])
        assert old.num_rows == 4 * 200
        got = read_all_ways(str(table))
        assert got == {k: (24 * 200, 24 * 200) for k in got}
        stats = json.loads(next(c.do_action(fl.Action("get_stats", b""))).body.to_pybytes())
    finally:
        s.stop()
    assert stats["records"] == 24 * 200
    assert len(DeltaTable(str(table)).file_uris()) < 8


def test_tables_keep_types_and_compacted_files_go_after_the_retention(tmp_path: Path):
    s = Server(tmp_path / "data", shards=1, extra=["--snapshot-retention", "1s"])
    table = tmp_path / "snapshots" / "vectors"
    try:
        c = s.client()
        for i in range(9):
            put(c, "vectors", [vectors(i * 100, 100)])
            next(c.do_action(fl.Action("force_snapshot", b"vectors")))
        time.sleep(1.5)
        # The next run vacuums what the compaction removed over 1 s ago.
        put(c, "vectors", [vectors(900, 100)])
        next(c.do_action(fl.Action("force_snapshot", b"vectors")))
        for _ in range(300):
            parquet = list(table.glob("*.parquet"))
            if len(parquet) == len(DeltaTable(str(table)).file_uris()):
                break
            time.sleep(0.02)
        assert len(parquet) == len(DeltaTable(str(table)).file_uris()) == 3, parquet
    finally:
        s.stop()
    dt = DeltaTable(str(table))
    t = dt.to_pyarrow_table()
    assert t.num_rows == 1000
    assert sorted(t.column("id").to_pylist()) == list(range(1000))
    assert pa.types.is_int32(t.schema.field("id").type)
    assert pa.types.is_list(t.schema.field("vector").type) or pa.types.is_fixed_size_list(t.schema.field("vector").type)
    con = duckdb_connection()
    n, dim = con.sql(f"SELECT count(*), max(len(vector)) FROM delta_scan('{table}')").fetchall()[0]
    assert (n, dim) == (1000, 128)
    ops = [h.get("operation") for h in dt.history()]
    assert "VACUUM END" in ops, ops
