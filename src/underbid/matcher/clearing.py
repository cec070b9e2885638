"""Clearing of one auction round: matches and one uniform price per market.

This module is a pure function of the open orders and bids (no I/O, no
logging, no global state; ``netsimplex`` compiles its solver once, into a
cache), so a round can be recomputed bit for bit by anyone who holds the same
signed messages and the same solvers (see "Solvers").

Allocation
    Per market, the allocation with the most gains from trade,
    ``sum(units * order.duration * (order.max_price - bid.price))``, is solved
    exactly as a min-cost flow (see "Solvers" below).  The textbook
    graph is ``source -> order (cap units) -> bid (cost -gain) -> sink (cap
    capacity)`` plus a zero-cost ``source -> sink`` bypass so that demand may
    stay unfilled.  Because the gain splits into ``-d*max_price`` (order side)
    and ``d*price`` (bid side), orders of equal duration d share one class
    node, which links to every bid with ``max_duration >= d``: about
    ``orders + classes*bids`` arcs instead of ``orders*bids``, same optimum
    (see ``_solve_ortools``).  At 10k orders x 100k bids this cut the solve
    from ~1 s to ~0.07 s.

    Markets are independent, so each one is its own small flow problem; that
    is what makes clearing fast (see RESEARCH.md).  The graphs of a batch of
    markets (``_BATCH_LOTS`` orders and bids) are built in one numpy pass over
    all of them, and each is solved on its own, on exactly the graph it would
    get alone, so a market's clearing depends on its own orders and bids only,
    ties included (see ``_solve_ortools_batch``): the max-gain allocations of
    a batch are one such pass, its trial prices another.  A market (or trial)
    of more than ``_BATCH_MAX_PAIRS`` order x bid pairs keeps a graph built on
    its own, where numpy's per-market overhead no longer matters.

Solvers
    A graph of at most ``_NATIVE_MAX_NODES`` nodes is solved by a compiled
    network simplex (``netsimplex``), a bigger one, or one it does not solve,
    by OR-Tools.  OR-Tools' cost scaling spends most of a small graph's solve
    in one refine phase per factor of the cost range (durations in seconds x
    6-decimal prices x the unit weight: ~1e14), the simplex does not; but its
    time grows faster with the nodes, hence the limit.  A big market's
    max-gain graph stays in the simplex, and each of its trial prices is that
    graph with the excluded orders' and bids' arcs forbidden, pivoted on from
    the max-gain optimum (``_WarmMarkets``).  Both solvers are exact, but among
    tied optima they may pick different allocations, and a tie can decide the
    price, so ``clear`` refuses to run without the simplex
    (``netsimplex.require``) rather than clear a round differently.

Gains first, then units
    A pair trades when ``order.duration <= bid.max_duration`` and
    ``bid.price <= order.max_price``: a bid at exactly the max price fills the
    order ("bid <= my max" is the rule users read).  Such a pair gains
    nothing, so the objective is lexicographic: the most gains, then the most
    matched units (see ``_solve_ortools`` for how one solve does both).

Pruning (never changes the optimum)
    Bids are scanned cheapest first (ties by key).  Let T_0 < ... < T_k-1 be
    the distinct order durations of the market (its classes), ``dem[s]`` the
    units of orders with duration <= T_s and ``from[c]`` those with duration
    >= T_c.  A bid's tier is the largest t with T_t <= max_duration.  Two
    rules say that class c never needs bid b, both about the bids before b
    (kept or not), which are no dearer:

    1. for some u >= c and s >= u, those of tiers u..s hold at least
       ``dem[s]`` units.  They serve only orders of duration <= T_s, one of
       which b serves, so one of them has a spare unit to take over.
    2. those of tiers >= c hold at least ``from[c]`` units.  Then one of them
       has a spare unit or serves a class shorter than c; either it takes the
       unit (no loss), or the two classes swap bids, which gains
       ``(T_c - T_c') * (price(b) - price(e)) >= 0``.

    Each move or swap lowers ``sum(duration * position of the bid)`` over
    served units, so repeating them ends in an optimum that uses no ruled-out
    (class, bid) pair.  A bid needed by no class is dropped.  Both rules look
    only at earlier bids, so a chunk of bids is decided at once in numpy
    (bids x classes array work, no Python loop per bid), and they stay valid
    for any restricted problem that keeps every bid cheaper than a kept one
    and has no more demand: the trial prices below.

    Rule 2 alone is also applied inside every solve, on the (restricted)
    market that solve takes: one cumulative sum over a classes x bids array
    it builds anyway.  On a small market (under ``_PRUNE_FROM_ARCS``) that is
    the only pruning, because the chunked scan costs more than it saves there;
    at a trial price it uses the trial's own, smaller demand, which the
    market-wide mask cannot.

Exactness and overflow
    Costs are shifted per class by the cheapest price that class can reach,
    so they scale with the spread of prices in a market, not with their level
    (a "dust" order with a max price of one base unit reaches no bid at all
    and gets no arc), divided by their gcd, and weighted for the
    lexicographic objective.  The bound is OR-Tools' own: a cost above
    ``INT64_MAX / (2 * (nodes + 1))`` is refused, and OR-Tools guards its
    potentials and verifies its result before it reports OPTIMAL.  A market
    outside that range, or any other status, is solved by a pure-Python
    successive shortest path solver on unbounded integers when it is small
    (``_PYTHON_EXACT_PAIRS``).  A big one first gets OR-Tools without the unit
    weight (exact gains; zero-gain pairs are then added greedily, which can
    leave units short of the most): the weight multiplies costs by the units,
    so an order of one unit at a huge max price (a few thousand dollars of
    escrow) could push it out of range, while the gains alone leave it only
    when an order's duration x max price passes ~1e15 base-unit-seconds
    (about $300,000 of escrow or more).  The Python solver is a correctness
    fallback that realistic inputs (durations in seconds up to weeks, prices
    in 6-decimal base units, dust orders) do not reach.  The flow's capacity
    constraints are checked after the solve, whatever solved it; an
    impossible state raises ``RuntimeError``.

Uniform pricing rule
    1. Solve the max-gain allocation of the market.
    2. ``lo`` = highest price among winning bids; ``hi`` = lowest max price
       among served orders.
    3. If ``lo > hi`` no single price fits that allocation.  The price comes
       first: at a trial price P only orders with ``max_price >= P`` and bids
       priced ``<= P`` take part, and their max-gain allocation trades at P.
       Gains are piecewise constant in P, so the candidates are the order
       max prices and bid prices in [hi, lo].  They are ranked without a
       solve by what the max-gain allocation keeps at P (the gains, then
       units, of its pairs with ``bid price <= P <= order max``: a feasible
       allocation at P, so a lower bound on the optimum there; one sweep over
       its pairs), and the best ``price_search_solves`` candidates (1 by
       default; 0 means P = lo) are solved exactly; the one with the most
       gains, then units, then the lower price is kept (``trial_price``).
       The first-ranked one trades: it keeps at least what the allocation
       keeps at lo, where the pair of the dearest winning bid stays.  Orders
       below the trial price did not take part: the price stays above their
       max prices, and those the max-gain allocation had served are reported
       as priced out.
    4. The price is set by the best losing message of the long side, clamped
       to ``[lo, hi]`` of the allocation (and above every order that did not
       take part): the cheapest bid left entirely unused; when every bid is
       used, the highest max price among the orders left unserved that some
       bid could serve; when neither is left, the middle of the range.

    Why: one price for all winners is budget-balanced and a winner's own
    message cannot move what it pays or is paid, so small providers do best by
    bidding cost and buyers by stating their true max (unlike pay-as-bid,
    which invites shading).  The best losing message is the competitive price
    the winners would otherwise have to beat.  (Until this rule, a market
    where every bid was used cleared at the lowest served max price: the
    marginal buyer paid its own max, which invites shading the max.)  What one price
    costs in gains, and what buyers pay, is measured in docs/PROTOCOL.md.

Accountability
    In any exact optimum no winning bid W coexists with a bid B of the same
    market with ``B.price < W.price``, B not completely filled and
    ``B.max_duration >= duration`` of an order W serves: moving one unit from
    W to B would raise gains.  :func:`accountability_violations` checks this
    and the tests exercise it, including across pruning and trial prices (a
    trial keeps every bid cheaper than a winner, so the argument holds there).

Determinism
    Orders are handled in key order and bids in (price, key) order, and the
    simplex prices arcs in a fixed pseudo-random order, so the same messages
    in any order give the same clearing.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from itertools import compress
from operator import attrgetter, eq
from typing import Literal

import numpy as np
from ortools.graph.python import min_cost_flow

from underbid.matcher import netsimplex
from underbid.protocol.pricing import PriceRule

__all__ = [
    "BidLot",
    "Clearing",
    "MarketClearing",
    "Match",
    "OrderLot",
    "Solver",
    "accountability_violations",
    "clear",
    "gains_from_trade",
    "max_gain_allocation",
]

Solver = Literal["auto", "ortools", "python"]

# Inputs above this are kept out of numpy/OR-Tools int64 arithmetic altogether.
_INT64_HEADROOM = 2**62
_INT64_MAX = 2**63 - 1
# Markets with fewer duration classes x bids than this are solved unpruned (see _prepare).
_PRUNE_FROM_ARCS = 20_000
# Outside OR-Tools' range, markets with at most this many order x bid pairs go to the exact Python
# solver (well under a second); bigger ones to OR-Tools without the unit weight (_solve_prepared).
_PYTHON_EXACT_PAIRS = 2_000
# Markets are cleared in batches of about this many orders and bids (see _batches).
_BATCH_LOTS = 20_000
# A problem with more orders x bids than this is solved on its own graph (_solve_ortools_batch):
# the batch pays where per-market overhead dominates (1k x 10k: ~10 x 100 per market), while at
# 10k x 100k (~100 x 400 after pruning) it was ~5% slower than row-wise broadcasting per market
# (~3% for its trial prices alone), and a flood of 100,000 one-unit orders in one market 40% slower.
_BATCH_MAX_PAIRS = 5_000
# Graphs of at most this many nodes are solved by the network simplex (netsimplex.c), bigger ones
# by OR-Tools: its time grows faster with the nodes than OR-Tools' (a market of 1,000 one-unit
# orders, 1,100 nodes: 8 ms against 3 ms; 4,000 orders: 114 ms against 24 ms), while a 10k x 100k
# market (~280 nodes, ~8,000 arcs) takes 2.5x less than in OR-Tools, and its trials far less.
_NATIVE_MAX_NODES = 600


@dataclass(frozen=True, slots=True)
class OrderLot:
    """What is left of one signed buyer order."""

    key: str  # the order's EIP-712 digest, 0x-hex; unique
    market: str  # market id, 0x-hex bytes32
    units: int  # remaining units wanted (> 0)
    duration: int  # seconds
    max_price: int  # credit base units per unit-hour


@dataclass(frozen=True, slots=True)
class BidLot:
    """What is left of one signed provider bid."""

    key: str
    market: str
    provider: str  # address
    capacity: int  # remaining units (> 0)
    price: int  # credit base units per unit-hour
    max_duration: int  # seconds


@dataclass(frozen=True, slots=True)
class Match:
    """Units of one order served by one bid; at most one per (order, bid) pair."""

    order_key: str
    bid_key: str
    units: int


@dataclass(frozen=True, slots=True)
class MarketClearing:
    """The outcome of one market in one round."""

    market: str
    price: int  # the uniform clearing price
    matches: tuple[Match, ...]
    dropped_orders: tuple[str, ...]  # served by the max-gain allocation, priced out by the uniform one
    # When the max-gain allocation admitted no single price: the trial price the matches were
    # solved at (only orders with max_price >= it and bids priced <= it took part), so that anyone
    # can check the matches against an exact solve of that restricted market.
    trial_price: int | None = None
    #: what set `price` (the losing message that priced the market, or a bound it hit)
    price_rule: PriceRule = PriceRule.MIDPOINT


@dataclass(frozen=True, slots=True)
class Clearing:
    """The outcome of a round: only markets with at least one match, by market id."""

    markets: tuple[MarketClearing, ...]

    @property
    def matches(self) -> tuple[Match, ...]:
        return tuple(m for mc in self.markets for m in mc.matches)

    @property
    def prices(self) -> dict[str, int]:
        return {mc.market: mc.price for mc in self.markets}

    @property
    def price_rules(self) -> dict[str, PriceRule]:
        return {mc.market: mc.price_rule for mc in self.markets}


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def clear(
    orders: Iterable[OrderLot],
    bids: Iterable[BidLot],
    *,
    executor: Executor | None = None,
    price_search_solves: int = 1,
) -> Clearing:
    """Clear a round: max-gain matches and one uniform price per market.

    ``executor`` (for example a long-lived ``ProcessPoolExecutor`` owned by the
    matcher service) spreads markets over workers; markets are independent,
    so the result is identical with or without it.  ``price_search_solves``
    is how many candidate trial prices a market whose max-gain allocation
    admits no single price solves exactly (0: only lo; see
    ``_trial_candidates``; the gains each setting keeps and what it costs
    are measured in docs/PROTOCOL.md and docs/PERFORMANCE.md).
    """
    if price_search_solves < 0:
        raise ValueError("price_search_solves must be >= 0")
    # Without it the ties among optimal allocations, which can decide a price, would fall
    # differently on this machine than on others (module docstring, "Solvers").
    netsimplex.require()
    tasks = [(market, mo, mb, price_search_solves) for market, mo, mb in _market_tasks(orders, bids)]
    # Markets are solved in batches (one OR-Tools call per stage for a batch).  The batches
    # depend only on the markets, never on the executor, so that the result does not either:
    # an optimum with ties may depend on the other markets of its batch.
    batches = _batches(tasks)
    if executor is None:
        results = [r for batch in batches for r in _clear_markets(batch)]
    else:
        results = [r for batch in executor.map(_clear_markets, batches) for r in batch]
    return Clearing(markets=tuple(r for r in results if r is not None))


def max_gain_allocation(
    orders: Iterable[OrderLot],
    bids: Iterable[BidLot],
    *,
    prune: bool = True,
    solver: Solver = "auto",
) -> tuple[Match, ...]:
    """The max-gain allocation of every market, before any pricing step.

    Exposed so that tests can compare it with a brute force, the pruned solve
    with the unpruned one, and the solvers with each other.  ``"auto"`` is what
    ``clear`` solves with (the network simplex, OR-Tools for big graphs,
    fallbacks); ``"ortools"`` never uses the network simplex and raises
    ``ValueError`` when a market is outside the range OR-Tools can solve
    exactly, instead of falling back; ``"python"`` is the exact Python solver.
    ``"auto"`` raises ``RuntimeError`` when the network simplex is unavailable
    (``netsimplex.require``).
    """
    if solver == "auto":
        netsimplex.require()
    out: list[Match] = []
    for _market, mo, mb in _market_tasks(orders, bids):
        alloc = _max_gain_market(mo, mb, prune=prune, solver=solver)
        out.extend(_to_matches(mo, mb, alloc))
    return tuple(out)


def gains_from_trade(
    matches: Iterable[Match],
    orders_by_key: Mapping[str, OrderLot],
    bids_by_key: Mapping[str, BidLot],
) -> int:
    """Sum of units * duration * (max_price - bid price): the clearing objective."""
    total = 0
    for m in matches:
        o = orders_by_key[m.order_key]
        total += m.units * o.duration * (o.max_price - bids_by_key[m.bid_key].price)
    return total


def accountability_violations(
    matches: Iterable[Match],
    orders: Iterable[OrderLot],
    bids: Iterable[BidLot],
) -> list[tuple[str, str]]:
    """Pairs (cheaper bid B, winning bid W) that break the accountability rule.

    The rule has the two forms the on-chain court proves (``MatcherCourt``):
    a spare unit, no winning W with a bid B of the same market where
    ``B.price < W.price``, B is not completely filled and ``B.max_duration``
    covers the duration of some order W serves; and a swap, no winning W
    serving an order longer than one the cheaper winning B serves, when B
    lasts long enough for it.  The matcher can run this as a self-check before
    it submits a settlement; an empty list means none.  One spare-unit witness
    B (the longest-lived cheaper bid) is reported per W, and every swap pair.
    """
    orders_by_key = {o.key: o for o in orders}
    bids_list = list(bids)
    bids_by_key = {b.key: b for b in bids_list}
    filled: dict[str, int] = {}
    min_dur: dict[str, int] = {}
    for m in matches:
        filled[m.bid_key] = filled.get(m.bid_key, 0) + m.units
        d = orders_by_key[m.order_key].duration
        min_dur[m.bid_key] = min(d, min_dur.get(m.bid_key, d))
    by_market: dict[str, list[BidLot]] = {}
    for b in bids_list:
        if filled.get(b.key, 0) < b.capacity:
            by_market.setdefault(b.market, []).append(b)
    # Per market: not-full bids by price, with a running max of max_duration,
    # so each winner is one bisect.
    index: dict[str, tuple[list[int], list[BidLot]]] = {}
    for market, lst in by_market.items():
        lst.sort(key=lambda b: (b.price, b.key))
        prices, best, cur = [], [], None
        for b in lst:
            if cur is None or b.max_duration > cur.max_duration:
                cur = b
            prices.append(b.price)
            best.append(cur)
        index[market] = (prices, best)
    out: list[tuple[str, str]] = []
    for wkey in sorted(min_dur):
        w = bids_by_key[wkey]
        if w.market not in index:
            continue
        prices, best = index[w.market]
        i = bisect_left(prices, w.price)  # bids strictly cheaper than W
        if i and best[i - 1].max_duration >= min_dur[wkey]:
            out.append((best[i - 1].key, wkey))
    max_dur: dict[str, int] = {}
    for m in matches:
        d = orders_by_key[m.order_key].duration
        max_dur[m.bid_key] = max(d, max_dur.get(m.bid_key, d))
    for wkey in sorted(max_dur):
        w = bids_by_key[wkey]
        for bkey in sorted(min_dur):
            b = bids_by_key[bkey]
            if (b.market == w.market and b.price < w.price and min_dur[bkey] < max_dur[wkey]
                    and b.max_duration >= max_dur[wkey] and (bkey, wkey) not in out):
                out.append((bkey, wkey))  # a swap of those two orders would gain
    return out


# --------------------------------------------------------------------------
# Per-market work
# --------------------------------------------------------------------------

_Task = tuple[str, list[OrderLot], list[BidLot]]
_PricedTask = tuple[str, list[OrderLot], list[BidLot], int]
# (order index, bid index, units), indices into the market's sorted lists.
_Alloc = list[tuple[int, int, int]]


def _market_tasks(orders: Iterable[OrderLot], bids: Iterable[BidLot]) -> list[_Task]:
    """Validate, group by market and sort canonically (orders by key, bids by price then key)."""
    by_market_o: dict[str, list[OrderLot]] = {}
    by_market_b: dict[str, list[BidLot]] = {}
    seen: set[str] = set()
    for n, o in enumerate(orders, 1):
        # One cheap test on the hot path; _check_order explains any failure.
        if not (
            type(o) is OrderLot and type(o.units) is int and type(o.duration) is int
            and type(o.max_price) is int and o.units > 0 and o.duration > 0
            and o.max_price >= 0
        ):
            _check_order(o)
        seen.add(o.key)
        if len(seen) != n:
            raise ValueError(f"duplicate order key {o.key}")
        lst = by_market_o.get(o.market)
        if lst is None:
            by_market_o[o.market] = [o]
        else:
            lst.append(o)
    seen = set()
    for n, b in enumerate(bids, 1):
        if not (
            type(b) is BidLot and type(b.capacity) is int and type(b.price) is int
            and type(b.max_duration) is int and b.capacity > 0 and b.price >= 0
            and b.max_duration >= 0
        ):
            _check_bid(b)
        seen.add(b.key)
        if len(seen) != n:
            raise ValueError(f"duplicate bid key {b.key}")
        lst_b = by_market_b.get(b.market)
        if lst_b is None:
            by_market_b[b.market] = [b]
        else:
            lst_b.append(b)
    tasks: list[_Task] = []
    for market in sorted(by_market_o.keys() & by_market_b.keys()):
        mo = sorted(by_market_o[market], key=_ORDER_SORT_KEY)
        mb = _by_price_then_key(by_market_b[market])
        tasks.append((market, mo, mb))
    return tasks


_KEY = attrgetter("key")
_ORDER_SORT_KEY = _KEY
_BID_SORT_KEY = attrgetter("price", "key")
_PRICE = attrgetter("price")
_MAX_DURATION = attrgetter("max_duration")
_DURATION = attrgetter("duration")
_MAX_PRICE = attrgetter("max_price")
_CAPACITY = attrgetter("capacity")
_UNITS = attrgetter("units")


def _by_price_then_key(bids: list[BidLot]) -> list[BidLot]:
    """Bids in (price, key) order: sorted on the price alone (no tuple per bid: half the time
    of the (price, key) sort at 10k x 100k), then each run of equal prices by key."""
    ordered = sorted(bids, key=_PRICE)
    prices = list(map(_PRICE, ordered))
    # i such that bid i has the price of bid i - 1 (found in C: ties are few); each run of
    # such i from `first` to `last` is a run of equal prices from first - 1 to last.
    runs: list[list[int]] = []
    for i in compress(range(1, len(prices)), map(eq, prices[1:], prices[:-1])):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    for first, last in runs:
        ordered[first - 1:last + 1] = sorted(ordered[first - 1:last + 1], key=_KEY)
    return ordered


def _is_int(x: object) -> bool:
    return type(x) is int  # not bool, not numpy: what the store hands us


def _check_order(o: OrderLot) -> None:
    if not isinstance(o, OrderLot):
        raise TypeError(f"expected OrderLot, got {type(o).__name__}")
    for name in ("units", "duration", "max_price"):
        if not _is_int(getattr(o, name)):
            raise TypeError(f"order {o.key}: {name} must be int")
    if o.units <= 0:
        raise ValueError(f"order {o.key}: units must be > 0, got {o.units}")
    if o.duration <= 0:
        raise ValueError(f"order {o.key}: duration must be > 0, got {o.duration}")
    if o.max_price < 0:
        raise ValueError(f"order {o.key}: max_price must be >= 0, got {o.max_price}")


def _check_bid(b: BidLot) -> None:
    if not isinstance(b, BidLot):
        raise TypeError(f"expected BidLot, got {type(b).__name__}")
    for name in ("capacity", "price", "max_duration"):
        if not _is_int(getattr(b, name)):
            raise TypeError(f"bid {b.key}: {name} must be int")
    if b.capacity <= 0:
        raise ValueError(f"bid {b.key}: capacity must be > 0, got {b.capacity}")
    if b.price < 0:
        raise ValueError(f"bid {b.key}: price must be >= 0, got {b.price}")
    if b.max_duration < 0:
        raise ValueError(f"bid {b.key}: max_duration must be >= 0, got {b.max_duration}")


def _to_matches(orders: Sequence[OrderLot], bids: Sequence[BidLot], alloc: _Alloc) -> list[Match]:
    ms = [Match(orders[oi].key, bids[bi].key, u) for oi, bi, u in alloc]
    ms.sort(key=_MATCH_SORT_KEY)
    return ms


_MATCH_SORT_KEY = attrgetter("order_key", "bid_key")


def _batches(tasks: list[_PricedTask]) -> list[list[_PricedTask]]:
    """Consecutive markets in batches of about ``_BATCH_LOTS`` orders and bids (a market bigger
    than that is a batch of its own)."""
    batches: list[list[_PricedTask]] = []
    lots = _BATCH_LOTS
    for task in tasks:
        size = len(task[1]) + len(task[2])
        if lots + size > _BATCH_LOTS:
            batches.append([])
            lots = 0
        batches[-1].append(task)
        lots += size
    return batches


def _clear_markets(tasks: list[_PricedTask]) -> list[MarketClearing | None]:
    """Allocation and uniform price for each market of a batch (module-level so it pickles).

    When the max-gain allocation admits one price (every winning bid at most
    every served max price) it is kept.  Otherwise the price comes first: at a
    trial price P only orders with ``max_price >= P`` and bids with
    ``price <= P`` take part, so the restricted optimum trades at P.  The
    trials between hi and lo are searched for the one with the most gains
    (rule and figures in the module docstring and docs/PROTOCOL.md).  Every
    market's max-gain allocation is one batched solve, and every trial another.
    """
    prepared = [_prepare(orders, bids, prune=True, fields=fields)
                for (_, orders, bids, _), fields in zip(tasks, _batch_fields(tasks), strict=True)]
    warm = _WarmMarkets()
    try:
        return _clear_prepared(tasks, prepared, warm)
    finally:
        warm.close()


def _clear_prepared(tasks: list[_PricedTask], prepared: list[_Prepared],
                    warm: _WarmMarkets) -> list[MarketClearing | None]:
    """``_clear_markets`` once the markets are prepared."""
    firsts = _solve_prepared_many([(t[1], t[2], p, None) for t, p in zip(tasks, prepared, strict=True)], warm)
    # Per market that needs a trial: (its index, lo, hi, candidate prices, ranked candidates).
    searches: list[tuple[int, int, int, list[int], list[int]]] = []
    trial_items: list[tuple[Sequence[OrderLot], Sequence[BidLot], _Prepared, int | None]] = []
    for n, ((_, orders, bids, search_solves), alloc) in enumerate(zip(tasks, firsts, strict=True)):
        if not alloc:
            continue
        lo = max(bids[bi].price for _, bi, _ in alloc)
        hi = min(orders[oi].max_price for oi, _, _ in alloc)
        if lo > hi:
            values, ranked = _trial_candidates(orders, bids, alloc, lo, hi, search_solves)
            searches.append((n, lo, hi, values, ranked))
            trial_items += [(orders, bids, prepared[n], values[index]) for index in ranked]
    trial_allocs = iter(_solve_prepared_many(trial_items, warm))
    trials: dict[int, tuple[int, _Alloc]] = {}
    for n, _lo, _hi, values, ranked in searches:
        _, orders, bids, _ = tasks[n]
        solved = [(index, next(trial_allocs)) for index in ranked]
        trials[n] = _best_trial(orders, bids, values, solved)
    return [
        _price_market(task, alloc, trials.get(n)) if alloc else None
        for n, (task, alloc) in enumerate(zip(tasks, firsts, strict=True))
    ]


def _price_market(task: _PricedTask, alloc: _Alloc, trial_solve: tuple[int, _Alloc] | None) -> MarketClearing:
    """The market's clearing from its max-gain allocation and, when that admits no single
    price, the trial price chosen and its allocation."""
    market, orders, bids, _ = task
    lo = max(bids[bi].price for _, bi, _ in alloc)
    hi = min(orders[oi].max_price for oi, _, _ in alloc)
    floor = lo
    dropped: tuple[str, ...] = ()
    trial: int | None = None
    if trial_solve is not None:
        served = {oi for oi, _, _ in alloc}
        trial, alloc = trial_solve
        # Orders below the trial price did not take part: the price stays above them.
        floor = max((o.max_price + 1 for o in orders if o.max_price < trial), default=0)
        dropped = tuple(sorted(orders[oi].key for oi in served if orders[oi].max_price < trial))
        lo = max(bids[bi].price for _, bi, _ in alloc)
        hi = min(orders[oi].max_price for oi, _, _ in alloc)
        floor = max(floor, lo)
    price, rule = _uniform_price(orders, bids, alloc, floor, hi, winning_bid=lo)
    return MarketClearing(
        market=market,
        price=price,
        matches=tuple(_to_matches(orders, bids, alloc)),
        dropped_orders=dropped,
        trial_price=trial,
        price_rule=rule,
    )


def _uniform_price(
    orders: Sequence[OrderLot], bids: Sequence[BidLot], alloc: _Alloc, floor: int, hi: int, *, winning_bid: int
) -> tuple[int, PriceRule]:
    """The price of the best losing message on the long side, kept within [floor, hi], and the
    rule that set it.

    With a bid left unused that could serve some order: the cheapest such bid (supply is
    long).  With every such bid used:
    the highest max price among the orders left unserved that some bid could serve (demand
    is long).  With neither: the middle of [floor, hi], rounded down.  The marginal winner's
    own message never sets the price, on either side.  ``winning_bid`` (the dearest winning
    bid) tells which bound ``floor`` is.
    """
    used = {bi for _, bi, _ in alloc}
    # bids are sorted by (price, key): the first unused one that could serve some order is the
    # cheapest (a bid that can serve none, say a zero price for one second, must not set it).
    unused = next((bids[i].price for i in _useful_bids(orders, bids) if i not in used), None)
    if unused is not None:
        price, rule = unused, PriceRule.CHEAPEST_UNUSED_BID
    else:
        served = {oi for oi, _, _ in alloc}
        unserved = [orders[i].max_price for i in _servable_orders(orders, bids) if i not in served]
        if unserved:
            price, rule = max(unserved), PriceRule.BEST_UNSERVED_ORDER
        else:
            price, rule = (floor + hi) // 2, PriceRule.MIDPOINT
    bounded = min(max(price, floor), hi)
    if bounded != price:
        if bounded == hi and price > hi:
            rule = PriceRule.LOWEST_WINNING_MAX
        else:
            rule = PriceRule.DEAREST_WINNING_BID if bounded == winning_bid else PriceRule.ABOVE_PRICED_OUT
        price = bounded
    # The contract takes no zero price (intake refuses a max price of 0, so hi >= 1 in a round).
    if price < 1:
        price, rule = min(1, hi), PriceRule.MINIMUM
    return price, rule


def _useful_bids(orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> Iterator[int]:
    """Indices, in order, of the bids that could serve some order: long enough, priced at most
    its max (lazily: the caller usually stops at one of the first)."""
    by_duration = sorted(orders, key=attrgetter("duration"))
    durations = [o.duration for o in by_duration]
    best_max: list[int] = []  # the highest max price among orders up to each duration
    for o in by_duration:
        best_max.append(max(o.max_price, best_max[-1]) if best_max else o.max_price)
    for i, b in enumerate(bids):
        reach = bisect_right(durations, b.max_duration)  # orders no longer than the bid
        if reach and best_max[reach - 1] >= b.price:
            yield i


def _trial_candidates(
    orders: Sequence[OrderLot], bids: Sequence[BidLot], first: _Alloc, lo: int, hi: int, search_solves: int
) -> tuple[list[int], list[int]]:
    """The candidate trial prices in [hi, lo], ascending, and the indices of those to solve.

    Gains are piecewise constant in P between consecutive order max prices and bid prices, so
    only those values are candidates.  With ``search_solves == 0`` the trial is lo (every
    winning bid of the max-gain allocation ``first`` still takes part, so it trades).
    Otherwise the candidates are ranked, without a solve, by what ``first`` keeps at P: the
    gains, then units, of its pairs with ``bid price <= P <= order max`` (a feasible allocation
    of the market restricted to P, so a lower bound on its optimum), ties to the lower price;
    the best ``search_solves`` are solved exactly (``_best_trial`` keeps one).  The
    first-ranked one alone keeps at least what ``first`` keeps at any candidate, and at lo that
    includes the pair of the dearest winning bid, so it trades.  (Measured against solving
    every candidate in docs/PROTOCOL.md.)
    """
    values = sorted(
        {o.max_price for o in orders if hi <= o.max_price <= lo}
        | {b.price for b in bids if hi <= b.price <= lo}
        | {lo}
    )
    ranked = _rank_by_kept(orders, bids, first, values)[:search_solves] if search_solves else [len(values) - 1]
    return values, ranked


def _best_trial(orders: Sequence[OrderLot], bids: Sequence[BidLot], values: Sequence[int],
                solved: Sequence[tuple[int, _Alloc]]) -> tuple[int, _Alloc]:
    """Of the solved candidates (index into ``values``, exact allocation at that price), the
    one with the most gains, then units, then the lower price."""
    best: tuple[tuple[int, int, int], int, _Alloc] | None = None
    for index, alloc in solved:
        if len(solved) == 1:  # nothing to compare with (the default): no need to value it
            best = ((0, 0, 0), index, alloc)
            break
        key = (_alloc_gains(orders, bids, alloc), sum(units for _, _, units in alloc), -index)
        if best is None or key > best[0]:
            best = (key, index, alloc)
    if best is None or not best[2]:  # ruled out: the first-ranked trial keeps a tradable pair
        raise RuntimeError("every trial price emptied the market")
    return values[best[1]], best[2]


def _rank_by_kept(orders: Sequence[OrderLot], bids: Sequence[BidLot], alloc: _Alloc,
                  values: Sequence[int]) -> list[int]:
    """Indices of ``values`` (ascending prices), best first by the gains and then the units of
    the pairs of ``alloc`` that trade at that price (``bid price <= P <= order max``), ties to
    the lower price.  One sweep: a pair counts on the run of values from its bid's price to
    its order's max."""
    gains = [0] * (len(values) + 1)
    units = [0] * (len(values) + 1)
    for oi, bi, u in alloc:
        o, price = orders[oi], bids[bi].price
        start, end = bisect_left(values, price), bisect_right(values, o.max_price)
        if start < end:
            gain = u * o.duration * (o.max_price - price)
            gains[start] += gain
            gains[end] -= gain
            units[start] += u
            units[end] -= u
    kept: list[tuple[int, int, int]] = []
    g = n = 0
    for index in range(len(values)):
        g += gains[index]
        n += units[index]
        kept.append((-g, -n, index))
    kept.sort()
    return [index for _, _, index in kept]


