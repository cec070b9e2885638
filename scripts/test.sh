#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite on a real anvil, with the gas report; with no
# arguments it first runs scripts/lint.sh (ruff, mypy), then scripts/assurance.sh (forge invariant
# and fuzz tests, Slither) beside the tests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$UNDERBID_ROOT/scripts/setup.sh"
bash "$UNDERBID_ROOT/scripts/chromium.sh"  # the explorer page test drives a real headless Chromium
bash "$UNDERBID_ROOT/scripts/postgres.sh"  # the Postgres store and failover tests start their own cluster
cd "$UNDERBID_ROOT"
compile_contracts
# The whole run (no arguments) adds the lint step (ruff, mypy) and the assurance step: forge
# invariant/fuzz tests and Slither. A run of a subset (arguments passed to ape test) skips them.
if [ "$#" -ne 0 ]; then
  exec ape test "$@"
fi
bash "$UNDERBID_ROOT/scripts/lint.sh"
# The assurance step runs beside the tests, forge on one thread: much of a test's time is spent
# waiting on anvil and the matcher processes it starts, so the two overlap instead of adding up.
# (At the lowest CPU priority forge starved: it had done a quarter of its work when the tests
# ended.) Its output is printed after the tests.
assurance_log="$(mktemp)"
trap 'rm -f "$assurance_log"' EXIT
echo "assurance: forge invariants and Slither run in the background; their output follows the tests"
UNDERBID_FORGE_THREADS=1 bash "$UNDERBID_ROOT/scripts/assurance.sh" >"$assurance_log" 2>&1 &
assurance_pid=$!
# Two pytest-xdist workers, each with its own anvil (ape-config: host auto) and its own copy of
# the session fixtures; a test file stays on one worker, so its module fixtures and order hold.
set +e
ape test -n 2 --dist loadfile --durations=25
tests_status=$?
wait "$assurance_pid"
assurance_status=$?
set -e
cat "$assurance_log"
if [ "$assurance_status" -ne 0 ]; then
  echo "assurance: FAILED (exit $assurance_status)" >&2
fi
if [ "$tests_status" -ne 0 ] || [ "$assurance_status" -ne 0 ]; then
  exit 1
fi
