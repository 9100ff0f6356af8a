#!/usr/bin/env bash
# scripts/docs-check.sh — opens /docs in headless Chromium and checks that it renders every
# operation of /openapi.json and that the page requests nothing outside localhost.
#
# Installs Debian's `chromium` if it is missing (apt-get; needs root), builds the debug api,
# runs it on a fresh database, loads /docs/ with --dump-dom (JavaScript run, DOM printed) while
# every host but 127.0.0.1 resolves to nothing, and records Chromium's network log. Then:
#  - every (method, path) of /openapi.json is an operation block of the rendered page;
#  - every request the page made (Chromium's network log, by initiator) went to 127.0.0.1: the
#    Swagger UI assets come from the binary and nothing is fetched from a CDN or a validator.
# Output (DOM, network log) in .docs-check/.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.docs-check
mkdir -p "$OUT"
ADMIN_URL=${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS=${TEST_REDIS_URL:-redis://127.0.0.1:6379}
DB_NAME="llm_docs_$(date +%s)_$$"

CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  echo "==> installing Debian's chromium"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  CHROMIUM=$(command -v chromium)
fi
"$CHROMIUM" --version

DATABASE_URL=$ADMIN_URL REDIS_URL=$REDIS scripts/services.sh
cargo build --bin llm-api
# The binaries just built (CARGO_TARGET_DIR is honoured, as cargo does).
BIN=${CARGO_TARGET_DIR:-target}/debug

psql_admin() { PGCONNECT_TIMEOUT=5 psql -X -w -q -tA -d "$ADMIN_URL" "$@"; }
psql_admin -c "CREATE DATABASE $DB_NAME" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
PROFILE=$(mktemp -d)
api_pid=
cleanup() {
  [ -n "$api_pid" ] && { kill "$api_pid" 2>/dev/null || true; wait "$api_pid" 2>/dev/null || true; }
  rm -rf "$PROFILE"
  psql_admin -c "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# A signing key of this run's own: the api has no default (the page needs no token).
SECRET_KEY=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
export SECRET_KEY
DATABASE_URL="${ADMIN_URL%/*}/$DB_NAME" REDIS_URL=$REDIS REDIS_KEY_PREFIX="$DB_NAME:" \
  LOG_LEVEL=warn API_LISTEN=127.0.0.1:$PORT "$BIN"/llm-api serve >"$OUT/api.log" 2>&1 &
api_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$BASE/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$BASE/openapi.json" >"$OUT/openapi.json"

echo "==> chromium --headless --dump-dom $BASE/docs/"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --disable-default-apps --disable-extensions --no-default-browser-check \
  --disable-client-side-phishing-detection --disable-domain-reliability --no-pings \
  --disable-features=AutofillServerCommunication,Translate,OptimizationHints,MediaRouter \
  --user-data-dir="$PROFILE" \
  --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
  --log-net-log="$OUT/netlog.json" --net-log-capture-mode=Default \
  --virtual-time-budget=20000 --timeout=60000 \
  --dump-dom "$BASE/docs/" >"$OUT/docs-dom.html" 2>"$OUT/chromium.log"

python3 - "$OUT" <<'PY'
import html, json, re, sys
from urllib.parse import urlsplit

out = sys.argv[1]
doc = json.load(open(f"{out}/openapi.json"))
dom = open(f"{out}/docs-dom.html").read()

expected = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
# Swagger UI renders one block per operation: its method label and its path.
rendered = set()
for block in re.finditer(r'<div class="opblock opblock-(\w+)[^"]*"[^>]*>(.*?)</button>', dom, re.S):
    method = block.group(1).upper()
    path = re.search(r'data-path="([^"]+)"', block.group(2))
    if path:
        rendered.add((method, html.unescape(path.group(1))))
missing = sorted(expected - rendered)
print(f"operations in /openapi.json: {len(expected)}, rendered on /docs: {len(rendered & expected)}")
if missing:
    sys.exit(f"docs-check: not rendered on /docs: {missing}")
if "LLM Service" not in dom:
    sys.exit("docs-check: the page does not show the API's title")

# Every request Chromium started (NetLog URL_REQUEST_START_JOB): those of the page (initiated
# by its origin, or the navigation itself) must all be on localhost. Chromium's own background
# traffic (component updater, sign-in, autofill: initiator "not an origin") is not the page's;
# it is listed, and the resolver rules above make it fail.
log = json.load(open(f"{out}/netlog.json"))
types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
local_hosts = {"127.0.0.1", "localhost", "::1"}
page, browser = [], []
for event in log.get("events", []):
    params = event.get("params") or {}
    if types.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
        continue
    url, initiator = params["url"], str(params.get("initiator", ""))
    if initiator.startswith(("http://", "https://")) or urlsplit(url).path.startswith("/docs"):
        page.append((url, initiator))
    else:
        browser.append(url)
outside = sorted(
    f"{u} (from {i})" for u, i in page
    if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).hostname not in local_hosts
)
print(f"requests of the page: {len(page)}, {len(outside)} of them outside localhost")
for u, _ in page:
    print("  ", u)
print(f"chromium's own background requests (not the page's; unresolvable here): {len(browser)}")
if outside:
    sys.exit(f"docs-check: the page requested outside localhost: {outside}")
if not any(u.endswith("/openapi.json") for u, _ in page):
    sys.exit("docs-check: the page never fetched /openapi.json")
print("docs-check: OK")
PY
