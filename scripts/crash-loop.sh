#!/usr/bin/env bash
# Repeated kill -9 under load with exactly-once verification (default 100 cycles).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh
cargo build --release --locked --bin longbow 2>&1 | tail -1
ulimit -l unlimited 2>/dev/null || true
exec .venv/bin/python scripts/crash_loop.py --cycles "${1:-100}" "${@:2}"
