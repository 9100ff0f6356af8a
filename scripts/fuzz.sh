#!/usr/bin/env bash
# scripts/fuzz.sh — fuzz the api from its own OpenAPI document (schemathesis); no 5xx allowed.
#
# Starts PostgreSQL/Redis if needed (scripts/services.sh), builds the debug binaries, creates a
# fresh database, runs llm-api and one llm-worker on it, then runs schemathesis (from PyPI, in
# .venv-fuzz/) against /openapi.json with an admin bearer token (so every route is reached
# past its auth check) and the `not_a_server_error` check, for FUZZ_SECONDS (default 120).
# Afterwards the api's own counters (/metrics, llm_http_requests_total) are summed: the run
# fails if any answer was a 5xx, whatever schemathesis says. Reports land in .fuzz/.
#
#   scripts/fuzz.sh                 # 120 s
#   FUZZ_SECONDS=600 scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-120}
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
DB_NAME="llm_fuzz_$(date +%s)_$$"
DB_URL="${ADMIN_URL%/*}/$DB_NAME"
OUT=.fuzz
mkdir -p "$OUT"

DATABASE_URL=$ADMIN_URL REDIS_URL=$REDIS scripts/services.sh
cargo build --workspace --bins
# The binaries just built (CARGO_TARGET_DIR is honoured, as cargo does).
BIN=${CARGO_TARGET_DIR:-target}/debug

if [ ! -x .venv-fuzz/bin/schemathesis ]; then
  python3 -m venv .venv-fuzz
  .venv-fuzz/bin/pip install --quiet --upgrade pip
  .venv-fuzz/bin/pip install --quiet 'schemathesis>=4,<5'
fi

psql_admin() { PGCONNECT_TIMEOUT=5 psql -X -w -q -tA -d "$ADMIN_URL" "$@"; }
psql_admin -c "CREATE DATABASE $DB_NAME" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
BASE="http://127.0.0.1:$PORT"
export DATABASE_URL=$DB_URL REDIS_URL=$REDIS REDIS_KEY_PREFIX="$DB_NAME:" LOG_LEVEL=${LOG_LEVEL:-warn}
# Limits far above what the fuzzer sends: a 429 is not a bug, but it hides the handlers.
export RATE_LIMIT_RPM=1000000 RATE_LIMIT_TPM=2000000000
# A signing key of this run's own (the api has no default), for the api and the token below.
SECRET_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export SECRET_KEY
export MOCK_PROVIDER=true # submits reach the workers with no provider key
export USER_MAX_QUEUED=0 USER_MAX_STREAMS=0 USER_MAX_WAITS=0

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql_admin -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$BIN"/llm-api migrate >/dev/null
API_LISTEN=127.0.0.1:$PORT "$BIN"/llm-api serve >"$OUT/api.log" 2>&1 &
pids+=($!)
WORKER_METRICS_LISTEN=127.0.0.1:0 "$BIN"/llm-worker >"$OUT/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS "$BASE/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$BASE/health/ready" >/dev/null

TOKEN=$("$BIN"/llm-api token --user 00000000-0000-4000-8000-0000000f0220 --role admin)

echo "==> schemathesis against $BASE/openapi.json for ${FUZZ_SECONDS}s"
set +e
.venv-fuzz/bin/schemathesis run "$BASE/openapi.json" \
  --checks not_a_server_error \
  --header "Authorization: Bearer $TOKEN" \
  --max-time "$FUZZ_SECONDS" \
  --workers 2 \
  --request-timeout 40 \
  --seed "${FUZZ_SEED:-20261201}" \
  --generation-database none \
  --no-color \
  --report junit,ndjson --report-dir "$OUT/report" | tee "$OUT/schemathesis.txt"
st_status=${PIPESTATUS[0]}
set -e

# The api's own count of every answer it gave, by status.
metrics=$(curl -fsS "$BASE/metrics")
total=$(awk '/^llm_http_requests_total\{/ {s += $NF} END {print s + 0}' <<<"$metrics")
server_errors=$(awk '/^llm_http_requests_total\{/ && /status="5[0-9][0-9]"/ {s += $NF} END {print s + 0}' <<<"$metrics")
echo "==> the api answered $total requests, $server_errors of them 5xx"
grep -E '^llm_http_requests_total\{.*status="5' <<<"$metrics" || true

if [ "$server_errors" != "0" ]; then
  echo "fuzz.sh: the api answered $server_errors requests with a 5xx (see $OUT/api.log)" >&2
  exit 1
fi
if [ "$st_status" != "0" ]; then
  echo "fuzz.sh: schemathesis reported failures (exit $st_status); see $OUT/schemathesis.txt" >&2
  exit "$st_status"
fi
echo "==> no 5xx"
