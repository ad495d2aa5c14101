#!/usr/bin/env bash
# Builds the release binary (installing a Rust toolchain if cargo is missing)
# and starts the server with local defaults: Flight on :3000, metrics on
# :9090, data in ./data. Extra arguments go to `longbow` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
    if ! command -v cc >/dev/null || ! command -v curl >/dev/null; then
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential curl ca-certificates >/dev/null
    fi
    [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi
ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
exec cargo run --release --locked --bin longbow -- "$@"
