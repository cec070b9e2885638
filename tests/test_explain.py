"""Why no match, the pure part (`underbid.matcher.explain`): the real clearing of small markets,
and the reason each order left unmatched is given. The same reasons through a real matcher, its
API and the CLI are in tests/cli/test_why_no_match.py."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from underbid.matcher.clearing import BidLot, OrderLot, clear
from underbid.matcher.explain import duration_text, unmatched_orders
from underbid.protocol.pricing import NoMatch

HOUR = 3600
UBC = 10**6
M, N = "0x" + "aa" * 32, "0x" + "bb" * 32


def order(key: str, max_price: float, units: int = 1, hours: int = 1, market: str = M) -> OrderLot:
    return OrderLot(key=key, market=market, units=units, duration=hours * HOUR, max_price=int(max_price * UBC))


def bid(key: str, price: float, capacity: int = 1, max_hours: int = 24, market: str = M) -> BidLot:
    return BidLot(key=key, market=market, provider="0x" + "11" * 20, capacity=capacity, price=int(price * UBC),
                  max_duration=max_hours * HOUR)


def reasons(orders: list[OrderLot], bids: list[BidLot]) -> dict[str, NoMatch]:
    return {key: why.reason for key, why in unmatched_orders(orders, bids, clear(orders, bids), 7).items()}


def test_each_reason_in_the_scenario_that_produces_it():
    orders = [
        order("won", 3), order("priced-out", 2),  # M: a losing bid at 2.10 sets the price
        order("too-long", 5, hours=30), order("too-cheap", 1.2),
        order("lonely", 5, market="0x" + "cc" * 32),
        order("greedy", 3, units=2, market=N), order("beaten", 2, market=N),
    ]
    bids = [bid("cheap", 1.5), bid("dear", 2.1), bid("west", 1.0, market=N)]
    assert reasons(orders, bids) == {
        "priced-out": NoMatch.PRICED_OUT, "too-long": NoMatch.DURATION_TOO_LONG,
        "too-cheap": NoMatch.PRICE_TOO_LOW, "lonely": NoMatch.NO_BIDS,
        "greedy": NoMatch.TOO_FEW_UNITS, "beaten": NoMatch.OUTBID,
    }
    notes = unmatched_orders(orders, bids, clear(orders, bids), 7)
    assert notes["greedy"].line().startswith("1 of 2 units matched in round 7: too few units offered")
    assert "the longest any bid accepts is 24 h" in notes["too-long"].detail


def test_durations_are_stated_exactly():
    assert [duration_text(s) for s in (7200, 5400, 45)] == ["2 h", "90 min", "45 s"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 40), st.integers(1, 3), st.integers(1, 3)), min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(1, 40), st.integers(1, 3), st.integers(1, 3)), max_size=6),
)
def test_exactly_the_orders_left_short_are_told_and_the_reason_holds(order_specs, bid_specs):
    orders = [order(f"o{i}", p / 10, units=u, hours=h) for i, (p, u, h) in enumerate(order_specs)]
    bids = [bid(f"b{i}", p / 10, capacity=c, max_hours=h) for i, (p, c, h) in enumerate(bid_specs)]
    clearing = clear(orders, bids)
    got = {o.key: 0 for o in orders}
    for match in clearing.matches:
        got[match.order_key] += match.units
    notes = unmatched_orders(orders, bids, clearing, 1)
    assert set(notes) == {o.key for o in orders if got[o.key] < o.units}
    price = clearing.prices.get(M)
    for o in orders:
        if o.key not in notes:
            continue
        why = notes[o.key]
        assert (why.matched, why.wanted) == (got[o.key], o.units)
        fits = [b for b in bids if b.max_duration >= o.duration]
        if why.reason is NoMatch.NO_BIDS:
            assert not bids
        elif why.reason is NoMatch.DURATION_TOO_LONG:
            assert bids and not fits
        elif why.reason is NoMatch.PRICE_TOO_LOW:
            assert fits and min(b.price for b in fits) > o.max_price
        elif why.reason is NoMatch.PRICED_OUT:
            assert price is not None and price > o.max_price
        else:  # outbid or too few units: one price was within its max, and a bid it could take exists
            assert price is None or price <= o.max_price
            assert any(b.price <= o.max_price for b in fits)
