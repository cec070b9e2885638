"""Tests of underbid.matcher.clearing: constraints, exactness, pricing rule and accountability.

The accountability property is what a provider can prove on chain to slash the
matcher, so it is checked here independently of the module's own helper, on
random instances built to produce ties (small price range) and duration
conflicts (few duration tiers, some bids too short).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from underbid.matcher import clearing, netsimplex
from underbid.matcher.clearing import (
    BidLot,
    Clearing,
    MarketClearing,
    Match,
    OrderLot,
    accountability_violations,
    clear,
    gains_from_trade,
    max_gain_allocation,
)
from underbid.protocol.pricing import PriceRule

MARKETS = ("0x" + "aa" * 32, "0x" + "bb" * 32, "0x" + "cc" * 32)
M = MARKETS[0]
DURATIONS = (1, 2, 4)
MAX_DURATIONS = (0, 1, 2, 4, 8)  # 0: a bid too short for any order

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEDIUM = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# Instance generation
# --------------------------------------------------------------------------


@st.composite
def instances(
    draw: st.DrawFn,
    max_orders: int = 8,
    max_bids: int = 8,
    max_units: int = 5,
    max_capacity: int = 5,
    n_markets: int = 2,
    max_price: int = 6,
) -> tuple[list[OrderLot], list[BidLot]]:
    markets = MARKETS[:n_markets]
    n_o = draw(st.integers(0, max_orders))
    n_b = draw(st.integers(0, max_bids))
    # Random keys (not index order) so that key tie-breaks are exercised.
    keys = draw(st.lists(st.integers(0, 2**32), min_size=n_o + n_b, max_size=n_o + n_b,
                         unique=True))
    orders = [
        OrderLot(
            key=f"0x{keys[i]:010x}",
            market=draw(st.sampled_from(markets)),
            units=draw(st.integers(1, max_units)),
            duration=draw(st.sampled_from(DURATIONS)),
            max_price=draw(st.integers(0, max_price)),
        )
        for i in range(n_o)
    ]
    bids = [
        BidLot(
            key=f"0x{keys[n_o + j]:010x}",
            market=draw(st.sampled_from(markets)),
            provider=f"0x{draw(st.integers(0, 3)):040x}",
            capacity=draw(st.integers(1, max_capacity)),
            price=draw(st.integers(0, max_price)),
            max_duration=draw(st.sampled_from(MAX_DURATIONS)),
        )
        for j in range(n_b)
    ]
    return orders, bids


small = instances()
tiny = instances(max_orders=4, max_bids=4, max_units=3, max_capacity=3)
medium = instances(max_orders=30, max_bids=60, max_units=16, max_capacity=8, n_markets=3,
                   max_price=10)


# --------------------------------------------------------------------------
# Independent oracles
# --------------------------------------------------------------------------


def compatible(o: OrderLot, b: BidLot) -> bool:
    return o.market == b.market and o.duration <= b.max_duration


def gain(o: OrderLot, b: BidLot) -> int:
    return o.duration * (o.max_price - b.price)


def tradable(o: OrderLot, b: BidLot) -> bool:
    """The module's rule for a pair: compatible, and the bid priced at most the order's max."""
    return compatible(o, b) and b.price <= o.max_price


def brute_force_value(orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> tuple[int, int]:
    """Exact optimum (most gains, then most matched units) by exhaustive enumeration of each
    order's split over bids.

    Memoized on (order index, remaining capacities); meant for <= 4 x 4 x 3.
    """
    total = (0, 0)
    for market in {o.market for o in orders}:
        mo = [o for o in orders if o.market == market]
        mb = [b for b in bids if b.market == market]

        @cache
        def best(i: int, caps: tuple[int, ...], mo: tuple[OrderLot, ...] = tuple(mo),
                 mb: tuple[BidLot, ...] = tuple(mb)) -> tuple[int, int]:
            if i == len(mo):
                return (0, 0)
            o = mo[i]
            ranges = [range(min(c, o.units) + 1) if tradable(o, b) else range(1)
                      for b, c in zip(mb, caps, strict=True)]
            result = (0, 0)
            for xs in itertools.product(*ranges):
                if sum(xs) > o.units:
                    continue
                here = sum(x * gain(o, b) for x, b in zip(xs, mb, strict=True))
                rest = best(i + 1, tuple(c - x for c, x in zip(caps, xs, strict=True)))
                result = max(result, (here + rest[0], sum(xs) + rest[1]))
            return result

        found = best(0, tuple(b.capacity for b in mb))
        total = (total[0] + found[0], total[1] + found[1])
    return total


def fills(matches: Sequence[Match]) -> tuple[dict[str, int], dict[str, int]]:
    fo: dict[str, int] = defaultdict(int)
    fb: dict[str, int] = defaultdict(int)
    for m in matches:
        fo[m.order_key] += m.units
        fb[m.bid_key] += m.units
    return fo, fb


def check_feasible(matches: Sequence[Match], orders: Sequence[OrderLot],
                   bids: Sequence[BidLot]) -> None:
    """Every hard constraint of an allocation, checked from scratch."""
    ob = {o.key: o for o in orders}
    bb = {b.key: b for b in bids}
    pairs = [(m.order_key, m.bid_key) for m in matches]
    assert len(pairs) == len(set(pairs)), "one match per (order, bid) pair"
    for m in matches:
        o, b = ob[m.order_key], bb[m.bid_key]
        assert m.units > 0
        assert o.market == b.market
        assert o.duration <= b.max_duration
        assert b.price <= o.max_price, "a bid above the order's max price never serves it"
    fo, fb = fills(matches)
    for k, u in fo.items():
        assert u <= ob[k].units
    for k, u in fb.items():
        assert u <= bb[k].capacity


def brute_accountability(matches: Sequence[Match], orders: Sequence[OrderLot],
                         bids: Sequence[BidLot]) -> list[tuple[str, str]]:
    """The slashing condition, by direct quadratic search (independent of the module)."""
    ob = {o.key: o for o in orders}
    bb = {b.key: b for b in bids}
    _, fb = fills(matches)
    served_durations: dict[str, set[int]] = defaultdict(set)
    for m in matches:
        served_durations[m.bid_key].add(ob[m.order_key].duration)
    bad = []
    for wk, durs in served_durations.items():
        w = bb[wk]
        for b in bids:
            if (b.market == w.market and b.price < w.price and fb.get(b.key, 0) < b.capacity
                    and any(b.max_duration >= d for d in durs)):
                bad.append((b.key, wk))
    return bad


def improving_moves(matches: Sequence[Match], orders: Sequence[OrderLot],
                    bids: Sequence[BidLot]) -> list[str]:
    """Single-unit additions and swaps that would raise gains (must be none)."""
    fo, fb = fills(matches)
    served = [(m.order_key, m.bid_key) for m in matches]
    ob = {o.key: o for o in orders}
    bb = {b.key: b for b in bids}
    spare_o = [o for o in orders if fo.get(o.key, 0) < o.units]
    spare_b = [b for b in bids if fb.get(b.key, 0) < b.capacity]
    moves = []
    for o in spare_o:  # add a unit: more gains, or as much and one more unit
        for b in spare_b:
            if tradable(o, b):
                moves.append(f"add {o.key}->{b.key}")
    for ok, wk in served:
        o, w = ob[ok], bb[wk]
        for b in spare_b:  # move a unit to a cheaper bid
            if compatible(o, b) and b.price < w.price:
                moves.append(f"rebid {ok}: {wk}->{b.key}")
        for o2 in spare_o:  # give the unit to an order that gains more
            if compatible(o2, w) and gain(o2, w) > max(gain(o, w), 0):
                moves.append(f"reorder {wk}: {ok}->{o2.key}")
    for (o1k, b1k), (o2k, b2k) in itertools.combinations(served, 2):  # exchange partners
        o1, b1, o2, b2 = ob[o1k], bb[b1k], ob[o2k], bb[b2k]
        if (compatible(o1, b2) and compatible(o2, b1) and gain(o1, b2) > 0 and gain(o2, b1) > 0
                and gain(o1, b2) + gain(o2, b1) > gain(o1, b1) + gain(o2, b2)):
            moves.append(f"exchange {o1k},{o2k}")
    return moves


def by_key(orders: Sequence[OrderLot], bids: Sequence[BidLot]
           ) -> tuple[dict[str, OrderLot], dict[str, BidLot]]:
    return {o.key: o for o in orders}, {b.key: b for b in bids}


def total_gains(matches: Sequence[Match], orders: Sequence[OrderLot],
                bids: Sequence[BidLot]) -> int:
    return gains_from_trade(matches, *by_key(orders, bids))


def value(matches: Sequence[Match], orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> tuple[int, int]:
    """What the clearing maximizes, in order: gains from trade, then matched units."""
    return total_gains(matches, orders, bids), sum(m.units for m in matches)


def uniform_price_problem(orders: list[OrderLot], bids: list[BidLot], mc: MarketClearing
                          ) -> tuple[list[OrderLot], list[BidLot]]:
    """The orders and bids of one market that took part at its uniform price.

    Everyone, when the max-gain allocation admits one price (lo, its dearest winning bid, at
    most hi, its lowest served max price); otherwise those the clearing's trial price admits,
    which must lie in [hi, lo].
    """
    first = max_gain_allocation(orders, bids)
    ob, bb = by_key(orders, bids)
    lo = max(bb[m.bid_key].price for m in first)
    hi = min(ob[m.order_key].max_price for m in first)
    if lo <= hi:
        assert mc.trial_price is None
        return orders, bids
    assert mc.trial_price is not None and hi <= mc.trial_price <= lo
    return ([o for o in orders if o.max_price >= mc.trial_price],
            [b for b in bids if b.price <= mc.trial_price])


# --------------------------------------------------------------------------
# Properties of clear()
# --------------------------------------------------------------------------


def check_clearing(c: Clearing, orders: list[OrderLot], bids: list[BidLot]) -> None:
    """Everything a clearing must satisfy, per market."""
    ob, bb = by_key(orders, bids)
    assert [mc.market for mc in c.markets] == sorted({mc.market for mc in c.markets})
    assert c.matches == tuple(m for mc in c.markets for m in mc.matches)
    assert c.prices == {mc.market: mc.price for mc in c.markets}
    check_feasible(c.matches, orders, bids)
    for mc in c.markets:
        assert mc.matches, "only markets with at least one match are listed"
        assert list(mc.matches) == sorted(mc.matches, key=lambda m: (m.order_key, m.bid_key))
        assert list(mc.dropped_orders) == sorted(mc.dropped_orders)
        for m in mc.matches:
            assert ob[m.order_key].market == mc.market
            assert bb[m.bid_key].price <= mc.price <= ob[m.order_key].max_price
        served = {m.order_key for m in mc.matches}
        assert not served & set(mc.dropped_orders)
        for k in mc.dropped_orders:
            assert ob[k].market == mc.market
        # The pricing rule and the allocation, recomputed independently.
        market_orders = [o for o in orders if o.market == mc.market]
        market_bids = [b for b in bids if b.market == mc.market]
        taking, offered = uniform_price_problem(market_orders, market_bids, mc)
        trial = mc.trial_price
        lo = max(bb[m.bid_key].price for m in mc.matches)
        hi = min(ob[m.order_key].max_price for m in mc.matches)
        floor = lo
        if trial is None:
            assert mc.dropped_orders == ()
        else:
            below = [o.max_price for o in market_orders if o.max_price < trial]
            floor = max([lo] + [m + 1 for m in below])
            first_served = {m.order_key for m in max_gain_allocation(market_orders, market_bids)}
            assert set(mc.dropped_orders) == {k for k in first_served if ob[k].max_price < trial}
        for k in mc.dropped_orders:
            assert ob[k].max_price < mc.price, "a priced-out order could not pay the price"
        used = {m.bid_key for m in mc.matches}
        unused = [b.price for b in market_bids
                  if b.key not in used and any(tradable(o, b) for o in market_orders)]
        served = {m.order_key for m in mc.matches}
        unserved = [o.max_price for o in market_orders
                    if o.key not in served and any(tradable(o, b) for b in market_bids)]
        if unused:
            expected = min(max(min(unused), floor), hi)
        elif unserved:
            expected = min(max(max(unserved), floor), hi)
        else:
            expected = (floor + hi) // 2
        assert mc.price == min(max(expected, 1), hi)
        # The matches are an exact optimum of the orders and bids taking part.
        opt = max_gain_allocation(taking, offered, prune=False, solver="python")
        assert value(mc.matches, orders, bids) == value(opt, orders, bids)
    # Markets left out really have nothing to trade.
    listed = {mc.market for mc in c.markets}
    for o in orders:
        if o.market not in listed:
            assert not any(tradable(o, b) for b in bids)


@FAST
@given(small)
def test_clear_satisfies_every_constraint(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    check_clearing(clear(orders, bids), orders, bids)


@MEDIUM
@given(medium)
def test_clear_satisfies_every_constraint_medium(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    check_clearing(clear(orders, bids), orders, bids)


@FAST
@given(small, st.data())
def test_clear_is_deterministic_under_permutation(
    inst: tuple[list[OrderLot], list[BidLot]], data: st.DataObject
) -> None:
    orders, bids = inst
    shuffled_o = data.draw(st.permutations(orders))
    shuffled_b = data.draw(st.permutations(bids))
    assert clear(shuffled_o, shuffled_b) == clear(orders, bids)
    # Generators are accepted as well as lists.
    assert clear(iter(shuffled_o), iter(shuffled_b)) == clear(orders, bids)


@FAST
@given(small)
def test_accountability_property(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    c = clear(orders, bids)
    assert brute_accountability(c.matches, orders, bids) == []
    assert accountability_violations(c.matches, orders, bids) == []


@MEDIUM
@given(medium)
def test_accountability_property_medium(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    c = clear(orders, bids)
    assert brute_accountability(c.matches, orders, bids) == []
    assert accountability_violations(c.matches, orders, bids) == []
    # Also before pricing, with and without pruning.
    for prune in (True, False):
        a = max_gain_allocation(orders, bids, prune=prune)
        assert brute_accountability(a, orders, bids) == []


@FAST
@given(small)
def test_no_add_or_swap_raises_gains(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    assert improving_moves(max_gain_allocation(orders, bids), orders, bids) == []
    # After pricing: local optimality among the orders and bids taking part.
    c = clear(orders, bids)
    for mc in c.markets:
        taking, offered = uniform_price_problem([o for o in orders if o.market == mc.market],
                                                [b for b in bids if b.market == mc.market], mc)
        assert improving_moves(mc.matches, taking, offered) == []


# --------------------------------------------------------------------------
# Exactness: brute force, pruning, solver cross-checks
# --------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tiny)
def test_max_gain_equals_brute_force(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    expected = brute_force_value(orders, bids)
    for prune, solver in [(True, "ortools"), (False, "ortools"), (True, "python"),
                          (False, "python"), (True, "auto")]:
        a = max_gain_allocation(orders, bids, prune=prune, solver=solver)
        check_feasible(a, orders, bids)
        assert value(a, orders, bids) == expected, (prune, solver)


@MEDIUM
@given(medium)
def test_pruned_equals_unpruned_and_solvers_agree(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    pruned = max_gain_allocation(orders, bids, prune=True, solver="ortools")
    unpruned = max_gain_allocation(orders, bids, prune=False, solver="ortools")
    reference = max_gain_allocation(orders, bids, prune=False, solver="python")
    check_feasible(pruned, orders, bids)
    expected = value(reference, orders, bids)
    assert value(pruned, orders, bids) == expected
    assert value(unpruned, orders, bids) == expected


@st.composite
def many_bids(draw: st.DrawFn) -> tuple[list[OrderLot], list[BidLot]]:
    """Supply far above demand, so pruning removes most bids, across duration tiers."""
    orders, _ = draw(instances(max_orders=6, max_bids=0, max_units=6, n_markets=1,
                               max_price=20))
    n = draw(st.integers(20, 80))
    bids = [
        BidLot(f"0xb{j:04d}", M, "0x01", draw(st.integers(1, 4)), draw(st.integers(0, 20)),
               draw(st.sampled_from(MAX_DURATIONS)))
        for j in range(n)
    ]
    return orders, bids


@MEDIUM
@given(many_bids())
def test_pruning_keeps_the_optimum_when_it_bites(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    pruned = max_gain_allocation(orders, bids, prune=True, solver="ortools")
    reference = max_gain_allocation(orders, bids, prune=False, solver="python")
    assert value(pruned, orders, bids) == value(reference, orders, bids)
    assert brute_accountability(clear(orders, bids).matches, orders, bids) == []


def test_pruning_removes_bids() -> None:
    """Demand 3 in each of two tiers: the pruned set is small and exactly the needed one."""
    orders = [OrderLot("0xo1", M, 3, 1, 100), OrderLot("0xo2", M, 3, 4, 100)]
    bids = [BidLot(f"0xb{j:02d}", M, "0x01", 1, 10 + j, (1, 4)[j % 2]) for j in range(40)]
    mo = sorted(orders, key=lambda o: o.key)
    mb = sorted(bids, key=lambda b: (b.price, b.key))
    keep, _ = clearing._prune(mo, mb)
    assert len(keep) < 15
    assert value(max_gain_allocation(orders, bids), orders, bids) == \
        value(max_gain_allocation(orders, bids, prune=False, solver="python"), orders, bids)


def test_realistic_magnitudes_agree_with_reference() -> None:
    """Seconds and 6-decimal prices: exercises the gcd scaling of costs."""
    import random

    rng = random.Random(7)
    durs = (3600, 6 * 3600, 86400, 7 * 86400)
    orders = [OrderLot(f"0xo{i:03d}", M, rng.randint(1, 16), rng.choice(durs),
                       rng.randrange(800_000, 1_500_000, 10_000)) for i in range(25)]
    bids = [BidLot(f"0xb{j:03d}", M, "0x01", rng.randint(1, 8),
                   rng.randrange(600_000, 1_400_000, 10_000), rng.choice(durs))
            for j in range(120)]
    a = max_gain_allocation(orders, bids, solver="ortools")
    ref = max_gain_allocation(orders, bids, prune=False, solver="python")
    assert value(a, orders, bids) == value(ref, orders, bids)
    assert total_gains(a, orders, bids) > 0
    check_clearing(clear(orders, bids), orders, bids)


# --------------------------------------------------------------------------
# Overflow guard
# --------------------------------------------------------------------------


def test_huge_values_fall_back_to_exact_python() -> None:
    """Prices far beyond int64: same decisions as the scaled-down market, no overflow."""
    scale = 10**30
    orders = [OrderLot("0xo1", M, 3, 2, 10), OrderLot("0xo2", M, 2, 1, 7)]
    bids = [BidLot("0xb1", M, "0x01", 2, 3, 2), BidLot("0xb2", M, "0x02", 2, 5, 1),
            BidLot("0xb3", M, "0x03", 5, 8, 4)]
    big_o = [OrderLot(o.key, o.market, o.units, o.duration, o.max_price * scale) for o in orders]
    big_b = [BidLot(b.key, b.market, b.provider, b.capacity, b.price * scale, b.max_duration)
             for b in bids]
    assert clearing._solve_ortools(sorted(big_o, key=lambda o: o.key),
                                   sorted(big_b, key=lambda b: (b.price, b.key))) is None
    with pytest.raises(ValueError, match="int64"):
        max_gain_allocation(big_o, big_b, solver="ortools")
    small_c, big_c = clear(orders, bids), clear(big_o, big_b)
    assert big_c.matches == small_c.matches
    assert big_c.prices == {k: v * scale for k, v in small_c.prices.items()}
    assert total_gains(big_c.matches, big_o, big_b) == \
        total_gains(small_c.matches, orders, bids) * scale


def test_huge_units_fall_back_to_exact_python() -> None:
    orders = [OrderLot("0xo1", M, 2**70, 1, 10)]
    bids = [BidLot("0xb1", M, "0x01", 2**69, 3, 1), BidLot("0xb2", M, "0x02", 2**71, 4, 1)]
    c = clear(orders, bids)
    assert c.matches == (Match("0xo1", "0xb1", 2**69), Match("0xo1", "0xb2", 2**69))
    assert c.prices == {M: 7}  # every bid and order is used: the middle of [lo 4, hi 10]


def test_solver_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-OPTIMAL OR-Tools status (e.g. BAD_COST_RANGE) hands over to the Python solver."""
    orders = [OrderLot("0xo1", M, 3, 1, 10)]
    bids = [BidLot("0xb1", M, "0x01", 2, 3, 1), BidLot("0xb2", M, "0x02", 5, 6, 1)]
    expected = clear(orders, bids)

    class Broken(clearing.min_cost_flow.SimpleMinCostFlow):  # type: ignore[misc]
        def solve(self) -> object:
            return self.BAD_COST_RANGE

    monkeypatch.setattr(clearing.min_cost_flow, "SimpleMinCostFlow", Broken)
    assert clearing._solve_ortools(orders, sorted(bids, key=lambda b: (b.price, b.key))) is None
    monkeypatch.setattr(clearing, "_NATIVE_MAX_NODES", 0)  # every graph to OR-Tools, which fails
    assert clear(orders, bids) == expected


