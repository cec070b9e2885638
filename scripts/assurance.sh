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
# --build-info: the build info (solc's standard JSON input and output) that Slither reads below,
# so that it need not compile the contracts a third time.
forge test -vv --build-info --threads "${UNDERBID_FORGE_THREADS:-0}" 2>&1 | tee "$log" | grep -E '^\[(PASS|FAIL)|^Suite result|Failing tests|counterexample|\[Sequence\]|sender=|Encountered|Error'
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
# Slither analyses forge's build above (--ignore-compile) when out/build-info holds exactly one
# build info whose sources are today's contracts/ files, byte for byte: always so on a clean clone.
# (Left to itself crytic-compile runs `forge build --build-info --skip test/foundry --force`: the
# same contracts with the same settings, compiled again, ~60 s.) That build also holds
# test/foundry, hence its filter; Slither's findings over contracts/ are the same either way (all
# detectors, Dec 2026: 55 findings, identical). After an incremental local build the build info
# may be partial or several: then Slither compiles for itself, as before.
slither_args=(--filter-paths 'node_modules|test/foundry' --exclude-informational --exclude-low
  --exclude-optimization --fail-medium)
if python3 - <<'PY'
import json, pathlib, sys
infos = list(pathlib.Path("out/build-info").glob("*.json"))
if len(infos) != 1:
    sys.exit(f"assurance: {len(infos)} build infos in out/build-info, not 1")
sources = json.loads(infos[0].read_text())["input"]["sources"]
ours = [p for p in pathlib.Path("contracts").rglob("*.sol") if ".cache" not in p.parts]
stale = [str(p) for p in ours if sources.get(str(p), {}).get("content") != p.read_text()]
sys.exit(f"assurance: forge's build info lacks or differs on {stale[:3]}" if stale else 0)
PY
then
  echo "assurance: slither over forge's build (out/build-info)"
  slither . --compile-force-framework foundry --ignore-compile "${slither_args[@]}"
else
  echo "assurance: slither compiles the contracts itself"
  slither . --compile-force-framework foundry "${slither_args[@]}"
fi
echo "assurance: slither done in $((SECONDS - start)) s"
