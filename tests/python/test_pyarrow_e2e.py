"""End to end with pyarrow.flight, the client most users have: a real
longbow binary on loopback with a temporary data directory."""

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("LONGBOW_BIN", Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "longbow"))
DIM = 128


class Server:
    def __init__(self, data: Path, shards: int = 2, extra=()):
        self.log = open(data.parent / "longbow.log", "ab")
        self.proc = subprocess.Popen(
            [str(BINARY), "--data-path", str(data), "--snapshot-path", str(data.parent / "snapshots"),
             "--shards", str(shards),
             "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        for line in self.proc.stdout:
            if line.startswith("longbow ready"):
                fields = dict(w.split("=", 1) for w in line.split()[2:])
                self.flight, self.metrics = fields["flight"], fields["metrics"]
                break
        else:
            raise RuntimeError(f"longbow exited with {self.proc.wait()}")

    def client(self) -> fl.FlightClient:
        return fl.connect(f"grpc://{self.flight}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self):
        """SIGKILL, unless it already exited."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def vectors(first_id: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(first_id)
    flat = pa.array(rng.random(rows * DIM, dtype=np.float32))
    return pa.table({
        "id": pa.array(np.arange(first_id, first_id + rows, dtype=np.int32)),
        "vector": pa.FixedSizeListArray.from_arrays(flat, DIM),
    })


def put(client, name, tables):
    writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), tables[0].schema)
    acks = []
    for t in tables:
        writer.write_table(t)
        buf = reader.read()
        if buf is None:  # the server ended the stream: close() raises its error
            writer.close()
            raise AssertionError("DoPut ended early without an error")
        acks.append(json.loads(buf.to_pybytes()))
    writer.done_writing()
    writer.close()
    return acks


def test_put_list_info_get_actions(server, tmp_path):
    client = server.client()
    tables = [vectors(i * 1000, 1000) for i in range(10)]
    acks = put(client, "embeddings", tables)
    assert [a["rows"] for a in acks] == [1000] * 10
    assert all(b["lsn"] > a["lsn"] for a, b in zip(acks, acks[1:]))
    put(client, "other", [vectors(0, 10)])

    flights = {f.descriptor.path[0].decode(): f for f in client.list_flights()}
    assert set(flights) == {"embeddings", "other"}
    assert flights["embeddings"].total_records == 10_000
    assert flights["embeddings"].total_bytes > 10_000 * DIM * 4
    assert flights["embeddings"].schema.equals(tables[0].schema)

    info = client.get_flight_info(fl.FlightDescriptor.for_path("embeddings"))
    assert info.total_records == 10_000
    got = client.do_get(info.endpoints[0].ticket).read_all()
    assert got.equals(pa.concat_tables(tables))
    # A ticket that is just the name works too.
    assert client.do_get(fl.Ticket(b"other")).read_all().num_rows == 10
    assert client.get_schema(fl.FlightDescriptor.for_path("other")).schema.equals(tables[0].schema)

    actions = [a.type for a in client.list_actions()]
    assert "get_stats" in actions
    stats = json.loads(next(iter(client.do_action(fl.Action("get_stats", b"")))).body.to_pybytes())
    assert stats["records"] == 10_010

    # Survives a restart.
    assert server.stop() == 0
    again = Server(tmp_path / "data")
    try:
        assert again.client().do_get(fl.Ticket(b"embeddings")).read_all().equals(pa.concat_tables(tables))
    finally:
        assert again.stop() == 0


def test_errors_have_codes_pyarrow_understands(server):
    client = server.client()
    put(client, "good", [vectors(0, 5)])
    with pytest.raises(pa.ArrowInvalid, match="invalid dataset name"):
        put(client, "../escape", [vectors(0, 5)])
    with pytest.raises(pa.ArrowInvalid, match="schema mismatch"):
        put(client, "good", [pa.table({"x": pa.array([1, 2], pa.int64())})])
    with pytest.raises(pa.ArrowKeyError, match="not found"):
        client.do_get(fl.Ticket(b"missing")).read_all()
    with pytest.raises(pa.ArrowKeyError):
        client.get_flight_info(fl.FlightDescriptor.for_path("missing"))
    # Nothing stored was affected and the server still answers.
    assert client.do_get(fl.Ticket(b"good")).read_all().num_rows == 5


def action(client, name, body=b""):
    return json.loads(next(iter(client.do_action(fl.Action(name, body)))).body.to_pybytes())


@pytest.mark.parametrize("compression", ["snappy", "zstd"])  # zstd byte-stream-splits the floats
def test_snapshots_are_readable_by_duckdb_and_pandas(tmp_path, compression):
    server = Server(tmp_path / "data", extra=["--snapshot-compression", compression])
    try:
        check_snapshots_readable(server, tmp_path)
    finally:
        server.kill()


def check_snapshots_readable(server, tmp_path):
    import duckdb
    import pandas as pd

    client = server.client()
    tables = [vectors(i * 500, 500) for i in range(4)]
    put(client, "emb", tables[:2])
    assert action(client, "force_snapshot")["rows_written"] == 1000
    put(client, "emb", tables[2:])
    assert action(client, "force_snapshot", b"emb")["rows_written"] == 1000
    snap = tmp_path / "snapshots" / "emb"

    con = duckdb.connect()
    rows = con.execute(f"select count(*), min(id), max(id) from read_parquet('{snap}/*.parquet')").fetchone()
    assert rows == (2000, 0, 1999)
    # The vector column comes back as FLOAT[]; cast it to a fixed-size array.
    typ = con.execute(f"select typeof(vector) from read_parquet('{snap}/*.parquet') limit 1").fetchone()[0]
    assert typ == "FLOAT[]"
    dim = con.execute(
        f"select len(vector::FLOAT[128]) from read_parquet('{snap}/*.parquet') where id = 7").fetchone()[0]
    assert dim == 128

    df = pd.read_parquet(snap)
    assert len(df) == 2000
    assert sorted(df["id"].tolist()) == list(range(2000))
    # The files use Delta's list type (Delta has no fixed-size list); every
    # value is kept, and Longbow reads them back as the dataset's type.
    stored = pa.parquet.read_table(snap).sort_by("id")
    assert stored.schema.field("vector").type == pa.list_(pa.float32())
    assert stored.column("vector").combine_chunks() == pa.concat_tables(tables).column("vector").combine_chunks().cast(
        pa.list_(pa.float32()))
    exact = con.execute(f"select vector from read_parquet('{snap}/*.parquet') where id = 1234").fetchone()[0]
    assert np.allclose(exact, pa.concat_tables(tables).column("vector")[1234].as_py(), rtol=0, atol=0)

    stats = action(client, "get_stats")
    emb = next(d for d in stats["per_dataset"] if d["name"] == "emb")
    assert emb["snapshot_rows"] == 2000 and emb["records"] == 2000

    assert action(client, "drop_dataset", b"emb") == {"dropped": "emb"}
    assert not snap.exists()
    with pytest.raises(pa.ArrowKeyError):
        action(client, "drop_dataset", b"emb")


def test_bearer_token_with_pyarrow_call_options(tmp_path):
    s = Server(tmp_path / "data", extra=["--auth-token", "py-t0ken"])
    try:
        client = s.client()
        with pytest.raises(fl.FlightUnauthenticatedError):
            list(client.list_flights())
        # The scheme is case-insensitive (RFC 7235).
        shouting = fl.FlightCallOptions(headers=[(b"authorization", b"BEARER py-t0ken")])
        assert list(client.list_flights(options=shouting)) == []
        opts = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer py-t0ken")])
        t = vectors(0, 10)
        writer, reader = client.do_put(fl.FlightDescriptor.for_path("secure"), t.schema, options=opts)
        writer.write_table(t)
        writer.close()
        assert client.do_get(fl.Ticket(b"secure"), options=opts).read_all().num_rows == 10
    finally:
        assert s.stop() == 0


def test_a_refused_message_ends_the_put_after_the_batches_before_it_are_acknowledged(tmp_path):
    """50 batches sent back to back, then a message over
    LONGBOW_MAX_MESSAGE_SIZE: the refusal usually reaches the server while
    the last batches are still being committed. The client gets an acknowledgement
    for each of the 50, then the refusal (naming the limit); the 50 are
    stored, the refused one is not, and the server goes on. Before, the
    refusal failed the whole stream, so the batches not yet committed were
    dropped and the client was told "an earlier batch failed"."""
    s = Server(tmp_path / "data", shards=1, extra=["--max-message-size", "1MiB"])
    try:
        client = s.client()
        small = [vectors(i * 10, 10) for i in range(50)]
        writer, reader = client.do_put(fl.FlightDescriptor.for_path("refused"), small[0].schema)
        for t in small:
            writer.write_table(t)
        try:
            writer.write_table(vectors(100_000, 5000))  # ~2.6 MB in one message
            writer.done_writing()
        except pa.ArrowException:
            pass  # the server may have answered already: the answer is read below
        acks = []
        with pytest.raises(pa.ArrowInvalid, match="invalid argument error.*too large"):
            while (buf := reader.read()) is not None:
                acks.append(json.loads(buf.to_pybytes()))
            writer.close()
        assert [a["rows"] for a in acks] == [10] * 50
        ids = client.do_get(fl.Ticket(b"refused")).read_all().column("id").to_pylist()
        assert sorted(ids) == list(range(500)), "the 50 acknowledged batches, not the refused one"
        assert put(client, "refused", [vectors(500, 10)])[0]["rows"] == 10
    finally:
        assert s.stop() == 0


def test_malformed_and_edge_inputs_get_clear_errors(tmp_path):
    s = Server(tmp_path / "data", extra=["--max-message-size", "1MiB"])
    try:
        client = s.client()
        put(client, "base", [vectors(0, 5)])
        # Names: NUL, 10 kB, unicode, path components.
        for bad in ["a\x00b", "x" * 10_000, "вектор", "../x", "a/b"]:
            with pytest.raises(pa.ArrowInvalid, match="invalid dataset name"):
                put(client, bad, [vectors(0, 1)])
        # Dictionary-encoded columns are refused with a message saying what to do.
        d = pa.table({"tag": pa.array(["a", "b", "a"]).dictionary_encode()})
        with pytest.raises(pa.ArrowInvalid, match="dictionary"):
            put(client, "dict", [d])
        # A schema change in the middle of a stream.
        writer, reader = client.do_put(fl.FlightDescriptor.for_path("base"), vectors(0, 1).schema)
        writer.write_table(vectors(0, 2))
        assert reader.read() is not None
        with pytest.raises(pa.ArrowInvalid):
            other = pa.table({"x": pa.array([1], pa.int64())})
            writer.write_table(other)  # pyarrow itself refuses a second schema
        writer.close()
        # Zero-row batches are accepted, acknowledged and stored as such.
        empty = vectors(0, 1).to_batches()[0].slice(0, 0)
        writer, reader = client.do_put(fl.FlightDescriptor.for_path("empty-rows"), empty.schema)
        writer.write_batch(empty)
        assert json.loads(reader.read().to_pybytes())["rows"] == 0
        writer.close()
        assert client.do_get(fl.Ticket(b"empty-rows")).read_all().num_rows == 0
        # A message above the size limit fails clearly (INVALID_ARGUMENT,
        # naming the limit); the server goes on.
        with pytest.raises(pa.ArrowInvalid, match="invalid argument error.*too large"):
            put(client, "huge", [vectors(0, 5000)])  # ~2.6 MB in one message
        # A descriptor path that is not UTF-8: tonic's decoder refuses it
        # (INVALID_ARGUMENT, no longer INTERNAL / FlightInternalError).
        with pytest.raises(pa.ArrowInvalid, match="not UTF-8"):
            client.get_flight_info(fl.FlightDescriptor.for_path(b"\xff\xfe"))
        with pytest.raises(pa.ArrowInvalid, match="not UTF-8"):
            put(client, b"\xff\xfe", [vectors(0, 1)])
        # Action bodies are names exactly: "base " is not base.
        with pytest.raises(pa.ArrowInvalid, match="invalid dataset name"):
            action(client, "drop_dataset", b"base ")
        # Unknown action, and an action body that is not a name.
        with pytest.raises(pa.ArrowNotImplementedError, match="unknown action"):
            action(client, "no_such_action")
        with pytest.raises(pa.ArrowInvalid):
            action(client, "drop_dataset", b"\xff\xfe")
        # Nothing stored was affected.
        assert client.do_get(fl.Ticket(b"base")).read_all().num_rows == 7
    finally:
        assert s.stop() == 0
