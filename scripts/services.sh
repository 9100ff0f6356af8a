#!/usr/bin/env bash
# scripts/services.sh — make sure PostgreSQL and Redis are up for local dev and tests.
#
# Local servers (127.0.0.1:5432 / 127.0.0.1:6379, the defaults) are started if installed but
# stopped; DATABASE_URL / REDIS_URL pointing anywhere else are only checked, never started.
# Creates the database llm_service when DATABASE_URL is unset or the default. Idempotent;
# prints one line per service on success, exits 1 with what to do on failure.
set -euo pipefail

DEFAULT_DATABASE_URL=postgres://postgres@127.0.0.1:5432/llm_service
DB_URL=${DATABASE_URL:-$DEFAULT_DATABASE_URL}
RD_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export PGCONNECT_TIMEOUT=5

die() { echo "services.sh: $*" >&2; exit 1; }

install_hint() {
  die "$1 is not installed. On Debian/Ubuntu: apt-get install postgresql redis-server
  (or point DATABASE_URL / REDIS_URL at existing servers)."
}

# host:port of a URL such as scheme://user:pass@host:port/db?x=y (port defaults to $2).
host_port() {
  local rest=${1#*://}
  rest=${rest%%[/?]*}
  rest=${rest##*@}
  case $rest in
    \[*\]:*) echo "$rest" ;;
    \[*\]) echo "$rest:$2" ;;
    *:*) echo "$rest" ;;
    *) echo "${rest:-127.0.0.1}:$2" ;;
  esac
}

# True when $1 (host:port) is the standard local server this script may start ($2 = its port).
is_local_default() {
  case $1 in
    127.0.0.1:"$2" | localhost:"$2" | "[::1]:$2") return 0 ;;
    *) return 1 ;;
  esac
}

# Poll "$@" every 0.5 s for up to 30 s.
wait_until() {
  local i
  for ((i = 0; i < 60; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  return 1
}

psql_admin() { psql -X -w -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 5432 -U postgres -d postgres -tA "$@"; }

# ---------------------------------------------------------------- PostgreSQL
pg_addr=$(host_port "$DB_URL" 5432)
if is_local_default "$pg_addr" 5432; then
  { command -v pg_isready && command -v psql; } >/dev/null || install_hint "PostgreSQL (client)"
  pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }
  if pg_up; then
    pg_state="ready"
  else
    { command -v pg_ctlcluster >/dev/null && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; } || install_hint PostgreSQL
    # shellcheck disable=SC2046  # exactly the machine's start command
    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start >/dev/null ||
      die "could not start PostgreSQL (needs root or the postgres user)."
    wait_until pg_up || die "PostgreSQL did not become ready within 30 s."
    pg_state="started"
  fi
  hstore=$(psql_admin -c "select 1 from pg_available_extensions where name = 'hstore'") ||
    die "cannot connect as: psql -h 127.0.0.1 -U postgres -d postgres (trust auth for the postgres role is expected)."
  [ "$hstore" = 1 ] || die "the hstore extension is missing (Debian: apt-get install postgresql-contrib)."
  if [ "$DB_URL" = "$DEFAULT_DATABASE_URL" ] &&
    [ -z "$(psql_admin -c "select 1 from pg_database where datname = 'llm_service'")" ]; then
    psql_admin -c 'create database llm_service' >/dev/null
    pg_state="$pg_state, created database llm_service"
  fi
  echo "postgres: $pg_state (127.0.0.1:5432)"
else
  if command -v pg_isready >/dev/null; then
    pg_isready -q -d "$DB_URL" || die "PostgreSQL at $pg_addr (DATABASE_URL) is not reachable."
  else
    timeout 5 bash -c ": >/dev/tcp/${pg_addr%:*}/${pg_addr##*:}" 2>/dev/null ||
      die "PostgreSQL at $pg_addr (DATABASE_URL) is not reachable."
  fi
  echo "postgres: reachable ($pg_addr, not managed here)"
fi

# --------------------------------------------------------------------- Redis
rd_addr=$(host_port "$RD_URL" 6379)
if is_local_default "$rd_addr" 6379; then
  command -v redis-cli >/dev/null || install_hint "Redis (redis-cli)"
  rd_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
  if rd_up; then
    rd_state="ready"
  else
    command -v redis-server >/dev/null || install_hint Redis
    mkdir -p /var/lib/redis /var/log/redis || die "cannot create /var/lib/redis, /var/log/redis (run as root)."
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log >/dev/null || die "could not start Redis."
    wait_until rd_up || die "Redis did not become ready within 30 s (see /var/log/redis/ci.log)."
    rd_state="started"
  fi
  echo "redis: $rd_state (127.0.0.1:6379)"
else
  if command -v redis-cli >/dev/null; then
    [ "$(redis-cli -u "$RD_URL" ping 2>/dev/null)" = PONG ] || die "Redis at $rd_addr (REDIS_URL) is not reachable."
  else
    timeout 5 bash -c ": >/dev/tcp/${rd_addr%:*}/${rd_addr##*:}" 2>/dev/null ||
      die "Redis at $rd_addr (REDIS_URL) is not reachable."
  fi
  echo "redis: reachable ($rd_addr, not managed here)"
fi
