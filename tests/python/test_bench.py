"""The bench harness end to end: `longbow-bench` starting the real `longbow`
itself (--spawn-server) or hitting one already running (--target), job
files, and the JSON document it writes. Nothing here is timed: figures are
checked for consistency (counts, order of percentiles), never for speed."""

import json
import os
import subprocess
from pathlib import Path

from test_pyarrow_e2e import BINARY, Server, put, vectors

BENCH = Path(os.environ.get("LONGBOW_BENCH_BIN", BINARY.with_name("longbow-bench")))
# Both binaries are built by scripts/test.sh; shards are not pinned so that
# parallel builds and tests on the same cores do not fight them.
SPAWN = ["--spawn-server", f"--binary={BINARY}", "--server-env=LONGBOW_PIN_CORES=false"]


def bench(*args, check=True):
    p = subprocess.run([str(BENCH), *map(str, args), "--output-format", "json"],
                       capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout), p.stderr
    return p


def ordered(stats):
    lat = stats["lat_us"]
    assert lat["samples"] > 0
    assert lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p99.9"] <= lat["max"], lat
    return lat


def test_put_spawned_server_exact_rows():
    # 5,500 rows of 1,000-row batches: the last batch is short.
    doc, stderr = bench("put", *SPAWN, "--shards", 2, "--streams", 2, "--total-rows", 5500, "--name", "exact")
    [job] = doc["jobs"]
    assert job["jobname"] == "exact" and job["workload"] == "put"
    assert job["server"]["spawned"] is True and job["server"]["shards"] == 2
    assert job["options"]["total_rows"] == 5500 and job["options"]["streams"] == 2
    w = job["write"]
    assert w["rows"] == 5500 and w["batches"] == 6
    assert w["io_bytes"] > 5500 * 128 * 4
    assert w["rows_per_s"] > 0 and w["bw_mib_s"] > 0
    assert ordered(w)["samples"] == 6
    assert "read" not in job
    assert doc["host"]["cpus"] >= 1
    assert "exact: workload=put" in stderr  # the human summary goes to stderr with json


def test_job_file_two_jobs(tmp_path):
    jobs = tmp_path / "jobs.ini"
    jobs.write_text(f"""
[global]
spawn-server=1
binary={BINARY}
server-env=LONGBOW_PIN_CORES=false
shards=1
rows-per-batch=100

[bulk]
workload=put
streams=2
total-rows=3000
dataset-per-stream=1

[one-at-a-time]
workload=put
streams=1
window=1
rows_per_batch=10
total-rows=200
rate-batches=200
""")
    doc, _ = bench("run", jobs)
    assert doc["job_file"] == str(jobs)
    assert [j["jobname"] for j in doc["jobs"]] == ["bulk", "one-at-a-time"]
    bulk, single = doc["jobs"]
    assert bulk["options"]["rows_per_batch"] == 100 and bulk["options"]["dataset_per_stream"] is True
    assert bulk["write"]["rows"] == 3000 and bulk["write"]["batches"] == 30
    assert single["options"]["window"] == 1 and single["options"]["rate_batches"] == 200
    assert single["write"]["rows"] == 200 and single["write"]["batches"] == 20
    for j in doc["jobs"]:
        assert j["server"]["shards"] == 1
        assert j["write"]["io_bytes"] > 0
        ordered(j["write"])
    # --job-file is the same as `run`.
    again, _ = bench("--job-file", jobs)
    assert [j["write"]["rows"] for j in again["jobs"]] == [3000, 200]


def test_job_file_mistakes_fail_clearly(tmp_path):
    jobs = tmp_path / "bad.ini"
    jobs.write_text("[a]\nworkload=get\nwindow=4\n")
    p = bench("run", jobs, check=False)
    assert p.returncode != 0 and 'no option "window"' in p.stderr


def test_mixed_reports_puts_and_scans():
    doc, _ = bench("mixed", *SPAWN, "--shards", 1, "--streams", 1, "--readers", 2, "--fill-rows", 2000,
                   "--duration", 1, "--rows-per-batch", 500)
    [job] = doc["jobs"]
    w, r = job["write"], job["read"]
    assert w["rows"] > 0 and w["rows"] % 500 == 0
    ordered(w)
    # Every scan sees at least the fill, at most everything written.
    scans = ordered(r)["samples"]
    assert 2000 * scans <= r["rows"] <= (2000 + w["rows"]) * scans
    assert r["io_bytes"] > 0


