"""Clearing of one auction round: matches and one uniform price per market.

This module is a pure function of the open orders and bids (no I/O, no
logging, no global state), so a round can be recomputed bit for bit by anyone
who holds the same signed messages.

Allocation
    Per market, the allocation with the most gains from trade,
    ``sum(units * order.duration * (order.max_price - bid.price))``, is solved
    exactly as a min-cost flow (OR-Tools ``SimpleMinCostFlow``).  The textbook
    graph is ``source -> order (cap units) -> bid (cost -gain) -> sink (cap
    capacity)`` plus a zero-cost ``source -> sink`` bypass so that demand may
    stay unfilled.  Because the gain splits into ``-d*max_price`` (order side)
    and ``d*price`` (bid side), orders of equal duration d share one class
    node, which links to every bid with ``max_duration >= d``: about
    ``orders + classes*bids`` arcs instead of ``orders*bids``, same optimum
    (see ``_solve_ortools``).  At 10k orders x 100k bids this cut the solve
    from ~1 s to ~0.07 s.

    Markets are independent, so each one is its own small flow problem; that
    is what makes clearing fast (see RESEARCH.md), not the choice of solver.

Zero-gain pairs are not matched
    Only pairs with ``order.duration <= bid.max_duration`` and
    ``bid.price < order.max_price`` (strictly positive gain) get an arc.  A
    zero-gain match adds no welfare, yet it would pin the clearing price to
    ``bid.price == order.max_price``, lock stake and escrow, and cost about
    55k gas on chain.

Pruning (never changes the optimum)
    Bids are scanned cheapest first (ties by key).  Let T_0 < ... < T_k-1 be
    the distinct order durations of the market and ``dem[s]`` the units of
    orders with duration <= T_s.  A bid's tier is the largest t with
    T_t <= max_duration.  A bid of tier t is dropped when the bids already
    kept in tiers t..s hold at least ``dem[s]`` units, for some s >= t.
    Those kept bids are no dearer, can serve every order the dropped bid can,
    and serve only orders of duration <= T_s; so if the dropped bid were used
    in an optimum, one of them has spare capacity and could take the unit
    instead, without losing gains.  The same swap shows that a dropped bid can
    never trigger the accountability rule below.  Bids that cannot serve any
    order (too short, or priced at or above every max price) are dropped too.

Exactness and overflow
    OR-Tools works in int64 and multiplies costs by (nodes + 1) internally.
    Arc costs are divided by their gcd (durations are usually whole hours),
    checked against a conservative bound, and the solver status and the
    flow's capacity constraints are checked after the solve.  If any bound or
    check fails, the market is solved again by a pure-Python successive
    shortest path solver on unbounded Python integers.  A wrong answer is
    never returned silently: an impossible state raises ``RuntimeError``.

Uniform pricing rule
    1. Solve the max-gain allocation of the market.
    2. ``lo`` = highest price among winning bids; ``hi`` = lowest max price
       among served orders.
    3. If ``lo > hi`` no single price fits: the served orders with
       ``max_price < lo`` are dropped (reported in ``dropped_orders``) and the
       market is solved again without them; repeat.  This terminates because
       orders only leave, and it never empties the market: the order served
       by the dearest winning bid has ``max_price > lo`` and stays servable.
    4. Otherwise the price is that of the cheapest bid left entirely unused
       in the market, clamped to ``[lo, hi]``; ``hi`` if every bid is used.

    Why: one price for all winners is budget-balanced and a winner's own bid
    cannot raise what it is paid, so small providers do best by bidding cost
    (unlike pay-as-bid, which invites shading).  The cheapest losing bid is the
    competitive price the market would otherwise have to beat.

Accountability
    In any exact optimum no winning bid W coexists with a bid B of the same
    market with ``B.price < W.price``, B not completely filled and
    ``B.max_duration >= duration`` of an order W serves: moving one unit from
    W to B would raise gains.  :func:`accountability_violations` checks this
    and the tests exercise it, including across pruning and the drop loop.

Determinism
    Orders are handled in key order and bids in (price, key) order, so the
    same messages in any order give the same clearing.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from operator import attrgetter
from typing import Literal

import numpy as np
from ortools.graph.python import min_cost_flow

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
    dropped_orders: tuple[str, ...]  # orders priced out by the uniform price


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


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def clear(
    orders: Iterable[OrderLot],
    bids: Iterable[BidLot],
    *,
    executor: Executor | None = None,
) -> Clearing:
    """Clear a round: max-gain matches and one uniform price per market.

    ``executor`` (for example a long-lived ``ProcessPoolExecutor`` owned by the
    matcher service) spreads markets over workers; markets are independent,
    so the result is identical with or without it.
    """
    tasks = _market_tasks(orders, bids)
    if executor is None:
        results = [_clear_market_task(t) for t in tasks]
    else:
        # A few big chunks: per-task pickling overhead dominates small markets.
        chunk = max(1, len(tasks) // 8)
        results = list(executor.map(_clear_market_task, tasks, chunksize=chunk))
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
    with the unpruned one, and OR-Tools with the pure-Python solver.
    ``solver="ortools"`` raises ``ValueError`` when a market is outside the
    range OR-Tools can solve exactly, instead of falling back.
    """
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

    The rule: no winning W with a bid B of the same market where
    ``B.price < W.price``, B is not completely filled and ``B.max_duration``
    covers the duration of some order W serves.  The matcher can run this as a
    self-check before it submits a settlement; an empty list means none.
    One witness B (the longest-lived cheaper bid) is reported per W.
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
    return out


