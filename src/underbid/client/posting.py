"""Signing, posting and journalling orders and bids: what `order create`, `bid create` and the
provider agent share.

A posted message is journalled on this machine (so `order list` / `bid list` and the agent find it
again) with the matcher's acknowledgement; for a bid, the matcher's signed receipt is checked so
that the provider knows at once whether it could back a challenge.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from underbid.client.session import Client, Journal, JournalEntry, MatcherClient, MatcherError
from underbid.protocol.eip712 import Bid, Order, Receipt, SignatureError, recover_signer

#: how long the matcher may judge by a cached head block (its chain reads' TTL), plus a margin
MATCHER_CACHE_SECONDS = 2.5


@dataclass(frozen=True)
class Posted:
    """The matcher's acknowledgement of one signed message."""

    digest: str
    status: str
    receipt: dict[str, Any] | None
    round: int | None
    signature: str
    #: bids only: why the receipt could not back a challenge (None when it can, or for an order)
    receipt_problem: str | None
    is_bid: bool

    def as_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "status": self.status, "receipt": self.receipt, "round": self.round,
                "receipt_valid": self.receipt_problem is None if self.is_bid else None,
                "signature": self.signature}


def binding_problem(client: Client, matcher: str) -> str | None:
    """Why the matcher would refuse this account's messages (not bound to `matcher`, or a binding
    change pending), with the remedy; None when it is bound with nothing pending."""
    state = client.binding(client.address)
    if state["pending"]:
        return (f"the account {client.address} has a pending matcher change to {state['next'] or 'none'}"
                f" (effective in {state['change_left']} s): the matcher takes no messages from it until then")
    if state["matcher"] != matcher:
        where = f"bound to {state['matcher']}" if state["matcher"] else "not bound to any matcher"
        return (f"AccountNotBound(account={client.address}, matcher={matcher}): the account is {where};"
                " bind it first (`underbid account bind`)")
    return None


def post_messages(client: Client, matcher: MatcherClient, journal: Journal, messages: Sequence[Order | Bid],
                  spec: str) -> list[Posted]:
    """Signs `messages` (all orders or all bids), posts them and journals each; several bids go in
    one request that the matcher accepts whole or not at all. Raises MatcherError when refused."""
    if not messages:
        return []
    is_bid = isinstance(messages[0], Bid)
    if any(isinstance(message, Bid) != is_bid for message in messages):
        raise ValueError("post orders and bids in separate calls")
    signed = [(message, client.sign(message)) for message in messages]

    def send() -> list[dict[str, Any]]:
        if len(signed) > 1:
            if not is_bid:
                raise ValueError("orders are posted one at a time")
            return matcher.post_bids([(bid, signature) for bid, signature in signed if isinstance(bid, Bid)], spec)
        ((message, signature),) = signed
        if isinstance(message, Bid):
            return [matcher.post_bid(message, signature, spec)]
        return [matcher.post_order(message, signature, spec)]

    try:
        acks = send()
    except MatcherError as exc:
        # The matcher judges bindings against a head block it caches for a moment (about 2 s): an
        # account bound a moment ago (`escrow deposit` / `provider stake` bind it) can look unbound
        # to it. The caller checked the chain says bound, so ask once more after the cache expired.
        if "not bound to this matcher" not in str(exc):
            raise
        time.sleep(MATCHER_CACHE_SECONDS)
        acks = send()
    kind = "bid" if is_bid else "order"
    posted = []
    for (message, signature), ack in zip(signed, acks, strict=True):
        receipt = ack.get("receipt")
        if is_bid and receipt is None:  # older matchers: the stored bid may still carry one
            receipt = (matcher.get_message(kind, ack["digest"]) or {}).get("receipt")
        problem = check_receipt(client, message, receipt) if isinstance(message, Bid) else None
        journal.add(JournalEntry(
            kind=kind, deployment=client.deployment_key(), digest=ack["digest"], signer=client.address,
            nonce=message.nonce, message=message.model_dump(by_alias=True), signature="0x" + signature.hex(),
            spec=spec, matcher=matcher.url, receipt=receipt,
        ))
        posted.append(Posted(digest=ack["digest"], status=ack["status"], receipt=receipt,
                             round=receipt.get("round") if receipt else None, signature="0x" + signature.hex(),
                             receipt_problem=problem, is_bid=is_bid))
    return posted


def check_receipt(client: Client, bid: Bid, receipt: dict[str, Any] | None) -> str | None:
    """Why `receipt` could not back a challenge, or None if it can: it must name this bid and the
    bid's matcher, carry a plausible time and round, and be signed by that matcher's receipt signer
    (`matchers(matcher).receiptSigner`), the matcher being bonded."""
    if not receipt:
        return "the matcher returned no receipt"
    try:
        parsed = Receipt(matcher=receipt["matcher"], bid_hash=receipt["bidHash"], round=receipt["round"],
                         issued_at=receipt["issuedAt"])
        signer = recover_signer(parsed.digest(client.domain), bytes.fromhex(receipt["signature"].removeprefix("0x")))
    except (KeyError, ValueError, SignatureError) as exc:
        return f"malformed receipt ({' '.join(str(exc).split())[:200]})"
    if parsed.bid_hash != "0x" + bid.digest(client.domain).hex():
        return "it names another bid"
    if parsed.matcher != bid.matcher:
        return f"it names matcher {parsed.matcher}, but the bid names {bid.matcher}"
    if parsed.round == 0 or parsed.issued_at == 0 or parsed.issued_at > client.block_time() + 300:
        return f"implausible round {parsed.round} or time {parsed.issued_at}"
    _, _, _, receipt_signer = client.settlement.functions.matchers(parsed.matcher).call()
    if signer != receipt_signer:
        return f"it is signed by {signer}, not by the matcher's receipt signer {receipt_signer}"
    if not client.settlement.functions.isBondedMatcher(parsed.matcher).call():
        return f"matcher {parsed.matcher} is not bonded"
    return None
