#!/usr/bin/env bash
# Sets up (if needed) and runs the whole test suite on a real anvil, with the gas report.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$UNDERBID_ROOT/scripts/setup.sh"
cd "$UNDERBID_ROOT"
compile_contracts
exec ape test "$@"
