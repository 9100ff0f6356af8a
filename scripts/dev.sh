#!/usr/bin/env bash
# scripts/dev.sh — run everything locally in one command.
#
# Starts PostgreSQL/Redis (scripts/services.sh), builds the release binaries, exports SECRET_KEY
# (this machine's random key from .dev-secret-key, made on first run, unless one is set), runs
# llm-worker and `llm-api serve` in the background (logs in .dev/worker.log and .dev/api.log), waits for
# /health/ready, submits a demo prompt and polls its result. Then stays in the foreground:
# Ctrl-C (or either process dying) stops both with SIGTERM, so the worker drains gracefully.
# shellcheck disable=SC2317  # functions below are called from traps
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_USER=00000000-0000-4000-8000-00000000d3e0
bin=${CARGO_TARGET_DIR:-target}/release
listen=${API_LISTEN:-127.0.0.1:8100}
api="http://${listen/0.0.0.0/127.0.0.1}"
pids=()

any_alive() {
  local p
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done
  return 1
}

stop_children() {
  trap - EXIT TERM
  trap 'kill -KILL "${pids[@]}" 2>/dev/null' INT # a second Ctrl-C forces
  [ ${#pids[@]} -gt 0 ] || return 0
  echo "stopping llm-api and llm-worker (SIGTERM; Ctrl-C again to force)..."
  kill -TERM "${pids[@]}" 2>/dev/null || true
  # Bounded: the worker's drain grace plus a margin, then SIGKILL.
  local i limit=$(((${SHUTDOWN_GRACE_SECS:-30} + 10) * 2))
  for ((i = 0; i < limit; i++)); do
    any_alive || break
    sleep 0.5
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop_children EXIT
trap 'exit 130' INT TERM

# Pretty-print JSON with jq when it is there and the input parses; else print it as is.
pretty() {
  local body
  body=$(cat)
  jq . 2>/dev/null <<<"$body" || printf '%s\n' "$body"
}

# The demo runs on the mock provider (off unless enabled: it answers anything for free).
export MOCK_PROVIDER=${MOCK_PROVIDER:-true}
scripts/services.sh
cargo build --release --bins
mkdir -p .dev

# The api has no default signing key: this machine gets a random one, made once and kept in
# .dev-secret-key (git-ignored, readable by its owner only). A SECRET_KEY already set wins.
if [ -z "${SECRET_KEY:-}" ]; then
  if [ ! -s .dev-secret-key ]; then
    (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >.dev-secret-key)
  fi
  SECRET_KEY=$(cat .dev-secret-key)
fi
export SECRET_KEY

"$bin/llm-worker" >.dev/worker.log 2>&1 &
pids+=($!)
"$bin/llm-api" serve >.dev/api.log 2>&1 &
pids+=($!)
api_pid=$!

echo "waiting for $api/health/ready ..."
for ((i = 0; ; i++)); do
  if curl -fsS -o /dev/null "$api/health/ready" 2>/dev/null; then break; fi
  if ! kill -0 "$api_pid" 2>/dev/null || ((i >= 120)); then
    echo "llm-api did not become ready; last lines of .dev/api.log:" >&2
    tail -n 30 .dev/api.log >&2
    exit 1
  fi
  sleep 0.5
done

token=$("$bin/llm-api" token --user "$DEMO_USER" | tail -n 1)

echo "== POST $api/api/v1/generate"
submitted=$(curl -sS --fail-with-body -X POST "$api/api/v1/generate" \
  -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
  -d '{"prompt": "Say hello to the llm-service demo.", "model": "mock"}')
pretty <<<"$submitted"

poll_url=$(sed -n 's/.*"poll_url" *: *"\([^"]*\)".*/\1/p' <<<"$submitted")
echo "== GET $api$poll_url?wait=10"
curl -sS --fail-with-body -H "Authorization: Bearer $token" "$api$poll_url?wait=10" | pretty

cat <<EOF

Running: api on $api (pid $api_pid), worker (pid ${pids[0]}); logs in .dev/api.log, .dev/worker.log.
Mint a token:  SECRET_KEY=\$(cat .dev-secret-key) $bin/llm-api token --user $DEMO_USER
Press Ctrl-C to stop both.
EOF

# Stay in the foreground until Ctrl-C or until either process exits on its own.
set +e
wait -n "${pids[@]}"
status=$?
set -e
echo "a service process exited (status $status); see .dev/*.log" >&2
exit 1
