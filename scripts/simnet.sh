#!/usr/bin/env bash
# README's first command: builds leasewire and runs the simnet on its embedded defaults
# (3 providers, 5 renters, lnd-sim) on this machine. Extra arguments go to `simnet`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --workspace --release --locked
exec ./target/release/simnet "$@"
