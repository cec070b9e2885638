"""Why an order left a round without (all of) its lease: read off the round's own lots and
clearing, so that the reason is the one that held for that round.

Pure, like the clearing: lots and a clearing in, a reason per order out. The reasons are checked
from the plainest to the subtlest: no bid in the market; no bid long enough; every long enough
bid priced above the order's max; the uniform price above its max; the order got every unit it
could take; and otherwise those units went to orders that gained more from them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from underbid.matcher.clearing import BidLot, Clearing, MarketClearing, OrderLot
from underbid.protocol.pricing import NoMatch, Unmatched
from underbid.protocol.units import format_credits

#: what an order in a market without any open bid is told (such markets are not cleared at all)
NO_BIDS_DETAIL = "no bid was open in this market"


def duration_text(seconds: int) -> str:
    """`"2 h"`, `"90 min"` or `"45 s"`: the largest unit that states it exactly."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def unmatched_orders(
    orders: Sequence[OrderLot], bids: Sequence[BidLot], clearing: Clearing, round_id: int
) -> dict[str, Unmatched]:
    """The reason for every order in `orders` that the clearing left with units unmatched, by key."""
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
        reason, detail = why_unmatched(order, got, bids_in.get(order.market, []), by_market.get(order.market))
        out[order.key] = Unmatched(round_id, reason, detail, got, order.units)
    return out


def why_unmatched(
    order: OrderLot, matched: int, bids: Sequence[BidLot], market: MarketClearing | None
) -> tuple[NoMatch, str]:
    """The first reason that holds for `order`, of which the round matched `matched` units, against
    its market's bids and clearing (None: the market did not trade)."""
    if not bids:
        return NoMatch.NO_BIDS, NO_BIDS_DETAIL
    long_enough = [b for b in bids if b.max_duration >= order.duration]
    if not long_enough:
        longest = max(b.max_duration for b in bids)
        return NoMatch.DURATION_TOO_LONG, (
            f"no bid accepts a lease of {duration_text(order.duration)}"
            f" (the longest any bid accepts is {duration_text(longest)})")
    cheapest = min(b.price for b in long_enough)
    if cheapest > order.max_price:
        return NoMatch.PRICE_TOO_LOW, (
            f"the cheapest bid that accepts {duration_text(order.duration)} asks {format_credits(cheapest)}"
            f" UBC/unit-hour, above your max {format_credits(order.max_price)}")
    if market is not None and market.price > order.max_price:
        return NoMatch.PRICED_OUT, (
            f"a bid at {format_credits(cheapest)} could serve you, but the market cleared at one price for all,"
            f" {format_credits(market.price)} UBC/unit-hour, above your max {format_credits(order.max_price)}")
    affordable = sum(b.capacity for b in long_enough if b.price <= order.max_price)
    if affordable <= matched:
        return NoMatch.TOO_FEW_UNITS, (
            f"you got all {affordable} unit(s) offered at or below your max that accept"
            f" {duration_text(order.duration)}")
    return NoMatch.OUTBID, (
        f"the {affordable} unit(s) offered at or below your max that accept {duration_text(order.duration)}"
        " went to orders that gain more from them (a higher max price, or a longer lease)")
