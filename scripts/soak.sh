#!/usr/bin/env bash
# Soak: concurrent writers and readers for a fixed time under a memory limit,
# with RSS, descriptors and WAL size sampled and checked (default 64 writer
# streams for 600 s). Extra arguments go to scripts/soak.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-python.sh
cargo build --release --locked -p longbow-server --bin longbow 2>&1 | tail -1
ulimit -l unlimited 2>/dev/null || true
exec .venv/bin/python scripts/soak.py --writers "${1:-64}" --seconds "${2:-600}" "${@:3}"
