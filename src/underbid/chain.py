"""Reading the Underbid contracts: on-chain facts for validation, and custom errors by name.

The matcher and the CLI reach the chain only through web3.py and an address book; they never
need ape or the compiler at run time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractCustomError, ContractLogicError

from underbid.deployment import AddressBook

T = TypeVar("T")


def connect(rpc_url: str, timeout: float = 30.0) -> Web3:
    """A web3 connection to `rpc_url`. Raises ConnectionError when nothing answers there."""
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    if not w3.is_connected():
        raise ConnectionError(f"no Ethereum node answers at {rpc_url}")
    return w3


@dataclass(frozen=True)
class DecodedError:
    """A contract custom error decoded from revert data, e.g. `OrderExpired(orderIndex=3)`."""

    name: str
    args: dict[str, Any]

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={_show(v)}" for k, v in self.args.items())
        return f"{self.name}({inner})"


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


def _abi_type(entry: dict[str, Any]) -> str:
    if entry["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in entry["components"])
        return f"({inner}){entry['type'][5:]}"
    return entry["type"]


class ErrorDecoder:
    """Maps revert data to the custom errors declared in the deployment's ABIs."""

    def __init__(self, abis: list[list[dict[str, Any]]]):
        self._errors: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                types = [_abi_type(i) for i in entry["inputs"]]
                selector = function_signature_to_4byte_selector(f"{entry['name']}({','.join(types)})")
                self._errors[selector] = (entry["name"], [i["name"] for i in entry["inputs"]], types)

    def decode(self, data: bytes | str | None) -> DecodedError | None:
        if isinstance(data, str):
            data = bytes.fromhex(data.removeprefix("0x"))
        if not data or len(data) < 4 or data[:4] not in self._errors:
            return None
        name, names, types = self._errors[data[:4]]
        values = abi_decode(types, data[4:])
        return DecodedError(name, dict(zip(names, values, strict=True)))

    def from_exception(self, exc: BaseException) -> DecodedError | None:
        """The custom error inside a web3 revert exception, if it is one of ours."""
        if isinstance(exc, ContractCustomError):
            return self.decode(exc.data if isinstance(exc.data, (str, bytes)) else exc.message)
        if isinstance(exc, ContractLogicError) and isinstance(exc.data, (str, bytes)):
            return self.decode(exc.data)
        return None


class TTLCache:
    """A small thread-safe cache of on-chain reads: validation reads the same facts many times a
    second, and the contract stays the final judge at settlement, so a short staleness is safe."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, load: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
        value = load()
        with self._lock:
            self._entries[key] = (now, value)
        return value

    def invalidate(self) -> None:
        with self._lock:
            self._entries.clear()


class ChainView:
    """The on-chain facts the matcher validates against, read through a short-TTL cache."""

    def __init__(self, w3: Web3, book: AddressBook, ttl: float = 2.0):
        self.w3 = w3
        self.book = book
        self.settlement = book.contract(w3, "UnderbidSettlement")
        self.errors = ErrorDecoder([c.abi for c in book.contracts.values()])
        self.cache = TTLCache(ttl)
        self.stake_per_unit: int = self.settlement.functions.stakePerUnit().call()

    def free_stake(self, provider: str) -> int:
        return self.cache.get(("stake", provider), lambda: self.settlement.functions.freeStake(provider).call())

    def free_escrow(self, buyer: str) -> int:
        return self.cache.get(("escrow", buyer), lambda: self.settlement.functions.escrowOf(buyer).call()[0])

    def nonce_used(self, signer: str, nonce: int) -> bool:
        # One read per 256-nonce bitmap word: a signer's consecutive nonces share it.
        word = nonce >> 8
        bitmap = self.cache.get(
            ("nonces", signer, word), lambda: self.settlement.functions.nonceBitmap(signer, word).call()
        )
        return bool(bitmap >> (nonce & 0xFF) & 1)

    def remaining(self, digest: bytes, signer: str, nonce: int, total: int) -> int:
        """Units a message can still fill on chain (uncached: used right before settlement)."""
        return self.settlement.functions.remainingOf(digest, signer, nonce, total).call()

    def round_state(self, round_id: int) -> tuple[str, int, int]:
        """(matcher, batches landed, settledAt) of a round on chain (uncached)."""
        matcher, batches, settled_at = self.settlement.functions.rounds(round_id).call()
        return matcher, batches, settled_at

    def block_time(self) -> int:
        """The latest block's timestamp (cached like the other facts: deadlines are coarse)."""
        return self.cache.get("block_time", lambda: self.w3.eth.get_block("latest")["timestamp"])
