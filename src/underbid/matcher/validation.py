"""Validation of incoming signed orders and bids, before they are stored.

Each failure is a `Rejection` naming the request field at fault and the reason, which the API
turns into a 4xx answer. The contract stays the final judge: anything that passes here is checked
again, on chain, at settlement.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from underbid.chain.view import BlockRef, ChainView
from underbid.matcher.store import MessageKind, Store
from underbid.protocol.catalogue import checked_spec
from underbid.protocol.eip712 import Bid, Domain, Order, SignatureError, SignedMessage, recover_signer
from underbid.protocol.markets import market_id
from underbid.protocol.units import format_credits


@dataclass
class Rejection(Exception):
    """A message refused with an HTTP status, the offending field and a reason."""

    status: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


def order_cost(units: int, price: int, duration: int) -> int:
    """What a lease costs in credit base units, rounded down as the contract does."""
    return units * price * duration // 3600


@dataclass
class Rejections(Exception):
    """Messages of one batch request refused, as (position in the batch, Rejection), in order.
    A batch is accepted whole or not at all."""

    items: tuple[tuple[int, Rejection], ...]

    @property
    def status(self) -> int:
        # A request that must be fixed (400) outranks one that merely repeats itself (409).
        return min(rejection.status for _, rejection in self.items)

    def __str__(self) -> str:
        return "; ".join(f"[{i}] {rejection}" for i, rejection in self.items)


@dataclass(frozen=True)
class Submission:
    """A schema-valid message as received: the message, its signature (hex) and optional spec."""

    message: SignedMessage
    signature: str
    spec: str | None = None


@dataclass
class Accepted:
    kind: MessageKind
    digest: str
    message: SignedMessage
    signature: bytes
    #: For bids: the chain time the provider's stake was read at (the timestamp of that block),
    #: which the receipt states as `issuedAt`.
    stake_read_at: int | None = None
    #: For bids: the matcher's signed receipt (matcher, bidHash, round, issuedAt, signature).
    receipt: dict | None = None


#: Bounds on the optional market spec string (the API's schema states the length too): a spec is
#: a few short fields, and an unbounded number in it once raised a plain ValueError (a 500).
MAX_SPEC_LENGTH = 256
MAX_SPEC_DIGITS = 9
_LONG_NUMBER = re.compile(rf"[0-9]{{{MAX_SPEC_DIGITS + 1},}}")

#: How an account binds itself to a matcher (the CLI command).
BIND_HINT = "underbid account bind {matcher}"
#: A deadline within this many seconds of the cached head block is judged by a head read now.
#: NOTE: chain time can run far ahead of the wall clock within one cache lifetime (a devnet mines
#: a block per transaction, each a second later than the last, and can travel in time), so a
#: margin of a few TTLs let a just-expired message through; deadlines are hours away in practice,
#: so the extra read is rare.
FRESH_HEAD_MARGIN = 3600


class Validator:
    """Checks schema-valid messages against their signature, the clock, the store and the chain.

    These are the honest matcher's intake rules (docs/PROTOCOL.md, "Matcher accountability"):
    only messages naming this matcher, from accounts bound to it with no change pending, for
    leases of at least the protocol minimum, one open message per (signer, nonce), nonces neither
    void, claimed by another message nor announced for cancellation, and escrow and stake that
    cover every open message of the account at once.
    """

    def __init__(self, domain: Domain, chain: ChainView, store: Store, matcher: str):
        self.domain = domain
        self.chain = chain
        self.store = store
        self.matcher = matcher

    def check(self, kind: MessageKind, submissions: Sequence[Submission]) -> list[Accepted]:
        """Returns every submission accepted, in order, or raises Rejections naming each refused one.

        Deadlines and bindings are judged by chain time (the head block's), not the wall clock.
        The checks are ordered cheapest-first and the store is asked once for the whole batch,
        so a batch costs little more per message than its signature recovery.
        """
        now = self.chain.head().timestamp
        if any(submission.message.deadline <= now + FRESH_HEAD_MARGIN for submission in submissions):
            # A deadline this close to the cached head (which may be a TTL old) is judged by a
            # fresh one: otherwise a message that expired a moment ago would get through.
            now = self.chain.refreshed_head().timestamp
        refused: dict[int, Rejection] = {}
        accepted: dict[int, Accepted] = {}
        for i, submission in enumerate(submissions):
            try:
                accepted[i] = self._check_alone(kind, submission, now)
            except Rejection as rejection:
                refused[i] = rejection
        signers = list(dict.fromkeys(a.message.signer for a in accepted.values()))
        self.chain.prefetch(
            nonces=[(a.message.signer, a.message.nonce) for a in accepted.values()],
            stakes=signers if kind is MessageKind.BID else (),
            escrows=signers if kind is MessageKind.ORDER else (),
            bindings=signers,
        )
        stored = self.store.stored_digests([a.digest for a in accepted.values()])
        holders = self.store.open_nonce_holders([(a.message.signer, a.message.nonce) for a in accepted.values()])
        first_of: dict[str, int] = {}
        first_nonce: dict[tuple[str, int], int] = {}
        for i, item in list(accepted.items()):
            try:
                if item.digest in stored:
                    raise Rejection(409, "signature", f"duplicate: {kind.value} {item.digest} was already accepted")
                if item.digest in first_of:
                    raise Rejection(409, "signature", f"duplicate of message {first_of[item.digest]} of this request")
                first_of[item.digest] = i
                message = item.message
                pair = (message.signer, message.nonce)
                self._check_nonce_free(pair, holders.get(pair), first_nonce.get(pair), now)
                first_nonce[pair] = i
                self._check_bound(kind, message.signer)
                self._check_nonce_on_chain(item)
            except Rejection as rejection:
                refused[i] = rejection
                del accepted[i]
        if kind is MessageKind.ORDER:
            refused.update(self._check_escrow([(i, a) for i, a in accepted.items()], now))
        else:
            refused.update(self._check_stake([(i, a) for i, a in accepted.items()]))
        if refused:
            raise Rejections(tuple(sorted(refused.items())))
        return [accepted[i] for i in range(len(submissions))]

    def _check_alone(self, kind: MessageKind, submission: Submission, now: int) -> Accepted:
        """The checks that need nothing but the message itself and the clock."""
        message = submission.message
        signature = _parse_signature(submission.signature)
        digest_bytes = message.digest(self.domain)
        try:
            signer = recover_signer(digest_bytes, signature)
        except SignatureError as exc:
            raise Rejection(400, "signature", str(exc)) from None
        if signer != message.signer:
            raise Rejection(400, "signature", f"signed by {signer}, not by the {_signer_field(kind)} {message.signer}")
        if message.matcher != self.matcher:
            raise Rejection(
                400, "matcher", f"the message names matcher {message.matcher}; this matcher is {self.matcher}"
            )
        if message.deadline < now:
            raise Rejection(400, "deadline", f"expired: deadline {message.deadline} is before chain time {now}")
        if submission.spec is not None:
            if len(submission.spec) > MAX_SPEC_LENGTH:
                raise Rejection(400, "spec", f"at most {MAX_SPEC_LENGTH} characters")
            if _LONG_NUMBER.search(submission.spec):
                raise Rejection(400, "spec", f"numbers in a market spec have at most {MAX_SPEC_DIGITS} digits")
            try:
                derived = market_id(checked_spec(submission.spec))
            except ValueError as exc:  # MarketSpecError, or anything else a spec string could raise
                raise Rejection(400, "spec", str(exc)) from None
            if derived != message.market:
                raise Rejection(400, "spec", f"spec hashes to {derived}, not to market {message.market}")
        if (zero := next(_zero_fields(message), None)) is not None:
            raise Rejection(400, *zero)
        if isinstance(message, Order) and message.duration < self.chain.min_lease_duration:
            raise Rejection(
                400,
                "duration",
                f"must be at least {self.chain.min_lease_duration} seconds (the protocol's shortest lease)",
            )
        if isinstance(message, Order) and order_cost(message.units, message.max_price, message.duration) == 0:
            # It could never settle (the contract refuses a lease that costs nothing), and such
            # orders would cost their poster no escrow at all.
            raise Rejection(
                400,
                "maxPrice",
                "the order costs nothing at its max price (units × maxPrice × duration / 3600 rounds"
                " down to 0 credit base units): raise the max price",
            )
        return Accepted(kind, "0x" + digest_bytes.hex(), message, signature)

    @staticmethod
    def _check_nonce_free(
        pair: tuple[str, int], holder: tuple[str, int] | None, earlier: int | None, now: int
    ) -> None:
        """One open message per (signer, nonce): the chain fills at most one of them anyway."""
        if earlier is not None:
            raise Rejection(409, "nonce", f"message {earlier} of this request has the same signer and nonce {pair[1]}")
        if holder is not None and holder[1] >= now:
            raise Rejection(
                409, "nonce", f"nonce {pair[1]} of {pair[0]} belongs to the open message {holder[0]}: use another nonce"
            )

    def _check_bound(self, kind: MessageKind, account: str) -> None:
        """The account is bound to this matcher with no change pending: only then can nothing
        but this matcher's own batches spend the account's funds, nonces or stake."""
        binding, block = self.chain.binding(account)
        now = block.timestamp
        if not binding.settled_with(self.matcher, now):
            state = (
                f"a change to {binding.next} is pending until {binding.change_at}"
                if binding.change_at > now else "it is bound to another matcher or to none"
            )
            raise Rejection(
                400,
                _signer_field(kind),
                f"{account} is not bound to this matcher ({state}): bind your account to this matcher first"
                f" ({BIND_HINT.format(matcher=self.matcher)})",
            )

    def _check_nonce_on_chain(self, item: Accepted) -> None:
        message = item.message
        claimed, void = self.chain.nonce_state(message.signer, message.nonce)
        if void:
            raise Rejection(400, "nonce", f"nonce {message.nonce} of {message.signer} is used or cancelled on chain")
        if claimed and self.chain.filled(bytes.fromhex(item.digest[2:])) == 0:
            raise Rejection(
                400, "nonce", f"nonce {message.nonce} of {message.signer} was taken by another message on chain"
            )
        if self.chain.cancel_requested(message.signer, message.nonce):
            raise Rejection(
                400, "nonce", f"nonce {message.nonce} of {message.signer} has a cancellation requested on chain"
            )

    def _check_escrow(self, orders: list[tuple[int, Accepted]], now: int) -> dict[int, Rejection]:
        """Each buyer's available escrow covers all its open orders at their max prices at once,
        counting the orders already stored and the earlier orders of this batch."""
        refused: dict[int, Rejection] = {}
        reserved: dict[str, int] = {}
        for i, item in orders:
            order = item.message
            assert isinstance(order, Order)  # the caller passes the orders of the request only
            buyer = order.buyer
            if buyer not in reserved:
                reserved[buyer] = sum(order_cost(*terms) for terms in self.store.open_order_terms(buyer, now))
            cost = order_cost(order.units, order.max_price, order.duration)
            available = self.chain.available_escrow(buyer)
            if reserved[buyer] + cost > available:
                refused[i] = Rejection(
                    400,
                    "buyer",
                    f"available escrow {format_credits(available)} UBC, less the {format_credits(reserved[buyer])} UBC"
                    f" its open orders reserve, is below the order's cost at its max price,"
                    f" {format_credits(cost)} UBC: deposit more credits first",
                )
            else:
                reserved[buyer] += cost
        return refused

    def _check_stake(self, bids: list[tuple[int, Accepted]]) -> dict[int, Rejection]:
        """Receipted bids must stay fillable: each provider's available stake covers all its live
        capacity, counting the open bids already stored and the earlier bids of this batch.

        The stake and the reservations are taken at the same block: the bids live at the
        timestamp of the block the stake was read at, which the receipt states as `issuedAt`.
        """
        refused: dict[int, Rejection] = {}
        reserved: dict[str, int] = {}
        stakes: dict[str, tuple[int, BlockRef]] = {}
        for i, item in bids:
            bid = item.message
            assert isinstance(bid, Bid)  # the caller passes the bids of the request only
            provider = bid.provider
            if provider not in stakes:  # once per provider, so all its bids share one block
                stakes[provider] = self.chain.available_stake(provider)
                reserved[provider] = self.store.live_bid_capacity(provider, stakes[provider][1].timestamp)
            stake, block = stakes[provider]
            stakeable = stake // self.chain.stake_per_unit
            if reserved[provider] + bid.capacity > stakeable:
                refused[i] = Rejection(
                    400,
                    "capacity",
                    f"provider's available stake covers {stakeable} units and its open bids already reserve"
                    f" {reserved[provider]}: stake more or bid at most {max(stakeable - reserved[provider], 0)} units",
                )
            else:
                reserved[provider] += bid.capacity
                item.stake_read_at = block.timestamp
        return refused


def _signer_field(kind: MessageKind) -> str:
    return "buyer" if kind is MessageKind.ORDER else "provider"


def _zero_fields(message: SignedMessage) -> Iterator[tuple[str, str]]:
    if isinstance(message, Order):
        if message.units == 0:
            yield "units", "must be at least 1"
        if message.duration == 0:
            yield "duration", "must be at least 1 second"
        if message.max_price == 0:
            yield "maxPrice", "must be positive"
    elif isinstance(message, Bid):
        if message.capacity == 0:
            yield "capacity", "must be at least 1"
        if message.max_duration == 0:
            yield "maxDuration", "must be at least 1 second"


_SIGNATURE_HEX = re.compile(r"0x[0-9a-fA-F]*")


def _parse_signature(text: str) -> bytes:
    """The 65 signature bytes of exactly `0x` + 130 hex digits (the API's schema states the same
    pattern; `bytes.fromhex` alone would let spaces through)."""
    if not isinstance(text, str) or not _SIGNATURE_HEX.fullmatch(text) or len(text) % 2:
        raise Rejection(400, "signature", "must be 0x-prefixed hex")
    raw = bytes.fromhex(text[2:])
    if len(raw) != 65:
        raise Rejection(400, "signature", f"must be 65 bytes, got {len(raw)}")
    return raw
