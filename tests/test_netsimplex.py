"""The compiled network simplex (underbid.matcher.netsimplex): exact on any graph, refusing bad
input by name, bounded, and what the clearing uses for its small graphs.

References: OR-Tools' min-cost flow on random graphs (cycles, negative costs, zero capacities,
infeasible supplies), and, for costs near the int64 bounds where OR-Tools refuses, successive
shortest paths on Python integers over acyclic graphs.
"""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ortools.graph.python import min_cost_flow

from underbid.matcher import clearing, netsimplex
from underbid.matcher.clearing import BidLot, OrderLot
from underbid.matcher.netsimplex import Status

INT64_MAX = 2**63 - 1

Arc = tuple[int, int, int, int]  # tail, head, capacity, cost


def _arrays(arcs: list[Arc]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([a[0] for a in arcs], np.int32), np.array([a[1] for a in arcs], np.int32),
            np.array([a[2] for a in arcs], np.int64), np.array([a[3] for a in arcs], np.int64))


def _check_flow(n_nodes: int, arcs: list[Arc], flows: np.ndarray, source: int, sink: int, supply: int) -> int:
    """Asserts the flow is feasible and returns its cost (Python integers)."""
    balance = [0] * n_nodes
    for (tail, head, capacity, _), flow in zip(arcs, flows.tolist(), strict=True):
        assert 0 <= flow <= capacity
        balance[tail] += flow
        balance[head] -= flow
    assert balance[source] == supply and balance[sink] == -supply
    assert all(b == 0 for v, b in enumerate(balance) if v not in (source, sink))
    return sum(flow * cost for (_, _, _, cost), flow in zip(arcs, flows.tolist(), strict=True))


def _ortools(n_nodes: int, arcs: list[Arc], source: int, sink: int, supply: int) -> int | None:
    """OR-Tools' optimal cost, or None when infeasible."""
    solver = min_cost_flow.SimpleMinCostFlow()
    for tail, head, capacity, cost in arcs:
        solver.add_arc_with_capacity_and_unit_cost(tail, head, capacity, cost)
    for node in range(n_nodes):
        solver.set_node_supply(node, supply if node == source else -supply if node == sink else 0)
    status = solver.solve()
    if status == solver.INFEASIBLE:
        return None
    assert status == solver.OPTIMAL
    return int(solver.optimal_cost())


def _shortest_paths(n_nodes: int, arcs: list[Arc], source: int, sink: int, supply: int) -> int | None:
    """Min cost by successive shortest paths (Bellman-Ford) on Python integers; None when
    infeasible.  Exact for any costs on a graph without negative cycles."""
    flow = [0] * len(arcs)
    left, total = supply, 0
    while left:
        dist: list[int | None] = [None] * n_nodes
        via: list[tuple[int, int] | None] = [None] * n_nodes
        dist[source] = 0
        for _ in range(n_nodes):
            for index, (tail, head, capacity, cost) in enumerate(arcs):
                for frm, to, room, step, sign in ((tail, head, capacity - flow[index], cost, 1),
                                                  (head, tail, flow[index], -cost, -1)):
                    d_frm, d_to = dist[frm], dist[to]
                    if room > 0 and d_frm is not None and (d_to is None or d_frm + step < d_to):
                        dist[to], via[to] = d_frm + step, (index, sign)
        if dist[sink] is None:
            return None
        path, node = [], sink
        while node != source:
            step_via = via[node]
            assert step_via is not None
            path.append(step_via)
            tail, head = arcs[step_via[0]][:2]
            node = tail if step_via[1] == 1 else head
        push = min([left] + [arcs[i][2] - flow[i] if sign == 1 else flow[i] for i, sign in path])
        for index, sign in path:
            flow[index] += sign * push
            total += sign * push * arcs[index][3]
        left -= push
    return total


@st.composite
def graphs(draw: st.DrawFn, *, max_cost: int = 20, acyclic: bool = False,
           bypass: bool | None = None) -> tuple[int, list[Arc], int]:
    n_nodes = draw(st.integers(2, 9))
    arcs: list[Arc] = []
    for _ in range(draw(st.integers(0, 30))):
        tail, head = draw(st.integers(0, n_nodes - 1)), draw(st.integers(0, n_nodes - 1))
        if acyclic:
            tail, head = min(tail, head), max(tail, head)
        if tail == head:
            continue
        arcs.append((tail, head, draw(st.integers(0, 12)), draw(st.integers(-max_cost, max_cost))))
    supply = draw(st.integers(0, 15))
    if bypass if bypass is not None else draw(st.booleans()):  # the clearing's source -> sink arc
        arcs.append((0, n_nodes - 1, supply + draw(st.integers(0, 3)), draw(st.integers(-max_cost, max_cost))))
    return n_nodes, arcs, supply


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_same_optimum_as_ortools(graph: tuple[int, list[Arc], int]) -> None:
    n_nodes, arcs, supply = graph
    status, flows = netsimplex.solve_status(n_nodes, *_arrays(arcs), 0, n_nodes - 1, supply)
    expected = _ortools(n_nodes, arcs, 0, n_nodes - 1, supply)
    if expected is None:
        assert status is Status.INFEASIBLE and flows is None
    else:
        assert status is Status.OPTIMAL and flows is not None
        assert _check_flow(n_nodes, arcs, flows, 0, n_nodes - 1, supply) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(max_cost=INT64_MAX, acyclic=True), st.booleans())
