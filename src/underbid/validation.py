"""Validation of incoming signed orders and bids, before they are stored.

Each failure is a `Rejection` naming the request field at fault and the reason, which the API
turns into a 4xx answer. The contract stays the final judge: anything that passes here is checked
again, on chain, at settlement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from underbid.chain import ChainView
from underbid.eip712 import Domain, SignatureError, SignedMessage, recover_signer
from underbid.markets import MarketSpecError, market_id
from underbid.store import MessageKind, Store
from underbid.units import format_credits


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
    #: For bids: the matcher's signed receipt (bidHash, round, issuedAt, signature).
    receipt: dict | None = None


class Validator:
    """Checks schema-valid messages against their signature, the clock, the store and the chain."""

    def __init__(self, domain: Domain, chain: ChainView, store: Store):
        self.domain = domain
        self.chain = chain
        self.store = store

    def check(self, kind: MessageKind, submissions: Sequence[Submission], now: int) -> list[Accepted]:
        """Returns every submission accepted, in order, or raises Rejections naming each refused one.

        `now` is the chain's time, not the wall clock: deadlines are judged by block time. The
        checks are ordered cheapest-first and the store is asked once for the whole batch, so a
        batch costs little more per message than its signature recovery.
        """
        refused: dict[int, Rejection] = {}
        accepted: dict[int, Accepted] = {}
        for i, submission in enumerate(submissions):
            try:
                accepted[i] = self._check_alone(kind, submission, now)
            except Rejection as rejection:
                refused[i] = rejection
        signers = [a.message.signer for a in accepted.values()]
        self.chain.prefetch(
            nonces=[(a.message.signer, a.message.nonce) for a in accepted.values()],
            stakes=signers if kind is MessageKind.BID else (),
            escrows=signers if kind is MessageKind.ORDER else (),
        )
        stored = self.store.stored_digests([a.digest for a in accepted.values()])
        first_of: dict[str, int] = {}
        for i, item in list(accepted.items()):
            try:
                if item.digest in stored:
                    raise Rejection(409, "signature", f"duplicate: {kind.value} {item.digest} was already accepted")
                if item.digest in first_of:
                    raise Rejection(409, "signature", f"duplicate of message {first_of[item.digest]} of this request")
                first_of[item.digest] = i
                message = item.message
                if self.chain.nonce_used(message.signer, message.nonce):
                    raise Rejection(
                        400, "nonce", f"nonce {message.nonce} of {message.signer} is used or cancelled on chain"
                    )
                if kind is MessageKind.ORDER:
                    self._check_escrow(message)
            except Rejection as rejection:
                refused[i] = rejection
                del accepted[i]
        if kind is MessageKind.BID:
            refused.update(self._check_stake([(i, a.message) for i, a in accepted.items()], now))
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
            signer_field = "buyer" if kind is MessageKind.ORDER else "provider"
            raise Rejection(400, "signature", f"signed by {signer}, not by the {signer_field} {message.signer}")
        if message.deadline < now:
            raise Rejection(400, "deadline", f"expired: deadline {message.deadline} is before chain time {now}")
        if submission.spec is not None:
            try:
                derived = market_id(submission.spec)
            except MarketSpecError as exc:
                raise Rejection(400, "spec", str(exc)) from None
            if derived != message.market:
                raise Rejection(400, "spec", f"spec hashes to {derived}, not to market {message.market}")
        if (zero := next(_zero_fields(kind, message), None)) is not None:
            raise Rejection(400, *zero)
        return Accepted(kind, "0x" + digest_bytes.hex(), message, signature)

    def _check_escrow(self, order: SignedMessage) -> None:
        cost = order_cost(order.units, order.max_price, order.duration)
        free = self.chain.free_escrow(order.buyer)
        if free < cost:
            raise Rejection(
                400,
                "buyer",
                f"free escrow {format_credits(free)} UBC is below the order's cost at its max price,"
                f" {format_credits(cost)} UBC: deposit more credits first",
            )

    def _check_stake(self, bids: list[tuple[int, SignedMessage]], now: int) -> dict[int, Rejection]:
        """Receipted bids must stay fillable: each provider's free stake covers all its live
        capacity, counting the open bids already stored and the earlier bids of this batch."""
        refused: dict[int, Rejection] = {}
        reserved: dict[str, int] = {}
        for i, bid in bids:
            provider = bid.provider
            if provider not in reserved:
                reserved[provider] = self.store.live_bid_capacity(provider, now)
            stakeable = self.chain.free_stake(provider) // self.chain.stake_per_unit
            if reserved[provider] + bid.capacity > stakeable:
                refused[i] = Rejection(
                    400,
                    "capacity",
                    f"provider's free stake covers {stakeable} units and its open bids already reserve"
                    f" {reserved[provider]}: stake more or bid at most {max(stakeable - reserved[provider], 0)} units",
                )
            else:
                reserved[provider] += bid.capacity
        return refused


def _zero_fields(kind: MessageKind, message: SignedMessage) -> Iterator[tuple[str, str]]:
    if kind is MessageKind.ORDER:
        if message.units == 0:
            yield "units", "must be at least 1"
        if message.duration == 0:
            yield "duration", "must be at least 1 second"
        if message.max_price == 0:
            yield "maxPrice", "must be positive"
    else:
        if message.capacity == 0:
            yield "capacity", "must be at least 1"
        if message.max_duration == 0:
            yield "maxDuration", "must be at least 1 second"


def _parse_signature(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise Rejection(400, "signature", "must be 0x-prefixed hex") from None
    if len(raw) != 65:
        raise Rejection(400, "signature", f"must be 65 bytes, got {len(raw)}")
    return raw
