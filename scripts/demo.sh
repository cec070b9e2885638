#!/usr/bin/env bash
# The main job: sets up (if needed), compiles, starts a fresh local devnet (anvil + contracts +
# matcher, address book in deployments/local.json), runs the narrated `underbid demo` on it, and
# brings the devnet down again on exit. Arguments go to `underbid demo` (e.g. --minutes 60).
#   UNDERBID_DEVNET_PORT / UNDERBID_MATCHER_PORT pick other ports than 8545 / 8700.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$UNDERBID_ROOT/scripts/setup.sh"
cd "$UNDERBID_ROOT"
compile_contracts

underbid devnet up --port "${UNDERBID_DEVNET_PORT:-8545}" --matcher-port "${UNDERBID_MATCHER_PORT:-8700}"
# Only a devnet this script started is taken down.
trap 'underbid devnet down || true' EXIT
underbid demo "$@"