def test_exact_at_int64_costs(graph: tuple[int, list[Arc], int], huge_caps: bool) -> None:
    """Costs anywhere in int64 (OR-Tools refuses such ranges): sums of costs along the tree pass
    int64 many times over, and the flow is still the exact optimum."""
    n_nodes, arcs, supply = graph
    if huge_caps:  # capacities near int64 too (the artificial arcs are INT64_MAX wide)
        arcs = [(tail, head, capacity * (2**58), cost) for tail, head, capacity, cost in arcs]
        supply *= 2**58
    status, flows = netsimplex.solve_status(n_nodes, *_arrays(arcs), 0, n_nodes - 1, supply)
    expected = _shortest_paths(n_nodes, arcs, 0, n_nodes - 1, supply)
    if expected is None:
        assert status is Status.INFEASIBLE
    else:
        assert status is Status.OPTIMAL and flows is not None
        assert _check_flow(n_nodes, arcs, flows, 0, n_nodes - 1, supply) == expected


@pytest.mark.parametrize(("arcs", "source", "sink", "supply"), [
    ([(0, 2, 1, 0)], 0, 1, 1),  # head out of range (2 nodes)
    ([(0, -1, 1, 0)], 0, 1, 1),  # negative node
    ([(0, 0, 1, 0), (0, 1, 1, 0)], 0, 1, 1),  # a loop
    ([(0, 1, -1, 0)], 0, 1, 0),  # negative capacity
    ([(0, 1, 1, 0)], 0, 0, 1),  # source is the sink
    ([(0, 1, 1, 0)], 0, 1, -1),  # negative supply
    ([(0, 1, 1, 0)], 0, 5, 1),  # sink out of range
])
def test_bad_input_is_refused(arcs: list[Arc], source: int, sink: int, supply: int) -> None:
    status, flows = netsimplex.solve_status(2, *_arrays(arcs), source, sink, supply)
    assert status is Status.BAD_INPUT and flows is None


def test_graphs_past_the_exactness_limits_are_refused() -> None:
    """Over 2^24 nodes the 128-bit sums could in principle overflow: refused, not solved."""
    empty32, empty64 = np.zeros(0, np.int32), np.zeros(0, np.int64)
    status, _ = netsimplex.solve_status(2**24 + 1, empty32, empty32, empty64, empty64, 0, 1, 0)
    assert status is Status.BAD_INPUT


def test_gives_up_after_max_pivots() -> None:
    """A bounded pivot count: the caller falls back instead of spinning (solve() gives None)."""
    arcs = [(0, 1, 5, -3), (1, 3, 5, 1), (0, 2, 5, -1), (2, 3, 5, 1), (1, 2, 5, 0), (0, 3, 10, 0)]
    status, flows = netsimplex.solve_status(4, *_arrays(arcs), 0, 3, 10, max_pivots=0)
    assert status is Status.GAVE_UP and flows is None
    status, flows = netsimplex.solve_status(4, *_arrays(arcs), 0, 3, 10)
    assert status is Status.OPTIMAL and flows is not None
    assert _check_flow(4, arcs, flows, 0, 3, 10) == _ortools(4, arcs, 0, 3, 10) == -10


def test_the_solver_is_built_here() -> None:
    """CI and ``scripts/setup.sh`` have a C compiler: the clearing must not silently run on its
    fallback there."""
    assert netsimplex.available()


