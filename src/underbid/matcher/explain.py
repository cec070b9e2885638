"""Why an order left a round without (all of) its lease: read off the round's own lots and
clearing, so that the reason is the one that held for that round.

Pure, like the clearing: lots and a clearing in, a reason per order out. The reasons are checked
from the cheapest explanation to the subtlest: no bid in the market; no bid long enough; every
long enough bid priced above the order's max; the uniform price above its max; and otherwise the
bids it could take went to orders that gained more from them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from underbid.matcher.clearing import BidLot, Clearing, OrderLot
from underbid.protocol.units import format_credits


class NoMatch(StrEnum):
    """Why an order was not (fully) matched in a round."""

    NO_BIDS = "no bids"
    DURATION_TOO_LONG = "duration too long"
    PRICE_TOO_LOW = "max price too low"
    PRICED_OUT = "priced out"
    OUTBID = "outbid"


@dataclass(frozen=True)
class Unmatched:
    """An order's outcome in a round it left with units unmatched."""

    reason: NoMatch
    text: str
    matched: int
    wanted: int

    def line(self, round_id: int) -> str:
        part = f"{self.matched} of {self.wanted} units matched in round {round_id}" if self.matched else (
            f"not matched in round {round_id}")
        return f"{part}: {self.text}"


def _hours(seconds: int) -> str:
    return f"{seconds / 3600:g} h" if seconds % 36 == 0 else f"{seconds} s"


def unmatched_orders(orders: Sequence[OrderLot], bids: Sequence[BidLot], clearing: Clearing) -> dict[str, Unmatched]:
    """The reason for every order in `orders` that the clearing left with units unmatched."""
    matched: dict[str, int] = defaultdict(int)
    for match in clearing.matches:
        matched[match.order_key] += match.units
    by_market = {mc.market: mc for mc in clearing.markets}
    bids_in: dict[str, list[BidLot]] = defaultdict(list)
    for bid in bids:
        bids_in[bid.market].append(bid)
    out: dict[str, Unmatched] = {}
    for order in orders:
        got = matched.get(order.key, 0)
        if got >= order.units:
            continue
        reason, text = _why(order, bids_in.get(order.market, []), by_market.get(order.market))
        out[order.key] = Unmatched(reason, text, got, order.units)
    return out


def _why(order: OrderLot, bids: Sequence[BidLot], market) -> tuple[NoMatch, str]:
    if not bids:
        return NoMatch.NO_BIDS, "no bid was open in this market"
    long_enough = [b for b in bids if b.max_duration >= order.duration]
    if not long_enough:
        longest = max(b.max_duration for b in bids)
        return NoMatch.DURATION_TOO_LONG, (
            f"no bid accepts a lease of {_hours(order.duration)} (the longest any bid accepts is {_hours(longest)})")
    cheapest = min(b.price for b in long_enough)
    if cheapest > order.max_price:
        return NoMatch.PRICE_TOO_LOW, (
            f"the cheapest bid that accepts {_hours(order.duration)} asks {format_credits(cheapest)} UBC/unit-hour,"
            f" above your max {format_credits(order.max_price)}")
    if market is not None and (market.price > order.max_price or order.key in market.dropped_orders):
        return NoMatch.PRICED_OUT, (
            f"the market cleared at one price for all, {format_credits(market.price)} UBC/unit-hour,"
            f" above your max {format_credits(order.max_price)}")
    affordable = sum(b.capacity for b in long_enough if b.price <= order.max_price)
    return NoMatch.OUTBID, (
        f"the {affordable} unit(s) offered at or below your max went to orders that gain more from them"
        " (a higher max price, or a longer lease)")