# --------------------------------------------------------------------------
# Edge cases and the pricing rule by hand
# --------------------------------------------------------------------------


def test_empty_inputs() -> None:
    assert clear([], []) == Clearing(markets=())
    assert clear([OrderLot("0xo1", M, 1, 1, 5)], []).markets == ()
    assert clear([], [BidLot("0xb1", M, "0x01", 1, 1, 1)]).markets == ()
    assert max_gain_allocation([], []) == ()
    assert Clearing(markets=()).matches == () and Clearing(markets=()).prices == {}


def test_different_markets_never_match() -> None:
    c = clear([OrderLot("0xo1", MARKETS[0], 1, 1, 5)],
              [BidLot("0xb1", MARKETS[1], "0x01", 1, 1, 1)])
    assert c.markets == ()


def test_duration_incompatibility() -> None:
    orders = [OrderLot("0xo1", M, 2, 10, 50)]
    bids = [BidLot("0xshort", M, "0x01", 5, 1, 9), BidLot("0xlong", M, "0x02", 5, 20, 10)]
    c = clear(orders, bids)
    assert c.matches == (Match("0xo1", "0xlong", 2),)
    # The cheap short bid is unused but can serve no order, so it sets no price: nothing is
    # left on either side that could trade, and the price is the middle of [20, 50].
    assert c.prices == {M: 35}
    assert brute_accountability(c.matches, orders, bids) == []


