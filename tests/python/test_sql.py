"""SQL over stored data, end to end with real clients: ADBC's Flight SQL
driver (what JDBC, DBeaver, Superset and Grafana build on) and pyarrow
Flight, against a real longbow binary on loopback."""

import json
import os
import subprocess
import sys
import threading
import time

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import numpy as np
import pyarrow as pa
import pyarrow.flight as fl
import pytest

from test_pyarrow_e2e import DIM, Server, action, put, vectors


@pytest.fixture
def small_memory(tmp_path):
    """A server whose memory limit is far below what the tests store, so
    snapshotted batches are evicted and read back from Parquet."""
    s = Server(tmp_path / "data", extra=["--max-memory", "4MiB"])
    yield s
    s.kill()


def connect(server):
    # Longbow has no transactions: every statement stands alone.
    return flightsql.connect(f"grpc://{server.flight}", autocommit=True)


def half_evicted(client, name, first, batches, rows):
    """Stores `batches` batches, snapshots (and so evicts) them, then as many
    again that stay in memory; returns the pyarrow table of all of them."""
    tables = [vectors(first + i * rows, rows) for i in range(2 * batches)]
    put(client, name, tables[:batches])
    action(client, "force_snapshot", name.encode())
    put(client, name, tables[batches:])
    stats = {d["name"]: d for d in action(client, "get_stats")["per_dataset"]}[name]
    assert stats["snapshot_rows"] > 0 and stats["batches_in_memory"] > 0, stats
    assert stats["records"] == 2 * batches * rows
    return pa.concat_tables(tables)


def test_adbc_lists_tables_with_their_schemas(server):
    client = server.client()
    put(client, "vecs", [vectors(0, 10)])
    put(client, "other.v1", [pa.table({"x": pa.array([1.5, 2.5])})])
    with connect(server) as conn:
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "Longbow", info
        assert conn.adbc_get_table_types() == ["TABLE"]
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        assert [c["catalog_name"] for c in objects] == ["longbow"]
        [schema] = objects[0]["catalog_db_schemas"]
        assert schema["db_schema_name"] == "public"
        tables = {t["table_name"]: t for t in schema["db_schema_tables"]}
        assert set(tables) == {"vecs", "other.v1"}
        assert [c["column_name"] for c in tables["vecs"]["table_columns"]] == ["id", "vector"]
        got = conn.adbc_get_table_schema("vecs")
        assert got.field("id").type == pa.int32()
        assert got.field("vector").type == pa.list_(pa.float32(), DIM)
        assert conn.adbc_get_table_schema("other.v1").names == ["x"]


def test_aggregate_over_hot_and_cold_rows_matches_pyarrow(small_memory):
    client = small_memory.client()
    table = half_evicted(client, "ds", 0, 8, 2000)
    whole = client.do_get(fl.Ticket(b"ds")).read_all()
    assert whole.num_rows == table.num_rows
    ids = whole.column("id").to_numpy()
    with connect(small_memory) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), min(id), max(id) FROM ds")
        assert cur.fetchone() == (whole.num_rows, ids.min(), ids.max())
        # A filter: the cold part's row groups are pruned by statistics.
        cur.execute("SELECT count(*) FROM ds WHERE id BETWEEN 1000 AND 24999")
        assert cur.fetchone() == (int(((ids >= 1000) & (ids <= 24999)).sum()),)
        cur.execute("SELECT sum(vector[1]) FROM ds WHERE id < 5000")
        want = table.filter(pa.compute.less(table["id"], 5000))["vector"].combine_chunks().flatten().to_numpy()
        assert cur.fetchone()[0] == pytest.approx(float(want.reshape(-1, DIM)[:, 0].astype(np.float64).sum()), rel=1e-5)
        cur.execute("EXPLAIN SELECT count(*) FROM ds WHERE id BETWEEN 1000 AND 2000")
        plan = "\n".join(str(r) for r in cur.fetchall())
        assert "DataSourceExec" in plan and "predicate=" in plan, plan


