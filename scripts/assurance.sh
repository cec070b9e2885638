#!/usr/bin/env bash
# Assurance step of CI: forge's invariant and fuzz tests (test/foundry) and Slither over the
# contracts. Fails on a failing forge test or on any Medium/High Slither finding that is not
# annotated in the source with `// slither-disable-next-line <detector>` and a reason.
# forge comes from npm (@foundry-rs/forge), Slither from PyPI (test extras); both use the
# WebAssembly solc stand-in in tools/solc, so nothing is downloaded. Writes only out/ and cache/
# (gitignored).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$UNDERBID_ROOT"

start=$SECONDS
echo "assurance: forge build + invariant and fuzz tests (foundry.toml: [invariant] runs x depth calls per invariant)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
# --threads: 0 is every core; scripts/test.sh passes 1 while the tests run beside it.
# -vv: forge prints the invariant campaign's coverage counters (InvariantsTest.afterInvariant)
forge test -vv --threads "${UNDERBID_FORGE_THREADS:-0}" 2>&1 | tee "$log" | grep -E '^\[(PASS|FAIL)|^Suite result|Failing tests|counterexample|\[Sequence\]|sender=|Encountered|Error'
status=${PIPESTATUS[0]}
set -e
# forge prints "invariant_x() (runs: R, calls: C, reverts: V)" per invariant.
grep -oE 'invariant_[A-Za-z0-9_]+\(\) \(runs: [0-9]+, calls: [0-9]+, reverts: [0-9]+\)' "$log" \
  | sed -E 's/^(.*) \(runs: ([0-9]+), calls: ([0-9]+), reverts: ([0-9]+)\)$/assurance: \1: \3 handler calls in \2 runs (\4 reverted)/' || true
# The campaign's coverage (summed over its runs): rounds, leases, challenges and how far each got.
grep -E '^ *coverage: ' "$log" | sed -E 's/^ *coverage: /assurance: coverage: /' || true
if [ "$status" -ne 0 ]; then
  echo "assurance: forge tests FAILED (full output above; rerun with: forge test -vvv)" >&2
  exit "$status"
fi
echo "assurance: forge done in $((SECONDS - start)) s"

start=$SECONDS
echo "assurance: slither (Medium/High findings fail the run)"
slither . --compile-force-framework foundry --filter-paths node_modules \
  --exclude-informational --exclude-low --exclude-optimization --fail-medium
echo "assurance: slither done in $((SECONDS - start)) s"
