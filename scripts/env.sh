# Sourced by the other scripts: puts the project's own toolchain first on PATH.
# anvil and the WebAssembly solc come from node_modules; python, ape and underbid from .venv.
UNDERBID_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export UNDERBID_ROOT
export PATH="$UNDERBID_ROOT/.venv/bin:$UNDERBID_ROOT/node_modules/.bin:$PATH"
# py-solc-x / ape-solidity find `solc-v0.8.28` here (a node wrapper around npm's solc): no download.
export SOLCX_BINARY_PATH="$UNDERBID_ROOT/tools/solc"
