#!/usr/bin/env bash
# Lint step of CI: ruff (style, imports, bug patterns) over src/ and tests/, and mypy
# (types) over src/underbid; both configured in pyproject.toml, both installed by the test extras.
# Fails on any finding that is not annotated in the code (`# noqa: CODE - why`,
# `# type: ignore[code]  # why`). Prints one summary line.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$UNDERBID_ROOT"

start=$SECONDS
status=0
ruff_out="$(ruff check --output-format concise 2>&1)" || status=1
mypy_out="$(mypy 2>&1)" || status=$((status + 2))
if [ "$status" -ne 0 ]; then
  [ $((status & 1)) -ne 0 ] && printf '%s\n' "$ruff_out" >&2
  [ $((status & 2)) -ne 0 ] && printf '%s\n' "$mypy_out" >&2
  ruff_sum="$(grep -E '^(Found|All checks)' <<<"$ruff_out" | tail -1)"
  echo "lint: FAILED (ruff: ${ruff_sum:-see above}; mypy: $(tail -1 <<<"$mypy_out"))" >&2
  exit 1
fi
echo "lint: ruff and mypy clean ($(tail -1 <<<"$mypy_out")) in $((SECONDS - start)) s"
