#!/usr/bin/env bash
# The benchmarks: sets up (if needed), compiles, and runs `python -m underbid.bench` with the
# project's own Python. Figures go to stdout as `bench <name> <value> <unit>`, progress to stderr.
# Arguments go to the bench (e.g. --only clear_1k_10k --runs 5).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$UNDERBID_ROOT/scripts/setup.sh" >&2
cd "$UNDERBID_ROOT"
compile_contracts >&2  # keep stdout to the figures
exec python -m underbid.bench "$@"
