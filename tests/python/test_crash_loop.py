"""A shortened crash loop (the full one is scripts/crash-loop.sh): kill -9
under concurrent load, with snapshots and WAL rotation; every acknowledged
batch must be present exactly once after each restart."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("LONGBOW_BIN", Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "longbow"))


def test_ten_kill9_cycles_lose_nothing():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "crash_loop.py"), "--cycles", "10",
                        "--binary", str(BINARY), "--seed", "7"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["ok"] and summary["lost"] == 0
    assert summary["acked"] > 0 and summary["batches_verified"] >= summary["acked"]
