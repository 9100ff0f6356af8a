#!/usr/bin/env bash
# scripts/browser-deps.sh — what the demo page's check needs (scripts/browser-check.sh and the
# suite's `browser::demo` test): Chromium (Debian's `chromium`, installed as root when missing;
# CHROMIUM names another) and playwright-core at the version pinned in
# tests/browser/package-lock.json (installed once per lock).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "browser-deps.sh: $*" >&2; exit 1; }

chromium=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  [ "$(id -u)" = 0 ] || die "Chromium is missing: apt-get install chromium (or set CHROMIUM)"
  apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
fi
command -v npm >/dev/null || die "node and npm are needed (apt-get install nodejs npm)"
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.installed-lock.json; then
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error >/dev/null &&
    cp package-lock.json node_modules/.installed-lock.json)
fi