def test_prepared_statement_with_a_parameter(server):
    client = server.client()
    put(client, "ds", [vectors(0, 1000), vectors(1000, 1000)])
    with connect(server) as conn, conn.cursor() as cur:
        for bound in (10, 1500):
            cur.execute("SELECT count(*) AS n FROM ds WHERE id < $1", parameters=(bound,))
            assert cur.fetchone() == (bound,)
        cur.adbc_prepare("SELECT id FROM ds WHERE id = $1")
        cur.execute("SELECT id FROM ds WHERE id = $1", parameters=(42,))
        assert cur.fetchall() == [(42,)]


def test_knn_matches_numpy_brute_force_and_plans_a_top_k(small_memory):
    client = small_memory.client()
    table = half_evicted(client, "emb", 0, 4, 2500)
    vecs = table["vector"].combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    ids = table["id"].to_numpy()
    q = np.random.default_rng(7).random(DIM, dtype=np.float32)
    want_l2 = np.sqrt(((vecs - q) ** 2).sum(axis=1))
    order = np.argsort(want_l2, kind="stable")[:10]
    with connect(small_memory) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, l2_distance(vector, $1) AS d FROM emb ORDER BY d LIMIT 10",
                    parameters=(q.tolist(),))
        got = cur.fetchall()
        assert [r[0] for r in got] == ids[order].tolist()
        assert [r[1] for r in got] == pytest.approx(want_l2[order].tolist(), rel=1e-4)
        # Inner product (larger is closer) and cosine distance, from a literal.
        literal = "[" + ", ".join(repr(float(x)) for x in q) + "]"
        cur.execute(f"SELECT id, inner_product(vector, {literal}) AS s FROM emb ORDER BY s DESC LIMIT 5")
        dots = vecs @ q
        assert [r[0] for r in cur.fetchall()] == ids[np.argsort(-dots, kind="stable")[:5]].tolist()
        cur.execute(f"SELECT id, cosine_distance(vector, {literal}) AS c FROM emb ORDER BY c LIMIT 5")
        cos = 1 - dots / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(q))
        assert [r[0] for r in cur.fetchall()] == ids[np.argsort(cos, kind="stable")[:5]].tolist()
        cur.execute(f"EXPLAIN SELECT id, l2_distance(vector, {literal}) AS d FROM emb ORDER BY d LIMIT 10")
        plan = "\n".join(str(r) for r in cur.fetchall())
        assert "TopK(fetch=10)" in plan, plan
        # A query vector of the wrong length is the client's error.
        with pytest.raises(adbc_driver_manager.Error, match="components"):
            cur.execute("SELECT l2_distance(vector, [1.0, 2.0]) FROM emb")
            cur.fetchall()


def test_evicted_vectors_are_read_from_their_float_pages_exactly(small_memory):
    """A snapshot file names the vector columns that hold only full,
    null-free lists; a scan that reads vectors and filters nothing copies
    their float pages instead of decoding levels. The rows are the same as
    pyarrow's; with a filter, or a vector column with a null, the general
    Parquet scan reads them."""
    client = small_memory.client()
    table = half_evicted(client, "pages", 0, 4, 2500)
    with connect(small_memory) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, vector FROM pages ORDER BY id")
        got = cur.fetch_arrow_table()
        assert got.column("id").to_pylist() == table.column("id").to_pylist()
        assert got.column("vector").combine_chunks().flatten().equals(
            table.column("vector").combine_chunks().flatten())
        cur.execute("EXPLAIN SELECT vector FROM pages")
        plan = "\n".join(str(r) for r in cur.fetchall())
        assert "DataSourceExec" not in plan and "StreamingTableExec" in plan, plan
        cur.execute("EXPLAIN SELECT vector FROM pages WHERE id > 100")
        assert "DataSourceExec" in "\n".join(str(r) for r in cur.fetchall())
        cur.execute("SELECT count(vector), sum(vector[3]) FROM pages")
        (count, total), = cur.fetchall()
        assert count == table.num_rows
        assert total == pytest.approx(float(table.column("vector").combine_chunks().flatten().to_numpy()
                                             .reshape(-1, DIM)[:, 2].astype(np.float64).sum()), rel=1e-5)

    # A vector column with a null row: its files name nothing.
    flat = pa.array(np.arange(4 * DIM, dtype=np.float32))
    vec = pa.FixedSizeListArray.from_arrays(flat, DIM, mask=pa.array([False, True, False, False]))
    nulls = pa.table({"id": pa.array([1, 2, 3, 4], pa.int32()), "vector": vec})
    put(client, "with-null", [nulls])
    action(client, "force_snapshot", b"with-null")
    # Over the memory limit: the snapshotted rows are evicted.
    put(client, "with-null", [vectors(100 + k * 2500, 2500) for k in range(4)])
    action(client, "force_snapshot", b"with-null")
    put(client, "with-null", [vectors(20_000, 2500)])
    stats = {d["name"]: d for d in action(client, "get_stats")["per_dataset"]}["with-null"]
    assert stats["snapshot_rows"] > 0, stats
    with connect(small_memory) as conn, conn.cursor() as cur:
        cur.execute('EXPLAIN SELECT vector FROM "with-null"')
        assert "DataSourceExec" in "\n".join(str(r) for r in cur.fetchall())
        cur.execute('SELECT id, vector FROM "with-null" WHERE id < 5 ORDER BY id')
        rows = cur.fetchall()
        assert [r[0] for r in rows] == [1, 2, 3, 4] and rows[1][1] is None
        assert list(rows[2][1]) == list(range(2 * DIM, 3 * DIM))