# --------------------------------------------------------------------------
# Per-market work
# --------------------------------------------------------------------------

_Task = tuple[str, list[OrderLot], list[BidLot]]
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
        mb = sorted(by_market_b[market], key=_BID_SORT_KEY)
        tasks.append((market, mo, mb))
    return tasks


_ORDER_SORT_KEY = attrgetter("key")
_BID_SORT_KEY = attrgetter("price", "key")


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
    ms.sort(key=lambda m: (m.order_key, m.bid_key))
    return ms


def _clear_market_task(task: _Task) -> MarketClearing | None:
    """Allocation, drop loop and price for one market (module-level so it pickles)."""
    market, orders, bids = task
    active = orders
    dropped: list[str] = []
    while True:
        alloc = _max_gain_market(active, bids, prune=True, solver="auto")
        if not alloc:
            if dropped:  # ruled out by the argument in the module docstring
                raise RuntimeError(f"market {market}: drop loop emptied the market")
            return None
        lo = max(bids[bi].price for _, bi, _ in alloc)
        hi = min(active[oi].max_price for oi, _, _ in alloc)
        if lo <= hi:
            break
        out = {oi for oi, _, _ in alloc if active[oi].max_price < lo}
        dropped.extend(active[oi].key for oi in out)
        active = [o for i, o in enumerate(active) if i not in out]

    used = {bi for _, bi, _ in alloc}
    # bids are sorted by (price, key): the first unused one is the cheapest.
    unused = next((b.price for i, b in enumerate(bids) if i not in used), None)
    price = hi if unused is None else min(max(unused, lo), hi)
    return MarketClearing(
        market=market,
        price=price,
        matches=tuple(_to_matches(active, bids, alloc)),
        dropped_orders=tuple(sorted(dropped)),
    )


def _max_gain_market(
    orders: Sequence[OrderLot],
    bids: Sequence[BidLot],
    *,
    prune: bool,
    solver: Solver,
) -> _Alloc:
    """Exact max-gain allocation of one market (orders by key, bids by price then key)."""
    if not orders or not bids:
        return []
    keep = _prune(orders, bids) if prune else list(range(len(bids)))
    if not keep:
        return []
    kb = [bids[i] for i in keep]
    alloc: _Alloc | None = None
    if solver in ("auto", "ortools"):
        alloc = _solve_ortools(orders, kb)
        if alloc is None and solver == "ortools":
            raise ValueError("market outside the exact int64 range of OR-Tools")
    if alloc is None:
        alloc = _solve_python(orders, kb)
    _check_alloc(orders, kb, alloc)
    return [(oi, keep[bi], u) for oi, bi, u in alloc]


