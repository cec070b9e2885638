#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite on a real anvil, with the gas report; with no
# arguments it first runs scripts/lint.sh (ruff, mypy) and scripts/assurance.sh (forge invariant
# and fuzz tests, Slither).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$UNDERBID_ROOT/scripts/setup.sh"
bash "$UNDERBID_ROOT/scripts/chromium.sh"  # the explorer page test drives a real headless Chromium
bash "$UNDERBID_ROOT/scripts/postgres.sh"  # the Postgres store and failover tests start their own cluster
cd "$UNDERBID_ROOT"
compile_contracts
# The whole run (no arguments) starts with the lint step (ruff, mypy) and the assurance step: forge
# invariant/fuzz tests and Slither. A run of a subset (arguments passed to ape test) skips them.
if [ "$#" -eq 0 ]; then
  bash "$UNDERBID_ROOT/scripts/lint.sh"
  bash "$UNDERBID_ROOT/scripts/assurance.sh"
  # Two pytest-xdist workers, each with its own anvil (ape-config: host auto) and its own copy of
  # the session fixtures; a test file stays on one worker, so its module fixtures and order hold.
  # Most of a test's time is spent waiting on anvil and the matcher processes it starts.
  set -- -n 2 --dist loadfile --durations=25
fi
exec ape test "$@"
