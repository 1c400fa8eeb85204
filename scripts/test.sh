#!/usr/bin/env bash
# README's test command: installs dependencies, builds every binary, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Build all binaries first: the CLI and simnet tests run the real `leasewire`, `lnd-sim` and
# `simnet` executables.
cargo build --workspace --locked
cargo test --workspace --locked --no-fail-fast