def test_evicted_vectors_of_zstd_snapshots_are_read_from_their_split_float_pages(tmp_path):
    """With zstd, snapshot files write floats byte-stream-split; the page
    copy undoes the split, and the rows are pyarrow's."""
    s = Server(tmp_path / "data", extra=["--max-memory", "4MiB", "--snapshot-compression", "zstd"])
    try:
        table = half_evicted(s.client(), "split", 0, 4, 2500)
        with connect(s) as conn, conn.cursor() as cur:
            cur.execute("EXPLAIN SELECT vector FROM split")
            assert "DataSourceExec" not in "\n".join(str(r) for r in cur.fetchall())
            cur.execute("SELECT id, vector FROM split ORDER BY id")
            got = cur.fetch_arrow_table()
        assert got.column("id").to_pylist() == table.column("id").to_pylist()
        assert got.column("vector").combine_chunks().flatten().equals(
            table.column("vector").combine_chunks().flatten())
    finally:
        s.kill()


def test_bulk_ingest_then_read_back_with_pyarrow_flight(server, tmp_path):
    client = server.client()
    data = vectors(0, 300)
    with connect(server) as conn, conn.cursor() as cur:
        assert cur.adbc_ingest("ingested", data, mode="create") == 300
        assert cur.adbc_ingest("ingested", vectors(300, 200), mode="append") == 200
        with pytest.raises(adbc_driver_manager.Error, match="exists"):
            cur.adbc_ingest("ingested", data, mode="create")
    got = client.do_get(fl.Ticket(b"ingested")).read_all()
    assert got.num_rows == 500
    assert got.slice(0, 300).equals(data)
    # Acknowledged means durable: it survives a restart.
    assert server.stop() == 0
    again = Server(tmp_path / "data")
    try:
        assert again.client().do_get(fl.Ticket(b"ingested")).read_all().num_rows == 500
    finally:
        assert again.stop() == 0


def test_do_get_with_filter_projection_and_limit(small_memory):
    client = small_memory.client()
    half_evicted(client, "ds", 0, 4, 1000)
    ticket = {"dataset": "ds", "columns": ["id"], "filter": "id >= 100 AND id < 3500 AND id % 2 = 0"}
    got = client.do_get(fl.Ticket(json.dumps(ticket).encode())).read_all()
    assert got.schema.names == ["id"]
    assert sorted(got["id"].to_pylist()) == list(range(100, 3500, 2))
    ticket["limit"] = 7
    assert client.do_get(fl.Ticket(json.dumps(ticket).encode())).read_all().num_rows == 7
    with pytest.raises(pa.ArrowInvalid, match="nope"):
        client.do_get(fl.Ticket(json.dumps({"dataset": "ds", "filter": "nope > 1"}).encode())).read_all()
    with pytest.raises(pa.ArrowInvalid, match="unknown field"):
        client.do_get(fl.Ticket(json.dumps({"dataset": "ds", "filtre": "id > 1"}).encode())).read_all()


