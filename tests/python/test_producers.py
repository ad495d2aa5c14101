"""Exactly-once with pyarrow: the retry loop shown in the README, run as
written against a real server that is killed (kill -9) and restarted while
the producer writes, ends with every row stored once. Also the error code a
sequence gap gets in pyarrow."""

import json
import re
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from test_pyarrow_e2e import BINARY, ROOT, Server, vectors


class FixedPortServer(Server):
    """A server on a given Flight port, so a client can reconnect to it."""

    def __init__(self, data: Path, flight: str):
        import subprocess
        self.log = open(data.parent / "longbow.log", "ab")
        self.proc = subprocess.Popen(
            [str(BINARY), "--data-path", str(data), "--snapshot-path", str(data.parent / "snapshots"),
             "--shards", "1", "--listen-addr", flight, "--metrics-addr", "127.0.0.1:0", "--pin-cores", "false"],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        for line in self.proc.stdout:
            if line.startswith("longbow ready"):
                self.flight = flight
                break
        else:
            raise RuntimeError(f"longbow exited with {self.proc.wait()}")


def readme_function():
    """The `put_exactly_once` code block of the README, executed."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(import json, time, pyarrow.flight as fl\n.*?)```", text, re.S)
    assert block, "the README shows the retry loop"
    scope = {}
    exec(block.group(1), scope)
    return scope["put_exactly_once"]


def ids(client, dataset):
    table = client.do_get(fl.Ticket(dataset.encode())).read_all()
    return table.column("id").to_pylist()


def test_readme_retry_loop_survives_kill9_with_every_row_once(tmp_path: Path):
    put_exactly_once = readme_function()
    data = tmp_path / "data"
    port = {"server": Server(data, shards=1)}
    addr = f"grpc://{port['server'].flight}"
    batches = [vectors(i * 100, 100).to_batches()[0] for i in range(400)]
    done = {}

    def produce():
        done["result"] = put_exactly_once(addr, "once", "producer-1", batches)

    t = threading.Thread(target=produce)
    t.start()
    # Crash the server part-way, then start it again on the same port.
    client = port["server"].client()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            stats = json.loads(next(client.do_action(fl.Action("get_stats", b""))).body.to_pybytes())
            if stats["records"] >= 5_000:
                break
        except fl.FlightError:
            pass
        time.sleep(0.01)
    port["server"].proc.kill()
    port["server"].proc.wait()
    restarted = FixedPortServer(data, port["server"].flight)
    try:
        t.join(timeout=120)
        assert not t.is_alive(), "the producer finished after the restart"
        got = ids(restarted.client(), "once")
        assert len(got) == 400 * 100, f"{len(got)} rows for 40000 sent"
        assert sorted(got) == list(range(400 * 100)), "every row exactly once"
    finally:
        restarted.stop()


def test_a_sequence_gap_is_failed_precondition(tmp_path: Path):
    s = Server(tmp_path / "data", shards=1)
    try:
        c = s.client()
        b = vectors(0, 10).to_batches()[0]
        w, r = c.do_put(fl.FlightDescriptor.for_path("gap"), b.schema)
        w.write_with_metadata(b, json.dumps({"producer": "p", "seq": 0}).encode())
        assert json.loads(r.read().to_pybytes())["seq"] == 0
        w.write_with_metadata(b, json.dumps({"producer": "p", "seq": 2}).encode())
        with pytest.raises(pa.ArrowException, match="expected 1"):
            r.read()
            w.close()
        assert ids(c, "gap") == list(range(10)), "nothing after the gap stored"
    finally:
        s.stop()
