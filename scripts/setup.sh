#!/usr/bin/env bash
# Installs everything Underbid needs from PyPI and npm alone, into .venv and node_modules.
# Idempotent: skips the installs when the lock files have not changed since the last run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$UNDERBID_ROOT"

stamp=".venv/.underbid-setup"
want="$(cat pyproject.toml constraints.txt package.json package-lock.json | sha256sum | cut -d' ' -f1)"
chart="src/underbid/matcher/static/vendor/chart.umd.min.js"
# The clearing's network simplex (src/underbid/matcher/netsimplex.c) is compiled with the system's
# C compiler into a cache keyed by its source (a no-op when built); Debian's gcc when there is none.
build_native() {
  if ! command -v "${CC:-cc}" >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing gcc from Debian's packages (for the clearing's network simplex)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev) >/dev/null
  fi
  .venv/bin/python -c "from underbid.matcher import netsimplex; print('setup: network simplex', netsimplex.build())"
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x node_modules/.bin/anvil ] && [ -f "$chart" ]; then
  build_native
  exit 0
fi

echo "setup: installing anvil, solc, OpenZeppelin Contracts and Chart.js from npm (in the background)..."
# `npm ci` installs exactly what package-lock.json pins and never rewrites it, so a first run
# leaves the tree clean. The lock lists every platform package of anvil and forge (optional; npm
# fetches only this machine's). It runs beside pip: the two share nothing, and both mostly wait
# on downloads.
npm ci --no-audit --no-fund --loglevel=error &
npm_pid=$!

echo "setup: creating .venv and installing pinned Python packages (a few minutes the first time)..."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
wait "$npm_pid"
# The market explorer page serves Chart.js itself (no CDN): a copy inside the package, as package data.
mkdir -p "$(dirname "$chart")"
cp node_modules/chart.js/dist/chart.umd.min.js "$chart"

build_native
node_modules/.bin/anvil --version | head -1
tools/solc/solc-v0.8.28 --version | tail -1
echo "$want" > "$stamp"