def test_get_flight_info_offers_parallel_endpoints(small_memory):
    client = small_memory.client()
    rows = 50_000
    tables = [pa.table({"id": pa.array(np.arange(i * rows, (i + 1) * rows, dtype=np.int64)),
                        "x": pa.array(np.random.default_rng(i).random(rows))}) for i in range(12)]
    for t in tables[:10]:  # a file each
        put(client, "big", [t])
        action(client, "force_snapshot", b"big")
    put(client, "big", tables[10:])
    info = client.get_flight_info(fl.FlightDescriptor.for_path("big"))
    assert len(info.endpoints) > 1, info.endpoints
    parts = [None] * len(info.endpoints)

    def read(i, e):
        parts[i] = small_memory.client().do_get(e.ticket).read_all()

    threads = [threading.Thread(target=read, args=(i, e)) for i, e in enumerate(info.endpoints)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = np.concatenate([p["id"].to_numpy() for p in parts])
    assert len(ids) == 12 * rows and len(np.unique(ids)) == 12 * rows


def follow(client, name, after):
    ticket = json.dumps({"dataset": name, "after_lsn": after, "follow": True}).encode()
    return client.do_get(fl.Ticket(ticket))


def test_follow_stream_gets_each_later_batch_once_and_resumes_after_restart(tmp_path):
    s = Server(tmp_path / "data")
    try:
        client = s.client()
        before = put(client, "feed", [vectors(0, 10), vectors(10, 10)])
        reader = follow(client, "feed", before[-1]["lsn"])
        acks = put(client, "feed", [vectors(100, 5)]) + put(client, "feed", [vectors(200, 3), vectors(300, 4)])
        got = []
        for _ in acks:
            chunk = reader.read_chunk()
            got.append((json.loads(chunk.app_metadata.to_pybytes())["lsn"], chunk.data.column(0)[0].as_py()))
        assert got == [(a["lsn"], first) for a, first in zip(acks, [100, 200, 300])]
        reader.cancel()
        last = got[-1][0]
        assert s.stop() == 0
        s = Server(tmp_path / "data")
        client = s.client()
        resumed = follow(client, "feed", last)
        after = put(client, "feed", [vectors(400, 2)])
        chunk = resumed.read_chunk()
        assert json.loads(chunk.app_metadata.to_pybytes())["lsn"] == after[0]["lsn"]
        assert chunk.data.column(0).to_pylist() == [400, 401]
        # From the start: every batch, in LSN order.
        everything = follow(client, "feed", 0)
        lsns = [json.loads(everything.read_chunk().app_metadata.to_pybytes())["lsn"] for _ in range(6)]
        assert lsns == sorted(lsns) and lsns[-1] == after[0]["lsn"]
        everything.cancel()
        # Dropping the dataset ends a waiting feed with NOT_FOUND.
        waiting = follow(client, "feed", after[0]["lsn"])
        dropper = threading.Timer(0.3, lambda: action(s.client(), "drop_dataset", b"feed"))
        dropper.start()
        with pytest.raises(pa.ArrowKeyError, match="not found"):
            waiting.read_chunk()
        dropper.join()
    finally:
        s.kill()


def test_sql_errors_name_the_problem_and_the_server_keeps_serving(server):
    client = server.client()
    put(client, "ds", [vectors(0, 10)])
    with connect(server) as conn, conn.cursor() as cur:
        cases = [
            ("SELEC 1", adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT, "Expected"),
            ("SELECT * FROM missing", adbc_driver_manager.AdbcStatusCode.NOT_FOUND, "missing"),
            ("SELECT nope FROM ds", adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT, "nope"),
            ("CREATE TABLE t (a INT)", adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT, "DDL"),
        ]
        for sql, status, message in cases:
            with pytest.raises(adbc_driver_manager.Error, match=message) as e:
                cur.execute(sql)
                cur.fetchall()
            assert e.value.status_code == status, (sql, e.value)
        cur.execute("SELECT count(*) FROM ds")
        assert cur.fetchone() == (10,)
    # Flight SQL commands Longbow does not implement are UNIMPLEMENTED.
    from adbc_driver_flightsql import DatabaseOptions  # noqa: F401
    with connect(server) as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as e:
            cur.execute("UPDATE ds SET id = 1")
            cur.fetchall()
        assert e.value.status_code in (adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT,
                                       adbc_driver_manager.AdbcStatusCode.NOT_IMPLEMENTED)
    assert client.do_get(fl.Ticket(b"ds")).read_all().num_rows == 10


def test_query_memory_pool_bounds_a_query(tmp_path):
    s = Server(tmp_path / "data", extra=["--query-memory", "12MiB"])
    try:
        put(s.client(), "ds", [vectors(i * 2000, 2000) for i in range(16)])  # ~16 MB in 1 MB batches
        with connect(s) as conn, conn.cursor() as cur:
            # A full sort holds every row: over the pool (the planner's
            # message; ADBC files RESOURCE_EXHAUSTED under INTERNAL).
            with pytest.raises(adbc_driver_manager.Error, match="(?i)resources exhausted"):
                cur.execute("SELECT id, vector FROM ds ORDER BY id DESC")
                cur.fetchall()
            # A top-k holds k rows (and the batches they are in): within it.
            cur.execute("SELECT id FROM ds ORDER BY id DESC LIMIT 3")
            assert cur.fetchall() == [(31999,), (31998,), (31997,)]
    finally:
        assert s.stop() == 0


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def statement_query(sql):
    """A Flight SQL CommandStatementQuery descriptor, protobuf by hand."""
    command = _field(1, sql.encode())
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    return fl.FlightDescriptor.for_command(_field(1, url) + _field(2, command))


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_that_goes_away_stops_its_query(server):
    client = server.client()
    ids = lambda first, n: pa.table({"id": pa.array(np.arange(first, first + n, dtype=np.int64))})  # noqa: E731
    put(client, "small", [ids(0, 5000)])
    put(client, "large", [ids(i * 100, 100) for i in range(3000)])
    # A nested-loop join of 1.5 * 10^9 pairs, far longer than the test, in
    # 3000 steps. A cancelled plan stops where its tasks next yield:
    # DataFusion's scans take from tokio's cooperative budget, so a task
    # yields every 128 batches at the latest (a plan whose every batch
    # takes seconds stops that much later).
    info = client.get_flight_info(statement_query(
        "SELECT count(*) FROM small a, large b WHERE a.id * b.id = -1"))
    # The client is another process, killed mid-query: it goes away as a
    # crashed or impatient client does.
    script = ("import sys, pyarrow.flight as fl; c = fl.connect(sys.argv[1]); "
              "c.do_get(fl.Ticket(bytes.fromhex(sys.argv[2]))).read_all()")
    ticket = info.endpoints[0].ticket.ticket.hex()
    reader = subprocess.Popen([sys.executable, "-c", script, f"grpc://{server.flight}", ticket])
    time.sleep(1.5)
    busy = cpu_seconds(server.proc.pid)
    time.sleep(2.0)
    busy_rate = (cpu_seconds(server.proc.pid) - busy) / 2.0
    assert busy_rate > 0.05, "the query should be running"
    reader.kill()
    reader.wait()
    # CPU time per second falls to idle (a few ticks) within seconds, long
    # before the join could have finished.
    rates = []
    for _ in range(10):
        before = cpu_seconds(server.proc.pid)
        time.sleep(1.0)
        rates.append(cpu_seconds(server.proc.pid) - before)
        if rates[-1] < max(0.03, busy_rate / 4):
            break
    else:
        raise AssertionError(f"the query kept running after its client left: {busy_rate} then {rates}")
    assert client.do_get(fl.Ticket(b"small")).read_all().num_rows == 5000


def test_get_schema_of_a_query_plans_it_without_running_it(server):
    client = server.client()
    put(client, "ds", [vectors(0, 10)])
    schema = client.get_schema(statement_query("SELECT id, id * 2 AS twice FROM ds WHERE id > 3")).schema
    assert schema.names == ["id", "twice"]
    assert schema.field("id").type == pa.int32()
    with pytest.raises(pa.ArrowInvalid, match="nope"):
        client.get_schema(statement_query("SELECT nope FROM ds"))
    assert client.get_schema(fl.FlightDescriptor.for_path("ds")).schema == vectors(0, 1).schema