def test_no_compatible_pairs() -> None:
    orders = [OrderLot("0xo1", M, 2, 10, 50)]
    bids = [BidLot("0xb1", M, "0x01", 5, 1, 5), BidLot("0xb2", M, "0x02", 5, 1, 0)]
    assert clear(orders, bids).markets == ()


def test_all_bids_too_expensive() -> None:
    orders = [OrderLot("0xo1", M, 2, 1, 50), OrderLot("0xo2", M, 2, 1, 40)]
    bids = [BidLot("0xb1", M, "0x01", 5, 51, 5), BidLot("0xb2", M, "0x02", 5, 60, 5)]
    assert clear(orders, bids).markets == ()


def test_a_bid_at_the_max_price_fills_the_order() -> None:
    """Users read "bid <= my max" as the rule: a bid at exactly the max price fills the order."""
    orders = [OrderLot("0xo1", M, 2, 1, 50)]
    bids = [BidLot("0xb1", M, "0x01", 5, 50, 5)]
    c = clear(orders, bids)
    assert c.matches == (Match("0xo1", "0xb1", 2),)
    assert c.prices == {M: 50}
    assert max_gain_allocation(orders, bids, solver="python") == (Match("0xo1", "0xb1", 2),)


def test_most_gains_first_then_most_units() -> None:
    """B at 5 gains nothing with A's max of 5 but adds a unit; it never displaces gains."""
    orders = [OrderLot("0xA", M, 1, 1, 10), OrderLot("0xB", M, 1, 1, 5)]
    bids = [BidLot("0xX", M, "0x01", 1, 1, 1), BidLot("0xY", M, "0x02", 1, 5, 1)]
    c = clear(orders, bids)
    check_clearing(c, orders, bids)
    assert value(c.matches, orders, bids) == (9, 2)
    # Only one unit of supply: the unit goes where it gains most, not to the tie.
    one = clear(orders, bids[:1])
    assert one.matches == (Match("0xA", "0xX", 1),)


