"""Three nodes on loopback, one shard each: any node takes any call.

A pyarrow client that talks to one node only writes 20 datasets; every
row is readable through every node, each node lists every dataset with
its owner's location, and a client that follows the endpoints reads from
the owner directly.
"""

import json
import signal
import socket
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from test_pyarrow_e2e import BINARY, put, vectors


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Node:
    """Node `node` of `peers`, listening on `port`; its snapshots under its
    own directory, or at `snapshot_path` (a shared bucket, with `env`)."""

    def __init__(self, root: Path, node: int, peers: list[str], port: int, snapshot_path=None, env=None, extra=()):
        data = root / f"node-{node}"
        data.mkdir(parents=True, exist_ok=True)
        self.log = open(data / "longbow.log", "ab")
        self.proc = subprocess.Popen(
            [str(BINARY), "--data-path", str(data / "data"),
             "--snapshot-path", str(snapshot_path or data / "snapshots"),
             "--shards", "1", "--listen-addr", f"127.0.0.1:{port}", "--metrics-addr", "127.0.0.1:0",
             "--pin-cores", "false", "--node-id", f"longbow-{node}", "--peers", ",".join(peers), *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        for line in self.proc.stdout:
            if line.startswith("longbow ready"):
                fields = dict(w.split("=", 1) for w in line.split()[2:])
                self.metrics_addr = fields["metrics"]
                break
        else:
            raise RuntimeError(f"node {node} exited with {self.proc.wait()}")
        self.url = peers[node]

    def client(self, **tls) -> fl.FlightClient:
        return fl.connect(self.url, **tls)

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def cluster(tmp_path):
    ports = free_ports(3)
    peers = [f"grpc://127.0.0.1:{p}" for p in ports]
    nodes = [Node(tmp_path, i, peers, ports[i]) for i in range(3)]
    yield nodes
    for n in nodes:
        n.kill()


def dataset_owned_by(via: fl.FlightClient, owner_url: str, prefix: str) -> str:
    """A dataset `<prefix>-<k>` that the node at `owner_url` owns, created
    through `via` with one row (its owner is where its endpoint points)."""
    for k in range(40):
        name = f"{prefix}-{k}"
        put(via, name, [vectors(0, 1)])
        info = via.get_flight_info(fl.FlightDescriptor.for_path(name))
        if next(iter(info.endpoints[0].locations)).uri.decode() == owner_url:
            return name
    raise AssertionError(f"none of 40 names is owned by {owner_url}")


def read_all(client: fl.FlightClient, name: str) -> pa.Table:
    info = client.get_flight_info(fl.FlightDescriptor.for_path(name))
    return pa.concat_tables([client.do_get(e.ticket).read_all() for e in info.endpoints])


def test_any_node_takes_any_call(cluster):
    writer = cluster[0].client()
    expected = {}
    for i in range(20):
        name = f"ds-{i}"
        tables = [vectors(i * 10_000 + k * 100, 100) for k in range(3)]
        acks = put(writer, name, tables)
        assert [a["rows"] for a in acks] == [100] * 3, acks
        expected[name] = pa.concat_tables(tables)

    owners = {}
    for node in cluster:
        client = node.client()
        listed = {f.descriptor.path[0].decode(): f for f in client.list_flights()}
        assert sorted(listed) == sorted(expected), f"{node.url} lists every dataset"
        for name, want in expected.items():
            got = read_all(client, name)
            assert got.sort_by("id").equals(want.sort_by("id")), f"{name} through {node.url}"
            locations = {loc.uri.decode() for e in listed[name].endpoints for loc in e.locations}
            assert len(locations) == 1, locations
            owners.setdefault(name, locations)
            assert owners[name] == locations, "every node names the same owner"
    by_owner = {}
    for name, locs in owners.items():
        by_owner.setdefault(next(iter(locs)), []).append(name)
    assert len(by_owner) == 3, f"20 datasets spread over the 3 nodes: {by_owner}"

    # A client that follows the location reads from the owner directly,
    # and the owner holds the data itself.
    for owner, names in by_owner.items():
        direct = fl.connect(owner)
        stats = json.loads(next(direct.do_action(fl.Action("get_stats", b"local"))).body.to_pybytes())
        assert sorted(d["name"] for d in stats["per_dataset"]) == sorted(names)

    # get_stats on any node sums every node's figures and lists each
    # dataset with the node that holds it.
    urls = [n.url for n in cluster]
    for node in cluster:
        stats = json.loads(next(node.client().do_action(fl.Action("get_stats", b""))).body.to_pybytes())
        assert stats["datasets"] == 20 and stats["records"] == 20 * 300, stats
        assert stats["unreachable"] == [] and [n["node"] for n in stats["nodes"]] == [0, 1, 2]
        assert sum(n["records"] for n in stats["nodes"]) == stats["records"]
        held = {d["name"]: urls[d["node"]] for d in stats["per_dataset"]}
        assert held == {name: next(iter(locs)) for name, locs in owners.items()}

    # Actions for a dataset go to its owner, from any node.
    name = "ds-7"
    via = next(n for n in cluster if n.url not in owners[name])
    list(via.client().do_action(fl.Action("force_snapshot", name.encode())))
    list(via.client().do_action(fl.Action("drop_dataset", name.encode())))
    for node in cluster:
        with pytest.raises(pa.ArrowKeyError, match="not found"):
            node.client().get_flight_info(fl.FlightDescriptor.for_path(name))


def test_a_node_holding_datasets_another_node_would_own_refuses_to_start_without_a_shared_store(cluster, tmp_path):
    writer = cluster[0].client()
    for i in range(20):
        put(writer, f"ds-{i}", [vectors(i * 100, 100)])
    for n in cluster:
        n.kill()
    # A fourth node: rendezvous hashing moves about a quarter of each
    # node's datasets to it, and a handover goes through the snapshot
    # tables, which these nodes do not share (each has its own directory).
    ports = free_ports(1)
    peers = [n.url for n in cluster] + [f"grpc://127.0.0.1:{ports[0]}"]
    data = tmp_path / "node-0"
    proc = subprocess.run(
        [str(BINARY), "--data-path", str(data / "data"), "--snapshot-path", str(data / "snapshots"),
         "--shards", "1", "--listen-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0",
         "--pin-cores", "false", "--node-id", "0", "--peers", ",".join(peers)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "another node owns under LONGBOW_PEERS" in proc.stderr, proc.stderr[-2000:]
    assert "an object store that every node shares" in proc.stderr, proc.stderr[-2000:]


def test_a_node_killed_during_ingest_loses_no_acknowledged_batch(cluster, tmp_path):
    """Writes through node 0 to datasets of every owner while node 1 is
    killed (SIGKILL) and restarted: every acknowledged batch is there
    exactly once afterwards, read through any node; a batch that got no
    acknowledgement is there at most once."""
    import threading
    import time

    names = [f"k-{i}" for i in range(12)]
    acked, tried, errors = {n: [] for n in names}, {n: [] for n in names}, []
    stop = threading.Event()

    def writer(name, first):
        client = cluster[0].client()
        k = 0
        while not stop.is_set():
            t = vectors(first + k * 10, 10)
            tried[name].append(t)
            try:
                put(client, name, [t])
                acked[name].append(t)
            except Exception as e:  # refused or unanswered while the owner is down
                errors.append(e)
                time.sleep(0.05)
            k += 1

    threads = [threading.Thread(target=writer, args=(n, i * 1_000_000)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    cluster[1].kill()
    time.sleep(1.0)
    ports = [int(n.url.rsplit(":", 1)[1]) for n in cluster]
    cluster[1] = Node(tmp_path, 1, [n.url for n in cluster], ports[1])
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    assert errors, "writes to node 1's datasets failed while it was down"
    for node in cluster:
        client = node.client()
        for name in names:
            got = read_all(client, name).column("id").to_pylist()
            assert len(got) == len(set(got)), f"{name}: no row twice"
            want = {i for t in acked[name] for i in t.column("id").to_pylist()}
            assert want <= set(got), f"{name} through {node.url}: every acknowledged row"
            possible = {i for t in tried[name] for i in t.column("id").to_pylist()}
            assert set(got) <= possible


def test_flight_sql_through_any_node_reads_every_nodes_tables(cluster):
    """ADBC Flight SQL against one node sees every node's datasets: it lists
    them with their schemas (GetTables, information_schema, SHOW), queries, filters and joins tables other nodes
    own (their owners filter and project what they send), binds a prepared
    statement over one, and bulk ingest through a non-owner lands on the
    owner."""
    import adbc_driver_flightsql.dbapi as flightsql
    import adbc_driver_manager
    import numpy as np

    writer = cluster[0].client()
    expected = {}
    for i in range(6):
        name = f"sq-{i}"
        tables = [vectors(k * 100, 100) for k in range(i + 1)]  # ids 0 .. 100 * (i + 1)
        put(writer, name, tables)
        expected[name] = pa.concat_tables(tables)
    owner = {f.descriptor.path[0].decode(): next(iter(f.endpoints[0].locations)).uri.decode()
             for f in writer.list_flights()}
    assert len(set(owner.values())) == 3, f"the tables spread over the 3 nodes: {owner}"

    for node in cluster:
        with flightsql.connect(node.url, autocommit=True) as conn:
            objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
            listed = {t["table_name"] for c in objects for s in c["catalog_db_schemas"] for t in s["db_schema_tables"]}
            assert listed == set(expected), f"{node.url} lists every node's tables"
            for name, want in expected.items():
                assert conn.adbc_get_table_schema(name) == want.schema, name
            with conn.cursor() as cur:
                cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
                assert {r[0] for r in cur.fetchall()} == set(expected), f"{node.url}: information_schema.tables"
                cur.execute("SELECT table_name, column_name, data_type FROM information_schema.columns "
                            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")
                columns = cur.fetchall()
                assert [(t, c) for t, c, _ in columns] == [(n, c) for n in sorted(expected) for c in ("id", "vector")]
                assert {d for _, c, d in columns if c == "id"} == {"Int32"}, columns
                cur.execute("SHOW TABLES")
                shown = {r[2] for r in cur.fetchall() if r[1] == "public"}
                assert shown == set(expected), f"{node.url}: SHOW TABLES"
                for name, want in expected.items():
                    ids = want.column("id").to_numpy()
                    cur.execute(f'SELECT count(*), min(id), max(id) FROM "{name}"')
                    assert cur.fetchall() == [(len(ids), ids.min(), ids.max())], f"{name} through {node.url}"
                    # A filter and a projection the owner runs.
                    cur.execute(f'SELECT id, vector[1] AS v FROM "{name}" WHERE id >= 150 AND id < 160 ORDER BY id')
                    got = cur.fetch_arrow_table()
                    sel = want.filter(pa.compute.and_(pa.compute.greater_equal(want["id"], 150),
                                                      pa.compute.less(want["id"], 160))).sort_by("id")
                    assert got.column("id").to_pylist() == sel.column("id").to_pylist(), name
                    assert got.column("v").to_pylist() == [v[0] for v in sel.column("vector").to_pylist()], name
                # A join of tables on different nodes, and a limit.
                cur.execute('SELECT count(*) FROM "sq-1" a JOIN "sq-5" b ON a.id = b.id')
                assert cur.fetchall() == [(200,)]
                cur.execute('SELECT id FROM "sq-5" LIMIT 7')
                assert len(cur.fetchall()) == 7
                # A prepared statement with a parameter.
                cur.adbc_prepare('SELECT count(*) FROM "sq-4" WHERE id < $1')
                cur.execute('SELECT count(*) FROM "sq-4" WHERE id < $1', parameters=(123,))
                assert cur.fetchall() == [(123,)]
                with pytest.raises(adbc_driver_manager.Error) as e:
                    cur.execute('SELECT * FROM "sq-missing"')
                assert e.value.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND, e.value

    # Bulk ingest through a node that does not own the table.
    name = next(n for n, url in owner.items() if url != cluster[0].url)
    data = vectors(10_000, 250)
    with flightsql.connect(cluster[0].url, autocommit=True) as conn, conn.cursor() as cur:
        assert cur.adbc_ingest(name, data, mode="append") == 250
        cur.execute(f'SELECT count(*) FROM "{name}" WHERE id >= 10000')
        assert cur.fetchall() == [(250,)]
    direct = fl.connect(owner[name])
    stats = json.loads(next(direct.do_action(fl.Action("get_stats", b"local"))).body.to_pybytes())
    records = {d["name"]: d["records"] for d in stats["per_dataset"]}
    assert records[name] == len(expected[name]) + 250, "the owner stored the ingested rows"
    stats0 = json.loads(next(writer.do_action(fl.Action("get_stats", b"local"))).body.to_pybytes())
    assert name not in {d["name"] for d in stats0["per_dataset"]}, "the node it went through did not"
    got = read_all(direct, name).sort_by("id")
    assert got.equals(pa.concat_tables([expected[name], data]).sort_by("id"))


def test_a_query_over_one_other_nodes_tables_runs_whole_at_that_node(cluster):
    """A Flight SQL query whose tables one other node owns is sent to that
    node whole, so its aggregate runs there and only the result crosses;
    one over tables of two nodes, or of the node the client reached, is
    planned where it arrived. The answers are the same either way."""
    import adbc_driver_flightsql.dbapi as flightsql

    via, other = cluster[0], cluster[1]
    mine = dataset_owned_by(via.client(), via.url, "mine")
    theirs = dataset_owned_by(via.client(), other.url, "theirs")
    third = dataset_owned_by(via.client(), cluster[2].url, "third")
    for name in (mine, theirs, third):
        put(via.client(), name, [vectors(1 + k * 1000, 1000) for k in range(3)])

    def run_at_owner():
        line = next(l for l in via.metrics().splitlines() if l.startswith("longbow_sql_queries_run_at_owner_total"))
        return int(float(line.split()[1]))

    with flightsql.connect(via.url, autocommit=True) as conn, conn.cursor() as cur:
        before = run_at_owner()
        cur.execute(f'SELECT count(*), sum(id), max(id) FROM "{theirs}"')
        assert cur.fetchall() == [(3001, sum(range(1, 3001)), 3000)]
        assert run_at_owner() == before + 1, "the aggregate ran at the owner"
        cur.execute(f'EXPLAIN SELECT count(*) FROM "{theirs}"')
        assert "AggregateExec" in "\n".join(str(r) for r in cur.fetchall())
        cur.execute(f'SELECT count(*) FROM "{theirs}" WHERE id < $1', parameters=(101,))
        assert cur.fetchall() == [(101,)]
        assert run_at_owner() == before + 3, "EXPLAIN and the prepared statement too"

        # Tables of two other nodes, and this node's own table: planned here.
        cur.execute(f'SELECT count(*) FROM "{theirs}" a JOIN "{third}" b ON a.id = b.id')
        assert cur.fetchall() == [(3001,)]
        cur.execute(f'SELECT count(*) FROM "{mine}"')
        assert cur.fetchall() == [(3001,)]
        cur.execute("SELECT 1")
        assert cur.fetchall() == [(1,)]
        assert run_at_owner() == before + 3


def test_a_batch_the_forwarding_node_refuses_fails_the_proxied_put(tmp_path):
    """Node 0 takes messages up to 1 MiB, the owner up to 64 MiB. A DoPut
    through node 0 whose third batch is larger than that gets the first two
    acknowledged, then node 0's refusal; it does not end as if the client
    had finished. What is stored is what was acknowledged."""
    ports = free_ports(2)
    peers = [f"grpc://127.0.0.1:{p}" for p in ports]
    nodes = [Node(tmp_path, 0, peers, ports[0], extra=["--max-message-size", "1MiB"]),
             Node(tmp_path, 1, peers, ports[1])]
    try:
        via = nodes[0].client()
        name = dataset_owned_by(via, peers[1], "big")
        small = vectors(1000, 100)
        writer, reader = via.do_put(fl.FlightDescriptor.for_path(name), small.schema)
        acked = []
        for t in (small, vectors(1100, 100)):
            writer.write_table(t)
            acked.append(json.loads(reader.read().to_pybytes())["rows"])
        assert acked == [100, 100]
        with pytest.raises(pa.ArrowInvalid, match="message length too large"):
            writer.write_table(vectors(2000, 4000))  # 2 MB
            writer.done_writing()
            while reader.read() is not None:
                pass
            writer.close()
        ids = sorted(i for i in read_all(nodes[1].client(), name).column("id").to_pylist() if i >= 1000)
        assert ids == list(range(1000, 1200)), "the two acknowledged batches, not the refused one"
    finally:
        for n in nodes:
            n.kill()


def test_proxied_batches_count_against_the_forwarding_nodes_inflight_budget(tmp_path):
    """With the owner stopped (SIGSTOP), a DoPut through node 0 holds at
    most node 0's LONGBOW_MAX_INFLIGHT (1 MiB) unacknowledged, in its budget
    for proxied batches; the client's stream is not read beyond it. Once the owner runs again every batch is
    acknowledged, stored once, and the budget is free."""
    import re
    import threading
    import time

    ports = free_ports(2)
    peers = [f"grpc://127.0.0.1:{p}" for p in ports]
    nodes = [Node(tmp_path, 0, peers, ports[0], extra=["--max-inflight", "1MiB"]), Node(tmp_path, 1, peers, ports[1])]

    def inflight(kind: str = "forwarded_") -> int:
        return int(re.search(rf"^longbow_put_{kind}inflight_bytes (\d+)", nodes[0].metrics(), re.M).group(1))

    try:
        via = nodes[0].client()
        name = dataset_owned_by(via, peers[1], "held")
        nodes[1].proc.send_signal(signal.SIGSTOP)
        tables = [vectors(1000 + k * 500, 500) for k in range(20)]  # 256 KB each
        acks = []
        writer_thread = threading.Thread(target=lambda: acks.extend(put(via, name, tables)))
        writer_thread.start()
        time.sleep(2.5)
        held = inflight()
        assert 0 < held <= 1 << 20, held
        assert inflight("") == 0, "node 0 stores none of them"
        nodes[1].proc.send_signal(signal.SIGCONT)
        writer_thread.join(timeout=60)
        assert [a["rows"] for a in acks] == [500] * 20
        time.sleep(1.5)  # the gauge is refreshed every second
        assert inflight() == 0
        ids = sorted(i for i in read_all(via, name).column("id").to_pylist() if i >= 1000)
        assert ids == list(range(1000, 1000 + 20 * 500))
    finally:
        if nodes[1].proc.poll() is None:
            nodes[1].proc.send_signal(signal.SIGCONT)
        for n in nodes:
            n.kill()


def test_nodes_forwarding_to_each_other_at_once_never_wait_on_each_others_budgets(tmp_path):
    """Two nodes with a 1 MiB LONGBOW_MAX_INFLIGHT each; producers write
    through node 0 into datasets node 1 owns and through node 1 into
    datasets node 0 owns, at once, in 256 KB batches. Proxied batches are
    charged to a budget of their own: were they charged to the same one as
    the batches a node stores, each node's budget could fill with batches
    waiting for the other's acknowledgements, while the other's forwarded
    batches wait for that very budget, and every stream would stop. Every
    batch is acknowledged and stored once."""
    import threading
    import time

    ports = free_ports(2)
    peers = [f"grpc://127.0.0.1:{p}" for p in ports]
    nodes = [Node(tmp_path, i, peers, ports[i], extra=["--max-inflight", "1MiB"]) for i in range(2)]
    try:
        jobs = []  # (node a producer talks to, dataset the other node owns)
        for via, owner in ((0, 1), (1, 0)):
            for k in range(4):
                jobs.append((via, dataset_owned_by(nodes[via].client(), peers[owner], f"cross-{via}-{k}")))
        results: dict[str, list] = {}
        errors = []

        def produce(via: int, name: str):
            try:
                tables = [vectors(1000 + b * 500, 500) for b in range(40)]  # 256 KB each
                # Every batch written before any acknowledgement is read, as
                # a producer that pipelines does.
                writer, reader = nodes[via].client().do_put(fl.FlightDescriptor.for_path(name), tables[0].schema)
                for t in tables:
                    writer.write_table(t)
                writer.done_writing()
                acks = []
                while (buf := reader.read()) is not None:
                    acks.append(json.loads(buf.to_pybytes()))
                writer.close()
                results[name] = acks
            except Exception as e:  # reported below
                errors.append(f"{name}: {e}")

        threads = [threading.Thread(target=produce, args=job, daemon=True) for job in jobs]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        stuck = [name for (_, name), t in zip(jobs, threads) if t.is_alive()]
        assert not stuck, f"producers still waiting for acknowledgements after 120 s: {stuck}"
        assert not errors, errors
        for via, name in jobs:
            assert [a["rows"] for a in results[name]] == [500] * 40, name
            ids = sorted(i for i in read_all(nodes[via].client(), name).column("id").to_pylist() if i >= 1000)
            assert ids == list(range(1000, 1000 + 40 * 500)), f"{name}: every batch once"
    finally:
        for n in nodes:
            n.kill()