def test_snapshot_times_force_snapshot_and_side_acks(tmp_path):
    doc, _ = bench("snapshot", *SPAWN, "--shards", 1, "--mib", 2, "--baseline", 0.5, "--dataset", "vec",
                   "--data-path", tmp_path / "data", "--snapshot-path", tmp_path / "snaps")
    [job] = doc["jobs"]
    s = job["snapshot"]
    assert job["write"]["io_bytes"] >= 2 << 20 and s["arrow_bytes"] == job["write"]["io_bytes"]
    assert s["seconds"] > 0 and s["mib_per_s"] > 0
    assert s["result"], "force_snapshot answered"
    ordered(s["side_before"])
    assert s["side_before"]["rows"] == 10 * s["side_before"]["batches"]
    assert s["side_during"]["batches"] >= 0
    # The snapshot went to the directory given, as Parquet.
    assert list((tmp_path / "snaps" / "vec").glob("*.parquet"))


def test_get_against_a_running_server(tmp_path):
    server = Server(tmp_path / "data", shards=1)
    try:
        client = server.client()
        put(client, "scanme", [vectors(i * 1000, 1000) for i in range(3)])
        doc, _ = bench("get", "--target", server.flight, "--dataset", "scanme", "--streams", 2, "--repeat", 2)
        [job] = doc["jobs"]
        assert job["server"]["spawned"] is False
        r = job["read"]
        assert r["rows"] == 4 * 3000 and ordered(r)["samples"] == 4
        # The harness wrote nothing.
        assert [f.total_records for f in client.list_flights()] == [3000]
        p = bench("get", "--target", server.flight, "--dataset", "absent", check=False)
        assert p.returncode != 0 and "not found" in p.stderr
    finally:
        assert server.stop() == 0


