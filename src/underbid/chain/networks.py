"""Networks by name: one address book per network, and the RPC URL and book a command runs against.

`ape run deploy --network <ecosystem:network:provider>` writes `deployments/<name>.json`, where
the name comes from ape's network: `local` for the devnet (`ethereum:local`), the network's
name for other Ethereum networks (`sepolia`), `<ecosystem>-<network>` elsewhere (`base:sepolia`
is `base-sepolia`), and `chain-<id>` for a network ape knows only by its URL. Commands take
`--network <name>` (or that ape choice) and read the RPC URL the book records, or `--rpc <url>`
and find the book of that URL's chain. `$UNDERBID_DEPLOYMENTS` moves the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from underbid.chain.deployment import AddressBook

DEPLOYMENTS_ENV = "UNDERBID_DEPLOYMENTS"


class NetworkError(Exception):
    """A one-line error naming a network or address book that cannot be used."""


def deployments_dir() -> Path:
    """Where address books live: `$UNDERBID_DEPLOYMENTS`, else the project's `deployments/`."""
    env = os.environ.get(DEPLOYMENTS_ENV)
    if env:
        return Path(env)
    from underbid.devnet.node import project_root

    root = project_root()
    return (root or Path.cwd()) / "deployments"


def book_name(ecosystem: str, network: str, chain_id: int) -> str:
    """The address book's name for ape's `ecosystem:network` (see the module docstring)."""
    if network in ("custom", "") or network.startswith(("http:", "https:", "ws:", "wss:")):
        return f"chain-{chain_id}"
    if ecosystem == "ethereum":
        return network
    return f"{ecosystem}-{network}"


def normalize_name(name: str) -> str:
    """`base:sepolia[:node]` -> `base-sepolia`; a book name is kept as it is."""
    name = name.strip()
    if ":" in name:
        ecosystem, network = name.split(":")[:2]
        return network if ecosystem == "ethereum" else f"{ecosystem}-{network}"
    return name


def _known(folder: Path) -> list[tuple[str, AddressBook]]:
    books = []
    for path in sorted(folder.glob("*.json")):
        try:
            books.append((path.stem, AddressBook.load(path)))
        except (OSError, ValueError):
            continue  # not an address book
    return books


def _known_text(folder: Path) -> str:
    books = _known(folder) if folder.is_dir() else []
    return ", ".join(f"{name} (chain {book.chain_id})" for name, book in books) or "none"


def book_path(name: str) -> Path:
    """The address book of the network called `name`. Raises NetworkError if there is none."""
    folder = deployments_dir()
    path = folder / f"{normalize_name(name)}.json"
    if not path.is_file():
        raise NetworkError(
            f"no address book for network {name!r} at {path} (known: {_known_text(folder)}):"
            " deploy there first (`ape run deploy --network <ecosystem:network:provider> --account <alias>`)"
        )
    return path


def book_for_chain(chain_id: int, rpc: str) -> Path:
    """The one address book in the deployments folder for `chain_id`. Raises NetworkError otherwise."""
    folder = deployments_dir()
    matches = [name for name, book in (_known(folder) if folder.is_dir() else []) if book.chain_id == chain_id]
    if len(matches) == 1:
        return folder / f"{matches[0]}.json"
    if not matches:
        raise NetworkError(
            f"the node at {rpc} is chain {chain_id} and no address book in {folder} is for it"
            f" (known: {_known_text(folder)}): pass --deployment, or deploy there first"
        )
    raise NetworkError(
        f"several address books in {folder} are for chain {chain_id} ({', '.join(matches)}):"
        " pick one with --network <name>"
    )


def chain_id_at(rpc: str) -> int:
    """The chain id the node at `rpc` answers. Raises NetworkError when nothing answers."""
    from underbid.chain.view import connect

    try:
        return int(connect(rpc, timeout=10).eth.chain_id)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the node is the same one line
        raise NetworkError(f"no Ethereum node answers at {rpc}: {' '.join(str(exc).split())[:200]}") from None
