#!/usr/bin/env bash
# scripts/test.sh — run all tests with one command.
#
# Ensures PostgreSQL/Redis (scripts/services.sh), builds the debug binaries the integration
# tests spawn (target/debug/llm-api, llm-worker), drops leftover per-test databases
# (llmtest_%), then runs `cargo nextest run` or, without nextest,
# `cargo test`. Extra arguments go to the test runner, e.g. scripts/test.sh -E 'test(auth)'.
set -euo pipefail
cd "$(dirname "$0")/.."

# Admin URL the harness uses to create one database per test, and the tests' Redis.
export TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}

DATABASE_URL=$TEST_DATABASE_URL REDIS_URL=$TEST_REDIS_URL scripts/services.sh
# Chromium and playwright-core for the demo page's test (browser::demo).
scripts/browser-deps.sh
cargo build --workspace --bins

# Leftovers of interrupted runs; best effort.
psql_test() { PGCONNECT_TIMEOUT=5 psql -X -w -q -tA -d "$TEST_DATABASE_URL" "$@"; }
for db in $(psql_test -c "select datname from pg_database where datname like 'llmtest\_%'" 2>/dev/null || true); do
  psql_test -c "drop database if exists \"$db\" with (force)" >/dev/null 2>&1 || true
done

# The project keeps no doctests (nextest does not run them), so nextest runs everything.
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