def test_token_reaches_a_secured_server(tmp_path):
    """--token authenticates every call (and is never written out); without
    it a secured server refuses the job with UNAUTHENTICATED."""
    env = {k: v for k, v in os.environ.items() if k != "LONGBOW_AUTH_TOKEN"}
    server = Server(tmp_path / "data", extra=["--auth-token", "s3cret-bench"])
    try:
        target = f"http://{server.flight}"
        p = subprocess.run([str(BENCH), "put", "--target", target, "--token", "s3cret-bench", "--total-rows", "2000",
                            "--output-format", "json"], capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["jobs"][0]["write"]["rows"] == 2000
        assert "s3cret-bench" not in p.stdout + p.stderr
        p = subprocess.run([str(BENCH), "put", "--target", target, "--total-rows", "2000"],
                           capture_output=True, text=True, timeout=120, env=env)
        assert p.returncode != 0 and "missing or wrong bearer token" in p.stderr, p.stderr
    finally:
        server.stop()


# The Python side of scripts/bench.sh: the load generator's fixed-amount mode,
# the stage-histogram parser and the targets table.

import sys  # noqa: E402

from test_pyarrow_e2e import ROOT  # noqa: E402

sys.path.insert(0, str(ROOT / "bench" / "python"))
import bench_report  # noqa: E402
import stages  # noqa: E402
import targets  # noqa: E402

PY_BENCH = ROOT / "bench" / "python"

OPENMETRICS = """# HELP longbow_put_stage_seconds Time of each DoPut stage.
# TYPE longbow_put_stage_seconds histogram
longbow_put_stage_seconds_sum{stage="decode",shard="0"} 0.002
longbow_put_stage_seconds_count{stage="decode",shard="0"} 60
longbow_put_stage_seconds_bucket{stage="decode",shard="0",le="0.00002"} 30
longbow_put_stage_seconds_bucket{stage="decode",shard="0",le="0.00004"} 60
longbow_put_stage_seconds_bucket{stage="decode",shard="0",le="+Inf"} 60
longbow_put_stage_seconds_sum{stage="decode",shard="1"} 0.001
longbow_put_stage_seconds_count{stage="decode",shard="1"} 40
longbow_put_stage_seconds_bucket{stage="decode",shard="1",le="0.00002"} 20
longbow_put_stage_seconds_bucket{stage="decode",shard="1",le="0.00004"} 40
longbow_put_stage_seconds_bucket{stage="decode",shard="1",le="+Inf"} 40
longbow_put_stage_seconds_sum{stage="fdatasync"} 0.05
longbow_put_stage_seconds_count{stage="fdatasync"} 100
longbow_put_stage_seconds_bucket{stage="fdatasync",le="0.00032"} 0
longbow_put_stage_seconds_bucket{stage="fdatasync",le="0.00064"} 98 # {trace_id="a b}"} 0.0005 1.7e9
longbow_put_stage_seconds_bucket{stage="fdatasync",le="+Inf"} 100
longbow_put_stage_seconds_created{stage="fdatasync"} 1.7e9
# HELP longbow_other_seconds Not the family.
# TYPE longbow_other_seconds histogram
longbow_other_seconds_count 5
# EOF
"""

# The 0.0.4 text format: no # EOF, counts as floats, optional timestamps.
TEXT_004 = """# TYPE longbow_put_stage_seconds histogram
longbow_put_stage_seconds_bucket{le="1e-05",stage="queue"} 1.0 1700000000000
longbow_put_stage_seconds_bucket{le="2e-05",stage="queue"} 3.0 1700000000000
longbow_put_stage_seconds_bucket{le="+Inf",stage="queue"} 4.0 1700000000000
longbow_put_stage_seconds_sum{stage="queue"} 8e-05
longbow_put_stage_seconds_count{stage="queue"} 4.0
"""


def test_stage_histogram_parser(tmp_path):
    rows = {r["stage"]: r for r in stages.summarize(stages.histogram(OPENMETRICS))}
    assert list(rows) == ["decode", "fdatasync"]  # pipeline order; the shards added up
    assert rows["decode"]["count"] == 100 and rows["decode"]["mean_us"] == 30.0
    assert rows["decode"]["p50_us"] == 20.0  # exactly the first bucket's bound
    assert 20.0 < rows["decode"]["p99_us"] <= 40.0
    # 50 of 98 in (320, 640] µs: linear inside the bucket.
    assert abs(rows["fdatasync"]["p50_us"] - (320 + 320 * 50 / 98)) < 0.2
    assert rows["fdatasync"]["p99_us"] == 640.0  # in +Inf: the largest finite bound
    queue = stages.summarize(stages.histogram(TEXT_004))[0]
    assert queue == {"stage": "queue", "count": 4, "mean_us": 20.0, "p50_us": 15.0, "p99_us": 20.0}
    # Only what happened between two scrapes.
    diff = stages.subtract(stages.histogram(OPENMETRICS), stages.histogram(OPENMETRICS.replace("} 98 #", "} 90 #")
                                                                           .replace('"fdatasync"} 100', '"fdatasync"} 92')))
    assert diff["fdatasync"]["count"] == 8 and dict(diff["fdatasync"]["buckets"])[0.00064] == 8
    assert stages.histogram("# EOF\n") is None
    # The command line, with and without the family.
    (tmp_path / "after.txt").write_text(OPENMETRICS)
    (tmp_path / "none.txt").write_text("longbow_wal_writes_total 3\n# EOF\n")
    p = subprocess.run([sys.executable, PY_BENCH / "stages.py", tmp_path / "after.txt", "--before", tmp_path / "after.txt",
                        "--json", tmp_path / "s.json"], capture_output=True, text=True, check=True)
    assert "decode" in p.stdout and json.loads((tmp_path / "s.json").read_text())["stages"][0]["count"] == 0
    p = subprocess.run([sys.executable, PY_BENCH / "stages.py", tmp_path / "none.txt", "--json", tmp_path / "n.json"],
                       capture_output=True, text=True, check=True)
    assert "not exported by this build" in p.stdout
    assert json.loads((tmp_path / "n.json").read_text())["exported"] is False


def put_bench(*args):
    p = subprocess.run([sys.executable, PY_BENCH / "put_bench.py", *map(str, args)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_put_bench_fixed_amount_counts_errors_and_sends_again(tmp_path):
    """Every 5th batch refused: the streams are opened again, the refused
    batches sent again, and exactly the amount asked for is acknowledged."""
    ref = subprocess.Popen([sys.executable, PY_BENCH / "ref_server.py", "--mode", "null", "--fail-every", "5",
                            "--data", tmp_path], stdout=subprocess.PIPE, text=True)
    try:
        addr = ref.stdout.readline().split("flight=")[1].strip()
        r = put_bench("--addr", addr, "--streams", 2, "--batches", 23, "--rows", 100, "--label", "x")
        assert r["batches"] == 23 and r["target_batches"] == 23 and r["complete"] is True
        assert r["rows_acked"] == 2300 and r["errors"] >= 4 and "UNAVAILABLE" in r["first_error"].upper()
        r = put_bench("--addr", addr, "--streams", 1, "--batches", 12, "--rows", 10, "--one-at-a-time")
        assert r["batches"] == 12 and r["errors"] >= 2 and r["p50_us"] <= r["p99_us"]
    finally:
        ref.kill()
        ref.wait()


def test_put_bench_bytes_rss_and_verify_against_longbow(tmp_path):
    server = Server(tmp_path / "data", shards=1)
    try:
        # 3.5 batches of 100 x 128-d float32 (51,600 bytes each): 4 batches.
        r = put_bench("--addr", server.flight, "--streams", 1, "--bytes", 3 * 51_600 + 20_000, "--rows", 100,
                      "--rss-pid", server.proc.pid, "--verify", "--dataset", "fixed")
        assert r["batch_bytes"] == 51_600 and r["batches"] == 4 and r["errors"] == 0 and r["complete"] is True
        assert r["rows_acked"] == 400 and r["rows_stored"] == 400 and r["stored_equals_acked"] is True
        assert 0 < r["rss_start_mib"] <= r["rss_hwm_mib"] and r["rss_peak_mib"] > 0
        assert [f.total_records for f in server.client().list_flights()] == [400]
    finally:
        assert server.stop() == 0


def test_targets_table_and_report(tmp_path):
    def lines(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    lines("py-throughput.jsonl", [
        {"label": "rust-null-sink", "streams": 2, "mb_per_s": 1000.0, "rows_per_s": 1},
        {"label": "longbow-tmpfs", "streams": 2, "mb_per_s": 850.0, "rows_per_s": 1, "batches": 10,
         "batch_bytes": 516000, "seconds": 1.0, "target_batches": 10, "complete": True},
        {"label": "longbow", "streams": 2, "mb_per_s": 400.0, "rows_per_s": 1},
        {"label": "pyarrow-fsync-server", "streams": 2, "mb_per_s": 200.0, "rows_per_s": 1}])
    lines("py-latency.jsonl", [{"label": "rust-null-sink", "p50_us": 100, "p99_us": 200},
                               {"label": "longbow", "p50_us": 390, "p99_us": 600}])
    lines("memory.jsonl", [
        {"label": "longbow-unlimited", "mb_per_s": 300.0, "seconds": 3.0, "errors": 0, "rows_acked": 2000,
         "rows_stored": 2000, "rss_peak_mib": 1400.0, "rss_hwm_mib": 1410.0},
        {"label": "longbow-limited", "mb_per_s": 240.0, "seconds": 4.0, "errors": 0, "complete": True,
         "rows_acked": 2000, "rows_stored": 2000, "rss_peak_mib": 500.0, "rss_hwm_mib": 560.0}])
    (tmp_path / "memory-limit.json").write_text(json.dumps({"limit_mib": 256, "factor": 4}))
    (tmp_path / "fio.json").write_text(json.dumps({
        "jobs": 2, "write_overwrite_mib_s": 400.0, "write_new_mib_s": 300.0, "read_mib_s": 900.0,
        "small_sync": {"write_p50_us": 60, "write_p99_us": 100, "fdatasync_p50_us": 140, "fdatasync_p99_us": 200}}))
    (tmp_path / "stages.json").write_text(json.dumps({"family": "longbow_put_stage_seconds", "exported": False}))
    for name, mib_s in [("local", 400.0), ("s3", 300.0)]:  # 0.75x: met
        (tmp_path / f"snapshot-{name}.json").write_text(json.dumps({"jobs": [{"snapshot": {"mib_per_s": mib_s}}]}))
    (tmp_path / "s3-costs.json").write_text(json.dumps(
        {"cores": 2, "weed_cpu_s_snapshot": 1.0, "weed_cpu_s_raw_put": 0.9, "raw_put_mib_s": 150.0, "mib": 128}))
    for streams, owner, fwd in [(1, 200.0, 150.0), (2, 300.0, 150.0)]:  # 0.75x met, 0.5x missed
        (tmp_path / f"forward-{streams}.json").write_text(json.dumps(
            {"median_mb_per_s": {"owner": owner, "forwarded": fwd}}))
    (tmp_path / "cluster.json").write_text(json.dumps(
        {"three_one_shard_nodes_mb_per_s": 330.0, "one_two_shard_node_mb_per_s": 550.0}))
    rows = targets.compute(tmp_path)
    got = {(r["measure"], r["target"]): r for r in rows}
    verdict = {k: r["pass"] for k, r in got.items()}
    assert verdict[("CPU path: longbow, WAL on tmpfs, 2 streams", ">= 0.8x")] is True  # 0.85
    # 400 MB/s = 381.5 MiB/s against 400 MiB/s of fio: 0.95.
    assert verdict[("WAL on disk, 2 streams", ">= 0.9x")] is True
    assert verdict[("WAL on disk, 2 streams", ">= 2.5x")] is False  # 2.0
    assert verdict[("one producer writing 4x LONGBOW_MAX_MEMORY (256 MiB)", ">= 0.7x, 0 errors")] is True
    assert got[("RSS during that (peak)", "<= limit + 300 MiB")]["pass"] is False  # 560 > 556
    assert verdict[("rows stored after that (DoGet)", "== acknowledged")] is True
    p50 = got[("10-row batches one at a time, p50", "<= reference + 100 µs")]
    assert p50["reference"] == 300 and p50["pass"] is True  # 390 <= 100 + 60 + 140 + 100
    p99 = got[("10-row batches one at a time, p99", "<= 1.3x")]
    assert p99["reference"] == 500 and p99["pass"] is True  # 600 <= 650
    s3 = got[("snapshot to S3 (SeaweedFS on loopback)", ">= 0.7x")]
    # Encoding 128 MiB at 400 MiB/s: 0.32 s; with SeaweedFS's 1.0 CPU-s on
    # 2 cores no less than 0.66 s.
    assert s3["pass"] is True and "bound on this host 0.48x" in s3["note"], s3
    raw = got[("snapshot to S3 (SeaweedFS on loopback)", "reported")]
    assert raw["reference"] == 150.0 and raw["ratio"] == 2.0
    assert verdict[("DoPut forwarded through a non-owner, 1 stream", ">= 0.6x")] is True
    assert verdict[("DoPut forwarded through a non-owner, 2 streams", ">= 0.6x")] is False
    assert got[("aggregate ingest, 3 one-shard nodes, clients spread over them", "reported")]["ratio"] == 0.6
    targets.main([str(tmp_path)])
    doc = json.loads((tmp_path / "targets.json").read_text())
    assert doc["failed"] == 3 and doc["passed"] == 10 and doc["not_measured"] == 0
    (tmp_path / "machine.json").write_text(json.dumps({
        "date": "d", "commit": "c", "subject": "s", "dirty": False, "host": "h", "cpus": 2, "cpu_model": "m",
        "mem_gib": 1, "kernel": "k", "fs": "ext4 on /dev/x", "secs": 2, "quick": True, "tmpfs": "a 1 GiB tmpfs"}))
    block = bench_report.render(tmp_path)
    assert "### Targets" in block and "| **FAIL** (+304 MiB over the limit) |" in block
    assert "| **longbow-tmpfs** | 2 | 850.0 |" in block and "0.85 |" in block
    assert "not exported by this build" in block and "Quick mode" in block
    assert "| longbow-limited | 240.0 | 4.0 | 0 | 560 | 2,000 | 2,000 |" in block