def test_uniform_price_is_cheapest_unused_bid() -> None:
    orders = [OrderLot("0xo1", M, 3, 1, 100)]
    bids = [BidLot("0xb1", M, "0x01", 1, 10, 1), BidLot("0xb2", M, "0x02", 2, 20, 1),
            BidLot("0xb3", M, "0x03", 1, 30, 1), BidLot("0xb4", M, "0x04", 1, 40, 1)]
    c = clear(orders, bids)
    assert c.matches == (Match("0xo1", "0xb1", 1), Match("0xo1", "0xb2", 2))
    assert c.prices == {M: 30}


def test_a_bid_that_can_serve_no_order_sets_no_price() -> None:
    """b2 at 30 is above the only max price (25): it could trade with no one, so it does not
    pull the price up to 25; nothing else is left, so the price is the middle of [10, 25]."""
    orders = [OrderLot("0xo1", M, 1, 1, 25)]
    bids = [BidLot("0xb1", M, "0x01", 1, 10, 1), BidLot("0xb2", M, "0x02", 1, 30, 1)]
    assert clear(orders, bids).prices == {M: 17}


def test_a_useless_cheap_bid_cannot_pull_the_price_down() -> None:
    """A bid at price 0 lasting one second can serve none of these orders: it must not set the
    price (it would cost its provider nothing and drag every winner down to the marginal one)."""
    orders = [OrderLot("0xo1", M, 1, 3600, 100)]
    bids = [BidLot("0xw", M, "0x01", 1, 50, 3600), BidLot("0xb3", M, "0x02", 1, 80, 3600)]
    honest = clear(orders, bids)
    assert honest.prices == {M: 80}
    dummy = BidLot("0xdummy", M, "0x03", 1, 0, 1)
    assert clear(orders, [*bids, dummy]).prices == {M: 80}


def test_the_price_is_never_zero() -> None:
    """The contract refuses a zero price (MarketNotPriced): a bid at 0 against a max of 1."""
    assert clear([OrderLot("0xo1", M, 1, 1, 1)], [BidLot("0xb1", M, "0x01", 1, 0, 1)]).prices == {M: 1}
    assert clear([OrderLot("0xo1", M, 1, 1, 5)], [BidLot("0xb1", M, "0x01", 1, 0, 1),
                                                   BidLot("0xb2", M, "0x02", 1, 0, 1)]).prices == {M: 1}


def test_price_splits_the_range_when_every_bid_and_order_is_used() -> None:
    """No losing message on either side: the middle of [lo 12, hi 25], so neither the marginal
    buyer's max nor the dearest winning bid sets what everyone pays."""
    orders = [OrderLot("0xo1", M, 2, 1, 25), OrderLot("0xo2", M, 2, 1, 40)]
    bids = [BidLot("0xb1", M, "0x01", 2, 10, 1), BidLot("0xb2", M, "0x02", 2, 12, 1)]
    c = clear(orders, bids)
    assert {m.bid_key for m in c.matches} == {"0xb1", "0xb2"}
    assert c.prices == {M: 18}


def test_unserved_order_sets_the_price_when_every_bid_is_used() -> None:
    """Demand is long: the best unserved order (max 20) sets the price, not the marginal winner's
    own max (25).  An order no bid can serve (too long) does not count."""
    orders = [OrderLot("0xo1", M, 2, 1, 25), OrderLot("0xo2", M, 2, 1, 40), OrderLot("0xo3", M, 1, 1, 20),
              OrderLot("0xlong", M, 1, 9, 39)]
    bids = [BidLot("0xb1", M, "0x01", 2, 10, 1), BidLot("0xb2", M, "0x02", 2, 12, 1)]
    c = clear(orders, bids)
    assert {m.order_key for m in c.matches} == {"0xo1", "0xo2"}
    assert c.prices == {M: 20}
    check_clearing(c, orders, bids)


def test_drop_loop() -> None:
    """The long order o2 gains most from the cheap bid A, pushing o1 onto W at 7 > o2's 5.

    Optimum: o2-A (gain 10*(5-1)=40) + o1-W (gain 1*(10-7)=3) = 43 > o1-A alone (9).
    lo = 7 > hi = 5: no single price fits.  At the trial price lo = 7 (no search) o2 is
    priced out; the re-solve gives o1-A, and the cheapest unused bid W sets the price 7.
    The search ranks the candidates 5 and 7 by what the optimum keeps there: o2-A (40) at 5,
    o1-W (3) at 7.  At 5 only A takes part and goes to o2 (40 > 9): o2 stays, o1 is left
    unserved, and the unused W (7) is clamped to the lowest winning max, 5.
    """
    orders = [OrderLot("0xo1", M, 1, 1, 10), OrderLot("0xo2", M, 1, 10, 5)]
    bids = [BidLot("0xA", M, "0x01", 1, 1, 10), BidLot("0xW", M, "0x02", 1, 7, 10)]
    alloc = max_gain_allocation(orders, bids)
    assert set(alloc) == {Match("0xo2", "0xA", 1), Match("0xo1", "0xW", 1)}
    c = clear(orders, bids, price_search_solves=0)
    (mc,) = c.markets
    assert (mc.trial_price, mc.dropped_orders) == (7, ("0xo2",))
    assert mc.matches == (Match("0xo1", "0xA", 1),)
    assert mc.price == 7
    check_clearing(c, orders, bids)
    c = clear(orders, bids)
    (mc,) = c.markets
    assert (mc.trial_price, mc.dropped_orders) == (5, ())
    assert mc.matches == (Match("0xo2", "0xA", 1),)
    assert (mc.price, mc.price_rule) == (5, PriceRule.LOWEST_WINNING_MAX)
    check_clearing(c, orders, bids)


def test_drop_loop_drops_several_orders_at_once() -> None:
    """o2 and o3 (long, low max price) take A and B; o1 goes to W at 20: lo 20 > hi 5.

    With no search, at the trial price 20 only o1 takes part and takes A.  The unused B at 2
    would set the price, but o2 and o3 did not take part, so the price stays above their max
    prices: 7, and both are reported as priced out (each max is below 7).  The search ranks
    5 first (the optimum keeps o2-A and o3-B there, 80 and 2 units, against o1-W's 80 and 1
    unit at 20): at 5, A and B take part and go to o3 and o1 (50 + 98 > 99 + 40), nobody is
    priced out, and the unused W is clamped to the lowest winning max, 6.
    """
    orders = [OrderLot("0xo1", M, 1, 1, 100), OrderLot("0xo2", M, 1, 10, 5),
              OrderLot("0xo3", M, 1, 10, 6)]
    bids = [BidLot("0xA", M, "0x01", 1, 1, 10), BidLot("0xB", M, "0x02", 1, 2, 10),
            BidLot("0xW", M, "0x03", 1, 20, 10)]
    c = clear(orders, bids, price_search_solves=0)
    (mc,) = c.markets
    assert mc.dropped_orders == ("0xo2", "0xo3")
    assert mc.matches == (Match("0xo1", "0xA", 1),)
    assert mc.price == 7
    check_clearing(c, orders, bids)
    c = clear(orders, bids)
    (mc,) = c.markets
    assert (mc.trial_price, mc.dropped_orders) == (5, ())
    assert mc.matches == (Match("0xo1", "0xB", 1), Match("0xo3", "0xA", 1))
    assert (mc.price, mc.price_rule) == (6, PriceRule.LOWEST_WINNING_MAX)
    check_clearing(c, orders, bids)


