#!/usr/bin/env bash
# Installs everything Underbid needs from PyPI and npm alone, into .venv and node_modules.
# Idempotent: skips the installs when the lock files have not changed since the last run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$UNDERBID_ROOT"

stamp=".venv/.underbid-setup"
want="$(cat pyproject.toml constraints.txt package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x node_modules/.bin/anvil ]; then
  exit 0
fi

echo "setup: creating .venv and installing pinned Python packages (a few minutes the first time)..."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"

echo "setup: installing anvil, solc and OpenZeppelin Contracts from npm..."
# `npm ci` refuses this lock file (anvil lists optional per-platform packages that npm does not
# record), so install by the exact versions pinned in package.json and the lock file.
npm install --no-audit --no-fund --loglevel=error

node_modules/.bin/anvil --version | head -1
tools/solc/solc-v0.8.28 --version | tail -1
echo "$want" > "$stamp"
