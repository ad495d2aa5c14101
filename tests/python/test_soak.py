"""A shortened soak (the full one is scripts/soak.sh: 64 writer streams for
600 s): 16 writers and 4 readers for 20 s against the debug binary with a
small memory limit and the smallest WAL segments, so that back-pressure,
eviction, rotation and truncation happen in that time. Asserts the script's
own checks; the bounds are the formulas documented in scripts/soak.py and
docs/reliability.md, not tuned figures, and nothing here depends on speed.

When written, this failed on a real bug: DoGet answers INTERNAL ("opening
snapshot file ... No such file or directory") when compaction deletes a
file the scan was about to read (docs/reliability.md, "Last soak run",
finding 1)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("LONGBOW_BIN", Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "longbow"))


def test_short_soak_stays_bounded_and_loses_nothing(tmp_path):
    samples = tmp_path / "samples.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--binary", str(BINARY),
                        "--writers", "16", "--readers", "4", "--seconds", "20", "--warmup", "5",
                        "--datasets", "4", "--max-memory", "32MiB", "--wal-segment", "1MiB",
                        "--snapshot-interval", "2s", "--samples", str(samples)],
                       capture_output=True, text=True, timeout=900)
    out = r.stdout.strip().splitlines()
    assert out, r.stderr[-5000:]
    summary = json.loads(out[-1])
    detail = json.dumps(summary, indent=1) + "\n" + r.stderr[-3000:]
    assert r.returncode == 0 and summary["ok"], detail
    checks = summary["checks"]
    assert all(checks[k] for k in ("exactly_once", "rss", "memory_metric", "fds", "wal", "errors")), detail
    assert summary["errors"] == 0, detail
    assert summary["batches_acked"] > 0 and summary["rows_verified"] >= summary["rows_acked"], detail
    assert summary["rows_verified_after_restart"] == summary["rows_verified"], detail
    assert summary["fd_end"] <= summary["fd_baseline"] + 8, detail
    assert summary["rss_max_mib"] <= summary["rss_bound_mib"], detail
    assert summary["wal_max_mib"] <= summary["wal_bound_mib"], detail
    assert summary["wal_segments_deleted"], detail  # snapshots truncated the WAL during the run
    assert samples.stat().st_size > 0