def test_trial_price_excludes_orders_the_first_solve_did_not_serve() -> None:
    """First solve: o2 (only b1 lasts 10 s) on b1 at 13, o1 on b0; lo 13 > hi 8.  At the
    trial price 13 only o2 takes part (o0's 9 and o1's 8 are below it): o2 alone, price 13
    (the unused b0 at 4 is clamped up to lo).  Only o1 was served before: it alone is
    reported as priced out, though o0 could not pay 13 either."""
    orders = [OrderLot("0xo0", M, 1, 1, 9), OrderLot("0xo1", M, 2, 2, 8),
              OrderLot("0xo2", M, 1, 10, 16)]
    bids = [BidLot("0xb0", M, "0x01", 2, 4, 4), BidLot("0xb1", M, "0x01", 1, 13, 10)]
    first = max_gain_allocation(orders, bids)
    assert set(first) == {Match("0xo1", "0xb0", 2), Match("0xo2", "0xb1", 1)}
    c = clear(orders, bids)
    (mc,) = c.markets
    assert mc.dropped_orders == ("0xo1",)
    assert mc.matches == (Match("0xo2", "0xb1", 1),)
    assert mc.price == 13
    check_clearing(c, orders, bids)


def test_marginal_bid_may_be_partly_filled_below_the_price() -> None:
    """Documents a consequence of the pricing rule for the on-chain challenge.

    Demand runs out inside bid b2, so b2 (price 2) is only partly filled while the
    price is set by the unused b3 at 5.  No cheaper-than-a-winner bid is left idle,
    so the accountability property holds; but a challenge rule of the form "every
    bid priced below the clearing price is filled completely" would wrongly fire.
    """
    orders = [OrderLot("0xo1", M, 5, 1, 10)]
    bids = [BidLot("0xb1", M, "0x01", 1, 1, 1), BidLot("0xb2", M, "0x02", 10, 2, 1),
            BidLot("0xb3", M, "0x03", 1, 5, 1)]
    c = clear(orders, bids)
    assert c.matches == (Match("0xo1", "0xb1", 1), Match("0xo1", "0xb2", 4))
    assert c.prices == {M: 5}
    assert accountability_violations(c.matches, orders, bids) == []


def test_accountability_helper_detects_a_violation() -> None:
    orders = [OrderLot("0xo1", M, 1, 2, 10)]
    bids = [BidLot("0xcheap", M, "0x01", 1, 1, 2), BidLot("0xdear", M, "0x02", 1, 5, 2),
            BidLot("0xshort", M, "0x03", 1, 0, 1)]
    bad = [Match("0xo1", "0xdear", 1)]
    assert accountability_violations(bad, orders, bids) == [("0xcheap", "0xdear")]
    assert brute_accountability(bad, orders, bids) == [("0xcheap", "0xdear")]
    assert accountability_violations([Match("0xo1", "0xcheap", 1)], orders, bids) == []


def test_accountability_helper_detects_a_swap() -> None:
    """The cheap bid serves the short order while the dear one serves the long order the cheap
    one could serve: swapping them gains (4 - 1) x (5 - 1), so the court would slash."""
    orders = [OrderLot("0xshort", M, 1, 1, 10), OrderLot("0xlong", M, 1, 4, 10)]
    bids = [BidLot("0xcheap", M, "0x01", 1, 1, 4), BidLot("0xdear", M, "0x02", 1, 5, 4)]
    bad = [Match("0xshort", "0xcheap", 1), Match("0xlong", "0xdear", 1)]
    assert accountability_violations(bad, orders, bids) == [("0xcheap", "0xdear")]
    good = [Match("0xshort", "0xdear", 1), Match("0xlong", "0xcheap", 1)]
    assert accountability_violations(good, orders, bids) == []
    assert clear(orders, bids).matches == tuple(sorted(good, key=lambda m: (m.order_key, m.bid_key)))


def test_multiple_markets_sorted_with_own_prices() -> None:
    orders = [OrderLot("0xo1", MARKETS[1], 1, 1, 10), OrderLot("0xo2", MARKETS[0], 1, 1, 20)]
    bids = [BidLot("0xb1", MARKETS[1], "0x01", 1, 3, 1), BidLot("0xb2", MARKETS[0], "0x01", 1, 4, 1),
            BidLot("0xb3", MARKETS[0], "0x01", 1, 9, 1)]
    c = clear(orders, bids)
    assert [mc.market for mc in c.markets] == [MARKETS[0], MARKETS[1]]
    assert c.prices == {MARKETS[0]: 9, MARKETS[1]: 6}  # market 1: no losing message: (3 + 10) // 2


def test_gains_from_trade() -> None:
    orders = [OrderLot("0xo1", M, 3, 2, 10)]
    bids = [BidLot("0xb1", M, "0x01", 3, 4, 2)]
    assert gains_from_trade([Match("0xo1", "0xb1", 3)], *by_key(orders, bids)) == 3 * 2 * 6