def _prune(orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> list[int]:
    """Indices of the bids that an optimum may need (rule in the module docstring).

    ``bids`` must be sorted by (price, key).  Within a tier the kept bids are
    a cheapest-first prefix, and a tier once closed stays closed, so the scan
    stops as soon as every tier is closed.
    """
    durs = sorted({o.duration for o in orders})
    k = len(durs)
    dem = [0] * k
    for o in orders:
        dem[bisect_left(durs, o.duration)] += o.units
    for s in range(1, k):
        dem[s] += dem[s - 1]
    max_price = max(o.max_price for o in orders)
    cap = [0] * k
    closed = [False] * k
    n_open = k
    keep: list[int] = []
    for i, b in enumerate(bids):
        if b.price >= max_price:
            break  # no positive gain with any order, nor for any dearer bid
        t = bisect_right(durs, b.max_duration) - 1
        if t < 0 or closed[t]:
            continue
        keep.append(i)
        cap[t] += b.capacity
        # Only ranges [u, s] with u <= t <= s gained capacity.
        for u in range(t + 1):
            if closed[u]:
                continue
            run = 0
            for s in range(u, k):
                run += cap[s]
                if run >= dem[s]:
                    closed[u] = True
                    n_open -= 1
                    break
        if n_open == 0:
            break
    return keep


def _solve_ortools(orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> _Alloc | None:
    """Min-cost flow with OR-Tools on the duration-class graph; None when int64
    exactness cannot be guaranteed (the caller then uses the Python solver).

    The gain of a pair splits as ``-d*m`` (order side) plus ``d*p`` (bid side),
    and every order of one duration d can use exactly the bids with
    ``max_duration >= d``.  So orders of equal duration share one class node::

        source -(one arc per order: cap units, cost -d*max_price)-> class d
        class d -(cost d*price)-> bid -(cap capacity)-> sink;  source -> sink (cost 0)

    That is about orders + classes*bids arcs instead of orders*bids, with the
    same optimum: which order of a class a bid serves does not change the
    gains, so units are paired afterwards in ``_pair_class``.
    """
    n_o, n_b = len(orders), len(bids)
    # Bounds in Python integers before anything touches int64.
    max_d = max(o.duration for o in orders)
    max_m = max(o.max_price for o in orders)
    total = sum(o.units for o in orders)
    if (
        max_d * max_m >= _INT64_HEADROOM  # bounds every cost below (price < max_price)
        or total >= _INT64_HEADROOM
        or max(b.capacity for b in bids) >= _INT64_HEADROOM
        or max(b.max_duration for b in bids) >= _INT64_HEADROOM
    ):
        return None
    od = np.fromiter((o.duration for o in orders), np.int64, n_o)
    om = np.fromiter((o.max_price for o in orders), np.int64, n_o)
    ou = np.fromiter((o.units for o in orders), np.int64, n_o)
    bp = np.fromiter((b.price for b in bids), np.int64, n_b)
    bd = np.fromiter((b.max_duration for b in bids), np.int64, n_b)
    bc = np.fromiter((b.capacity for b in bids), np.int64, n_b)

    durs, cls = np.unique(od, return_inverse=True)
    n_c = durs.size
    cls_max_m = np.zeros(n_c, np.int64)
    np.maximum.at(cls_max_m, cls, om)
    # A class reaches a bid that lasts long enough and is cheaper than the
    # class's best max price (a dearer bid could only trade at zero gain).
    ci, bj = np.nonzero((bd[None, :] >= durs[:, None]) & (bp[None, :] < cls_max_m[:, None]))
    if ci.size == 0:
        return []
    cost_o = -(od * om)
    cost_cb = durs[ci] * bp[bj]
    g = int(np.gcd(np.gcd.reduce(cost_o), np.gcd.reduce(cost_cb)))
    if g > 1:
        cost_o //= g
        cost_cb //= g
    n_e = ci.size
    n_nodes = n_c + n_b + 2
    src, sink = 0, n_nodes - 1
    # OR-Tools rejects |cost| > max/(2(n+1)) and guards its potentials; this
    # stricter bound keeps it well inside that range so BAD_COST_RANGE stays rare.
    if int(-cost_o.min()) * (n_nodes + 1) ** 2 * 8 > _INT64_MAX:
        return None
    tails = np.concatenate([
        np.zeros(n_o, np.int32),
        (1 + ci).astype(np.int32),
        (1 + n_c + np.arange(n_b)).astype(np.int32),
        np.array([src], np.int32),
    ])
    heads = np.concatenate([
        (1 + cls).astype(np.int32),
        (1 + n_c + bj).astype(np.int32),
        np.full(n_b, sink, np.int32),
        np.array([sink], np.int32),
    ])
    caps = np.concatenate([ou, bc[bj], bc, np.array([total], np.int64)])
    costs = np.concatenate([cost_o, cost_cb, np.zeros(n_b + 1, np.int64)])
    smcf = min_cost_flow.SimpleMinCostFlow()
    smcf.add_arcs_with_capacity_and_unit_cost(tails, heads, caps, costs)
    smcf.set_nodes_supplies(
        np.array([src, sink], np.int32), np.array([total, -total], np.int64)
    )
    if smcf.solve() != smcf.OPTIMAL:
        return None  # e.g. BAD_COST_RANGE: the exact Python solver takes over
    flows = np.asarray(smcf.flows(np.arange(n_o + n_e, dtype=np.int32)))
    served = flows[:n_o]
    sold = flows[n_o:]
    alloc: _Alloc = []
    for c in range(n_c):
        o_idx = np.nonzero((cls == c) & (served > 0))[0]
        e_idx = np.nonzero((ci == c) & (sold > 0))[0]
        if o_idx.size or e_idx.size:
            alloc.extend(_pair_class(
                orders, bids,
                list(zip(o_idx.tolist(), served[o_idx].tolist(), strict=True)),
                list(zip(bj[e_idx].tolist(), sold[e_idx].tolist(), strict=True)),
            ))
    return alloc


def _pair_class(
    orders: Sequence[OrderLot],
    bids: Sequence[BidLot],
    o_units: list[tuple[int, int]],
    b_units: list[tuple[int, int]],
) -> _Alloc:
    """Pair the served units of one duration class with the units sold into it.

    In an optimum every served order of the class has ``max_price >=`` every
    price sold into it (else dropping that unit would raise gains), so any
    pairing is valid and has the same gains.  Pairing both sides in ascending
    price order keeps the lowest max prices away from the dearest bids, so a
    zero-gain pair (``max_price == price``) is formed only when unavoidable; its
    units are then left out, which does not change the gains.
    """
    o_units.sort(key=lambda t: (orders[t[0]].max_price, orders[t[0]].key))
    b_units.sort(key=lambda t: (bids[t[0]].price, bids[t[0]].key))
    if sum(u for _, u in o_units) != sum(u for _, u in b_units):
        raise RuntimeError("min-cost flow is not conserved at a duration class")
    out: _Alloc = []
    i = j = 0
    left_o = o_units[0][1] if o_units else 0
    left_b = b_units[0][1] if b_units else 0
    while i < len(o_units) and j < len(b_units):
        oi, bi = o_units[i][0], b_units[j][0]
        u = min(left_o, left_b)
        m, p = orders[oi].max_price, bids[bi].price
        if m < p:
            raise RuntimeError(f"optimum pairs {orders[oi].key} below bid {bids[bi].key}")
        if m > p:
            out.append((oi, bi, u))
        left_o -= u
        left_b -= u
        if left_o == 0:
            i += 1
            left_o = o_units[i][1] if i < len(o_units) else 0
        if left_b == 0:
            j += 1
            left_b = b_units[j][1] if j < len(b_units) else 0
    return out


def _solve_python(orders: Sequence[OrderLot], bids: Sequence[BidLot]) -> _Alloc:
    """Exact min-cost flow by successive shortest paths on Python integers.

    Slow but unbounded: the fallback for markets OR-Tools cannot take
    exactly, and an independent reference for the tests.  It augments along
    the cheapest source-sink path while that path has negative cost (positive
    gain), which yields a max-gain flow of any size.
    """
    n_o, n_b = len(orders), len(bids)
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
            if o.duration <= b.max_duration and b.price < o.max_price:
                g = o.duration * (o.max_price - b.price)
                pair_arcs.append((i, j, arc(1 + i, 1 + n_o + j, min(o.units, b.capacity), -g)))
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
        if not (o.duration <= b.max_duration and b.price < o.max_price):
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

