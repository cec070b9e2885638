"""Benchmarks of the matcher, printed one figure per line as ``bench <name> <value> <unit>``.

Run ``python -m underbid.bench`` (all) or ``python -m underbid.bench --only clear_1k_10k``.
The fixed line format lets CI and the docs quote figures without parsing prose.
Each benchmark is one function registered in ``BENCHMARKS``; add new ones
(``ingest``, ``round_e2e``, ...) the same way.  Figures are the median of
``--runs`` timed runs; instance generation and pool start-up are not timed.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

from underbid.clearing import BidLot, OrderLot, clear

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


def _median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


BENCHMARKS: dict[str, Callable[[int], Iterator[tuple[str, float, str]]]] = {
    "clear_1k_10k": clear_1k_10k,
    "clear_10k_100k": clear_10k_100k,
    "clear_10k_100k_2proc": clear_10k_100k_2proc,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m underbid.bench", description=__doc__)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (median)")
    args = parser.parse_args(argv)
    for name in args.only or list(BENCHMARKS):
        for fig, value, unit in BENCHMARKS[name](args.runs):
            print(f"bench {fig} {value:.3f} {unit}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