_EMPTY = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


def _alloc_gains(orders: Sequence[OrderLot], bids: Sequence[BidLot], alloc: _Alloc) -> int:
    return sum(units * orders[oi].duration * (orders[oi].max_price - bids[bi].price) for oi, bi, units in alloc)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One market made ready to solve, once for all of its trial prices."""

    orders: list[int]  # the orders some bid can serve, as indices
    bids: list[int]  # the bids an optimum may need, as indices (price order)
    durations: list[int]  # the distinct durations of those orders, ascending
    needed: np.ndarray | None  # kept bids x durations: classes each bid may serve (None: all)
    # The kept orders' and bids' fields as int64 arrays (same positions as ``orders`` and
    # ``bids``), built once for every trial; None when a value is outside int64's comfort zone
    # (such a market takes the list path, with its range checks and fallbacks).
    arrays: _Arrays | None = None
    # Whether each solve may also drop the arcs rule 2 rules out in the (restricted) market it
    # solves; False for ``prune=False``, the unpruned reference the tests compare with.
    prune_solves: bool = False


@dataclass(frozen=True, slots=True)
class _Arrays:
    order_ids: np.ndarray
    durations: np.ndarray
    max_prices: np.ndarray
    units: np.ndarray
    bid_ids: np.ndarray
    prices: np.ndarray
    max_durations: np.ndarray
    capacities: np.ndarray


# A market's fields as int64 arrays, orders then bids, in the market's order: durations, max
# prices, units; prices, max durations, capacities.
_Fields = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _batch_fields(tasks: Sequence[_PricedTask]) -> list[_Fields | None]:
    """The fields of every market that will not be pruned (``_prepare``), from one
    ``np.fromiter`` per field over all of them: one per field and market cost as much as the
    rest of a small market's preparation.  None for a pruned market (its arrays are built from
    the lots it keeps, a fraction of them) and, for all, when some value is 2**63 or more (each
    market then builds its own, ``_arrays``)."""
    small = [len({o.duration for o in task[1]}) * len(task[2]) < _PRUNE_FROM_ARCS for task in tasks]
    orders = [o for task, is_small in zip(tasks, small, strict=True) if is_small for o in task[1]]
    bids = [b for task, is_small in zip(tasks, small, strict=True) if is_small for b in task[2]]
    try:
        od = np.fromiter(map(_DURATION, orders), np.int64, len(orders))
        om = np.fromiter(map(_MAX_PRICE, orders), np.int64, len(orders))
        ou = np.fromiter(map(_UNITS, orders), np.int64, len(orders))
        bp = np.fromiter(map(_PRICE, bids), np.int64, len(bids))
        bd = np.fromiter(map(_MAX_DURATION, bids), np.int64, len(bids))
        bc = np.fromiter(map(_CAPACITY, bids), np.int64, len(bids))
    except OverflowError:
        return [None] * len(tasks)
    out: list[_Fields | None] = []
    o_at = b_at = 0
    for task, is_small in zip(tasks, small, strict=True):
        if not is_small:
            out.append(None)
            continue
        o_end, b_end = o_at + len(task[1]), b_at + len(task[2])
        out.append((od[o_at:o_end], om[o_at:o_end], ou[o_at:o_end], bp[b_at:b_end], bd[b_at:b_end], bc[b_at:b_end]))
        o_at, b_at = o_end, b_end
    return out

def _arrays(orders: Sequence[OrderLot], bids: Sequence[BidLot], order_ids: list[int],
            bid_ids: list[int], fields: _Fields | None = None) -> _Arrays | None:
    """The fields of the kept orders and bids as int64 arrays (taken from ``fields``, the
    market's own, when given), or None when a gain term (duration x max price), the units or a
    capacity could leave the range where ``_solve_ortools`` works in int64 (such a market keeps
    the list path and its fallbacks)."""
    if not order_ids or not bid_ids:
        return None
    n_o, n_b = len(order_ids), len(bid_ids)
    if fields is not None:
        od, om, ou, bp, bd, bc = fields
        o_pick = slice(None) if n_o == od.size else np.array(order_ids, np.int64)
        b_pick = slice(None) if n_b == bp.size else np.array(bid_ids, np.int64)
        durations, max_prices, units = od[o_pick], om[o_pick], ou[o_pick]
        prices, max_durations, capacities = bp[b_pick], bd[b_pick], bc[b_pick]
    else:
        kept_orders = [orders[i] for i in order_ids]
        kept_bids = [bids[i] for i in bid_ids]
        try:  # one fromiter per field: far cheaper than an array of tuples on small markets
            durations = np.fromiter(map(_DURATION, kept_orders), np.int64, n_o)
            max_prices = np.fromiter(map(_MAX_PRICE, kept_orders), np.int64, n_o)
            units = np.fromiter(map(_UNITS, kept_orders), np.int64, n_o)
            prices = np.fromiter(map(_PRICE, kept_bids), np.int64, n_b)
            max_durations = np.fromiter(map(_MAX_DURATION, kept_bids), np.int64, n_b)
            capacities = np.fromiter(map(_CAPACITY, kept_bids), np.int64, n_b)
        except OverflowError:  # a value of 2**63 or more
            return None
    max_m = int(max_prices.max())
    if (
        int(durations.max()) * max_m >= _INT64_HEADROOM
        or int(units.max()) * n_o >= _INT64_HEADROOM  # bounds the total units
        or int(capacities.max()) >= _INT64_HEADROOM
        or int(max_durations.max()) >= _INT64_HEADROOM
    ):
        return None
    return _Arrays(
        order_ids=np.array(order_ids, np.int64),
        durations=durations,
        max_prices=max_prices,
        units=units,
        bid_ids=np.array(bid_ids, np.int64),
        # a bid dearer than every max price never trades: its price only needs to stay above
        prices=np.minimum(prices, max_m + 1),
        max_durations=max_durations,
        capacities=capacities,
    )


def _prepare(orders: Sequence[OrderLot], bids: Sequence[BidLot], *, prune: bool,
             fields: _Fields | None = None) -> _Prepared:
    """Leaves out the orders no bid can serve and, on big markets, the bids no optimum needs
    (``fields``: the market's fields as arrays, when the caller has them).

    Pruning pays for itself only on big markets: below ``_PRUNE_FROM_ARCS`` arcs
    the solver takes the whole graph faster than the pruning would take to
    shrink it.  The pruning stays valid for every trial price: a restricted
    problem keeps, for each kept bid, every cheaper bid, and has less demand.
    """
    if not orders or not bids:
        return _Prepared([], [], [], None)
    if not prune or len({o.duration for o in orders}) * len(bids) < _PRUNE_FROM_ARCS:
        all_o, all_b = list(range(len(orders))), list(range(len(bids)))
        return _Prepared(all_o, all_b, sorted({o.duration for o in orders}), None,
                         _arrays(orders, bids, all_o, all_b, fields), prune_solves=prune)
    servable = _servable_orders(orders, bids)
    if not servable:
        return _Prepared([], [], [], None)
    served_orders = [orders[i] for i in servable]
    keep, needed = _prune(served_orders, bids)
    return _Prepared(servable, keep, sorted({o.duration for o in served_orders}), needed,
                     _arrays(orders, bids, servable, keep, fields), prune_solves=True)


def _solve_prepared(
    orders: Sequence[OrderLot],
    bids: Sequence[BidLot],
    prepared: _Prepared,
    solver: Solver,
    trial: int | None = None,
) -> _Alloc:
    """Exact max-gain allocation of a prepared market; with ``trial``, among the orders with
    ``max_price >= trial`` and the bids priced ``<= trial`` only."""
    if prepared.arrays is not None and solver in ("auto", "ortools"):
        fast = _solve_prepared_arrays([(prepared, trial)], native=solver == "auto")[0]
        if fast is not None:
            return fast
    order_ids = [i for i in prepared.orders if trial is None or orders[i].max_price >= trial]
    bid_count = len(prepared.bids)
    if trial is not None:  # the kept bids are in price order: the offered ones are a prefix
        bid_count = bisect_right([bids[i].price for i in prepared.bids], trial)
    if not order_ids or not bid_count:
        return []
    solved_orders = [orders[i] for i in order_ids]
    kept_bids = [bids[i] for i in prepared.bids[:bid_count]]
    needed = None
    if prepared.needed is not None:
        columns = np.searchsorted(prepared.durations, sorted({o.duration for o in solved_orders}))
        needed = prepared.needed[:bid_count][:, columns]
    alloc: _Alloc | None = None
    if solver in ("auto", "ortools"):
        alloc = _solve_ortools(solved_orders, kept_bids, needed)
        if alloc is None and solver == "ortools":
            raise ValueError("market outside the exact int64 range of OR-Tools")
    if alloc is None and solver == "auto" and len(solved_orders) * len(kept_bids) > _PYTHON_EXACT_PAIRS:
        # Too big for the Python solver to be quick (whoever posts a huge max price must not be
        # able to stall the round): exact gains from OR-Tools without the unit weight (it
        # multiplies costs by the units), then zero-gain pairs added greedily.
        alloc, order_ids, solved_orders = _solve_unweighted(solved_orders, kept_bids, needed, order_ids)
    if alloc is None:
        alloc = _solve_python(solved_orders, kept_bids)
    _check_alloc(solved_orders, kept_bids, alloc)
    return [(order_ids[oi], prepared.bids[bi], units) for oi, bi, units in alloc]


def _solve_prepared_arrays(items: Sequence[tuple[_Prepared, int | None]],
                           warm: _WarmMarkets | None = None, *, native: bool = True) -> list[_Alloc | None]:
    """``_solve_prepared`` of each (prepared market, trial) on the market's arrays, all in one
    ``_solve_ortools_batch``: no per-trial lists of lots.  None for an item without arrays or
    that OR-Tools cannot take exactly; the caller then takes the list path, which has the
    fallbacks.  With ``warm``, a market of more than ``_BATCH_MAX_PAIRS`` order x bid pairs
    is solved in the network simplex and kept there for its trial prices (``_WarmMarkets``).
    ``native=False``: OR-Tools alone (``max_gain_allocation(solver="ortools")``)."""
    out: list[_Alloc | None] = [None] * len(items)
    problems: list[_Problem] = []
    batched: list[tuple[int, np.ndarray, _Arrays]] = []
    for n, (prepared, trial) in enumerate(items):
        a = prepared.arrays
        if a is None:
            continue
        if trial is None:
            o_sel = np.arange(a.order_ids.size)
            bid_count = a.bid_ids.size
        else:
            o_sel = np.nonzero(a.max_prices >= trial)[0]
            bid_count = int(np.searchsorted(a.prices, trial, side="right"))  # kept bids: price order
        if not o_sel.size or not bid_count:
            out[n] = []
            continue
        if (a.order_ids.size * a.bid_ids.size > _BATCH_MAX_PAIRS
                and len(prepared.durations) + a.bid_ids.size + 2 <= _NATIVE_MAX_NODES and native):
            # The max-gain graph of a big market is solved there whether or not it is kept
            # (``max_gain_allocation`` gets the allocation ``clear`` prices); a trial is solved
            # there only from a kept graph.
            if trial is None:
                keeper = warm if warm is not None else _WarmMarkets()
                try:
                    out[n] = keeper.first(id(prepared), a, prepared.needed,
                                          prepared.prune_solves and prepared.needed is None)
                finally:
                    if keeper is not warm:
                        keeper.close()
            elif warm is not None:
                out[n] = warm.trial(id(prepared), a, trial)
            if out[n] is not None:
                continue
        od = a.durations[o_sel]
        needed = None
        if prepared.needed is not None:
            columns = np.searchsorted(prepared.durations, np.unique(od))
            needed = prepared.needed[:bid_count][:, columns]
        problems.append(_Problem(
            od, a.max_prices[o_sel], a.units[o_sel], a.prices[:bid_count], a.max_durations[:bid_count],
            a.capacities[:bid_count], needed,
            # The market-wide mask already holds rule 2 for the whole demand; a trial has less.
            prepared.prune_solves and (needed is None or trial is not None),
        ))
        batched.append((n, o_sel, a))
    for (n, o_sel, a), solved in zip(batched, _solve_ortools_batch(problems, native=native), strict=True):
        if solved is not None:
            oi, bi, units = solved
            out[n] = list(zip(a.order_ids[o_sel][oi].tolist(), a.bid_ids[bi].tolist(), units.tolist(), strict=True))
    return out

def _solve_prepared_many(
    items: Sequence[tuple[Sequence[OrderLot], Sequence[BidLot], _Prepared, int | None]],
    warm: _WarmMarkets | None = None,
) -> list[_Alloc]:
    """``_solve_prepared(orders, bids, prepared, "auto", trial)`` of every item, the ones with
    arrays built and solved as one batch (``_solve_ortools_batch``, or ``warm``); an item the
    batch cannot take exactly goes through ``_solve_prepared`` alone, with its fallbacks."""
    fast = _solve_prepared_arrays([(prepared, trial) for _, _, prepared, trial in items], warm)
    return [
        alloc if alloc is not None else _solve_prepared(orders, bids, prepared, "auto", trial)
        for alloc, (orders, bids, prepared, trial) in zip(fast, items, strict=True)
    ]

def _check_alloc_arrays(od: np.ndarray, om: np.ndarray, ou: np.ndarray, bp: np.ndarray, bd: np.ndarray,
                        bc: np.ndarray, oi: np.ndarray, bi: np.ndarray, units: np.ndarray) -> None:
    """``_check_alloc`` in numpy, for an allocation of int64 arrays."""
    if (units <= 0).any() or np.unique(oi * bp.size + bi).size != oi.size:
        raise RuntimeError("solver returned a bad flow")
    if ((od[oi] > bd[bi]) | (bp[bi] > om[oi])).any():
        raise RuntimeError("solver matched an incompatible pair")
    if (np.bincount(oi, units, od.size) > ou).any():
        raise RuntimeError("solver overfilled an order")
    if (np.bincount(bi, units, bp.size) > bc).any():
        raise RuntimeError("solver overfilled a bid")


def _solve_unweighted(
    orders: list[OrderLot], bids: list[BidLot], needed: np.ndarray | None, order_ids: list[int]
) -> tuple[_Alloc, list[int], list[OrderLot]]:
    """OR-Tools on gains alone, then zero-gain pairs added greedily.

    If even the gains leave OR-Tools' range, the orders with the largest duration x max
    price sit this round out, one at a time, until the rest fit: their gain terms are what
    widen the range (every bid a class reaches is priced at most its best max price).  That
    takes an order whose duration x max price passes INT64_MAX / (2 * (nodes + 1)) base-unit
    seconds, backed by escrow for at least that over 3,600; the rest of the market still
    clears exactly.  Returns the allocation and the orders (and their ids) it is over.
    """
    by_size = sorted(range(len(orders)), key=lambda i: (orders[i].duration * orders[i].max_price, i))
    while by_size:
        kept = sorted(by_size)
        alloc = _solve_ortools([orders[i] for i in kept], bids, _needed_for(needed, orders, kept),
                               units_second=False)
        if alloc is not None:
            kept_orders = [orders[i] for i in kept]
            return _add_zero_gain_pairs(kept_orders, bids, alloc), [order_ids[i] for i in kept], kept_orders
        by_size.pop()
    return [], [], []


def _needed_for(needed: np.ndarray | None, orders: Sequence[OrderLot], kept: Sequence[int]) -> np.ndarray | None:
    """The pruning's class mask for a subset of the orders (columns of the durations left)."""
    if needed is None:
        return None
    durations = sorted({o.duration for o in orders})
    return needed[:, np.searchsorted(durations, sorted({orders[i].duration for i in kept}))]


def _add_zero_gain_pairs(orders: Sequence[OrderLot], bids: Sequence[BidLot], alloc: _Alloc) -> _Alloc:
    """Adds, greedily in (order key, bid) order, units between orders and bids both left with
    some, where the bid is priced exactly at the order's max price (no other pair can be left:
    it would gain).  Gains stay the most; units are the most a greedy pass finds, which can fall
    short of the most there are."""
    units_of = {(oi, bi): units for oi, bi, units in alloc}
    order_left = [o.units for o in orders]
    bid_left = [b.capacity for b in bids]
    for (oi, bi), units in units_of.items():
        order_left[oi] -= units
        bid_left[bi] -= units
    prices = [b.price for b in bids]  # ascending
    for oi, order in enumerate(orders):
        start, end = bisect_left(prices, order.max_price), bisect_right(prices, order.max_price)
        for bi in range(start, end):
            if order_left[oi] == 0:
                break
            if bid_left[bi] == 0 or bids[bi].max_duration < order.duration:
                continue
            units = min(order_left[oi], bid_left[bi])
            units_of[(oi, bi)] = units_of.get((oi, bi), 0) + units
            order_left[oi] -= units
            bid_left[bi] -= units
    return [(oi, bi, units) for (oi, bi), units in units_of.items()]


def _max_gain_market(
    orders: Sequence[OrderLot],
    bids: Sequence[BidLot],
    *,
    prune: bool,
    solver: Solver,
) -> _Alloc:
    """Exact max-gain allocation of one market (orders by key, bids by price then key)."""
    return _solve_prepared(orders, bids, _prepare(orders, bids, prune=prune), solver)


def _servable_orders(orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> list[int]:
    """Indices of the orders that some bid can serve (long enough, priced at most their max).

    The others have no arc in any graph; leaving them out keeps a "dust" order
    (a max price of one base unit) from widening the range of costs the solver
    has to take exactly.
    """
    if not bids:
        return []
    try:
        bd = np.fromiter(map(_MAX_DURATION, bids), np.int64, len(bids))
        bp = np.fromiter(map(_PRICE, bids), np.int64, len(bids))
        od = np.fromiter(map(_DURATION, orders), np.int64, len(orders))
        om = np.fromiter(map(_MAX_PRICE, orders), np.int64, len(orders))
    except OverflowError:  # a value of 2**63 or more: the same on Python integers below
        pass
    else:
        longest_first = np.argsort(-bd, kind="stable")
        cheapest_from = np.minimum.accumulate(bp[longest_first])  # over bids lasting at least ...
        lasting = np.searchsorted(-bd[longest_first], -od, side="right")  # bids lasting >= duration
        ok = lasting > 0
        ok[ok] = cheapest_from[lasting[ok] - 1] <= om[ok]
        return [int(i) for i in np.nonzero(ok)[0]]
    # Cheapest price among bids lasting at least d, for every d: bids by max
    # duration, longest first, with a running minimum of price.
    by_length = sorted(bids, key=attrgetter("max_duration"), reverse=True)
    lengths = [-b.max_duration for b in by_length]  # ascending, for bisect
    cheapest: list[int] = []
    best: int | None = None
    for b in by_length:
        best = b.price if best is None else min(best, b.price)
        cheapest.append(best)
    out = []
    for i, o in enumerate(orders):
        reach = bisect_right(lengths, -o.duration)  # bids with max_duration >= duration
        if reach and cheapest[reach - 1] <= o.max_price:
            out.append(i)
    return out


def _prune(orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> tuple[list[int], np.ndarray | None]:
    """The bids an optimum may need, and for each the duration classes it may need to serve
    (rules in the module docstring): a bool array, kept bids x distinct order durations in
    ascending order; ``None`` when nothing was pruned.

    ``bids`` must be sorted by (price, key).  What the rule decides for a bid
    depends only on the bids before it (kept or not), so whole chunks of bids are
    decided at once: for each bid, the capacity per tier of the bids before it,
    its running sums over tiers and their suffix maxima, as numpy arrays.  That
    is O(bids x tiers) array work and no Python loop per bid; the scan stops at
    the first chunk after which every tier is closed.
    """
    durs = sorted({o.duration for o in orders})
    k = len(durs)
    units_by_dur = [0] * k
    for o in orders:
        units_by_dur[bisect_left(durs, o.duration)] += o.units
    max_price = max(o.max_price for o in orders)
    # bids are sorted by price: the candidates are a prefix.
    n = bisect_right(list(map(_PRICE, bids)), max_price)
    total_cap = sum(map(_CAPACITY, bids[:n]))
    if sum(units_by_dur) >= _INT64_HEADROOM or total_cap >= _INT64_HEADROOM or max(durs) >= _INT64_HEADROOM:
        # Outside int64: keep every candidate that lasts long enough (exact, only slower).
        return [i for i in range(n) if bids[i].max_duration >= durs[0]], None
    dem = np.cumsum(np.array(units_by_dur, np.int64))
    tiers = np.searchsorted(np.array(durs, np.int64), np.fromiter(map(_MAX_DURATION, bids[:n]), np.int64, n),
                            side="right") - 1
    caps = np.fromiter(map(_CAPACITY, bids[:n]), np.int64, n)
    # Chunks of 256 bids (fewer when classes are many, to bound memory): the last needed bid
    # of a market comes early (~400 of 1,000 at 10k x 100k), and a 1,024-bid chunk scanned all
    # of them; 256 measured as fast as 128 and faster than 1,024 or chunks growing from 128.
    chunk = max(16, min(256, 4_000_000 // k))
    before_chunk = np.zeros(k, np.int64)  # capacity per tier of every earlier candidate
    # units of classes d and longer, for the second rule
    demand_from = np.cumsum(np.array(units_by_dur[::-1], np.int64))[::-1]
    keep: list[int] = []
    kept_needs: list[np.ndarray] = [np.zeros((0, k), bool)]
    start = 0
    while start < n:
        t = tiers[start:start + chunk]
        rows = t.size
        valid = t >= 0
        added = np.zeros((rows, k), np.int64)
        added[np.nonzero(valid)[0], t[valid]] = caps[start:start + chunk][valid]
        before = before_chunk + np.cumsum(added, axis=0) - added
        needed = _needed_classes(before, dem, demand_from) & (np.arange(k)[None, :] <= t[:, None])
        rows_kept = np.nonzero(needed.any(axis=1))[0]
        keep.extend((start + rows_kept).tolist())
        kept_needs.append(needed[rows_kept])
        before_chunk = before[-1] + added[-1]
        if not _needed_classes(before_chunk[None, :], dem, demand_from).any():
            break  # the capacity only grows: no later bid is needed by any class
        start += rows
    return keep, np.concatenate(kept_needs)


def _needed_classes(before: np.ndarray, dem: np.ndarray, demand_from: np.ndarray) -> np.ndarray:
    """``needed[i, c]``: neither pruning rule rules out that bid i serves class c, given the
    capacity ``before[i]`` per tier of the bids before it."""
    closed = _closed_tiers(before, dem)
    # Rule 1: earlier bids of tiers u..s (u >= c) cover everything of duration <= T_s.
    ruled_out = np.logical_or.accumulate(closed[:, ::-1], axis=1)[:, ::-1]
    # Rule 2: earlier bids of tiers >= c hold at least the units of classes >= c.
    ruled_out |= np.cumsum(before[:, ::-1], axis=1)[:, ::-1] >= demand_from[None, :]
    return ~ruled_out


def _closed_tiers(before: np.ndarray, dem: np.ndarray) -> np.ndarray:
    """``closed[i, t]``: with capacity ``before[i]`` per tier, some s >= t has tiers t..s
    holding at least ``dem[s]`` units (``dem`` cumulative over tiers)."""
    cum = np.cumsum(before, axis=1)
    slack = cum - dem[None, :]  # cum[s] - dem[s]; tiers t..s hold cum[s] - cum[t-1]
    best_from = np.maximum.accumulate(slack[:, ::-1], axis=1)[:, ::-1]
    below = np.zeros_like(cum)
    below[:, 1:] = cum[:, :-1]
    return best_from >= below


def _solve_ortools(
    orders: Sequence[OrderLot],
    bids: Sequence[BidLot],
    needed: np.ndarray | None = None,
    *,
    units_second: bool = True,
) -> _Alloc | None:
    """Min-cost flow with OR-Tools on the duration-class graph; None when the
    market is outside the range OR-Tools solves exactly (the caller then uses
    the Python solver).

    The gain of a pair splits as ``-d*m`` (order side) plus ``d*p`` (bid side),
    and every order of one duration d can use exactly the bids with
    ``max_duration >= d``.  So orders of equal duration share one class node::

        source -(one arc per order: cap units)-> class d -> bid -(cap capacity)-> sink
        source -> sink (cost 0: demand may stay unserved)

    That is about orders + classes*bids arcs instead of orders*bids, with the
    same optimum: which order of a class a bid serves does not change the
    gains, so units are paired afterwards in ``_pair_classes``.

    Costs, and why they are exact:

    * Each class node d gets the potential ``d*P_d``, P_d the cheapest price
      it can reach: the order arc costs ``-d*(m - P_d)`` and the bid arc
      ``d*(p - P_d)``.  Every source-sink path keeps its cost, so the optimum
      is the same, but costs now scale with the spread of prices in the
      market, not their level (every served order has ``m >= P_d``).
    * Divided by their gcd g, then lexicographic: ``K = units + 1``; the
      order arc costs ``K*(gain part) - 1`` per unit.  Gains differ by at least
      one (in units of g) between allocations that differ in gains, and the
      unit bonus is below K in total, so the optimum maximizes gains first and
      matched units second.
    * OR-Tools multiplies costs by ``nodes + 1`` and refuses (BAD_COST_RANGE)
      a cost above ``INT64_MAX / (2 * (nodes + 1))``, guards its potentials,
      and checks its own result before it reports OPTIMAL.  The bound below is
      that same bound, so the solver's status is the only other check.
    """
    n_o, n_b = len(orders), len(bids)
    max_d = max(o.duration for o in orders)
    max_m = max(o.max_price for o in orders)
    total = sum(o.units for o in orders)
    if (
        max_d * max_m >= _INT64_HEADROOM  # every gain term below is under this
        or total >= _INT64_HEADROOM
        or max(b.capacity for b in bids) >= _INT64_HEADROOM
        or max(b.max_duration for b in bids) >= _INT64_HEADROOM
    ):
        return None
    # A bid dearer than every max price gets no arc: its price only needs to stay above them.
    solved = _solve_ortools_arrays(
        np.fromiter(map(_DURATION, orders), np.int64, n_o),
        np.fromiter(map(_MAX_PRICE, orders), np.int64, n_o),
        np.fromiter(map(_UNITS, orders), np.int64, n_o),
        np.fromiter((min(b.price, max_m + 1) for b in bids), np.int64, n_b),
        np.fromiter(map(_MAX_DURATION, bids), np.int64, n_b),
        np.fromiter(map(_CAPACITY, bids), np.int64, n_b),
        needed, units_second=units_second,
    )
    if solved is None:
        return None
    return list(zip(*(x.tolist() for x in solved), strict=True))


def _solve_ortools_arrays(
    od: np.ndarray, om: np.ndarray, ou: np.ndarray, bp: np.ndarray, bd: np.ndarray, bc: np.ndarray,
    needed: np.ndarray | None = None, *, units_second: bool = True, prune: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``_solve_ortools`` on int64 arrays (orders: durations, max prices, units; bids in price
    order: prices, max durations, capacities), whose gain terms ``duration * max_price`` and
    totals the caller has checked to be under ``_INT64_HEADROOM``.  Returns the allocation as
    arrays (order index, bid index, units), or None outside OR-Tools' exact range.  With
    ``prune``, the arcs pruning rule 2 rules out in exactly this market are left out too: on a
    small market that is the only pruning done (cheaper than the solve it shrinks), and at a
    trial price it uses the trial's smaller demand, which the market-wide ``needed`` cannot."""
    graph = _flow_graph(od, om, ou, bp, bd, bc, needed, units_second=units_second, prune=prune)
    if graph is None or graph.arc_bids.size == 0:
        return None if graph is None else _EMPTY
    smcf = min_cost_flow.SimpleMinCostFlow()
    smcf.add_arcs_with_capacity_and_unit_cost(graph.tails, graph.heads, graph.caps, graph.costs)
    smcf.set_nodes_supplies(
        np.array([0, graph.n_nodes - 1], np.int32), np.array([graph.supply, -graph.supply], np.int64)
    )
    if smcf.solve() != smcf.OPTIMAL:
        return None  # e.g. BAD_COST_RANGE from its potentials: the exact Python solver takes over
    return graph.pair(np.asarray(smcf.flows(np.arange(graph.paired_arcs, dtype=np.int32))))


@dataclass(frozen=True, slots=True)
class _FlowGraph:
    """One market's min-cost flow graph (``_flow_graph``): arcs source -> class of each order,
    class -> bid, bid -> sink of each bid, then the bypass; node 0 is the source, the last the
    sink."""

    n_nodes: int
    tails: np.ndarray  # int32
    heads: np.ndarray  # int32
    caps: np.ndarray
    costs: np.ndarray
    supply: int  # every order's servable units, the bypass's capacity
    order_class: np.ndarray  # each order's class (its first arc)
    max_prices: np.ndarray
    prices: np.ndarray
    arc_classes: np.ndarray  # class -> bid arcs: their class and bid
    arc_bids: np.ndarray

    @property
    def paired_arcs(self) -> int:
        """The arcs whose flows pair orders with bids: the orders' and the class -> bid arcs."""
        return self.order_class.size + self.arc_bids.size

    def pair(self, flows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The allocation (order index, bid index, units) of an optimal flow (at least its
        first ``paired_arcs`` values)."""
        n_o = self.order_class.size
        served, sold = flows[:n_o], flows[n_o:self.paired_arcs]
        pair = _pair_single_orders if int(self.order_class.max()) + 1 == n_o else _pair_classes
        return pair(self.max_prices, self.prices, self.order_class, self.arc_classes, self.arc_bids, served, sold)


def _flow_graph(
    od: np.ndarray, om: np.ndarray, ou: np.ndarray, bp: np.ndarray, bd: np.ndarray, bc: np.ndarray,
    needed: np.ndarray | None, *, units_second: bool, prune: bool,
) -> _FlowGraph | None:
    """The graph ``_solve_ortools_arrays`` solves, or None outside OR-Tools' exact range."""
    n_o, n_b = od.size, bp.size
    total = int(ou.sum())
    durs, cls = _classes(od)
    n_c = durs.size
    cls_max_m = np.zeros(n_c, np.int64)
    np.maximum.at(cls_max_m, cls, om)
    # A class reaches a bid that lasts long enough and is priced at most the
    # class's best max price (a dearer bid could only trade at a loss).
    lasting = bd[None, :] >= durs[:, None]
    reach = lasting & (bp[None, :] <= cls_max_m[:, None])
    if needed is not None:  # arcs the pruning showed no optimum needs
        reach &= needed.T
    if prune:
        reach &= _rule_two(lasting, cls, ou, bc)
    ci, bj = np.nonzero(reach)
    n_nodes = n_c + n_b + 2
    if ci.size == 0:
        empty = np.zeros(0, np.int64)
        return _FlowGraph(n_nodes, empty.astype(np.int32), empty.astype(np.int32), empty, empty, 0, cls, om, bp,
                          empty, empty)
    # P_d: bids are sorted by price and np.nonzero walks rows in order, so the first reachable
    # bid of each class is its cheapest.
    has_bid = np.zeros(n_c, bool)
    has_bid[ci] = True
    first_arc = np.searchsorted(ci, np.arange(n_c))
    ref = np.where(has_bid, bp[bj[np.minimum(first_arc, ci.size - 1)]], 0)
    # Orders of a class that reaches no bid at all, or priced under its cheapest
    # bid, cannot be served: their arcs are left out (cap 0 keeps indices aligned).
    ref_o = ref[cls]
    servable = has_bid[cls] & (om >= ref_o)
    gain_o = np.where(servable, durs[cls] * (om - ref_o), 0)
    gain_b = durs[ci] * (bp[bj] - ref[ci])
    g = int(np.gcd.reduce(np.concatenate([gain_o, gain_b]))) or 1
    weight = int(ou[servable].sum()) + 1 if units_second else 1  # K
    bonus = 1 if units_second else 0
    limit = _INT64_MAX // (2 * (n_nodes + 1))
    if (int(gain_o.max()) // g) * weight + bonus > limit or (int(gain_b.max()) // g) * weight > limit:
        return None
    src, sink = 0, n_nodes - 1
    n_arcs = n_o + ci.size + n_b + 1
    # One array per field, filled by slices: orders, then class -> bid arcs, bids -> sink, bypass.
    tails = np.empty(n_arcs, np.int32)
    heads = np.empty(n_arcs, np.int32)
    caps = np.empty(n_arcs, np.int64)
    costs = np.zeros(n_arcs, np.int64)
    e, f = n_o, n_o + ci.size
    tails[:e] = src
    heads[:e] = cls + 1
    caps[:e] = np.where(servable, ou, 0)
    costs[:e] = np.where(servable, -(gain_o // g) * weight - bonus, 0)
    tails[e:f] = ci + 1
    heads[e:f] = bj + (1 + n_c)
    caps[e:f] = bc[bj]
    costs[e:f] = (gain_b // g) * weight
    tails[f:-1] = np.arange(1 + n_c, 1 + n_c + n_b, dtype=np.int32)
    heads[f:] = sink
    caps[f:-1] = bc
    tails[-1] = src
    caps[-1] = total
    return _FlowGraph(n_nodes, tails, heads, caps, costs, total, cls, om, bp, ci, bj)


class _WarmMarkets:
    """Big markets' max-gain graphs, kept in the network simplex for their trial prices.

    A trial price P keeps the orders with ``max_price >= P`` and the bids priced ``<= P``.  Its
    exact optimum is the max-gain graph's once the others' arcs are forbidden (the bypass keeps
    a flow that avoids them feasible), so each trial pivots on from the max-gain optimum instead
    of solving from scratch.  The gains and units are those of the trial's own graph: the costs
    split each pair's gain the same way whatever the reference prices, the gcd only scales
    them, and the unit weight (the market's servable units + 1) still exceeds the units any
    trial can match.  The market-wide pruning stays valid for every trial (module docstring).
    """

    def __init__(self) -> None:
        self._graphs: dict[int, tuple[_FlowGraph, netsimplex.Graph]] = {}

    def first(self, key: int, a: _Arrays, needed: np.ndarray | None, prune: bool) -> _Alloc | None:
        """The max-gain allocation of the market ``key`` (None: solve it otherwise)."""
        graph = _flow_graph(a.durations, a.max_prices, a.units, a.prices, a.max_durations, a.capacities, needed,
                            units_second=True, prune=prune)
        if graph is None or graph.arc_bids.size == 0:
            return None
        solver = netsimplex.Graph(graph.n_nodes, graph.tails, graph.heads, graph.caps, graph.costs, 0,
                                  graph.n_nodes - 1, graph.supply)
        flows = solver.solve()[1]
        if flows is None:  # gave up (its pivot or work bound): OR-Tools takes the market
            solver.close()
            return None
        self._graphs[key] = (graph, solver)
        return self._alloc(a, graph, flows)

    def trial(self, key: int, a: _Arrays, trial: int) -> _Alloc | None:
        """The allocation of the market ``key`` at the trial price (None: solve it otherwise)."""
        kept = self._graphs.get(key)
        if kept is None:
            return None
        graph, solver = kept
        n_o, f = graph.order_class.size, graph.paired_arcs
        forbidden = np.zeros(graph.tails.size, bool)
        forbidden[:n_o] = graph.max_prices < trial
        forbidden[f:f + graph.prices.size] = graph.prices > trial  # each bid's arc to the sink
        solver.forbid(forbidden)
        flows = solver.solve()[1]
        if flows is None:
            return None
        if flows[forbidden].any():
            raise RuntimeError("the trial's optimum uses an order or bid the trial price excludes")
        return self._alloc(a, graph, flows)

    @staticmethod
    def _alloc(a: _Arrays, graph: _FlowGraph, flows: np.ndarray) -> _Alloc:
        oi, bi, units = graph.pair(flows)
        _check_alloc_arrays(a.durations, a.max_prices, a.units, a.prices, a.max_durations, a.capacities,
                            oi, bi, units)
        return list(zip(a.order_ids[oi].tolist(), a.bid_ids[bi].tolist(), units.tolist(), strict=True))

    def close(self) -> None:
        for _, solver in self._graphs.values():
            solver.close()
        self._graphs.clear()


@dataclass(frozen=True, slots=True)
class _Problem:
    """One (restricted) market for ``_solve_ortools_batch``: the arguments of
    ``_solve_ortools_arrays`` (orders' durations, max prices, units; bids in price order:
    prices, max durations, capacities; the class mask; whether rule 2 prunes)."""

    od: np.ndarray
    om: np.ndarray
    ou: np.ndarray
    bp: np.ndarray
    bd: np.ndarray
    bc: np.ndarray
    needed: np.ndarray | None
    prune: bool


def _solve_ortools_batch(problems: Sequence[_Problem], *,
                         native: bool = True) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """``_solve_ortools_arrays`` of every problem, every graph built in one numpy pass.

    All problems' arrays are concatenated (node ids offset per problem), so the classes, the
    reachable pairs, pruning rule 2, the cost shift, gcd and unit weight, the bound check, the
    pairing of flows and the allocation check are each one numpy step for the whole batch: on
    small markets the Python and numpy overhead of one graph per market cost as much as the
    solve.  Each problem is then solved by its own OR-Tools call on exactly the graph it would
    get alone (its own node numbers, arcs in the same order, its own costs), so that a market's
    allocation never depends on which other markets share its batch, even among tied optima;
    one call for the disjoint union of the graphs measured no faster (its cost scaling runs
    more phases) and would make ties depend on the batch.  A problem outside OR-Tools' exact
    range, or that OR-Tools does not solve to OPTIMAL, gets None (the caller's exact fallbacks
    take it).  Every problem needs at least one order and one bid, and the caller's range
    checks (``_arrays``)."""
    count = len(problems)
    if not count:
        return []
    big = [m for m, p in enumerate(problems) if p.od.size * p.bp.size > _BATCH_MAX_PAIRS]
    if big:  # solved as before, on their own (row-wise broadcasting beats gathers there)
        rest = [m for m in range(count) if m not in set(big)]
        answers: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * count
        for m, solved in zip(rest, _solve_ortools_batch([problems[m] for m in rest], native=native), strict=True):
            answers[m] = solved
        for m in big:
            p = problems[m]
            answers[m] = _solve_ortools_arrays(p.od, p.om, p.ou, p.bp, p.bd, p.bc, p.needed, prune=p.prune)
        return answers
    n_o = np.fromiter((p.od.size for p in problems), np.int64, count)
    n_b = np.fromiter((p.bp.size for p in problems), np.int64, count)
    o_start = np.cumsum(n_o) - n_o
    b_start = np.cumsum(n_b) - n_b
    od = np.concatenate([p.od for p in problems])
    om = np.concatenate([p.om for p in problems])
    ou = np.concatenate([p.ou for p in problems])
    bp = np.concatenate([p.bp for p in problems])
    bd = np.concatenate([p.bd for p in problems])
    bc = np.concatenate([p.bc for p in problems])
    o_mk = np.repeat(np.arange(count), n_o)
    # Classes: the distinct (problem, duration), in problem order then ascending duration, so
    # a problem's classes are contiguous and in the order of its ``needed`` columns.
    by_class = np.lexsort((od, o_mk))
    sorted_mk, sorted_d = o_mk[by_class], od[by_class]
    starts = np.empty(od.size, bool)
    starts[:1] = True
    np.not_equal(sorted_d[1:], sorted_d[:-1], out=starts[1:])
    starts[1:] |= sorted_mk[1:] != sorted_mk[:-1]
    cls = np.empty(od.size, np.int64)
    cls[by_class] = np.cumsum(starts) - 1
    durs, c_mk = sorted_d[starts], sorted_mk[starts]
    n_cls = durs.size
    n_c = np.bincount(c_mk, minlength=count)
    c_start = np.cumsum(n_c) - n_c
    class_first = np.nonzero(starts)[0]
    cls_max_m = np.maximum.reduceat(om[by_class], class_first)
    # Every class against the bids of its problem it can afford, row by row: bids are in price
    # order, so those priced at most the class's best max price are a prefix of them (a dearer
    # bid could only trade at a loss).  The prefix is found with one search over all problems'
    # prices shifted apart (problem after problem); a problem with a class mask keeps whole rows.
    last_price = bp[b_start + n_b - 1].tolist()
    shift_list = [0]
    for price in last_price[:-1]:
        shift_list.append(shift_list[-1] + price + 1)
    has_needed = np.fromiter((p.needed is not None for p in problems), bool, count)
    if shift_list[-1] + last_price[-1] < _INT64_HEADROOM:
        shift = np.array(shift_list, np.int64)
        affordable = np.searchsorted(bp + np.repeat(shift, n_b), cls_max_m + shift[c_mk], side="right")
        # (clipped: a class priced above every bid of its problem must not reach the next one's)
        row_len = np.where(has_needed[c_mk], n_b[c_mk], np.minimum(affordable - b_start[c_mk], n_b[c_mk]))
    else:
        row_len = n_b[c_mk]
    row_end = np.cumsum(row_len)
    row_start = row_end - row_len
    n_pairs = int(row_end[-1])
    ci = np.repeat(np.arange(n_cls), row_len)
    bj = np.arange(n_pairs) - np.repeat(row_start - b_start[c_mk], row_len)
    lasting = bd[bj] >= np.repeat(durs, row_len)
    reach = lasting & (bp[bj] <= np.repeat(cls_max_m, row_len))
    for m in np.nonzero(has_needed)[0].tolist():  # arcs the pruning showed no optimum needs
        first = int(row_start[c_start[m]])
        needed = problems[m].needed
        assert needed is not None
        reach[first:first + int(n_c[m] * n_b[m])] &= needed.T.ravel()
    class_units = np.add.reduceat(ou[by_class], class_first)
    totals = np.add.reduceat(ou, o_start)
    # Rule 2, where asked, on row-wise running sums of one cumulative sum over every row.  Each
    # capacity is clipped to its problem's demand (the rule compares sums with demand only, so
    # the answer is the same) and a problem whose rows could still pass int64 is not pruned
    # (optional, so still exact); the global sum may wrap, but every difference taken is exact.
    prune = np.fromiter((p.prune for p in problems), bool, count)
    prune &= np.fromiter(((int(t) + 1) * (int(b) + 1) < _INT64_HEADROOM for t, b in zip(totals, n_b, strict=True)),
                         bool, count)
    if prune.any():
        cap = np.where(lasting, np.minimum(bc[bj], np.repeat(totals[c_mk], row_len)), 0)
        running = np.cumsum(cap)
        nonempty = row_len > 0
        before_row = np.zeros(n_cls, np.int64)
        before_row[nonempty] = running[row_start[nonempty]] - cap[row_start[nonempty]]
        cum_units = np.cumsum(class_units)
        last_class = (c_start + n_c - 1)[c_mk]
        demand_from = cum_units[last_class] - cum_units + class_units
        # The capacity before each bid in its row (a difference: exact even if the sum wrapped).
        before = running - cap - np.repeat(before_row, row_len)
        ruled_in = before < np.repeat(demand_from, row_len)
        reach &= ruled_in if prune.all() else ruled_in | ~np.repeat(prune[c_mk], row_len)
    ci, bj = ci[reach], bj[reach]
    # P_d: the first reachable bid of each class is its cheapest (rows are in price order).
    has_bid = np.zeros(n_cls, bool)
    has_bid[ci] = True
    first_arc = np.searchsorted(ci, np.arange(n_cls))
    ref = np.where(has_bid, bp[bj[np.minimum(first_arc, max(ci.size - 1, 0))]] if ci.size else 0, 0)
    ref_o = ref[cls]
    servable = has_bid[cls] & (om >= ref_o)
    gain_o = np.where(servable, durs[cls] * (om - ref_o), 0)
    gain_b = durs[ci] * (bp[bj] - ref[ci])
    a_mk = c_mk[ci]
    a_count = np.bincount(a_mk, minlength=count)
    a_start = np.cumsum(a_count) - a_count
    with_arcs = a_count > 0
    g = np.gcd.reduceat(gain_o, o_start)
    top_o = np.maximum.reduceat(gain_o, o_start)
    top_b = np.zeros(count, np.int64)
    if ci.size:
        g[with_arcs] = np.gcd(g[with_arcs], np.gcd.reduceat(gain_b, a_start[with_arcs]))
        top_b[with_arcs] = np.maximum.reduceat(gain_b, a_start[with_arcs])
    g[g == 0] = 1
    weight = np.add.reduceat(np.where(servable, ou, 0), o_start) + 1  # K per problem
    # OR-Tools' bound, in Python integers, per problem (with all of its classes and bids as
    # nodes: at least as many as its graph has, so the bound is never looser than OR-Tools').
    solving = np.zeros(count, bool)
    answers = [_EMPTY] * count
    for m, (gm, to, tb, k, has) in enumerate(zip(g.tolist(), top_o.tolist(), top_b.tolist(), weight.tolist(),
                                                 with_arcs.tolist(), strict=True)):
        if not has:
            continue  # no arc: nothing can trade (answers[m] stays empty)
        top = max((to // gm) * k + 1, (tb // gm) * k)
        if top <= _INT64_MAX // (2 * (int(n_c[m] + n_b[m]) + 3)):
            solving[m] = True
        else:
            answers[m] = None
    if not solving.any():
        return answers
    keep_arc = solving[a_mk]
    ci, bj = ci[keep_arc], bj[keep_arc]
    gain_b = gain_b[keep_arc]
    servable &= solving[o_mk]
    # Nodes, problem after problem: its source and sink, then only its classes and bids with an
    # arc, so that an order no bid can serve (a dust order) changes no node number.
    members = np.nonzero(solving)[0]
    class_used = np.zeros(n_cls, bool)
    class_used[ci] = True
    bid_used = np.zeros(bp.size, bool)
    bid_used[bj] = True
    b_mk = np.repeat(np.arange(count), n_b)
    used_c = np.bincount(c_mk[class_used], minlength=count)
    used_b = np.bincount(b_mk[bid_used], minlength=count)
    node_count = np.where(solving, 2 + used_c + used_b, 0)
    node_base = np.cumsum(node_count) - node_count
    class_rank = np.cumsum(class_used) - 1  # among the used classes, over all problems
    class_node = node_base[c_mk] + 2 + class_rank - (np.cumsum(used_c) - used_c)[c_mk]
    bid_rank = np.cumsum(bid_used) - 1
    bid_node = node_base[b_mk] + 2 + used_c[b_mk] + bid_rank - (np.cumsum(used_b) - used_b)[b_mk]
    served_idx = np.nonzero(servable)[0]
    used_bids = np.nonzero(bid_used)[0]
    o_mk_s = o_mk[served_idx]
    demand = np.add.reduceat(np.where(servable, ou, 0), o_start)
    n_s, n_a, n_u = served_idx.size, ci.size, used_bids.size
    tails = np.empty(n_s + n_a + n_u + members.size, np.int64)
    heads = np.empty(tails.size, np.int64)
    caps = np.empty(tails.size, np.int64)
    costs = np.zeros(tails.size, np.int64)
    e, f, h = n_s, n_s + n_a, n_s + n_a + n_u
    tails[:e] = node_base[o_mk_s]
    heads[:e] = class_node[cls[served_idx]]
    caps[:e] = ou[served_idx]
    costs[:e] = -(gain_o[served_idx] // g[o_mk_s]) * weight[o_mk_s] - 1
    tails[e:f] = class_node[ci]
    heads[e:f] = bid_node[bj]
    caps[e:f] = bc[bj]
    arc_mk = c_mk[ci]
    costs[e:f] = (gain_b // g[arc_mk]) * weight[arc_mk]
    tails[f:h] = bid_node[used_bids]
    heads[f:h] = node_base[b_mk[used_bids]] + 1
    caps[f:h] = bc[used_bids]
    tails[h:] = node_base[members]
    heads[h:] = node_base[members] + 1
    caps[h:] = demand[members]
    # Each problem's arcs together (the stable sort keeps their order: orders, class -> bid,
    # bid -> sink, bypass), one OR-Tools call each on its own node numbers.
    arc_member = np.concatenate([o_mk_s, arc_mk, b_mk[used_bids], members])
    by_member = np.argsort(arc_member, kind="stable")
    tails, heads = (tails[by_member] - node_base[arc_member[by_member]]).astype(np.int32), \
        (heads[by_member] - node_base[arc_member[by_member]]).astype(np.int32)
    caps, costs = caps[by_member], costs[by_member]
    arc_bounds = np.searchsorted(arc_member[by_member], np.arange(count + 1)).tolist()
    flows_by_member = np.empty(by_member.size, np.int64)
    supplies_at = np.array([0, 1], np.int32)
    # Every graph small enough in the network simplex, in one call; OR-Tools for the others and
    # for any it does not solve.
    native_ones = members[node_count[members] <= _NATIVE_MAX_NODES] if native else members[:0]
    native_status: dict[int, netsimplex.Status] = {}
    native_flows = np.zeros(0, np.int64)
    if native_ones.size:
        bounds_array = np.array(arc_bounds, np.int64)
        starts = bounds_array[native_ones]
        lengths = bounds_array[native_ones + 1] - starts
        packed_start = np.cumsum(lengths) - lengths  # each one's arcs, packed one after another
        picked = np.repeat(starts - packed_start, lengths) + np.arange(int(lengths.sum()))
        native_result = netsimplex.solve_many(node_count[native_ones], np.append(packed_start, lengths.sum()),
                                              tails[picked], heads[picked], caps[picked], costs[picked], 0, 1,
                                              demand[native_ones])
        if native_result is not None:
            native_status = dict(zip(native_ones.tolist(), native_result[0], strict=True))
            native_flows = np.empty(by_member.size, np.int64)
            native_flows[picked] = native_result[1]
    for m, d in zip(members.tolist(), demand[members].tolist(), strict=True):
        lo, hi = arc_bounds[m], arc_bounds[m + 1]
        if native_status.get(m) is netsimplex.Status.OPTIMAL:
            flows_by_member[lo:hi] = native_flows[lo:hi]
            continue
        smcf = min_cost_flow.SimpleMinCostFlow()
        smcf.add_arcs_with_capacity_and_unit_cost(tails[lo:hi], heads[lo:hi], caps[lo:hi], costs[lo:hi])
        smcf.set_nodes_supplies(supplies_at, np.array([d, -d], np.int64))
        if smcf.solve() != smcf.OPTIMAL:  # e.g. BAD_COST_RANGE: the caller's exact fallbacks take it
            answers[m] = None
            solving[m] = False
            flows_by_member[lo:hi] = 0
            continue
        flows_by_member[lo:hi] = smcf.flows(np.arange(hi - lo, dtype=np.int32))
    flows = np.empty(by_member.size, np.int64)
    flows[by_member] = flows_by_member
    served = np.zeros(od.size, np.int64)
    served[served_idx] = flows[:n_s]
    sold = flows[n_s:f]
    pair = _pair_single_orders if n_cls == od.size else _pair_classes
    which_o, which_b, units = pair(om, bp, cls, ci, bj, served, sold)
    _check_alloc_arrays(od, om, ou, bp, bd, bc, which_o, which_b, units)
    # Back to each problem's own indices, problem by problem.
    which_mk = o_mk[which_o]
    if (b_mk[which_b] != which_mk).any():
        raise RuntimeError("solver matched an order with a bid of another market")
    by_problem = np.argsort(which_mk, kind="stable")
    which_mk, which_o, which_b = which_mk[by_problem], which_o[by_problem], which_b[by_problem]
    units = units[by_problem]
    which_o -= o_start[which_mk]
    which_b -= b_start[which_mk]
    bounds = np.searchsorted(which_mk, np.arange(count + 1)).tolist()
    for m in np.nonzero(solving)[0].tolist():
        lo, hi = bounds[m], bounds[m + 1]
        answers[m] = (which_o[lo:hi], which_b[lo:hi], units[lo:hi])
    return answers



def _classes(durations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct durations, ascending, and each order's index among them
    (``np.unique(..., return_inverse=True)`` in fewer steps)."""
    by_duration = np.argsort(durations, kind="stable")
    ordered = durations[by_duration]
    starts = np.empty(ordered.size, bool)
    starts[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    cls = np.empty(ordered.size, np.int64)
    cls[by_duration] = np.cumsum(starts) - 1
    return ordered[starts], cls


def _pair_single_orders(
    max_prices: np.ndarray,
    prices: np.ndarray,
    order_class: np.ndarray,
    arc_class: np.ndarray,
    arc_bid: np.ndarray,
    served: np.ndarray,
    sold: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_pair_classes`` when every class holds exactly one order: each class -> bid arc with
    flow is one (order, bid) pair, once the flow is checked to be conserved at every class."""
    order_of_class = np.empty(order_class.size, np.int64)
    order_of_class[order_class] = np.arange(order_class.size)
    arcs = np.nonzero(sold)[0]
    into_class = np.zeros(order_class.size, np.int64)
    np.add.at(into_class, arc_class[arcs], sold[arcs])
    if (into_class[order_class] != served).any():
        raise RuntimeError("min-cost flow is not conserved at a duration class")
    which_o = order_of_class[arc_class[arcs]]
    which_b = arc_bid[arcs]
    if (max_prices[which_o] < prices[which_b]).any():
        raise RuntimeError("the optimum pairs an order below a bid's price")
    return which_o, which_b, sold[arcs]


def _rule_two(lasting: np.ndarray, cls: np.ndarray, ou: np.ndarray, bc: np.ndarray) -> np.ndarray:
    """``mask[c, j]``: pruning rule 2 (module docstring) does not rule out that bid j serves
    class c: the bids before j (no dearer: bids are in price order) that last at least T_c
    (``lasting[c, j]``) hold fewer units than the classes >= c want.  One (classes x bids)
    cumulative sum."""
    cap = lasting * bc[None, :]
    before = np.cumsum(cap, axis=1) - cap
    class_units = np.zeros(lasting.shape[0], np.int64)
    np.add.at(class_units, cls, ou)
    demand_from = np.cumsum(class_units[::-1])[::-1]
    return before < demand_from[:, None]


def _pair_classes(
    max_prices: np.ndarray,
    prices: np.ndarray,
    order_class: np.ndarray,
    arc_class: np.ndarray,
    arc_bid: np.ndarray,
    served: np.ndarray,
    sold: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair, within each duration class, the units served to its orders with the units sold
    into it, all classes at once.

    In an optimum every served order of a class has ``max_price >=`` every price sold into it
    (else dropping that unit would raise gains), so any pairing is valid and has the same gains
    and units.  Both sides are laid out on one axis of units, class after class (orders by max
    price then index, bids by index, which is price order); each stretch between consecutive
    boundaries of either side is one (order, bid) pair, and a pair meets in one stretch only.
    """
    if not served.any() and not sold.any():  # nothing flowed (only zero-gain pairs, unweighted)
        return _EMPTY
    o_idx = np.nonzero(served > 0)[0]
    o_idx = o_idx[np.lexsort((o_idx, max_prices[o_idx], order_class[o_idx]))]
    e_idx = np.nonzero(sold > 0)[0]
    e_idx = e_idx[np.lexsort((arc_bid[e_idx], arc_class[e_idx]))]
    o_end = np.cumsum(served[o_idx])
    e_end = np.cumsum(sold[e_idx])
    if int(served.sum()) != int(sold.sum()):
        raise RuntimeError("min-cost flow is not conserved at the duration classes")
    # Units are conserved class by class, so the class boundaries coincide on both sides
    # (checked below: every stretch pairs an order and a bid of the same class).
    cuts = np.union1d(o_end, e_end)
    starts = np.concatenate([[0], cuts[:-1]])
    which_o = o_idx[np.searchsorted(o_end, starts, side="right")]
    which_arc = e_idx[np.searchsorted(e_end, starts, side="right")]
    which_b = arc_bid[which_arc]
    if (order_class[which_o] != arc_class[which_arc]).any():
        raise RuntimeError("min-cost flow is not conserved at a duration class")
    if (max_prices[which_o] < prices[which_b]).any():
        raise RuntimeError("the optimum pairs an order below a bid's price")
    return which_o, which_b, cuts - starts


def _solve_python(orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> _Alloc:
    """Exact min-cost flow by successive shortest paths on Python integers.

    Slow but unbounded: the fallback for markets OR-Tools cannot take
    exactly, and an independent reference for the tests.  It augments along
    the cheapest source-sink path while that path has negative cost (positive
    gain, or zero gain and one more unit), which yields a flow with the most
    gains, then the most units, of any size.
    """
    n_o, n_b = len(orders), len(bids)
    weight = sum(o.units for o in orders) + 1
    src, sink = 0, n_o + n_b + 1
    n = n_o + n_b + 2
    head: list[int] = []
    cap: list[int] = []
    cost: list[int] = []
    adj: list[list[int]] = [[] for _ in range(n)]

    def arc(u: int, v: int, c: int, w: int) -> int:
        adj[u].append(len(head))
        head.append(v)
        cap.append(c)
        cost.append(w)
        adj[v].append(len(head))
        head.append(u)
        cap.append(0)
        cost.append(-w)
        return len(head) - 2

    pair_arcs: list[tuple[int, int, int]] = []
    for i, o in enumerate(orders):
        arc(src, 1 + i, o.units, 0)
    for i, o in enumerate(orders):
        for j, b in enumerate(bids):
            if o.duration <= b.max_duration and b.price <= o.max_price:
                # Gains first, matched units second (see _solve_ortools): -(gain*K) - 1 per unit.
                cost_of_unit = -o.duration * (o.max_price - b.price) * weight - 1
                pair_arcs.append((i, j, arc(1 + i, 1 + n_o + j, min(o.units, b.capacity), cost_of_unit)))
    for j, b in enumerate(bids):
        arc(1 + n_o + j, sink, b.capacity, 0)
    if not pair_arcs:
        return []

    while True:
        # Bellman-Ford (queue based); the residual graph has no negative cycle.
        dist: list[int | None] = [None] * n
        via = [-1] * n
        dist[src] = 0
        queue = deque([src])
        inq = [False] * n
        inq[src] = True
        while queue:
            u = queue.popleft()
            inq[u] = False
            du = dist[u]
            assert du is not None
            for a in adj[u]:
                if cap[a] > 0:
                    v = head[a]
                    nd = du + cost[a]
                    dv = dist[v]
                    if dv is None or nd < dv:
                        dist[v] = nd
                        via[v] = a
                        if not inq[v]:
                            inq[v] = True
                            queue.append(v)
        ds = dist[sink]
        if ds is None or ds >= 0:
            break
        push = None
        v = sink
        while v != src:
            a = via[v]
            push = cap[a] if push is None else min(push, cap[a])
            v = head[a ^ 1]
        assert push is not None and push > 0
        v = sink
        while v != src:
            a = via[v]
            cap[a] -= push
            cap[a ^ 1] += push
            v = head[a ^ 1]
    return [(i, j, cap[a ^ 1]) for i, j, a in pair_arcs if cap[a ^ 1] > 0]


def _check_alloc(orders: Sequence[OrderLot], bids: Sequence[BidLot], alloc: _Alloc) -> None:
    """Refuse an allocation that breaks a hard constraint, whatever produced it."""
    used_o: dict[int, int] = {}
    used_b: dict[int, int] = {}
    pairs: set[tuple[int, int]] = set()
    for oi, bi, u in alloc:
        o, b = orders[oi], bids[bi]
        if u <= 0 or (oi, bi) in pairs:
            raise RuntimeError(f"solver returned a bad flow on {o.key}/{b.key}")
        if not (o.duration <= b.max_duration and b.price <= o.max_price):
            raise RuntimeError(f"solver matched incompatible {o.key}/{b.key}")
        pairs.add((oi, bi))
        used_o[oi] = used_o.get(oi, 0) + u
        used_b[bi] = used_b.get(bi, 0) + u
    for oi, u in used_o.items():
        if u > orders[oi].units:
            raise RuntimeError(f"solver overfilled order {orders[oi].key}")
    for bi, u in used_b.items():
        if u > bids[bi].capacity:
            raise RuntimeError(f"solver overfilled bid {bids[bi].key}")

