#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs (a Rust
# toolchain if cargo is missing, build packages with apt-get, Python packages
# into .venv), then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# tests/python/test_seccomp.py builds its filter with libseccomp's bindings,
# packaged for the system interpreter only.
/usr/bin/python3 -c 'import seccomp' 2>/dev/null || need_apt+=(python3-seccomp)
# tests/python/test_metrics.py and test_monitoring.py: promtool (metrics
# lint, rule unit tests) and a real Prometheus scraping the server.
{ command -v promtool && command -v prometheus; } >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# fmt and clippy are rustup components a minimal toolchain may lack.
if command -v rustup >/dev/null; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi
# glommio needs locked memory for io_uring; raise the soft limit if we can.
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true

echo "== python venv"
scripts/setup-python.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked --features longbow-server/fault-injection -- -D warnings
echo "== cargo test"
cargo test --workspace --locked --features longbow-server/fault-injection
echo "== pytest (pyarrow end to end)"
cargo build --locked -p longbow-server --bin longbow -p longbow-bench --bin longbow-bench
timeout 1200 .venv/bin/python -m pytest -q tests/python
echo "== all tests passed"
