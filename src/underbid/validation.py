"""Validation of incoming signed orders and bids, before they are stored.

Each failure is a `Rejection` naming the request field at fault and the reason, which the API
turns into a 4xx answer. The contract stays the final judge: anything that passes here is checked
again, on chain, at settlement.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
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

    def check(self, kind: MessageKind, message: SignedMessage, signature_hex: str, spec: str | None, now: int) -> Accepted:
        """Returns the accepted message, or raises Rejection.

        `now` is the chain's time, not the wall clock: deadlines are judged by block time.
        """
        signature = _parse_signature(signature_hex)
        digest_bytes = message.digest(self.domain)
        try:
            signer = recover_signer(digest_bytes, signature)
        except SignatureError as exc:
            raise Rejection(400, "signature", str(exc)) from None
        signer_field = "buyer" if kind is MessageKind.ORDER else "provider"
        if signer != message.signer:
            raise Rejection(400, "signature", f"signed by {signer}, not by the {signer_field} {message.signer}")
        if message.deadline < now:
            raise Rejection(400, "deadline", f"expired: deadline {message.deadline} is before chain time {now}")
        if spec is not None:
            try:
                derived = market_id(spec)
            except MarketSpecError as exc:
                raise Rejection(400, "spec", str(exc)) from None
            if derived != message.market:
                raise Rejection(400, "spec", f"spec hashes to {derived}, not to market {message.market}")
        digest = "0x" + digest_bytes.hex()
        if self.store.get_message(digest) is not None:
            raise Rejection(409, "signature", f"duplicate: {kind.value} {digest} was already accepted")
        if self.chain.nonce_used(message.signer, message.nonce):
            raise Rejection(400, "nonce", f"nonce {message.nonce} of {message.signer} is used or cancelled on chain")
        if kind is MessageKind.ORDER:
            self._check_order(message)
        else:
            self._check_bid(message, now)
        return Accepted(kind, digest, message, signature)

    def _check_order(self, order: SignedMessage) -> None:
        if order.units == 0:
            raise Rejection(400, "units", "must be at least 1")
        if order.duration == 0:
            raise Rejection(400, "duration", "must be at least 1 second")
        if order.max_price == 0:
            raise Rejection(400, "maxPrice", "must be positive")
        cost = order_cost(order.units, order.max_price, order.duration)
        free = self.chain.free_escrow(order.buyer)
        if free < cost:
            raise Rejection(
                400,
                "buyer",
                f"free escrow {format_credits(free)} UBC is below the order's cost at its max price,"
                f" {format_credits(cost)} UBC: deposit more credits first",
            )

    def _check_bid(self, bid: SignedMessage, now: int) -> None:
        if bid.capacity == 0:
            raise Rejection(400, "capacity", "must be at least 1")
        if bid.max_duration == 0:
            raise Rejection(400, "maxDuration", "must be at least 1 second")
        # Receipted bids must stay fillable: the provider's free stake covers all its live capacity.
        stakeable = self.chain.free_stake(bid.provider) // self.chain.stake_per_unit
        reserved = self.store.live_bid_capacity(bid.provider, now)
        if reserved + bid.capacity > stakeable:
            raise Rejection(
                400,
                "capacity",
                f"provider's free stake covers {stakeable} units and its open bids already reserve {reserved}:"
                f" stake more or bid at most {max(stakeable - reserved, 0)} units",
            )


def _parse_signature(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise Rejection(400, "signature", "must be 0x-prefixed hex") from None
    if len(raw) != 65:
        raise Rejection(400, "signature", f"must be 65 bytes, got {len(raw)}")
    return raw
