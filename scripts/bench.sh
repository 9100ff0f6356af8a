#!/usr/bin/env bash
# scripts/bench.sh — the benchmark command: builds release binaries, then llm-bench starts the
# stack itself (api + workers, mock provider) on a fresh database and prints its table
# (also written to .bench/results.json). Extra arguments go to llm-bench (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --bins
# The LLM-shaped phase holds 10,000 streams open on one api: as many sockets as the hard limit allows.
ulimit -n "$(ulimit -Hn)"
exec "${CARGO_TARGET_DIR:-target}/release/llm-bench" "$@"
