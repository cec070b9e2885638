"""Shared pieces of the attack tests (tests/contracts/test_attack_*.py).

Each attack test plays one finding of issue 9 the way the attacker would, against the deployed
contracts, and asserts the safe outcome: a named revert, or no effect.

Vocabulary: B is the provider's cheap receipted bid, W a dearer "witness" bid that won a lease B
could have served, O the order W served.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from underbid.protocol.eip712 import Bid, Order, Receipt  # noqa: F401 (Order: type hints)

from ..conftest import HOUR, UBC

P_CHEAP = 1 * UBC
P_DEAR = 2 * UBC
ZERO32 = b"\x00" * 32


def digest(message, m) -> bytes:
    return message.digest(m.domain)


def head_time(chain) -> int:
    return chain.blocks.head.timestamp


def at(chain, t: int) -> None:
    """The next transaction lands in a block with timestamp `t`."""
    chain.pending_timestamp = t


def at_least(chain, t: int) -> int:
    """The next transaction lands at `t`, or just after the head if the chain already passed `t`
    (a few transactions in between take wall-clock time on anvil). Returns the time used."""
    t = max(t, head_time(chain) + 1)
    chain.pending_timestamp = t
    return t


def sign_receipt(m, bid: Bid, round_id: int, issued_at: int, key=None, matcher=None) -> tuple[Receipt, bytes]:
    """A receipt for `bid` from `matcher` (default: the market's), signed with `key` (default: the
    matcher's own key, its registered receipt signer at deployment)."""
    who = matcher or m.matcher
    receipt = Receipt(
        matcher=str(who.address), bid_hash="0x" + digest(bid, m).hex(), round=round_id, issued_at=issued_at
    )
    return receipt, receipt.sign(key if key is not None else who.private_key, m.domain)


def bond_matcher(m, account, signer, amount=None) -> None:
    """Bonds `account` as a matcher whose receipts `signer` signs."""
    amount = amount or m.params.min_matcher_bond
    m.give_ubt(account, amount)
    m.ubt.approve(m.settlement, amount, sender=account)
    m.settlement.bondMatcher(amount, signer, sender=account)


def as_matcher(m, matcher):
    """The same market helper acting as (and naming in messages) another matcher."""
    return dataclasses.replace(m, matcher=matcher)


@dataclass
class Challenge:
    """Everything a provider sends the court: receipt, its bid, the witness lease, the proof kind."""

    m: object
    court: object
    provider: object
    receipt: tuple[Receipt, bytes]
    bid: tuple[Bid, bytes]
    witness_round: int
    order: Order
    witness: Bid
    own_order: Order | None = None
    # A lease of the bid (round, its order) when the bid was used up in one go (no fill record).
    fill_lease: tuple[int, Order] | None = None

    def args(self) -> tuple:
        r, r_sig = self.receipt
        b, b_sig = self.bid
        own = digest(self.own_order, self.m) if self.own_order is not None else ZERO32
        return (
            r.as_call_tuple(),
            r_sig,
            b.as_call_tuple(),
            b_sig,
            (self.witness_round, digest(self.order, self.m), self.witness.as_call_tuple()),
            own,
            (self.fill_lease[0], digest(self.fill_lease[1], self.m)) if self.fill_lease else (0, ZERO32),
        )

    def replace(self, **changes) -> Challenge:
        return dataclasses.replace(self, **changes)

    def verify(self):
        return self.court.verifyChallenge(*self.args())

    def send(self, sender=None):
        return self.court.challenge(*self.args(), sender=sender or self.provider)


def passed_over(m, court, chain, provider, rival, buyer, *, round_id=None, final=True, bid=None, settle_at=None,
                receipt_round=None, issued_at=None, receipt_key=None):
    """Settles batch 0 of `round_id` (default: the matcher's next): `rival`'s dearer W serves 2 units of
    `buyer`'s order while `provider`'s cheaper receipted B (capacity 3) is passed over.
    Returns (challenge, settle receipt)."""
    b = m.bid(provider, **{"capacity": 3, "price": P_CHEAP, "max_duration": 24 * HOUR, **(bid or {})})
    round_id = round_id if round_id is not None else m.next_round()
    issued = head_time(chain) if issued_at is None else issued_at
    receipt = sign_receipt(m, b[0], receipt_round or round_id, issued, receipt_key)
    w = m.bid(rival, capacity=4, price=P_DEAR)
    o = m.order(buyer, units=2, duration=2 * HOUR, max_price=3 * UBC)
    if settle_at is not None:
        at(chain, settle_at)
    tx = m.settle([o], [w], [(0, 0, 2)], {o[0].market: P_DEAR}, round_id=round_id, final=final)
    return Challenge(m, court, provider, receipt, b, round_id, o[0], w[0]), tx


def slash_amounts(params, bond) -> tuple[int, int]:
    slashed = bond * params.matcher_slash_bps // 10_000
    return slashed, slashed * params.challenger_share_bps // 10_000


def assert_slashed(settlement, ubt, matcher, challenger, tx, params, bond_before, balance_before) -> None:
    slashed, to_challenger = slash_amounts(params, bond_before)
    assert slashed > 0
    assert settlement.matchers(matcher).bond == bond_before - slashed
    assert ubt.balanceOf(challenger) == balance_before + to_challenger


