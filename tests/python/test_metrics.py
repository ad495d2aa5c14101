"""`/metrics` after some load, in both formats: Prometheus text 0.0.4 by
default, linted by `promtool check metrics` with no problem; OpenMetrics
text when asked, read by prometheus_client's strict OpenMetrics parser
(promtool reads only 0.0.4: on OpenMetrics it takes every counter's `_total`
samples for a family of their own and reports "no help text"). Both carry
the same families and samples. Then what the series promise: gRPC code
names, streams timed until they end, the process and storage gauges."""

import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from test_pyarrow_e2e import Server, put, vectors

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def scrape(server, accept=None):
    req = urllib.request.Request(f"http://{server.metrics}/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def samples(text):
    """{(name, sorted labels): value} of a 0.0.4 text."""
    out = {}
    for fam in parse_text(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text, name, **labels):
    return samples(text)[(name, tuple(sorted(labels.items())))]


def load(server):
    """Puts on several streams and datasets, reads, a NOT_FOUND, an unknown
    action, a snapshot, stats."""
    c = server.client()
    for i in range(6):
        put(c, f"m{i % 3}", [vectors(i * 100, 100), vectors(i * 100 + 50, 50)])
    assert c.do_get(fl.Ticket(b"m0")).read_all().num_rows == 300
    with pytest.raises(KeyError):  # NOT_FOUND
        c.do_get(fl.Ticket(b"missing")).read_all()
    with pytest.raises(pa.ArrowNotImplementedError):
        list(c.do_action(fl.Action("no_such_action", b"")))
    list(c.do_action(fl.Action("force_snapshot", b"")))
    list(c.do_action(fl.Action("get_stats", b"")))
    list(c.list_actions())
    list(c.list_flights())
    return c


@pytest.fixture
def loaded(tmp_path):
    s = Server(tmp_path / "data", extra=["--max-memory", "256MiB"])
    try:
        load(s)
        time.sleep(1.5)  # the storage gauges are refreshed every second
        yield s
    finally:
        s.kill()


def test_promtool_finds_no_problem_in_the_prometheus_text(loaded):
    assert shutil.which("promtool"), "promtool missing: scripts/test.sh installs Debian's prometheus"
    for accept in (None, "text/plain;version=0.0.4", "*/*"):
        ctype, text = scrape(loaded, accept)
        assert ctype == TEXT, (accept, ctype)
        assert "# EOF" not in text
        r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    # Counters are named with their _total in TYPE and HELP.
    assert "# TYPE process_cpu_seconds_total counter\n" in text
    assert "# HELP longbow_flight_requests_total " in text
    assert "# TYPE longbow_flight_requests_total counter\n" in text


def test_openmetrics_is_strict_and_carries_the_same_series(loaded):
    for accept in (PROMETHEUS_ACCEPT, "application/openmetrics-text"):
        ctype, om = scrape(loaded, accept)
        assert ctype == OPENMETRICS, (accept, ctype)
    assert om.endswith("# EOF\n")
    om_families = {f.name: f for f in parse_openmetrics(om)}  # raises on any format error
    _, text = scrape(loaded)
    text_families = {f.name: f for f in parse_text(text)}
    assert om_families.keys() == text_families.keys()
    for name, fam in om_families.items():
        other = text_families[name]
        assert (fam.type, fam.documentation) == (other.type, other.documentation), name
        # Values move between two scrapes; names and labels do not.
        key = lambda s: (s.name, tuple(sorted(s.labels.items())))  # noqa: E731
        assert sorted(map(key, fam.samples)) == sorted(map(key, other.samples)), name
    assert om_families["process_cpu_seconds"].type == "counter"
    assert om_families["longbow_snapshot_operations"].type == "counter"


def test_series_we_promise(loaded):
    _, text = scrape(loaded)
    s = samples(text)
    names = {n for n, _ in s}
    for name in [
        "longbow_build_info", "process_cpu_seconds_total", "process_start_time_seconds", "process_max_fds",
        "process_open_fds", "process_virtual_memory_bytes", "process_resident_memory_bytes", "process_threads",
        "longbow_wal_disk_bytes", "longbow_wal_segments", "longbow_volume_size_bytes",
        "longbow_volume_available_bytes", "longbow_volume_used_bytes", "longbow_snapshot_lag_rows",
        "longbow_snapshot_lag_batches", "longbow_snapshot_last_success_timestamp_seconds",
        "longbow_snapshot_interval_seconds", "longbow_snapshot_compaction_duration_seconds_count",
        "longbow_snapshot_compaction_bytes_written_total", "longbow_snapshot_compaction_bytes_read_total",
        "longbow_do_get_rows_total", "longbow_do_get_bytes_total", "longbow_commits_throttled_total",
        "longbow_sql_queries_run_at_owner_total",
        "longbow_flight_active_streams", "longbow_flight_action_duration_seconds_count",
    ]:
        assert name in names, name
    build = [labels for n, labels in s if n == "longbow_build_info"]
    assert len(build) == 1 and dict(build[0])["version"] == "0.1.0"
    # Both snapshot outcomes exist from the start.
    assert value(text, "longbow_snapshot_operations_total", status="error") == 0
    assert value(text, "longbow_snapshot_operations_total", status="ok") >= 3
    # gRPC code names; ListActions counted; DoAction by action.
    codes = {dict(labels)["code"] for n, labels in s if n == "longbow_flight_requests_total"}
    assert {"OK", "NOT_FOUND", "UNIMPLEMENTED"} <= codes, codes
    assert all(re.fullmatch(r"[A-Z]+(_[A-Z]+)*", c) for c in codes), codes
    assert value(text, "longbow_flight_requests_total", method="ListActions", code="OK") == 1
    assert value(text, "longbow_flight_requests_total", method="DoGet", code="NOT_FOUND") == 1
    assert value(text, "longbow_flight_requests_total", method="DoPut", code="OK") == 6
    assert value(text, "longbow_flight_action_duration_seconds_count", action="force_snapshot") == 1
    assert value(text, "longbow_flight_action_duration_seconds_count", action="unknown") == 1
    assert value(text, "longbow_flight_action_duration_seconds_count", action="get_stats") == 1
    assert value(text, "longbow_do_get_rows_total") == 300
    assert value(text, "longbow_do_get_bytes_total") > 300 * 128 * 4
    # Process figures.
    now = time.time()
    assert now - 600 < value(text, "process_start_time_seconds") <= now + 1
    assert value(text, "process_threads") >= 3
    assert value(text, "process_max_fds") >= value(text, "process_open_fds") > 5
    assert value(text, "process_virtual_memory_bytes") >= value(text, "process_resident_memory_bytes") > 1e6
    assert value(text, "process_cpu_seconds_total") > 0
    # Storage: the snapshot covered everything; the volumes are real.
    for shard in ("0", "1"):
        assert value(text, "longbow_snapshot_lag_rows", shard=shard) == 0
        assert value(text, "longbow_wal_segments", shard=shard) >= 1
        assert value(text, "longbow_wal_disk_bytes", shard=shard) > 0
        assert now - 60 < value(text, "longbow_snapshot_last_success_timestamp_seconds", shard=shard) <= now
    for volume in ("wal", "snapshots"):
        size = value(text, "longbow_volume_size_bytes", volume=volume)
        assert 0 < value(text, "longbow_volume_available_bytes", volume=volume) <= size
        assert 0 < value(text, "longbow_volume_used_bytes", volume=volume) <= size
    assert value(text, "longbow_snapshot_interval_seconds") == 3600
    assert value(text, "longbow_memory_limit_bytes") == 256 << 20


def test_lag_counts_rows_not_yet_snapshotted(loaded):
    put(loaded.client(), "m0", [vectors(10_000, 70)])
    time.sleep(1.5)
    _, text = scrape(loaded)
    lag = sum(v for (n, _), v in samples(text).items() if n == "longbow_snapshot_lag_rows")
    batches = sum(v for (n, _), v in samples(text).items() if n == "longbow_snapshot_lag_batches")
    assert (lag, batches) == (70, 1)


def test_streams_are_timed_until_they_end(loaded):
    """A DoPut held open 1 s counts as active meanwhile and lasts >= 1 s;
    DoGet counts once it has streamed."""
    _, before = scrape(loaded)
    c = loaded.client()
    t = vectors(0, 10)
    writer, reader = c.do_put(fl.FlightDescriptor.for_path("held"), t.schema)
    writer.write_table(t)
    reader.read()
    _, during = scrape(loaded)
    assert value(during, "longbow_flight_active_streams", method="DoPut") == 1
    time.sleep(1.0)
    writer.done_writing()
    writer.close()
    deadline = time.time() + 10
    while True:
        _, after = scrape(loaded)
        if value(after, "longbow_flight_active_streams", method="DoPut") == 0:
            break
        assert time.time() < deadline, "the DoPut stream stayed active"
        time.sleep(0.05)
    key = dict(method="DoPut")
    seconds = (value(after, "longbow_flight_request_duration_seconds_sum", **key)
               - value(before, "longbow_flight_request_duration_seconds_sum", **key))
    assert value(after, "longbow_flight_request_duration_seconds_count", **key) == \
        value(before, "longbow_flight_request_duration_seconds_count", **key) + 1
    assert 1.0 <= seconds < 30, seconds
    assert value(after, "longbow_flight_requests_total", method="DoPut", code="OK") == 7


def test_a_put_whose_client_dies_is_cancelled(loaded):
    """A client killed mid-stream: CANCELLED, and no longer active."""
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import pyarrow.flight as fl
from test_pyarrow_e2e import vectors
c = fl.connect("grpc://{loaded.flight}")
t = vectors(0, 10)
w, r = c.do_put(fl.FlightDescriptor.for_path("gone"), t.schema)
w.write_table(t)
r.read()
print("acked", flush=True)
time.sleep(120)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "acked"
        _, during = scrape(loaded)
        assert value(during, "longbow_flight_active_streams", method="DoPut") == 1
    finally:
        child.kill()
        child.wait()
    deadline = time.time() + 10
    while True:
        _, text = scrape(loaded)
        s = samples(text)
        cancelled = s.get(("longbow_flight_requests_total", (("code", "CANCELLED"), ("method", "DoPut"))), 0)
        if cancelled == 1 and value(text, "longbow_flight_active_streams", method="DoPut") == 0:
            break
        assert time.time() < deadline, {k: v for k, v in s.items() if "flight" in k[0]}
        time.sleep(0.05)


def test_large_bodies_are_written_from_the_memory_they_arrived_in(tmp_path):
    """Bodies of 64 KiB and more go to the WAL from the gateway's aligned
    copy (frame version 3, a vectored write), smaller ones through the
    commit buffer; after kill -9 both kinds come back, in order."""
    s = Server(tmp_path / "data", shards=1)
    try:
        c = s.client()
        big = [vectors(i * 1000, 1000) for i in range(4)]  # 516 KB bodies
        small = [vectors(10_000 + i * 10, 10) for i in range(4)]
        put(c, "mixed", [t for pair in zip(big, small) for t in pair])
        text = scrape(s)[1]
        in_place = value(text, "longbow_wal_bytes_written_in_place_total")
        written = value(text, "longbow_wal_bytes_written_total")
        body = 1000 * 128 * 4
        assert 4 * body <= in_place <= 4 * (body + 4096 + 4096), in_place
        assert written > in_place
        s.kill()
        s = Server(tmp_path / "data", shards=1)
        got = s.client().do_get(fl.Ticket(b"mixed")).read_all()
        assert got == pa.concat_tables([t for pair in zip(big, small) for t in pair])
    finally:
        s.kill()
