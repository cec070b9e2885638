"""Reading the Underbid contracts: on-chain facts for validation, and custom errors by name.

The matcher and the CLI reach the chain only through web3.py and an address book; they never
need ape or the compiler at run time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import function_signature_to_4byte_selector
from web3 import HTTPProvider, Web3
from web3.exceptions import ContractCustomError, ContractLogicError

from underbid.deployment import AddressBook

T = TypeVar("T")

log = logging.getLogger("underbid.chain")


def connect(rpc_url: str, timeout: float = 30.0) -> Web3:
    """A web3 connection to `rpc_url`. Raises ConnectionError when nothing answers there."""
    # cache_allowed_requests keeps eth_chainId, which web3's validation middleware would
    # otherwise ask for before every eth_call, tripling the round trips of a fact read.
    w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True))
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
        self.put(key, value, now)
        return value

    def missing(self, keys: Iterable[Hashable]) -> list[Hashable]:
        """Those of `keys` with no fresh entry, each once, in first-seen order."""
        now = time.monotonic()
        with self._lock:
            return [
                key for key in dict.fromkeys(keys)
                if (hit := self._entries.get(key)) is None or now - hit[0] >= self.ttl
            ]

    def put(self, key: Hashable, value: Any, loaded_at: float) -> None:
        """Stores a value read at `loaded_at` (monotonic): its age counts from before the read."""
        with self._lock:
            self._entries[key] = (loaded_at, value)

    def invalidate(self) -> None:
        with self._lock:
            self._entries.clear()


class ChainReadError(RuntimeError):
    """A view call the node answered with an error."""


@dataclass(frozen=True)
class _ViewCall:
    """A settlement view function, encoded and decoded with eth-abi directly: web3's contract
    function objects spend ~5 ms a call looking up the ABI, twice the RPC round trip itself."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    keep: int = 0  # which output the cache keeps

    def request(self, to: str, args: tuple) -> dict[str, Any]:
        selector = function_signature_to_4byte_selector(f"{self.name}({','.join(self.inputs)})")
        return {"to": to, "data": "0x" + (selector + abi_encode(self.inputs, args)).hex()}

    def decode(self, data: bytes) -> Any:
        return abi_decode(self.outputs, bytes(data))[self.keep]


#: The cached facts, by key kind; a key is (kind, *arguments of the view call).
_FACTS: dict[str, _ViewCall] = {
    "stake": _ViewCall("freeStake", ("address",), ("uint256",)),
    "escrow": _ViewCall("escrowOf", ("address",), ("uint128", "uint128")),
    "nonces": _ViewCall("nonceBitmap", ("address", "uint256"), ("uint256",)),
    "remaining": _ViewCall("remainingOf", ("bytes32", "address", "uint256", "uint256"), ("uint256",)),
}
#: Reads per JSON-RPC batch; nodes cap batch sizes (geth's default is 1,000).
_MAX_BATCH_READS = 500


class ChainView:
    """The on-chain facts the matcher validates against, read through a short-TTL cache."""

    def __init__(self, w3: Web3, book: AddressBook, ttl: float = 2.0):
        self.w3 = w3
        self.book = book
        self.settlement = book.contract(w3, "UnderbidSettlement")
        self.errors = ErrorDecoder([c.abi for c in book.contracts.values()])
        self.cache = TTLCache(ttl)
        self.stake_per_unit: int = self.settlement.functions.stakePerUnit().call()

    def _fact(self, key: tuple) -> Any:
        return self.cache.get(key, lambda: self._read_facts([key])[0])

    def _read_facts(self, keys: list[tuple]) -> list[Any]:
        """Reads facts straight through the provider, in one JSON-RPC request per 500 (a batch when
        there are several): they are plain view calls, and web3's middleware and result formatters
        would cost more Python time than the round trip."""
        values = []
        for start in range(0, len(keys), _MAX_BATCH_READS):
            values += self._read_batch(keys[start:start + _MAX_BATCH_READS])
        return values

    def _read_batch(self, keys: list[tuple]) -> list[Any]:
        calls = [("eth_call", [_FACTS[key[0]].request(self.settlement.address, key[1:]), "latest"]) for key in keys]
        provider = self.w3.provider
        responses = [provider.make_request(*calls[0])] if len(calls) == 1 else provider.make_batch_request(calls)
        if not isinstance(responses, list) or len(responses) != len(keys):
            raise ChainReadError(f"the node refused a batch of {len(keys)} reads: {responses}")
        values = []
        for key, response in zip(keys, responses, strict=True):
            if "error" in response:
                raise ChainReadError(f"{_FACTS[key[0]].name}{key[1:]} failed: {response['error']}")
            values.append(_FACTS[key[0]].decode(bytes.fromhex(response["result"][2:])))
        return values

    def free_stake(self, provider: str) -> int:
        return self._fact(("stake", provider))

    def free_escrow(self, buyer: str) -> int:
        return self._fact(("escrow", buyer))

    def nonce_used(self, signer: str, nonce: int) -> bool:
        # One read per 256-nonce bitmap word: a signer's consecutive nonces share it.
        return bool(self._fact(("nonces", signer, nonce >> 8)) >> (nonce & 0xFF) & 1)

    def prefetch(
        self, *, nonces: Iterable[tuple[str, int]] = (), stakes: Iterable[str] = (), escrows: Iterable[str] = ()
    ) -> None:
        """Loads the facts a batch of messages will need (nonce state of (signer, nonce), free
        stake of providers, free escrow of buyers) that the cache lacks, in one JSON-RPC batch
        instead of a round trip each. Best effort: on any failure the facts are read one by one
        later, where an error surfaces as usual."""
        keys = [("nonces", signer, nonce >> 8) for signer, nonce in nonces]
        keys += [("stake", provider) for provider in stakes]
        keys += [("escrow", buyer) for buyer in escrows]
        wanted = self.cache.missing(keys)
        if not wanted:
            return
        # Signers number their messages consecutively, so the next bitmap word is read too while
        # a request is being made anyway: the next batch then usually needs no round trip.
        wanted += self.cache.missing(
            ("nonces", key[1], key[2] + 1) for key in wanted if key[0] == "nonces"
        )
        wanted = list(dict.fromkeys(wanted))
        loaded_at = time.monotonic()
        try:
            values = self._read_facts(wanted)
        except Exception as exc:  # noqa: BLE001 - an optimisation only; the single reads report errors
            log.debug("batched fact read failed (%s); reading one by one", exc)
            return
        for key, value in zip(wanted, values, strict=True):
            self.cache.put(key, value, loaded_at)

    def remaining(self, messages: list[tuple[bytes, str, int, int]]) -> list[int]:
        """Units each (digest, signer, nonce, total) can still fill on chain, read fresh (uncached:
        used right before settlement) in one JSON-RPC batch."""
        return self._read_facts([("remaining", *m) for m in messages])

    def round_state(self, round_id: int) -> tuple[str, int, int]:
        """(matcher, batches landed, settledAt) of a round on chain (uncached)."""
        matcher, batches, settled_at = self.settlement.functions.rounds(round_id).call()
        return matcher, batches, settled_at

    def block_time(self) -> int:
        """The latest block's timestamp (cached like the other facts: deadlines are coarse)."""
        return self.cache.get("block_time", lambda: self.w3.eth.get_block("latest")["timestamp"])