@pytest.mark.parametrize(
    ("orders", "bids", "exc"),
    [
        ([OrderLot("0xo1", M, 0, 1, 5)], [], ValueError),
        ([OrderLot("0xo1", M, 1, 0, 5)], [], ValueError),
        ([OrderLot("0xo1", M, 1, 1, -1)], [], ValueError),
        ([OrderLot("0xo1", M, 1, 1, 5), OrderLot("0xo1", M, 2, 1, 5)], [], ValueError),
        ([OrderLot("0xo1", M, True, 1, 5)], [], TypeError),
        ([OrderLot("0xo1", M, 1.0, 1, 5)], [], TypeError),  # type: ignore[arg-type]
        ([], [BidLot("0xb1", M, "0x01", 0, 1, 1)], ValueError),
        ([], [BidLot("0xb1", M, "0x01", 1, -1, 1)], ValueError),
        ([], [BidLot("0xb1", M, "0x01", 1, 1, -1)], ValueError),
        ([], [BidLot("0xb1", M, "0x01", 1, 1, 1), BidLot("0xb1", M, "0x02", 1, 1, 1)], ValueError),
        ([("0xo1", M, 1, 1, 5)], [], TypeError),
    ],
)
def test_invalid_input_is_rejected(orders: list, bids: list, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        clear(orders, bids)


@settings(max_examples=20, deadline=None)
@given(medium)
def test_executor_gives_the_same_result(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    orders, bids = inst
    with ThreadPoolExecutor(max_workers=2) as pool:
        assert clear(orders, bids, executor=pool) == clear(orders, bids)


def test_process_pool_gives_the_same_result() -> None:
    from underbid.bench import instance

    orders, bids = instance(300, 3000, seed=3)
    with ProcessPoolExecutor(max_workers=2) as pool:
        assert clear(orders, bids, executor=pool) == clear(orders, bids)


def test_bench_instance_end_to_end() -> None:
    """The benchmark instance clears with no accountability violation and the exact optimum."""
    from underbid.bench import instance

    orders, bids = instance(1_000, 10_000, seed=11)
    c = clear(orders, bids)
    assert accountability_violations(c.matches, orders, bids) == []
    check_feasible(c.matches, orders, bids)
    assert value(max_gain_allocation(orders, bids), orders, bids) == value(
        max_gain_allocation(orders, bids, prune=False, solver="python"), orders, bids)


# --------------------------------------------------------------------------
# Realistic scale: durations in seconds, 6-decimal prices, dust, int64 edges
# --------------------------------------------------------------------------


def by_market(orders: Sequence[OrderLot], bids: Sequence[BidLot]
              ) -> dict[str, tuple[list[OrderLot], list[BidLot]]]:
    out: dict[str, tuple[list[OrderLot], list[BidLot]]] = defaultdict(lambda: ([], []))
    for o in orders:
        out[o.market][0].append(o)
    for b in bids:
        out[b.market][1].append(b)
    return out


@pytest.mark.parametrize("variant", [{"bid_tiers": True}, {"bid_tiers": False}, {"dust": True}])
def test_realistic_instances_are_exact_and_never_fall_back(
    variant: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seconds, 6-decimal prices, arbitrary bid durations and dust orders: OR-Tools solves every
    market exactly (the Python solver is never reached), equal to an independent exact solve."""
    from underbid.bench import realistic_instance

    orders, bids = realistic_instance(300, 3_000, seed=5, **variant)

    def no_fallback(*_: object) -> object:
        raise AssertionError("the pure-Python solver was reached")

    monkeypatch.setattr(clearing, "_solve_python", no_fallback)
    c = clear(orders, bids)
    fast = max_gain_allocation(orders, bids, solver="ortools")
    monkeypatch.undo()
    reference = max_gain_allocation(orders, bids, prune=False, solver="python")
    assert value(fast, orders, bids) == value(reference, orders, bids)
    assert accountability_violations(c.matches, orders, bids) == []
    for market, (mo, mb) in by_market(orders, bids).items():
        listed = [mc for mc in c.markets if mc.market == market]
        if listed:
            check_clearing(Clearing(markets=tuple(listed)), mo, mb)


def test_dust_orders_do_not_change_the_outcome() -> None:
    """A max price of one base unit cannot trade with any real bid: the clearing is the same
    with and without such orders, and none of them is served or reported as priced out."""
    from underbid.bench import realistic_instance

    orders, bids = realistic_instance(300, 3_000, seed=9)
    with_dust, _ = realistic_instance(300, 3_000, seed=9, dust=True)
    dust = {o.key for o in with_dust[len(orders):]}
    assert len(dust) == 100
    assert clear(with_dust, bids) == clear(orders, bids)


@pytest.mark.parametrize("magnitude", [2**31 - 1, 2**40, 2**47])
def test_prices_and_durations_near_the_int64_bounds(magnitude: int) -> None:
    """Costs of about duration x price up to 2**62 and beyond: the answer is exact either way
    (OR-Tools when the market fits its range, the Python solver otherwise)."""
    duration = 2**31 - 1
    orders = [OrderLot("0xo1", M, 3, duration, magnitude), OrderLot("0xo2", M, 2, duration // 2, magnitude - 7),
              OrderLot("0xo3", M, 1, 3600, magnitude // 3)]
    bids = [BidLot("0xb1", M, "0x01", 2, magnitude - 5, duration),
            BidLot("0xb2", M, "0x02", 2, magnitude // 2, duration),
            BidLot("0xb3", M, "0x03", 4, magnitude - 9, duration // 2), BidLot("0xb4", M, "0x04", 1, 1, 3600)]
    auto = max_gain_allocation(orders, bids)
    assert value(auto, orders, bids) == brute_force_value(orders, bids)
    try:
        fast = max_gain_allocation(orders, bids, solver="ortools")
    except ValueError as exc:  # outside OR-Tools' exact range: refused, never answered wrongly
        assert "int64" in str(exc)
    else:
        assert value(fast, orders, bids) == value(auto, orders, bids)
    check_clearing(clear(orders, bids), orders, bids)


@MEDIUM
@given(medium, st.integers(1, 10**6), st.integers(1, 3600))
def test_scaling_costs_does_not_change_the_outcome(
    inst: tuple[list[OrderLot], list[BidLot]], price_scale: int, time_scale: int
) -> None:
    """Prices times one factor and durations times another (bids' max durations too): gains
    scale by their product, the matched units stay, and the prices scale with the factor (up to
    the rounding of the rule)."""
    orders, bids = inst
    big_o = [OrderLot(o.key, o.market, o.units, o.duration * time_scale, o.max_price * price_scale)
             for o in orders]
    big_b = [BidLot(b.key, b.market, b.provider, b.capacity, b.price * price_scale,
                    b.max_duration * time_scale) for b in bids]
    small_c, big_c = clear(orders, bids), clear(big_o, big_b)
    gains, units = value(small_c.matches, orders, bids)
    assert value(big_c.matches, big_o, big_b) == (gains * price_scale * time_scale, units)
    assert big_c.prices.keys() == small_c.prices.keys()
    for market, price in small_c.prices.items():
        # Within one step of the scaled price: a price one base unit above a priced-out max,
        # or the middle of a range rounded down, does not scale exactly.
        assert (price - 1) * price_scale < big_c.prices[market] < (price + 1) * price_scale
    check_clearing(big_c, big_o, big_b)


def test_many_distinct_durations_prune_to_the_same_optimum() -> None:
    """Every order its own duration class (the case that made pruning quadratic): pruning
    keeps few bids and the pruned optimum equals the unpruned one."""
    import random

    rng = random.Random(3)
    orders = [OrderLot(f"0xo{i:03d}", M, rng.randint(1, 16), rng.randint(3600, 7 * 86400),
                       rng.randint(800_000, 1_500_000)) for i in range(60)]
    bids = [BidLot(f"0xb{j:04d}", M, "0x01", rng.randint(1, 8), rng.randint(600_000, 1_400_000),
                   rng.randint(3600, 14 * 86400)) for j in range(900)]
    mo = sorted(orders, key=lambda o: o.key)
    mb = sorted(bids, key=lambda b: (b.price, b.key))
    keep, needed = clearing._prune(mo, mb)
    assert needed is not None and needed.shape == (len(keep), len({o.duration for o in orders}))
    assert len(keep) < len(bids) // 3
    assert value(max_gain_allocation(orders, bids), orders, bids) == \
        value(max_gain_allocation(orders, bids, prune=False, solver="python"), orders, bids)


def test_price_search_keeps_what_the_max_gain_allocation_keeps() -> None:
    """The trial price is chosen by what the max-gain allocation keeps at each candidate price
    (its pairs with bid price <= P <= order max, a feasible allocation at P): the exact solve at
    the first-ranked candidate keeps at least that much at every candidate, more solves only
    add candidates, and every outcome trades at one price every winner accepts, exactly."""
    from underbid.bench import realistic_instance

    orders, bids = realistic_instance(400, 4_000, seed=2)
    ob, bb = by_key(orders, bids)
    results = {k: clear(orders, bids, price_search_solves=k) for k in (0, 1, 2, 4)}
    assert results[1] == clear(orders, bids)  # the default
    first = max_gain_allocation(orders, bids)
    searched = 0
    for k, result in results.items():
        for mc in result.markets:
            for m in mc.matches:
                assert bb[m.bid_key].price <= mc.price <= ob[m.order_key].max_price
            for key in mc.dropped_orders:
                assert ob[key].max_price < mc.price
            if mc.trial_price is None:
                continue
            # exact at the trial price: the same gains as an unpruned solve of that market
            market_o = [o for o in orders if o.market == mc.market and o.max_price >= mc.trial_price]
            market_b = [b for b in bids if b.market == mc.market and b.price <= mc.trial_price]
            got = total_gains(mc.matches, orders, bids)
            assert got == total_gains(max_gain_allocation(market_o, market_b, prune=False), orders, bids)
            if k:
                searched += 1
                mine = [m for m in first if ob[m.order_key].market == mc.market]
                prices = {o.max_price for o in orders if o.market == mc.market} | \
                    {b.price for b in bids if b.market == mc.market}
                best_kept = max(
                    sum(m.units * ob[m.order_key].duration * (ob[m.order_key].max_price - bb[m.bid_key].price)
                        for m in mine if bb[m.bid_key].price <= p <= ob[m.order_key].max_price)
                    for p in prices if mc.trial_price is not None
                    and any(bb[m.bid_key].price <= p <= ob[m.order_key].max_price for m in mine)
                    and p <= max(bb[m.bid_key].price for m in mine)
                    and p >= min(ob[m.order_key].max_price for m in mine)
                )
                assert got >= best_kept
        assert accountability_violations(result.matches, orders, bids) == []
    assert searched
    gains = {k: total_gains(r.matches, orders, bids) for k, r in results.items()}
    assert gains[4] >= gains[2] >= gains[1]
    with pytest.raises(ValueError, match="price_search_solves"):
        clear(orders, bids, price_search_solves=-1)


def test_markets_outside_the_lexicographic_range_keep_exact_gains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Units weigh the costs (gains x (units + 1)): with 2**58 units that leaves OR-Tools' range
    while the gains alone fit.  A big market then gets OR-Tools' exact gains and its zero-gain
    pairs added greedily (o2 can only take b2, priced at its max); a small one the exact Python
    solver.  Both find the optimum: o1 on b1, and o2's 3 units on b2."""
    orders = [OrderLot("0xo1", M, 2**58, 7200, 10), OrderLot("0xo2", M, 3, 3600, 5)]
    bids = [BidLot("0xb1", M, "0x01", 2**58, 4, 7200), BidLot("0xb2", M, "0x02", 5, 5, 3600)]
    expected = (Match("0xo1", "0xb1", 2**58), Match("0xo2", "0xb2", 3))
    mo = sorted(orders, key=lambda o: o.key)
    mb = sorted(bids, key=lambda b: (b.price, b.key))
    assert clearing._solve_ortools(mo, mb) is None
    assert clearing._solve_ortools(mo, mb, units_second=False) is not None
    assert max_gain_allocation(orders, bids) == expected  # small: the Python solver
    monkeypatch.setattr(clearing, "_PYTHON_EXACT_PAIRS", 0)

    def no_fallback(*_: object) -> object:
        raise AssertionError("the pure-Python solver was reached")

    monkeypatch.setattr(clearing, "_solve_python", no_fallback)
    assert max_gain_allocation(orders, bids) == expected  # big: OR-Tools, then the tie added


def test_an_order_beyond_every_range_sits_out_instead_of_stalling_the_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An order whose duration x max price is beyond OR-Tools' range even without the unit
    weight (escrow for it is the only cost) must not send a big market to the slow Python
    solver: it sits the round out and the rest of the market clears exactly as without it."""
    import random

    rng = random.Random(4)
    orders = [OrderLot(f"0xo{i:03d}", M, rng.randint(1, 16), rng.randint(3600, 7 * 86400),
                       rng.randint(800_000, 1_500_000)) for i in range(60)]
    bids = [BidLot(f"0xb{j:04d}", M, "0x01", rng.randint(1, 8), rng.randint(600_000, 1_400_000),
                   rng.randint(3600, 14 * 86400)) for j in range(400)]
    whale = OrderLot("0xwhale", M, 1, 3600, 2**62 // 3600 + 1)
    honest = max_gain_allocation(orders, bids)

    def no_fallback(*_: object) -> object:
        raise AssertionError("the pure-Python solver was reached")

    monkeypatch.setattr(clearing, "_solve_python", no_fallback)
    monkeypatch.setattr(clearing, "_PYTHON_EXACT_PAIRS", 0)
    with_whale = max_gain_allocation([*orders, whale], bids)
    assert all(m.order_key != "0xwhale" for m in with_whale)
    assert value(with_whale, orders, bids) == value(honest, orders, bids)
    c = clear([*orders, whale], bids)
    assert all(m.order_key != "0xwhale" for m in c.matches)


@st.composite
def trial_instances(draw: st.DrawFn) -> tuple[list[OrderLot], list[BidLot], bool]:
    """One market, small or big enough to be pruned, with every order its own duration class
    or with few classes; plus whether to force the pruned path."""
    n_o = draw(st.integers(1, 12))
    distinct = draw(st.booleans())
    durations = (draw(st.lists(st.integers(1, 40), min_size=n_o, max_size=n_o, unique=True)) if distinct
                 else [draw(st.sampled_from(DURATIONS)) for _ in range(n_o)])
    orders = [OrderLot(f"0xo{i:03d}", M, draw(st.integers(1, 6)), durations[i], draw(st.integers(0, 20)))
              for i in range(n_o)]
    n_b = draw(st.integers(1, 60))
    bids = [BidLot(f"0xb{j:04d}", M, "0x01", draw(st.integers(1, 5)), draw(st.integers(0, 20)),
                   draw(st.integers(0, 45)))
            for j in range(n_b)]
    return orders, bids, draw(st.booleans())


@MEDIUM
@given(trial_instances())
def test_every_trial_price_solves_exactly_on_each_path(inst: tuple[list[OrderLot], list[BidLot], bool]) -> None:
    """At every price, the solve restricted to it (pruning rule 2 applied to the trial's own
    demand; on small markets the only pruning) has the value of an unpruned exact solve of the
    restricted market, on the pruned path and the small-market path alike, with one order per
    class (the direct pairing) or several."""
    orders, bids, force_prune = inst
    mo = sorted(orders, key=lambda o: o.key)
    mb = sorted(bids, key=lambda b: (b.price, b.key))
    with pytest.MonkeyPatch.context() as patch:
        if force_prune:
            patch.setattr(clearing, "_PRUNE_FROM_ARCS", 0)
        prepared = clearing._prepare(mo, mb, prune=True)
    assert (prepared.needed is not None or not prepared.bids) if force_prune else prepared.needed is None
    for price in sorted({o.max_price for o in orders} | {b.price for b in bids}):
        alloc = clearing._solve_prepared(mo, mb, prepared, "auto", trial=price)
        got = [Match(mo[oi].key, mb[bi].key, units) for oi, bi, units in alloc]
        taking = [o for o in orders if o.max_price >= price]
        offered = [b for b in bids if b.price <= price]
        check_feasible(got, taking, offered)
        expected = max_gain_allocation(taking, offered, prune=False, solver="python")
        assert value(got, orders, bids) == value(expected, orders, bids), price


@FAST
@given(st.lists(st.integers(0, 9), max_size=30))
def test_classes_match_numpy_unique(durations: list[int]) -> None:
    import numpy as np

    arr = np.array(durations, np.int64)
    distinct, inverse = clearing._classes(arr)
    expected_distinct, expected_inverse = np.unique(arr, return_inverse=True)
    assert distinct.tolist() == expected_distinct.tolist()
    assert inverse.tolist() == expected_inverse.tolist()


# --------------------------------------------------------------------------
# Batched solves: every market's graph built at once, each solved on its own
# --------------------------------------------------------------------------


def prepared_markets(orders: list[OrderLot], bids: list[BidLot], force_prune: bool
                     ) -> list[tuple[list[OrderLot], list[BidLot], clearing._Prepared]]:
    with pytest.MonkeyPatch.context() as patch:
        if force_prune:
            patch.setattr(clearing, "_PRUNE_FROM_ARCS", 0)
        return [(mo, mb, clearing._prepare(mo, mb, prune=True)) for _, mo, mb in clearing._market_tasks(orders, bids)]


@MEDIUM
@given(medium, st.booleans(), st.lists(st.integers(0, 10), max_size=4), st.sampled_from([0, 60, 2_000_000]))
def test_batched_solve_equals_each_market_alone(
    inst: tuple[list[OrderLot], list[BidLot]], force_prune: bool, trials: list[int], max_pairs: int
) -> None:
    """One batch of every market, unrestricted and at trial prices (each (market, price) its
    own problem in the batch; some solved on their own graph when ``_BATCH_MAX_PAIRS`` is
    small): each answer is the allocation that market gets solved alone (the same graph, so the
    same optimum even among ties), and exact (the value of the unpruned Python solve and of the
    independent per-market OR-Tools graph of ``_solve_ortools``)."""
    orders, bids = inst
    markets = prepared_markets(orders, bids, force_prune)
    items = [(mo, mb, p, t) for mo, mb, p in markets for t in [None, *trials]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clearing, "_BATCH_MAX_PAIRS", max_pairs)
        batched = clearing._solve_prepared_many(items)
        alone = [clearing._solve_prepared(mo, mb, p, "auto", t) for mo, mb, p, t in items]
    assert len(batched) == len(items)
    for (mo, mb, _, trial), alloc, expected_alloc in zip(items, batched, alone, strict=True):
        assert alloc == expected_alloc
        taking = [o for o in mo if trial is None or o.max_price >= trial]
        offered = [b for b in mb if trial is None or b.price <= trial]
        got = [Match(mo[oi].key, mb[bi].key, units) for oi, bi, units in alloc]
        check_feasible(got, taking, offered)
        expected = value(max_gain_allocation(taking, offered, prune=False, solver="python"), orders, bids)
        assert value(got, orders, bids) == expected
        if taking and offered:
            independent = clearing._solve_ortools(taking, sorted(offered, key=lambda b: (b.price, b.key)))
            assert independent is not None
            sorted_offered = sorted(offered, key=lambda b: (b.price, b.key))
            assert value([Match(taking[oi].key, sorted_offered[bi].key, u) for oi, bi, u in independent],
                         orders, bids) == expected


@MEDIUM
@given(medium)
def test_a_market_clears_the_same_in_any_batch(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    """A market's clearing depends only on its own orders and bids: in one batch with the
    others, or cleared alone, or in batches of one market each."""
    orders, bids = inst
    together = clear(orders, bids)
    for mc in together.markets:
        alone = clear([o for o in orders if o.market == mc.market], [b for b in bids if b.market == mc.market])
        assert alone.markets == (mc,)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clearing, "_BATCH_LOTS", 1)
        assert clear(orders, bids) == together


@MEDIUM
@given(medium)
def test_trials_pivoting_on_from_the_max_gain_optimum_are_exact(inst: tuple[list[OrderLot], list[BidLot]]) -> None:
    """Every market on the path of big ones (``_BATCH_MAX_PAIRS`` 0): its max-gain graph kept
    in the network simplex and each trial price solved from that optimum, its excluded orders
    and bids forbidden.  Every constraint holds, each trial's matches included (check_clearing
    solves each restricted market exactly), and the kept graphs were really used."""
    orders, bids = inst
    forbidden_sets: list[int] = []
    forbid = netsimplex.Graph.forbid

    def counting_forbid(graph: netsimplex.Graph, forbidden: np.ndarray) -> None:
        forbidden_sets.append(int(forbidden.sum()))
        forbid(graph, forbidden)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clearing, "_BATCH_MAX_PAIRS", 0)
        patch.setattr(netsimplex.Graph, "forbid", counting_forbid)
        result = clear(orders, bids)
        check_clearing(result, orders, bids)  # (its max-gain solves on the same path)
    assert len(forbidden_sets) == sum(mc.trial_price is not None for mc in result.markets)  # (clear's own)
    assert all(count > 0 for count in forbidden_sets)  # a trial always leaves someone out


@MEDIUM
@given(medium, st.sampled_from([0, 2_000_000]))
def test_graphs_over_the_node_limit_go_to_ortools(inst: tuple[list[OrderLot], list[BidLot]], max_pairs: int) -> None:
    """With ``_NATIVE_MAX_NODES`` 0 no graph reaches the network simplex (the guard against its
    time growing with the nodes), on the batch and the big-market path alike, and the clearing
    is still exact."""
    orders, bids = inst
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clearing, "_NATIVE_MAX_NODES", 0)
        patch.setattr(clearing, "_BATCH_MAX_PAIRS", max_pairs)
        patch.setattr(netsimplex, "solve_many", _refuse)
        patch.setattr(netsimplex, "Graph", _refuse)
        result = clear(orders, bids)
        check_clearing(result, orders, bids)


def _refuse(*args: object) -> None:
    raise AssertionError("the network simplex was called over the node limit")


@FAST
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 50)), max_size=40))
def test_bids_are_ordered_by_price_then_key(prices_and_keys: list[tuple[int, int]]) -> None:
    """The sort on the price alone plus one per run of equal prices is the (price, key) order."""
    bids = [BidLot(f"0x{key:02d}{n:03d}", M, "0x01", 1, price, 1) for n, (price, key) in enumerate(prices_and_keys)]
    assert clearing._by_price_then_key(list(bids)) == sorted(bids, key=lambda b: (b.price, b.key))


def test_batch_with_markets_near_the_int64_bound() -> None:
    """A market whose costs leave OR-Tools' range in the same batch as ordinary ones: it takes
    the exact fallback, the others the batch, each as if cleared alone; with dust orders too."""
    from underbid.bench import realistic_instance

    orders, bids = realistic_instance(60, 600, seed=4, dust=True)
    # Within int64 (so the market has arrays and joins the batch), beyond OR-Tools' bound once
    # weighted by the units.
    duration, magnitude = 2**31 - 1, 2**26 + 1
    huge = "0x" + "ee" * 32
    orders += [OrderLot("0xo1", huge, 300, duration, magnitude),
               OrderLot("0xo2", huge, 200, duration // 2, magnitude - 7),
               OrderLot("0xo3", huge, 1, 3600, magnitude // 3)]
    bids += [BidLot("0xb1", huge, "0x01", 200, magnitude - 5, duration), BidLot("0xb2", huge, "0x02", 200, 3, duration),
             BidLot("0xb3", huge, "0x03", 400, magnitude - 9, duration // 2), BidLot("0xb4", huge, "0x04", 1, 1, 3600)]
    markets = prepared_markets(orders, bids, force_prune=False)
    problems = [clearing._Problem(p.arrays.durations, p.arrays.max_prices, p.arrays.units, p.arrays.prices,
                                  p.arrays.max_durations, p.arrays.capacities, None, True)
                for _, _, p in markets if p.arrays is not None]
    assert len(problems) == len(markets)
    answers = clearing._solve_ortools_batch(problems)
    assert sum(a is None for a in answers) == 1  # out of range: no answer, never a wrong one
    assert sum(a is not None and a[0].size > 0 for a in answers) > 1
    together = clear(orders, bids)
    assert huge in together.prices
    for mc in together.markets:
        mo = [o for o in orders if o.market == mc.market]
        mb = [b for b in bids if b.market == mc.market]
        assert clear(mo, mb).markets == (mc,)
        check_clearing(Clearing(markets=(mc,)), mo, mb)


def test_a_machine_without_the_solver_refuses_to_clear(tmp_path: Path) -> None:
    """Review (adversarial): the network simplex and OR-Tools break ties differently, and a tie
    can decide the uniform price.  Here o1 and o3 are alike (duration 2, max 4) and the one bid
    fills 3 of their 5 units: the simplex serves o1 alone, o3 is the best unserved order and the
    price is 4; OR-Tools serves 1 of o1 and 2 of o3, o2 (max 3) is the best unserved order and the
    price would be 3.  So a machine that cannot build the simplex (no compiler) must not clear on
    OR-Tools alone: it refuses, saying why, instead of computing another round."""
    orders = [OrderLot("0xo0", "0xm", 1, 2, 1), OrderLot("0xo1", "0xm", 3, 2, 4),
              OrderLot("0xo2", "0xm", 3, 1, 3), OrderLot("0xo3", "0xm", 2, 2, 4)]
    bids = [BidLot("0xb0", "0xm", "0xp", 3, 1, 2)]
    assert clear(orders, bids).prices == {"0xm": 4}
    assert max_gain_allocation(orders, bids) != max_gain_allocation(orders, bids, solver="ortools")
    script = ("from underbid.matcher.clearing import BidLot, OrderLot, clear\n"
              "try:\n    clear([OrderLot('0xo1', '0xm', 3, 2, 4)], [BidLot('0xb0', '0xm', '0xp', 3, 1, 2)])\n"
              "except RuntimeError as error:\n    print(error)\nelse:\n    print('cleared')\n")
    env = {**os.environ, "UNDERBID_NATIVE_DIR": str(tmp_path), "CC": "false"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("the clearing needs its compiled network simplex, which is unavailable "
                                    "(false failed on netsimplex.c"), result.stdout