def test_a_failed_build_names_the_compiler(tmp_path: os.PathLike[str]) -> None:
    """A fresh cache and a compiler that fails: the error names it; nothing half-written stays."""
    script = ("import sys\nfrom underbid.matcher import netsimplex\n"
              "try:\n    netsimplex.build()\nexcept RuntimeError as e:\n    print(e)\n    sys.exit(3)\n")
    env = {**os.environ, "UNDERBID_NATIVE_DIR": str(tmp_path), "CC": "false"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr
    assert result.stdout.startswith("false failed on netsimplex.c")
    assert os.listdir(tmp_path) == []
    env["CC"] = "no-such-compiler-here"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3 and "no C compiler: 'no-such-compiler-here'" in result.stdout


@st.composite
def market_lots(draw: st.DrawFn) -> tuple[list[OrderLot], list[BidLot]]:
    orders = [OrderLot(f"o{i}", f"m{i % 2}", draw(st.integers(1, 6)), draw(st.sampled_from([3600, 7200, 86_400])),
                       draw(st.integers(1, 40)))
              for i in range(draw(st.integers(1, 12)))]
    bids = [BidLot(f"b{i}", f"m{i % 2}", "0xp", draw(st.integers(1, 6)), draw(st.integers(1, 40)),
                   draw(st.sampled_from([3600, 86_400, 604_800])))
            for i in range(draw(st.integers(1, 20)))]
    return orders, bids


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lots=market_lots(), max_pairs=st.sampled_from([clearing._BATCH_MAX_PAIRS, 0]))
def test_clearing_keeps_the_optimum_of_ortools(lots: tuple[list[OrderLot], list[BidLot]], max_pairs: int) -> None:
    """The clearing's solve (the network simplex) and OR-Tools alone (``solver="ortools"``):
    the same gains and matched units in every market, on the batch path and (``_BATCH_MAX_PAIRS``
    0) the big-market path."""
    orders, bids = lots
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clearing, "_BATCH_MAX_PAIRS", max_pairs)
        with_native = clearing.max_gain_allocation(orders, bids)
        with_ortools = clearing.max_gain_allocation(orders, bids, solver="ortools")
    by_order = {o.key: o for o in orders}
    by_bid = {b.key: b for b in bids}
    assert clearing.gains_from_trade(with_native, by_order, by_bid) == \
        clearing.gains_from_trade(with_ortools, by_order, by_bid)
    assert sum(m.units for m in with_native) == sum(m.units for m in with_ortools)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(bypass=True), st.data())
def test_forbidding_arcs_equals_removing_them(graph: tuple[int, list[Arc], int], data: st.DataObject) -> None:
    """A kept graph solved, then solved again from its optimum with arcs forbidden (twice: the
    second set replaces the first): each time the optimum of the graph without those arcs, with
    no flow on them.  The bypass is never forbidden, so a flow that avoids them exists."""
    n_nodes, arcs, supply = graph
    with netsimplex.Graph(n_nodes, *_arrays(arcs), 0, n_nodes - 1, supply) as kept:
        status, flows = kept.solve()
        assert status is Status.OPTIMAL and flows is not None
        assert _check_flow(n_nodes, arcs, flows, 0, n_nodes - 1, supply) == _ortools(n_nodes, arcs, 0, n_nodes - 1,
                                                                                   supply)
        for _ in range(2):
            mask = data.draw(st.lists(st.booleans(), min_size=len(arcs), max_size=len(arcs)))
            mask[-1] = False
            forbidden = np.array(mask, bool)
            kept.forbid(forbidden)
            status, flows = kept.solve()
            assert status is Status.OPTIMAL and flows is not None
            assert not flows[forbidden].any()
            allowed = [arc for arc, off in zip(arcs, mask, strict=True) if not off]
            expected = _ortools(n_nodes, allowed, 0, n_nodes - 1, supply)
            assert _check_flow(n_nodes, arcs, flows, 0, n_nodes - 1, supply) == expected


def test_kept_graph_errors_are_named() -> None:
    tails, heads, caps, costs = _arrays([(0, 1, 1, 0)])
    with pytest.raises(ValueError, match="bad graph"):
        netsimplex.Graph(2, tails, np.array([5], np.int32), caps, costs, 0, 1, 1)
    kept = netsimplex.Graph(2, tails, heads, caps, costs, 0, 1, 1)
    with pytest.raises(ValueError, match="one flag per arc"):
        kept.forbid(np.zeros(3, bool))
    kept.close()
    kept.close()  # twice is harmless
    with pytest.raises(ValueError, match="closed"):
        kept.solve()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(graphs(), min_size=1, max_size=6))
def test_many_graphs_in_one_call_solve_as_each_alone(many: list[tuple[int, list[Arc], int]]) -> None:
    """The batch call (each graph's arcs one slice, its own node numbers): each graph's status
    and optimum as when solved alone."""
    starts = np.cumsum([0] + [len(arcs) for _, arcs, _ in many]).astype(np.int64)
    # The same source and sink for all: node 0 and node 1 (each graph's own numbering).
    renumbered = [[(_swap(t, n), _swap(h, n), c, k) for t, h, c, k in arcs] for n, arcs, _ in many]
    all_arcs = [arc for arcs in renumbered for arc in arcs]
    result = netsimplex.solve_many(np.array([n for n, _, _ in many], np.int32), starts, *_arrays(all_arcs), 0, 1,
                                   np.array([s for _, _, s in many], np.int64))
    assert result is not None
    statuses, flows = result
    for position, ((n_nodes, _, supply), arcs) in enumerate(zip(many, renumbered, strict=True)):
        alone_status, _ = netsimplex.solve_status(n_nodes, *_arrays(arcs), 0, 1, supply)
        assert statuses[position] is alone_status
        if alone_status is Status.OPTIMAL:
            own = flows[starts[position]:starts[position + 1]]
            assert _check_flow(n_nodes, arcs, own, 0, 1, supply) == _ortools(n_nodes, arcs, 0, 1, supply)


