#!/usr/bin/env bash
# scripts/chaos.sh — the chaos suite: builds the binaries, then llm-chaos runs every scenario
# (workers and the api SIGKILLed under load, PostgreSQL and Redis restarted, provider faults)
# against the real llm-api / llm-worker and prints accepted / completed / failed / lost /
# completed twice per scenario; exits 1 if anything was lost, completed twice or broke.
#
# Needs the local PostgreSQL and Redis (scripts/services.sh) for most scenarios; the restart
# scenarios start private servers of their own (initdb/pg_ctl, redis-server on free ports),
# so the shared ones are never restarted. Extra arguments go to llm-chaos, e.g.
#   scripts/chaos.sh --quick                       # the small sizes CI runs
#   scripts/chaos.sh --only postgres-restart,redis-restart
# CHAOS_PROFILE=debug uses debug builds; CHAOS_LOG_LEVEL / TEST_PROCESS_LOGS=1 show the
# processes' logs.
set -euo pipefail
cd "$(dirname "$0")/.."
export TEST_DATABASE_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export TEST_REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
DATABASE_URL=$TEST_DATABASE_URL REDIS_URL=$TEST_REDIS_URL scripts/services.sh
profile=${CHAOS_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release --workspace --bins
else
  cargo build --workspace --bins
fi
exec "${CARGO_TARGET_DIR:-target}/$profile/llm-chaos" "$@"
