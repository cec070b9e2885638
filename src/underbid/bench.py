"""Benchmarks of the matcher, printed one figure per line as ``bench <name> <value> <unit>``.

Run ``bash scripts/bench.sh`` (sets up, compiles, then runs all), or ``python -m underbid.bench
--only clear_1k_10k`` in a shell that has sourced ``scripts/env.sh``.
The fixed line format lets CI and the docs quote figures without parsing prose.
Each benchmark is one function registered in ``BENCHMARKS``; add new ones
(``ingest``, ``round_e2e``, ...) the same way.  Figures are the median of
``--runs`` timed runs; instance generation and pool start-up are not timed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from underbid.matcher.clearing import BidLot, OrderLot, clear

# 20 GPU specs with a rough USD price per unit-hour, and 5 regions: 100 markets.
SPECS: tuple[tuple[str, float], ...] = (
    ("gpu=nvidia-h100;vram=80;gpus=8", 2.40), ("gpu=nvidia-h100;vram=80;gpus=1", 2.60),
    ("gpu=nvidia-h200;vram=141;gpus=8", 3.50), ("gpu=nvidia-a100;vram=80;gpus=8", 1.40),
    ("gpu=nvidia-a100;vram=80;gpus=1", 1.50), ("gpu=nvidia-a100;vram=40;gpus=1", 1.10),
    ("gpu=nvidia-l40s;vram=48;gpus=1", 0.90), ("gpu=nvidia-l4;vram=24;gpus=1", 0.45),
    ("gpu=nvidia-a10;vram=24;gpus=1", 0.50), ("gpu=nvidia-rtx4090;vram=24;gpus=1", 0.40),
    ("gpu=nvidia-rtx3090;vram=24;gpus=1", 0.25), ("gpu=nvidia-a6000;vram=48;gpus=1", 0.60),
    ("gpu=nvidia-v100;vram=32;gpus=1", 0.35), ("gpu=nvidia-t4;vram=16;gpus=1", 0.15),
    ("gpu=nvidia-b200;vram=192;gpus=8", 5.00), ("gpu=amd-mi300x;vram=192;gpus=8", 2.80),
    ("gpu=amd-mi250;vram=128;gpus=1", 1.20), ("gpu=nvidia-gh200;vram=96;gpus=1", 3.00),
    ("gpu=nvidia-rtx6000ada;vram=48;gpus=1", 0.95), ("gpu=nvidia-a40;vram=48;gpus=1", 0.55),
)
REGIONS: tuple[str, ...] = ("us-east", "us-west", "eu-central", "ap-south", "sa-east")
# Duration tiers in seconds (1 h, 6 h, 1 day, 1 week): orders pick a duration,
# bids a max duration, so duration compatibility matters.
DURATIONS: tuple[int, ...] = (3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600)
CREDIT = 10**6  # credit base units per USD


def markets() -> list[tuple[str, int]]:
    """(market id, base price in credit base units per unit-hour) for every spec × region.

    The id is a stand-in hash of the canonical spec string (the clearing only
    needs equal ids to mean equal markets).
    """
    out = []
    for spec, usd in SPECS:
        for region in REGIONS:
            mid = "0x" + hashlib.sha256(f"{spec};region={region}".encode()).hexdigest()
            out.append((mid, int(usd * CREDIT)))
    return out


def instance(n_orders: int, n_bids: int, seed: int = 1) -> tuple[list[OrderLot], list[BidLot]]:
    """The RESEARCH.md instance: 100 markets, bid capacity 1–8, order demand 1–16.

    Prices are rounded to 0.01 USD so that ties occur, as they will in practice.
    """
    rng = random.Random(seed)
    mk = markets()
    tick = CREDIT // 100

    def key() -> str:
        return f"0x{rng.getrandbits(256):064x}"

    orders = []
    for _ in range(n_orders):
        mid, base = rng.choice(mk)
        orders.append(OrderLot(
            key=key(), market=mid, units=rng.randint(1, 16),
            duration=rng.choice(DURATIONS),
            max_price=round(base * rng.uniform(0.8, 1.5) / tick) * tick,
        ))
    bids = []
    for _ in range(n_bids):
        mid, base = rng.choice(mk)
        bids.append(BidLot(
            key=key(), market=mid, provider=f"0x{rng.getrandbits(160):040x}",
            capacity=rng.randint(1, 8),
            price=round(base * rng.uniform(0.6, 1.4) / tick) * tick,
            max_duration=rng.choices(DURATIONS, weights=(1, 2, 3, 4))[0],
        ))
    return orders, bids


WEEK = 7 * 24 * 3600


def realistic_instance(
    n_orders: int, n_bids: int, *, seed: int = 1, bid_tiers: bool = True, dust: bool = False
) -> tuple[list[OrderLot], list[BidLot]]:
    """Orders and bids as real users write them: the same 100 markets as ``instance``.

    Order durations are whole seconds drawn anywhere from 1 hour to 1 week; prices
    are 6-decimal credit base units, not rounded to cents; bid max durations are
    either the four tiers (``bid_tiers``) or whole seconds from 1 hour to 2 weeks.
    ``dust`` adds one order per market of 1 unit for 3,601 s at a max price of one
    base unit, which makes the gcd of the costs 1 (anyone can post such orders).
    """
    rng = random.Random(seed)
    mk = markets()

    def key() -> str:
        return f"0x{rng.getrandbits(256):064x}"

    orders = [
        OrderLot(key=key(), market=mid, units=rng.randint(1, 16), duration=rng.randint(3600, WEEK),
                 max_price=int(base * rng.uniform(0.8, 1.5)))
        for mid, base in (rng.choice(mk) for _ in range(n_orders))
    ]
    if dust:
        orders += [OrderLot(key=key(), market=mid, units=1, duration=3601, max_price=1) for mid, _ in mk]
    bids = [
        BidLot(key=key(), market=mid, provider=f"0x{rng.getrandbits(160):040x}", capacity=rng.randint(1, 8),
               price=int(base * rng.uniform(0.6, 1.4)),
               max_duration=(rng.choices(DURATIONS, weights=(1, 2, 3, 4))[0] if bid_tiers
                             else rng.randint(3600, 2 * WEEK)))
        for mid, base in (rng.choice(mk) for _ in range(n_bids))
    ]
    return orders, bids


def reference_solve(orders: list[OrderLot], bids: list[BidLot]) -> int:
    """An independent max-gain solve: OR-Tools per market on the whole unpruned duration-class
    graph, with plain costs (no pruning, no cost shift, no bound); returns the markets solved."""
    import numpy as np
    from ortools.graph.python import min_cost_flow

    by_market: dict[str, tuple[list[OrderLot], list[BidLot]]] = {}
    for o in orders:
        by_market.setdefault(o.market, ([], []))[0].append(o)
    for b in bids:
        if b.market in by_market:
            by_market[b.market][1].append(b)
    solved = 0
    for mo, mb in by_market.values():
        if not mb:
            continue
        od = np.array([o.duration for o in mo], np.int64)
        om = np.array([o.max_price for o in mo], np.int64)
        durs, cls = np.unique(od, return_inverse=True)
        bp = np.array([b.price for b in mb], np.int64)
        bd = np.array([b.max_duration for b in mb], np.int64)
        ci, bj = np.nonzero(bd[None, :] >= durs[:, None])
        n_c, n_b = durs.size, len(mb)
        total = sum(o.units for o in mo)
        sink = n_c + n_b + 1
        smcf = min_cost_flow.SimpleMinCostFlow()
        smcf.add_arcs_with_capacity_and_unit_cost(
            np.concatenate([np.zeros(len(mo), np.int32), (1 + ci).astype(np.int32),
                            (1 + n_c + np.arange(n_b)).astype(np.int32), np.zeros(1, np.int32)]),
            np.concatenate([(1 + cls).astype(np.int32), (1 + n_c + bj).astype(np.int32),
                            np.full(n_b, sink, np.int32), np.array([sink], np.int32)]),
            np.concatenate([np.array([o.units for o in mo], np.int64),
                            np.array([b.capacity for b in mb], np.int64)[bj],
                            np.array([b.capacity for b in mb], np.int64), np.array([total], np.int64)]),
            np.concatenate([-(od * om), durs[ci] * bp[bj], np.zeros(n_b + 1, np.int64)]),
        )
        smcf.set_nodes_supplies(np.array([0, sink], np.int32), np.array([total, -total], np.int64))
        solved += smcf.solve() == smcf.OPTIMAL
    return solved


def _median_seconds(fn: Callable[[], object], runs: int) -> float:
    return _median_wall_and_cpu(fn, runs)[0]


def _median_wall_and_cpu(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """Median wall-clock and median CPU seconds of this process over ``runs`` runs.  The
    clearing is single-threaded, so on an idle core the two agree; on a shared machine the CPU
    figure is the one that does not count time spent waiting for the core."""
    wall, cpu = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def bench_clear(n_orders: int, n_bids: int, runs: int, workers: int = 1) -> float:
    """Seconds for one clear() of a fresh round, median of ``runs``."""
    orders, bids = instance(n_orders, n_bids)
    if workers <= 1:
        return _median_seconds(lambda: clear(orders, bids), runs)
    # A matcher keeps its pool alive across rounds, so start-up is not timed.
    with ProcessPoolExecutor(max_workers=workers) as pool:
        clear(orders[:200], bids[:2000], executor=pool)  # warm the workers
        return _median_seconds(lambda: clear(orders, bids, executor=pool), runs)


def clear_1k_10k(runs: int) -> Iterator[tuple[str, float, str]]:
    yield "clear_1k_10k", bench_clear(1_000, 10_000, runs), "s"


def clear_10k_100k(runs: int) -> Iterator[tuple[str, float, str]]:
    yield "clear_10k_100k", bench_clear(10_000, 100_000, runs), "s"


def clear_10k_100k_2proc(runs: int) -> Iterator[tuple[str, float, str]]:
    yield "clear_10k_100k_2proc", bench_clear(10_000, 100_000, runs, workers=2), "s"


def _clear_vs_reference(name: str, orders: list[OrderLot], bids: list[BidLot], runs: int,
                        price_search_solves: int = 1) -> Iterator[tuple[str, float, str]]:
    """Seconds for clear() and its ratio to the independent per-market solve, in the same process
    (wall clock, and ``_cpu``: this process's CPU time, for a shared machine).  The two alternate
    run by run, so that a change in the machine's load during the benchmark hits both alike."""
    ours_wall, ours_cpus, reference_wall, reference_cpus = [], [], [], []
    for _ in range(runs):
        wall, cpu = _median_wall_and_cpu(
            lambda: clear(orders, bids, price_search_solves=price_search_solves), 1)
        ours_wall.append(wall)
        ours_cpus.append(cpu)
        wall, cpu = _median_wall_and_cpu(lambda: reference_solve(orders, bids), 1)
        reference_wall.append(wall)
        reference_cpus.append(cpu)
    ours, ours_cpu = statistics.median(ours_wall), statistics.median(ours_cpus)
    reference, reference_cpu = statistics.median(reference_wall), statistics.median(reference_cpus)
    yield name, ours, "s"
    yield f"{name}_ratio", ours / reference, "x"
    yield f"{name}_cpu", ours_cpu, "s"
    yield f"{name}_cpu_ratio", ours_cpu / reference_cpu, "x"


def _realistic_classes(n_orders: int, n_bids: int) -> dict[str, tuple[list[OrderLot], list[BidLot]]]:
    return {
        "realistic": realistic_instance(n_orders, n_bids),
        "realistic_arbitrary": realistic_instance(n_orders, n_bids, bid_tiers=False),
        "dust": realistic_instance(n_orders, n_bids, dust=True),
    }


def clear_realistic_1k_10k(runs: int) -> Iterator[tuple[str, float, str]]:
    yield from _clear_vs_reference("clear_realistic_1k_10k", *realistic_instance(1_000, 10_000), runs)


def clear_realistic_10k_100k(runs: int) -> Iterator[tuple[str, float, str]]:
    """Every realistic class at 10k x 100k, and the tiered one with no price search (trial at lo)
    and with two trial solves (``_search2``)."""
    classes = _realistic_classes(10_000, 100_000)
    for name, (orders, bids) in classes.items():
        yield from _clear_vs_reference(f"clear_{name}_10k_100k", orders, bids, runs)
    yield from _clear_vs_reference("clear_realistic_10k_100k_no_search", *classes["realistic"], runs,
                                   price_search_solves=0)
    yield from _clear_vs_reference("clear_realistic_10k_100k_search2", *classes["realistic"], runs,
                                   price_search_solves=2)


def clear_distinct_durations(runs: int) -> Iterator[tuple[str, float, str]]:
    """The realistic 1k x 10k round plus 100,000 one-unit orders in one market, each with its own
    duration (3,600 s + i) and a max price of 1.2x that market's cheapest bid, so every one of
    them is servable and is its own duration class: what a flood of small orders costs."""
    orders, bids = realistic_instance(1_000, 10_000)
    market = orders[0].market
    cheapest = min(b.price for b in bids if b.market == market)
    flood = [OrderLot(key=f"0x{i:064x}", market=market, units=1, duration=3600 + i, max_price=cheapest * 6 // 5)
             for i in range(100_000)]
    yield from _clear_vs_reference("clear_distinct_durations_100k", orders + flood, bids, runs)


def uniform_price(runs: int) -> Iterator[tuple[str, float, str]]:
    """What one price per market costs and what buyers pay, per instance class (no timing).

    ``gains_lost``: share of the max-gain allocation's gains that the uniform price gives up, with
    the default price search (one solve at the candidate price where the max-gain allocation keeps
    the most), with two (``_search2``) and with none (``_no_search``: the trial price is lo).
    ``gains_lost_{name}_best_price``: the same with every candidate price of every market solved
    exactly (what the best single price per market gives up; one solve per candidate, so slow).
    ``buyers_pay_of_max``: the price over the buyer's max price, weighted by units x duration.
    ``price_over_bid``: the price over the winning bid's price, weighted the same way.
    ``every_bid_used``: markets where no bid was left unused.  The ``scarce`` class (10k orders,
    2k bids that all last two weeks) is where that happens; its ``_old_rule`` figures price such
    markets as the rule did before: at the lowest served max price.
    """
    from underbid.matcher.clearing import gains_from_trade, max_gain_allocation

    del runs  # figures, not timings
    classes = _realistic_classes(10_000, 100_000)
    scarce_orders, scarce_bids = realistic_instance(10_000, 2_000)
    classes["scarce"] = (scarce_orders, [
        BidLot(b.key, b.market, b.provider, b.capacity, b.price, 2 * WEEK) for b in scarce_bids
    ])
    for name, (orders, bids) in classes.items():
        by_order = {o.key: o for o in orders}
        by_bid = {b.key: b for b in bids}
        best = gains_from_trade(max_gain_allocation(orders, bids), by_order, by_bid)
        for label, search_solves in (("", 1), ("_search2", 2), ("_no_search", 0)):
            result = clear(orders, bids, price_search_solves=search_solves)
            got = gains_from_trade(result.matches, by_order, by_bid)
            yield f"gains_lost_{name}{label}", 100 * (best - got) / best, "%"
        if name != "dust":  # the same markets as "realistic" plus an order no bid reaches
            yield f"gains_lost_{name}_best_price", 100 * (best - _best_single_price_gains(orders, bids)) / best, "%"
        result = clear(orders, bids)
        bids_of: dict[str, set[str]] = {}
        for b in bids:
            bids_of.setdefault(b.market, set()).add(b.key)
        weight = 0.0
        paid = {"": 0.0, "_old_rule": 0.0}
        over = {"": 0.0, "_old_rule": 0.0}
        every_bid_used = 0
        for market in result.markets:
            used_all = bids_of[market.market] <= {m.bid_key for m in market.matches}
            every_bid_used += used_all
            lowest_max = min(by_order[m.order_key].max_price for m in market.matches)
            prices = {"": market.price, "_old_rule": lowest_max if used_all else market.price}
            for m in market.matches:
                order, bid = by_order[m.order_key], by_bid[m.bid_key]
                w = m.units * order.duration
                weight += w
                for rule, price in prices.items():
                    paid[rule] += w * price / order.max_price
                    over[rule] += w * (price - bid.price) / max(bid.price, 1)
        yield f"every_bid_used_{name}", every_bid_used, "markets"
        for rule in ("", "_old_rule") if every_bid_used else ("",):
            yield f"buyers_pay_of_max_{name}{rule}", 100 * paid[rule] / weight, "%"
            yield f"price_over_bid_{name}{rule}", 100 * over[rule] / weight, "%"


def _best_single_price_gains(orders: list[OrderLot], bids: list[BidLot]) -> int:
    """Gains of the best uniform-price outcome per market: every candidate trial price in
    [hi, lo] solved exactly (what ``clear``'s search approximates with one or two solves)."""
    from underbid.matcher import clearing

    total = 0
    for _market, mo, mb in clearing._market_tasks(orders, bids):
        prepared = clearing._prepare(mo, mb, prune=True)
        alloc = clearing._solve_prepared(mo, mb, prepared, "auto")
        if not alloc:
            continue
        lo = max(mb[bi].price for _, bi, _ in alloc)
        hi = min(mo[oi].max_price for oi, _, _ in alloc)
        if lo <= hi:
            total += clearing._alloc_gains(mo, mb, alloc)
            continue
        candidates = {o.max_price for o in mo if hi <= o.max_price <= lo} | {b.price for b in mb if hi <= b.price <= lo}
        total += max(
            clearing._alloc_gains(mo, mb, clearing._solve_prepared(mo, mb, prepared, "auto", trial=p))
            for p in candidates
        )
    return total


# ----- benchmarks on a real anvil (started and deployed through ape, as in the tests) -----


class _Devnet:
    """A fresh anvil with the protocol deployed; setup is never timed."""

    def __init__(self) -> None:
        import os
        import socket
        import subprocess

        from ape import accounts, networks
        from ape.logging import LogLevel
        from ape.logging import logger as ape_logger

        # ape reports every transaction at INFO; among the figures that is noise.
        ape_logger.set_level(LogLevel.ERROR)

        from underbid.devnet.deploy import DeployParams, address_book, deploy_protocol

        # anvil is started here rather than by ape, because ape-foundry always adds
        # --steps-tracing, which slows big settlements several-fold; a devnet does not trace.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self._anvil = subprocess.Popen(
            ["anvil", "--port", str(port), "--accounts", "32", "--balance", "1000000", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.environ["APE_FOUNDRY_HOST"] = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        self._context = networks.parse_network_choice("ethereum:local:foundry")
        self.provider = self._context.__enter__()
        self.accounts = accounts.test_accounts
        self.deployer, self.matcher = self.accounts[0], self.accounts[1]
        self.params = DeployParams()
        self.deployed = deploy_protocol(self.deployer, [self.matcher], self.params)
        self.book = address_book(self.deployed, "local", self.deployer, self.params)
        self.rpc = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self._context.__exit__(None, None, None)
        self._anvil.terminate()
        self._anvil.wait(timeout=10)

    def stake(self, provider, units: int) -> None:
        amount = units * self.params.stake_per_unit
        ubt, settlement = self.deployed.ubt, self.deployed.settlement
        ubt.transfer(provider, amount, sender=self.deployer)
        if not settlement.providers(provider).registered:
            settlement.register("bench", sender=provider)
        ubt.approve(settlement, amount, sender=provider)
        settlement.stake(amount, sender=provider)
        self.bind(provider)

    def bind(self, account) -> None:
        """Binds the account to the bench's matcher: it takes messages only from its own accounts."""
        if self.deployed.settlement.boundMatcherOf(account) != self.matcher.address:
            self.deployed.settlement.bindMatcher(self.matcher, sender=account)

    def fund(self, buyer, credits: int) -> None:
        ubt_in = -(-credits * 10**20 * 10_000 // (self.params.ubt_price * (10_000 - self.params.mint_spread_bps)))
        ubt, bme, settlement = self.deployed.ubt, self.deployed.bme, self.deployed.settlement
        ubt.transfer(buyer, ubt_in, sender=self.deployer)
        ubt.approve(bme, ubt_in, sender=buyer)
        bme.mintCredits(ubt_in, credits, sender=buyer)
        settlement.deposit(credits, sender=buyer)
        self.bind(buyer)


def _signed_bids(devnet: _Devnet, providers, n: int, seed: int = 7):
    from underbid.protocol.eip712 import Bid

    rng = random.Random(seed)
    deadline = devnet.provider.web3.eth.get_block("latest")["timestamp"] + 24 * 3600
    market_ids = [m for m, _ in markets()[:10]]
    out = []
    # Providers take turns; each numbers its own bids consecutively, as the CLI does.
    for i in range(n):
        p = providers[i % len(providers)]
        bid = Bid(provider=str(p.address), matcher=str(devnet.matcher.address), market=rng.choice(market_ids),
                  capacity=1, price=rng.randint(1, 4) * CREDIT,
                  max_duration=7 * 24 * 3600, deadline=deadline, nonce=i // len(providers))
        out.append((bid, "0x" + bid.sign(p.private_key, devnet.book.domain).hex()))
    return out


def ingest(runs: int, store_url: str | None = None) -> Iterator[tuple[str, float, str]]:
    """Signed bids through validation + the store (no HTTP), on a real anvil with a warm
    chain-fact cache; every commit is durable (SQLite: synchronous=FULL; Postgres:
    synchronous_commit=on) before its request is answered. SQLite in a temporary file, or, with
    `store_url`, the Postgres database there (it must be empty); Postgres figures are named
    ``..._postgres``. One matcher process: the server's own processes are not pinned.
    The process is pinned to one CPU where the OS allows it, so the figures are one core's.

    ``ingest_bids``: each bid its own request, from 32 threads (uvicorn's pool is 40), commits
    grouped. ``ingest_bids_batch``: requests of 100 bids from one provider each (``POST
    /bids/batch``: a price ladder), 2 at a time, so one validates while the other commits;
    median of ``runs`` runs of 10,000 bids into the same growing store.
    """
    import os
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    from underbid.chain.view import ChainView, connect
    from underbid.devnet.node import MATCHER, dev_account
    from underbid.matcher.rounds import Matcher
    from underbid.matcher.store import MessageKind, Store
    from underbid.matcher.validation import Submission

    devnet = _Devnet()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if cpus:  # after anvil has started, so the node is not squeezed onto the same core
        os.sched_setaffinity(0, {max(cpus)})
    try:
        providers = list(devnet.accounts[2:12])
        n_single, n_run, batch = 4_000, 10_000, 100
        n_batched = n_run * runs
        for p in providers:
            devnet.stake(p, (n_single + n_batched) // len(providers))
        signed = _signed_bids(devnet, providers, n_single + n_batched)
        with tempfile.TemporaryDirectory() as tmp:
            matcher = Matcher(
                ChainView(connect(devnet.rpc), devnet.book), Store(store_url or f"{tmp}/bench.db"),
                dev_account(MATCHER),
            )
            suffix = "_postgres" if store_url else ""
            for bid, sig in signed[:20]:  # warm the chain-fact cache
                matcher.accept(MessageKind.BID, bid, sig)
            single = signed[20:n_single]
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=32) as pool:
                list(pool.map(lambda item: matcher.accept(MessageKind.BID, *item), single))
            yield f"ingest_bids{suffix}", len(single) / (time.perf_counter() - started), "msg/s"

            rates = []
            for run in range(runs):
                bids = signed[n_single + run * n_run:n_single + (run + 1) * n_run]
                # _signed_bids deals bids to providers in turn: every len(providers)-th is one provider's.
                by_provider = [bids[k::len(providers)] for k in range(len(providers))]
                # Requests interleave providers, as independent providers' requests would arrive.
                requests = [
                    [Submission(bid, sig) for bid, sig in own[i:i + batch]]
                    for i in range(0, len(by_provider[0]), batch) for own in by_provider
                ]
                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=2) as pool:
                    list(pool.map(lambda request: matcher.accept_batch(MessageKind.BID, request), requests))
                rates.append(n_run / (time.perf_counter() - started))
            yield f"ingest_bids_batch{suffix}", statistics.median(rates), "msg/s"
            yield f"ingest_bids_batch_slowest_run{suffix}", min(rates), "msg/s"
            matcher.store.close()
    finally:
        if cpus:
            os.sched_setaffinity(0, cpus)
        devnet.close()


def round_e2e(runs: int) -> Iterator[tuple[str, float, str]]:
    """100 orders + 1,000 bids posted over HTTP to a real matcher process (SQLite store), then one
    round closed and settled on anvil: seconds from the first POST to the confirmed settlement."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        yield from _round_over_http(f"{tmp}/m.db", 1, "round_e2e")


def round_postgres_processes(runs: int, store_url: str, processes: int) -> Iterator[tuple[str, float, str]]:
    """`round_e2e` with `processes` matcher processes on one (empty) Postgres database: the
    messages are posted to the processes in turn, and the round closed through the leader.
    Figures ``round_pg_<n>proc_...``. On a 2-core machine every process, the server, anvil and
    the clients share the cores, so a second process adds no CPU."""
    yield from _round_over_http(store_url, processes, f"round_pg_{processes}proc")


def _round_over_http(store: str, processes: int, name: str) -> Iterator[tuple[str, float, str]]:
    """1,000 signed bids then 100 orders POSTed one per request from 8 client threads, spread over
    `processes` matcher processes on `store` in turn, then one round closed through the leader
    and settled on anvil. ``<name>_100x1000``: first POST to confirmed settlement;
    ``<name>_post_1100`` and ``<name>_ingest``: the posting, in seconds and messages per second;
    ``<name>_close_and_settle``: the close request to the confirmed settlement."""
    import subprocess
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from underbid.protocol.eip712 import Order

    devnet = _Devnet()
    procs: list[subprocess.Popen] = []
    try:
        buyers, providers = list(devnet.accounts[2:12]), list(devnet.accounts[12:32])
        for b in buyers:
            devnet.fund(b, 5_000 * CREDIT)
        for p in providers:
            devnet.stake(p, 60)
        bids = _signed_bids(devnet, providers, 1_000)
        rng = random.Random(11)
        deadline = devnet.provider.web3.eth.get_block("latest")["timestamp"] + 24 * 3600
        market_ids = [m for m, _ in markets()[:10]]
        orders = []
        for i in range(100):
            b = buyers[i % len(buyers)]
            order = Order(buyer=str(b.address), matcher=str(devnet.matcher.address), market=rng.choice(market_ids),
                          units=rng.randint(1, 4), duration=3600,
                          max_price=5 * CREDIT, deadline=deadline, nonce=10_000 + i)
            orders.append((order, "0x" + order.sign(b.private_key, devnet.book.domain).hex()))
        with tempfile.TemporaryDirectory() as tmp:
            book_path = devnet.book.save(f"{tmp}/local.json")
            urls = []
            for n in range(processes):
                port = 8791 + n
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "underbid.cli", "matcher", "run", "--dev", "--rpc", devnet.rpc,
                     "--deployment", str(book_path), "--db", store, "--port", str(port),
                     "--round-seconds", "0", "--admin-token", "bench"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                ))
                urls.append(f"http://127.0.0.1:{port}")
            leader = None
            for _ in range(600):
                states = []
                for url in urls:
                    try:
                        states.append(httpx.get(url + "/health", timeout=1).json()["leader"])
                    except httpx.HTTPError:
                        states.append(None)
                if None not in states and True in states:
                    leader = urls[states.index(True)]
                    break
                time.sleep(0.1)
            assert leader is not None, "no matcher process became leader"
            clients = [httpx.Client(base_url=url, timeout=60) for url in urls]
            try:
                items = [(item, "/bids") for item in bids] + [(item, "/orders") for item in orders]

                def post(numbered: tuple[int, tuple]) -> None:
                    i, ((message, sig), path) = numbered
                    r = clients[i % len(clients)].post(path, json={**message.model_dump(by_alias=True),
                                                                   "signature": sig})
                    assert r.status_code == 201, r.text

                started = time.perf_counter()
                with ThreadPoolExecutor(max_workers=8) as pool:
                    list(pool.map(post, enumerate(items[:len(bids)])))  # bids first: orders then find them
                    list(pool.map(post, enumerate(items[len(bids):])))
                posted = time.perf_counter()
                with httpx.Client(base_url=leader, timeout=60) as http:
                    asked = http.post("/rounds/close", headers={"Authorization": "Bearer bench"})
                    assert asked.status_code == 202, asked.text
                    while (close := http.get(asked.json()["poll"]).json()["close"])["status"] == "running":
                        time.sleep(0.05)
                done = time.perf_counter()
            finally:
                for client in clients:
                    client.close()
        assert close["status"] == "done" and close["report"]["state"] == "confirmed", close
        report = close["report"]
        yield f"{name}_100x1000", done - started, "s"
        yield f"{name}_post_1100", posted - started, "s"
        yield f"{name}_ingest", len(items) / (posted - started), "msg/s"
        yield f"{name}_close_and_settle", done - posted, "s"
        for stage, seconds in (report.get("seconds") or {}).items():
            yield f"{name}_stage_{stage}", seconds, "s"
        yield f"{name}_matches", report["matches"], "matches"
        yield f"{name}_gas", report["gas_used"], "gas"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)
        devnet.close()


def round_close_200k(runs: int, store_url: str | None = None) -> Iterator[tuple[str, float, str]]:
    """A round close with 200,000 open bids (100 markets) and no order, on a real anvil and SQLite
    store, while one client keeps submitting signed bids: seconds for ``close_round`` (median of
    ``runs``) and the slowest intake request during the closes, beside the slowest in the half
    second before them (after a warm-up).

    The 200,000 bids are written to the store directly (the close reads what the store holds;
    signing them one by one would take minutes): signatures are placeholders, signers 20 dev
    accounts with consecutive nonces. With `store_url` the store is that (empty) Postgres database
    and the figures are named ``round_close_200k_postgres...``.
    """
    import tempfile
    import threading

    from underbid.chain.view import ChainView, connect
    from underbid.devnet.node import MATCHER, dev_account
    from underbid.matcher.rounds import Matcher
    from underbid.matcher.store import MessageKind, Store
    from underbid.protocol.eip712 import Bid

    devnet = _Devnet()
    try:
        rng = random.Random(5)
        market_ids = [m for m, _ in markets()]
        deadline = devnet.provider.web3.eth.get_block("latest")["timestamp"] + 24 * 3600
        signers = [str(a.address) for a in devnet.accounts[12:32]]
        probe_providers = list(devnet.accounts[2:4])
        for p in probe_providers:
            devnet.stake(p, 400)
        probes = _signed_bids(devnet, probe_providers, 400, seed=13)
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(store_url or f"{tmp}/close.db")
            for start in range(0, 200_000, 10_000):
                store.add_messages(
                    (MessageKind.BID, f"0x{rng.getrandbits(256):064x}",
                     Bid(provider=signers[i % 20], matcher=str(devnet.matcher.address),
                         market=rng.choice(market_ids), capacity=rng.randint(1, 8), price=rng.randint(1, 5) * CREDIT,
                         max_duration=WEEK, deadline=deadline, nonce=i // 20),
                     b"\x00" * 65, None)
                    for i in range(start, start + 10_000)
                )
            matcher = Matcher(ChainView(connect(devnet.rpc), devnet.book), store, dev_account(MATCHER))
            closing = threading.Event()
            stop = threading.Event()
            slowest = {"before": 0.0, "during": 0.0}
            took_all: dict[str, list[float]] = {"before": [], "during": []}

            for bid, sig in probes[:40]:  # warm the chain-fact cache and the store's pages
                matcher.accept(MessageKind.BID, bid, sig)

            def submit() -> None:
                for bid, sig in probes[40:]:
                    if stop.is_set():
                        return
                    phase = "during" if closing.is_set() else "before"
                    started = time.perf_counter()
                    matcher.accept(MessageKind.BID, bid, sig)
                    took = time.perf_counter() - started
                    slowest[phase] = max(slowest[phase], took)
                    took_all[phase].append(took)
                    time.sleep(0.01)

            client = threading.Thread(target=submit)
            client.start()
            time.sleep(0.5)
            seconds = []
            for _ in range(runs):
                closing.set()
                started = time.perf_counter()
                report = matcher.close_round()
                seconds.append(time.perf_counter() - started)
                closing.clear()
                assert report.state == "open", report
                time.sleep(0.2)
            stop.set()
            client.join()
            store.close()
        name = "round_close_200k_postgres" if store_url else "round_close_200k"
        yield f"{name}_bids", statistics.median(seconds), "s"
        yield f"{name}_intake_slowest", slowest["during"] * 1000, "ms"
        yield f"{name}_intake_slowest_before", slowest["before"] * 1000, "ms"
        yield f"{name}_intake_median", statistics.median(took_all["during"] or [0.0]) * 1000, "ms"
        yield f"{name}_intake_median_before", statistics.median(took_all["before"] or [0.0]) * 1000, "ms"
    finally:
        devnet.close()


BENCHMARKS: dict[str, Callable[[int], Iterator[tuple[str, float, str]]]] = {
    "clear_1k_10k": clear_1k_10k,
    "clear_10k_100k": clear_10k_100k,
    "clear_10k_100k_2proc": clear_10k_100k_2proc,
    "clear_realistic_1k_10k": clear_realistic_1k_10k,
    "clear_realistic_10k_100k": clear_realistic_10k_100k,
    "clear_distinct_durations": clear_distinct_durations,
    "uniform_price": uniform_price,
    "ingest": ingest,
    "round_close_200k": round_close_200k,
    "round_e2e": round_e2e,
}


#: The benchmarks on Postgres: run when `--postgres URL` is given, each on a fresh database it
#: creates on that server (and drops after), so the user in the URL needs CREATEDB.
ON_POSTGRES: dict[str, Callable[[int, str], Iterator[tuple[str, float, str]]]] = {
    "ingest_postgres": lambda runs, url: ingest(runs, url),
    "round_close_200k_postgres": lambda runs, url: round_close_200k(runs, url),
    "round_pg_1proc": lambda runs, url: round_postgres_processes(runs, url, 1),
    "round_pg_2proc": lambda runs, url: round_postgres_processes(runs, url, 2),
}


@contextmanager
def _fresh_database(url: str, name: str) -> Iterator[str]:
    """A new, empty database on the server of `url`, dropped afterwards; yields its URL."""
    import psycopg
    from psycopg import sql

    database = f"underbid_bench_{name}_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    base, _, query = url.partition("?")
    try:
        yield base.rsplit("/", 1)[0] + "/" + database + (f"?{query}" if query else "")
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m underbid.bench", description=__doc__)
    parser.add_argument("--only", choices=sorted([*BENCHMARKS, *ON_POSTGRES]), action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument("--postgres", metavar="URL", default=os.environ.get("UNDERBID_BENCH_POSTGRES"),
                        help="a Postgres database URL (postgresql://...; or $UNDERBID_BENCH_POSTGRES) whose user"
                             " may create databases: the Postgres benchmarks (each on a fresh database) run only"
                             " when one is given")
    args = parser.parse_args(argv)
    if args.only and set(args.only) & set(ON_POSTGRES) and not args.postgres:
        parser.error(f"{', '.join(sorted(set(args.only) & set(ON_POSTGRES)))}: needs --postgres URL")
    chosen = args.only or [*BENCHMARKS, *(ON_POSTGRES if args.postgres else [])]
    # Figures go to stdout (one parseable line each); progress goes to stderr, so that
    # `python -m underbid.bench > figures.txt` keeps a clean file and still shows where it is.
    progress_console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=progress_console, transient=True) as progress:
        task = progress.add_task("benchmarks", total=len(chosen))
        for name in chosen:
            progress.update(task, description=f"bench {name} ({args.runs} runs)")
            started = time.perf_counter()
            with ExitStack() as stack:
                if name in ON_POSTGRES:
                    fresh = stack.enter_context(_fresh_database(args.postgres, name))
                    figures = ON_POSTGRES[name](args.runs, fresh)
                else:
                    figures = BENCHMARKS[name](args.runs)
                for figure, value, unit in figures:
                    print(f"bench {figure} {value:.3f} {unit}", flush=True)
            progress_console.print(f"[dim]{name}: done in {time.perf_counter() - started:.1f} s[/dim]")
            progress.advance(task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
