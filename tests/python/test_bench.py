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