def _swap(node: int, n_nodes: int) -> int:
    """Node numbers with the last node (the strategy's sink) and node 1 exchanged."""
    return 1 if node == n_nodes - 1 else n_nodes - 1 if node == 1 else node


# --- Review (adversarial): the Python entry points must refuse what the C code would read or
# write out of bounds, or silently solve as another graph (ctypes and numpy casts wrap).


def test_arrays_of_different_lengths_are_refused() -> None:
    """n_arcs is taken from ``tails``: shorter heads, capacities or costs were read past their
    end by the C code (AddressSanitizer: heap-buffer-overflow)."""
    tails, heads, caps, costs = _arrays([(0, 1, 1, 0), (0, 1, 1, 0), (0, 1, 1, 0), (0, 1, 1, 0)])
    for short in ((tails, heads[:3], caps, costs), (tails, heads, caps[:1], costs), (tails, heads, caps, costs[:2])):
        with pytest.raises(ValueError, match="same length"):
            netsimplex.solve_status(2, *short, 0, 1, 1)
        with pytest.raises(ValueError, match="same length"):
            netsimplex.Graph(2, *short, 0, 1, 1)
        with pytest.raises(ValueError, match="same length"):
            netsimplex.solve_many(np.array([2], np.int32), np.array([0, 4], np.int64), *short, 0, 1,
                                  np.array([1], np.int64))


def test_solve_many_refuses_arc_slices_outside_the_arrays() -> None:
    """``arc_starts`` past the arrays made the C code read the arcs and write the flows out of
    bounds (AddressSanitizer: heap-buffer-overflow); a decreasing one is refused too."""
    tails, heads, caps, costs = _arrays([(0, 1, 1, 0), (0, 1, 1, 0)])
    for starts in ([0, 3], [0, 2, 1], [-1, 2]):
        counts = np.full(len(starts) - 1, 2, np.int32)
        with pytest.raises(ValueError, match="arc_starts"):
            netsimplex.solve_many(counts, np.array(starts, np.int64), tails, heads, caps, costs, 0, 1,
                                  np.ones(counts.size, np.int64))


def test_numbers_out_of_range_are_refused_not_wrapped() -> None:
    """A sink of 2^32 + 1, a supply of 2^64 + 3 or a tail of 2^32 were wrapped (ctypes, numpy's
    cast) to 1, 3 and 0: an OPTIMAL answer for another graph."""
    tails, heads, caps, costs = _arrays([(0, 1, 5, 1)])
    for call in (lambda: netsimplex.solve_status(2, tails, heads, caps, costs, 0, 1 + 2**32, 3),
                 lambda: netsimplex.solve_status(2, tails, heads, caps, costs, 0, 1, 2**64 + 3),
                 lambda: netsimplex.solve_status(2 + 2**32, tails, heads, caps, costs, 0, 1, 3),
                 lambda: netsimplex.solve_status(2, np.array([2**32], np.int64), heads, caps, costs, 0, 1, 3),
                 lambda: netsimplex.solve_status(2, tails, heads, np.array([2**63], np.uint64), costs, 0, 1, 3),
                 lambda: netsimplex.Graph(2, tails, heads, caps, costs, 0, 1, 2**64 + 3)):
        with pytest.raises(ValueError):
            call()


def test_a_kept_graph_cannot_be_copied() -> None:
    """``copy.copy`` of a Graph shared its C handle: closing one left the other pointing at freed
    memory (AddressSanitizer: heap-use-after-free), and both freed it when collected."""
    kept = netsimplex.Graph(2, *_arrays([(0, 1, 1, 0)]), 0, 1, 1)
    try:
        for duplicate in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="cannot be copied"):
                duplicate(kept)
    finally:
        kept.close()


def test_a_corrupt_cached_library_is_rebuilt(tmp_path: os.PathLike[str]) -> None:
    """A cached library that does not load (truncated, overwritten) is rebuilt once, not kept
    forever: otherwise no process on that machine could clear (the clearing requires it,
    test_clearing.py::test_a_machine_without_the_solver_refuses_to_clear)."""
    script = ("from underbid.matcher import netsimplex\n"
              "path = netsimplex._library_path()\npath.parent.mkdir(parents=True, exist_ok=True)\n"
              "path.write_bytes(b'not a shared object')\n"
              "print(netsimplex.available())\n")
    env = {**os.environ, "UNDERBID_NATIVE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-W", "error", "-c", script], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
