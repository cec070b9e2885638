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

from underbid.chain.deployment import AddressBook
from underbid.chain.retry import TRANSIENT

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

log = logging.getLogger("underbid.chain.view")


#: The matcher's per-request timeout, in seconds: the most one JSON-RPC request to a stalled node
#: costs (web3's own retries are off; `underbid.chain.retry` is the only retry layer).
RPC_TIMEOUT = 2.0


def connect(rpc_url: str, timeout: float = 30.0) -> Web3:
    """A web3 connection to `rpc_url`. Raises ConnectionError when nothing answers there.

    Each request gives up after `timeout` seconds and is never retried by web3 itself: callers
    that want retries use `underbid.chain.retry.retry_rpc`, which has an overall deadline.
    """
    # cache_allowed_requests keeps eth_chainId, which web3's validation middleware would
    # otherwise ask for before every eth_call, tripling the round trips of a fact read.
    provider = HTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True, exception_retry_configuration=None
    )
    w3 = Web3(provider)
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

    def missing(self, keys: Iterable[K]) -> list[K]:
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


class ChainUnavailable(ChainReadError):
    """A cached read (the kind intake uses) found the node unreachable: refused, reset, timed out or
    answer lost. Raised at once, never retried: a request handler answers 503 instead of waiting."""


@dataclass(frozen=True)
class BlockRef:
    """A block by number, with its timestamp: the chain state (and chain time) facts were read at."""

    number: int
    timestamp: int


@dataclass(frozen=True)
class Binding:
    """An account's matcher binding as `bindingOf` returns it (see MatcherBinding.sol)."""

    matcher: str
    change_at: int
    next: str
    requested_at: int

    def settled_with(self, matcher: str, now: int) -> bool:
        """True if the account is bound to `matcher` at chain time `now` with no change pending:
        the only accounts an honest matcher takes messages from (a pending change could take
        effect before a batch lands and make it revert)."""
        if self.change_at == 0:
            return self.matcher == matcher
        return self.change_at <= now and self.next == matcher


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


#: The facts, by key kind; a key is (kind, *arguments of the view call).
_FACTS: dict[str, _ViewCall] = {
    # What a matcher may commit to new leases: free minus announced unstakes / withdrawals.
    "stake": _ViewCall("availableStake", ("address",), ("uint256",)),
    "escrow": _ViewCall("availableEscrow", ("address",), ("uint256",)),
    # Two bits per nonce, 128 nonces per word (bit 0 claimed, bit 1 void).
    "nonces": _ViewCall("nonceBitmap", ("address", "uint256"), ("uint256",)),
    "cancel": _ViewCall("cancelRequestedAt", ("address", "uint256"), ("uint256",)),
    "binding": _ViewCall("bindingOf", ("address",), ("(address,uint40,address,uint40)",)),
    "filled": _ViewCall("fills", ("bytes32",), ("uint32", "uint64")),
    "remaining": _ViewCall("remainingOf", ("bytes32", "address", "uint256", "uint256"), ("uint256",)),
}
#: Reads per JSON-RPC batch; nodes cap batch sizes (geth's default is 1,000).
_MAX_BATCH_READS = 500


def nonce_bits(word: int, nonce: int) -> tuple[bool, bool]:
    """(claimed, void) of `nonce` in its bitmap word `nonceBitmap(signer, nonce >> 7)`."""
    bits = word >> ((nonce & 0x7F) * 2)
    return bool(bits & 1), bool(bits & 2)


