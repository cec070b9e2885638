# Sourced by the other scripts: puts the project's own toolchain first on PATH.
# anvil and the WebAssembly solc come from node_modules; python, ape and underbid from .venv.
UNDERBID_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export UNDERBID_ROOT
export PATH="$UNDERBID_ROOT/.venv/bin:$UNDERBID_ROOT/node_modules/.bin:$PATH"
# py-solc-x / ape-solidity find `solc-v0.8.28` here (a node wrapper around npm's solc): no download.
export SOLCX_BINARY_PATH="$UNDERBID_ROOT/tools/solc"

# Compiles the contracts. NOTE: ape's incremental compile recompiles a changed file but not the
# contracts that import it, which can leave stale bytecode in .build; so whenever any source
# changed since the last build, everything is recompiled.
compile_contracts() {
  local want stamp="$UNDERBID_ROOT/.build/.sources-sha256"
  want="$(cd "$UNDERBID_ROOT" && find contracts -name '*.sol' -not -path 'contracts/.cache/*' | sort | xargs cat ape-config.yaml | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  (cd "$UNDERBID_ROOT" && ape compile --force) && echo "$want" > "$stamp"
}
