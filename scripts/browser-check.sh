#!/usr/bin/env bash
# scripts/browser-check.sh — the demo page (/demo) checked in headless Chromium.
#
# Installs Chromium and playwright-core when missing (scripts/browser-deps.sh); makes sure PostgreSQL and Redis are up
# (scripts/services.sh); builds the debug binaries; runs llm-worker and llm-api with the mock
# provider against a database of its own; then drives the page (tests/browser/demo-check.mjs):
# submit, streamed text, a reconnection mid-stream, the stored result on the page.
#   --screenshot   also write the page as it ends to docs/images/demo.png
# Prints what it measured as one JSON line; exits non-zero when a check fails.
# shellcheck disable=SC2317  # cleanup is called from a trap
set -euo pipefail
cd "$(dirname "$0")/.."

screenshot=
case ${1:-} in
  --screenshot) screenshot=$PWD/docs/images/demo.png ;;
  "") ;;
  *) echo "usage: $0 [--screenshot]" >&2; exit 2 ;;
esac

die() { echo "browser-check.sh: $*" >&2; exit 1; }

export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
scripts/browser-deps.sh

admin_url=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export REDIS_URL=${TEST_REDIS_URL:-${REDIS_URL:-redis://127.0.0.1:6379}}
DATABASE_URL=$admin_url scripts/services.sh >/dev/null
cargo build --quiet --bins -p llm-api -p llm-worker
bin=${CARGO_TARGET_DIR:-target}/debug

db=llm_browser_check_$$
psql_admin() { PGCONNECT_TIMEOUT=5 psql -X -w -q -tA -d "$admin_url" "$@"; }
psql_admin -c "create database $db" >/dev/null
export DATABASE_URL=${admin_url%/*}/$db
export REDIS_KEY_PREFIX=$db
export MOCK_PROVIDER=true LOG_LEVEL=warn
SECRET_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export SECRET_KEY
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port

pids=()
cleanup() {
  [ ${#pids[@]} -eq 0 ] || kill -TERM "${pids[@]}" 2>/dev/null || true
  [ ${#pids[@]} -eq 0 ] || wait "${pids[@]}" 2>/dev/null || true
  psql_admin -c "drop database if exists $db with (force)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$bin/llm-api" migrate >/dev/null
WORKER_METRICS_LISTEN=127.0.0.1:0 WORKER_POLL_MS=200 "$bin/llm-worker" &
pids+=($!)
API_LISTEN=127.0.0.1:$port API_PIN_THREADS=false "$bin/llm-api" serve &
pids+=($!)
for _ in $(seq 100); do
  curl -fsS "$base/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$base/health/ready" >/dev/null || die "llm-api did not become ready on $base"

user=$(python3 -c 'import uuid; print(uuid.uuid4())')
token=$("$bin/llm-api" token --user "$user" --ttl-secs 600)
[ -z "$screenshot" ] || mkdir -p "$(dirname "$screenshot")"
BASE_URL=$base TOKEN=$token SCREENSHOT=$screenshot node tests/browser/demo-check.mjs