class ChainView:
    """The on-chain facts the matcher validates against, read through a short-TTL cache.

    Every fact is read at an explicit block and cached together with that block, so whoever
    uses a fact knows the chain time it held at (a receipt's `issuedAt` is the timestamp of the
    block the provider's stake was read at, never a chain time cached separately).
    """

    #: After a transport failure of a cached read, cached reads that miss the cache fail at once for
    #: this many seconds instead of each waiting out the request timeout (then one tries again).
    UNREACHABLE_COOLDOWN = 1.0

    def __init__(self, w3: Web3, book: AddressBook, ttl: float = 2.0):
        self.w3 = w3
        self.book = book
        self.settlement = book.contract(w3, "UnderbidSettlement")
        self.errors = ErrorDecoder([c.abi for c in book.contracts.values()])
        self.cache = TTLCache(ttl)
        self._unreachable_until = 0.0  # monotonic
        self._unreachable_reason = ""
        calls = self.settlement.functions
        self.stake_per_unit: int = calls.stakePerUnit().call()
        self.notice_period: int = calls.noticePeriod().call()
        self.min_lease_duration: int = calls.minLeaseDuration().call()

    # ----- blocks -----

    def head(self) -> BlockRef:
        """The latest block, cached for the TTL (for deadlines, which are coarse). Fails fast with
        ChainUnavailable when the node does not answer (see `_guarded`)."""
        return self.cache.get("head", lambda: self._guarded(self.fresh_head))

    def refreshed_head(self) -> BlockRef:
        """The latest block read now, bypassing and refreshing the cache; fails fast like `head`.
        For decisions at the edge of a deadline, where a head a TTL old would judge wrongly."""
        loaded_at = time.monotonic()
        head = self._guarded(self.fresh_head)
        self.cache.put("head", head, loaded_at)
        return head

    # ----- failing fast: the reads request handlers make are never retried -----

    def unreachable(self) -> str | None:
        """Why the node is deemed unreachable right now (a recent transport failure), or None."""
        if time.monotonic() < self._unreachable_until:
            return self._unreachable_reason
        return None

    def _mark_unreachable(self, exc: BaseException) -> str:
        self._unreachable_reason = f"the chain node is unreachable ({type(exc).__name__})"
        self._unreachable_until = time.monotonic() + self.UNREACHABLE_COOLDOWN
        return self._unreachable_reason

    def _guarded(self, load: Callable[[], T]) -> T:
        """Runs a cache miss's read once: a transport failure becomes ChainUnavailable (no retry),
        and for UNREACHABLE_COOLDOWN seconds after one, misses fail without asking the node."""
        reason = self.unreachable()
        if reason is not None:
            raise ChainUnavailable(reason)
        try:
            return load()
        except TRANSIENT as exc:
            raise ChainUnavailable(self._mark_unreachable(exc)) from exc

    def fresh_head(self) -> BlockRef:
        """The latest block, read now (and cached as the head)."""
        loaded_at = time.monotonic()
        block = self.w3.eth.get_block("latest")
        head = BlockRef(block["number"], block["timestamp"])
        self.cache.put("head", head, loaded_at)
        return head

    def block_time(self) -> int:
        """The chain time of the cached head block (deadlines and the store's views only)."""
        return self.head().timestamp

    # ----- reading facts at a block -----

    def _pinned(self, key: tuple) -> tuple[Any, BlockRef]:
        """A fact and the block it was read at, from the cache or read at the head block."""

        def load() -> tuple[Any, BlockRef]:
            # A fact missing from the cache costs a round trip anyway: read it at a fresh head,
            # so a fact is never older than the TTL.
            block = self.fresh_head()
            return self._read_facts([key], block)[0], block

        return self.cache.get(key, lambda: self._guarded(load))

    def _read_facts(self, keys: list[tuple], block: BlockRef) -> list[Any]:
        """Reads facts at `block` straight through the provider, in one JSON-RPC request per 500
        (a batch when there are several): they are plain view calls, and web3's middleware and
        result formatters would cost more Python time than the round trip."""
        values = []
        for start in range(0, len(keys), _MAX_BATCH_READS):
            values += self._read_batch(keys[start:start + _MAX_BATCH_READS], hex(block.number))
        return values

    def _read_batch(self, keys: list[tuple], block_id: str) -> list[Any]:
        calls = [("eth_call", [_FACTS[key[0]].request(self.settlement.address, key[1:]), block_id]) for key in keys]
        provider: Any = self.w3.provider  # an HTTPProvider: make_batch_request is not on the base type
        responses = [provider.make_request(*calls[0])] if len(calls) == 1 else provider.make_batch_request(calls)
        if not isinstance(responses, list) or len(responses) != len(keys):
            raise ChainReadError(f"the node refused a batch of {len(keys)} reads: {responses}")
        values = []
        for key, response in zip(keys, responses, strict=True):
            if "error" in response:
                raise ChainReadError(f"{_FACTS[key[0]].name}{key[1:]} failed: {response['error']}")
            values.append(_FACTS[key[0]].decode(bytes.fromhex(response["result"][2:])))
        return values

    def read_fresh(self, keys: list[tuple]) -> tuple[list[Any], BlockRef]:
        """Facts read now, uncached, all at one block (the latest): used right before settlement.
        Returns them with that block, whose timestamp is the chain time they held at."""
        block = self.fresh_head()
        return self._read_facts(keys, block), block

    # ----- the facts -----

    def available_stake(self, provider: str) -> tuple[int, BlockRef]:
        """The provider's stake a matcher may lock, and the block it was read at."""
        return self._pinned(("stake", provider))

    def available_escrow(self, buyer: str) -> int:
        return self._pinned(("escrow", buyer))[0]

    def nonce_state(self, signer: str, nonce: int) -> tuple[bool, bool]:
        """(claimed, void) of a nonce. One read per 128-nonce bitmap word: a signer's
        consecutive nonces share it."""
        return nonce_bits(self._pinned(("nonces", signer, nonce >> 7))[0], nonce)

    def cancel_requested(self, signer: str, nonce: int) -> bool:
        return self._pinned(("cancel", signer, nonce))[0] != 0

    def binding(self, account: str) -> tuple[Binding, BlockRef]:
        """The account's matcher binding, and the block it was read at."""
        raw, block = self._pinned(("binding", account))
        return to_binding(raw), block

    def filled(self, digest: bytes) -> int:
        """Units the message with this digest has filled on chain (read uncached-ish: rare)."""
        return self._pinned(("filled", digest))[0]

    def prefetch(
        self,
        *,
        nonces: Iterable[tuple[str, int]] = (),
        stakes: Iterable[str] = (),
        escrows: Iterable[str] = (),
        bindings: Iterable[str] = (),
    ) -> None:
        """Loads the facts a batch of messages will need (nonce word and cancel request of each
        (signer, nonce), available stake of providers, available escrow of buyers, bindings) that
        the cache lacks, in one JSON-RPC batch at one block instead of a round trip each. Best
        effort: on any failure the facts are read one by one later, where an error surfaces."""
        nonces = list(nonces)
        keys: list[tuple] = [("nonces", signer, nonce >> 7) for signer, nonce in nonces]
        keys += [("cancel", signer, nonce) for signer, nonce in nonces]
        keys += [("stake", provider) for provider in stakes]
        keys += [("escrow", buyer) for buyer in escrows]
        keys += [("binding", account) for account in bindings]
        wanted = self.cache.missing(keys)
        if not wanted:
            return
        # Signers number their messages consecutively, so the next bitmap word is read too while
        # a request is being made anyway: the next batch then usually needs no round trip.
        wanted += self.cache.missing(
            ("nonces", key[1], key[2] + 1) for key in wanted if key[0] == "nonces"
        )
        wanted = list(dict.fromkeys(wanted))
        if self.unreachable() is not None:
            return  # the single reads fail fast
        loaded_at = time.monotonic()
        try:
            block = self.fresh_head()  # the facts wanted cost a round trip anyway; see _pinned
            values = self._read_facts(wanted, block)
        except TRANSIENT as exc:
            # The node is not answering: the single reads that follow fail at once, rather than
            # each waiting out the request timeout again.
            log.debug("batched fact read failed: %s", self._mark_unreachable(exc))
            return
        except Exception as exc:  # noqa: BLE001 - an optimisation only; the single reads report errors
            log.debug("batched fact read failed (%s); reading one by one", exc)
            return
        for key, value in zip(wanted, values, strict=True):
            self.cache.put(key, (value, block), loaded_at)

    # ----- rounds -----

    def last_round(self, matcher: str) -> int:
        """The highest round id `matcher` has opened on chain (uncached)."""
        return self.settlement.functions.lastRound(matcher).call()

    def round_state(self, matcher: str, round_id: int) -> RoundOnChain:
        """A round of `matcher` as the chain has it (uncached)."""
        calls = self.settlement.functions
        opened_at, batches, finalized_at = calls.rounds(matcher, round_id).call()
        final = calls.isRoundFinal(matcher, round_id).call()
        return RoundOnChain(opened_at, batches, finalized_at, final)

    def receipt_signer(self, matcher: str) -> str:
        """The key `matcher` registered for its receipts when it bonded (zero: not bonded)."""
        return self.settlement.functions.matchers(matcher).call()[3]


@dataclass(frozen=True)
class RoundOnChain:
    """`rounds(matcher, id)` plus `isRoundFinal`: what landed of one of a matcher's rounds."""

    opened_at: int
    batches: int
    finalized_at: int
    #: No batch can be added any more (final batch landed, a later round opened, or the span passed).
    final: bool


def to_binding(raw: tuple) -> Binding:
    matcher, change_at, next_matcher, requested_at = raw
    return Binding(Web3.to_checksum_address(matcher), change_at, Web3.to_checksum_address(next_matcher), requested_at)
