#!/usr/bin/env bash
# scripts/check-layers.sh — the crate boundaries, checked on the dependency graph (no build):
#   llm-api    never links the worker crate or a provider HTTP client (reqwest): the api never
#              calls a provider;
#   llm-worker never links the api's HTTP surface (JWT, Swagger UI);
#   llm-shared links neither a web framework nor an HTTP client.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
# forbid CRATE DEP...: fails when CRATE's normal dependency tree lists any DEP.
forbid() {
  local crate=$1
  shift
  local tree
  tree=$(cargo tree --offline -p "$crate" -e normal --prefix none 2>/dev/null || cargo tree -p "$crate" -e normal --prefix none)
  for dep in "$@"; do
    if grep -q "^$dep v" <<<"$tree"; then
      echo "layer violation: $crate depends on $dep" >&2
      status=1
    fi
  done
}

forbid llm-api llm-worker reqwest
forbid llm-worker llm-api jsonwebtoken utoipa-swagger-ui
forbid llm-shared llm-api llm-worker axum reqwest jsonwebtoken utoipa-swagger-ui
if [ "$status" -eq 0 ]; then
  echo "crate layers: api ↛ worker, api ↛ provider clients, shared ↛ HTTP: ok"
fi
exit "$status"
