#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite on a real anvil, with the gas report; with no
# arguments it also runs scripts/lint.sh (ruff, mypy) beside the contracts' compile, before the
# tests, and scripts/assurance.sh (forge invariant and fuzz tests, Slither) beside all of it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$UNDERBID_ROOT/scripts/setup.sh"
bash "$UNDERBID_ROOT/scripts/chromium.sh"  # the explorer page test drives a real headless Chromium
bash "$UNDERBID_ROOT/scripts/postgres.sh"  # the Postgres store and failover tests start their own cluster
cd "$UNDERBID_ROOT"
# The whole run (no arguments) adds the lint step (ruff, mypy) and the assurance step: forge
# invariant/fuzz tests and Slither. A run of a subset (arguments passed to ape test) skips them.
if [ "$#" -ne 0 ]; then
  compile_contracts
  exec ape test "$@"
fi
# The assurance step runs beside everything that follows, forge on one thread: its own build of
# the contracts (~150 s of one core) overlaps ape's (one core; the other one idled while it ran)
# and the lint step, and its invariant campaign overlaps the tests, much of whose time is spent
# waiting on anvil and the matcher processes they start. (At the lowest CPU priority forge
# starved: it had done a quarter of its work when the tests ended.) Its output is printed after
# the tests. setsid: its own process group, so that a failed lint or compile stops it too (-w:
# its exit status is the step's).
assurance_log="$(mktemp)"
lint_log="$(mktemp)"
assurance_pid=
trap 'rm -f "$assurance_log" "$lint_log"; [ -z "$assurance_pid" ] || kill -- -"$assurance_pid" 2>/dev/null || true' EXIT
echo "assurance: forge invariants and Slither run in the background; their output follows the tests"
UNDERBID_FORGE_THREADS=1 setsid -w bash "$UNDERBID_ROOT/scripts/assurance.sh" >"$assurance_log" 2>&1 &
assurance_pid=$!
# The lint step runs beside ape's compile (both are one core's work); it still fails the run
# before any test runs.
bash "$UNDERBID_ROOT/scripts/lint.sh" >"$lint_log" 2>&1 &
lint_pid=$!
compile_contracts
lint_status=0
wait "$lint_pid" || lint_status=$?
cat "$lint_log"
if [ "$lint_status" -ne 0 ]; then
  exit "$lint_status"
fi
# Two pytest-xdist workers, each with its own anvil (ape-config: host auto) and its own copy of
# the session fixtures; a test file stays on one worker, so its module fixtures and order hold.
# --no-loadscope-reorder: files are handed out in collection order, the slowest first
# (tests/conftest.py: SLOWEST_FIRST), not by their number of tests (which put the long
# single-test files last, where one worker ran them alone).
set +e
ape test -n 2 --dist loadfile --no-loadscope-reorder --durations=25
tests_status=$?
wait "$assurance_pid"
assurance_status=$?
assurance_pid=
set -e
cat "$assurance_log"
if [ "$assurance_status" -ne 0 ]; then
  echo "assurance: FAILED (exit $assurance_status)" >&2
fi
if [ "$tests_status" -ne 0 ] || [ "$assurance_status" -ne 0 ]; then
  exit 1
fi
