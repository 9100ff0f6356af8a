#!/bin/sh
# scripts/container-entrypoint.sh — the image's default command: one container that serves and
# works (`podman run -p 8100:8000 llm-service`). It applies the migrations once, then runs
# `llm-worker` and `llm-api serve` side by side, both configured by the same environment.
#   SIGTERM or SIGINT: passed to both as SIGTERM (each drains as it does alone); the script exits
#     when both have, 0 if both stopped cleanly, else the first failure's status.
#   Either process exiting by itself: the other is stopped, and the script exits non-zero (that
#     process's status, or 1 if it exited 0), so the container's restart policy restarts both.
# POSIX sh (the image's /bin/sh is dash): no `wait -n`, so a one-second poll notices a process
# that ended; `wait` is what a trapped signal interrupts at once.
set -u

stopping=0
trap 'stopping=1' TERM INT

llm-api migrate || exit $?
[ "$stopping" -eq 1 ] && exit 0

llm-worker &
worker=$!
llm-api serve &
api=$!

# The exit status of child $1, waiting until it has really ended: a trapped signal interrupts
# `wait` (status > 128) while the child still runs.
reap() {
  while :; do
    wait "$1"
    reaped=$?
    kill -0 "$1" 2>/dev/null || return "$reaped"
  done
}

# Each `wait` on the sleeper reaps any child that ended meanwhile, so `kill -0` then fails on it.
while [ "$stopping" -eq 0 ] && kill -0 "$worker" 2>/dev/null && kill -0 "$api" 2>/dev/null; do
  sleep 1 &
  sleeper=$!
  wait "$sleeper"
  kill "$sleeper" 2>/dev/null
done

kill -TERM "$worker" "$api" 2>/dev/null
reap "$worker"
worker_status=$?
reap "$api"
api_status=$?

if [ "$stopping" -eq 1 ]; then
  [ "$worker_status" -ne 0 ] && exit "$worker_status"
  exit "$api_status"
fi
# One of them ended on its own: report it, never as a success.
for status in "$worker_status" "$api_status"; do
  [ "$status" -ne 0 ] && exit "$status"
done
exit 1
