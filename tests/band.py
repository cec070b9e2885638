"""A Python model of `PriceOracle`'s price band, and the definition it must meet.

`Band` mirrors the contract's four words of storage. `in_effect` is the definition, computed from
the whole history of posts: the prices in effect at any moment of [start, t]. The oracle's band
at time t must equal the low and high of `in_effect(posts, (t // lag - 1) * lag, t)`, which
covers the last `lag` seconds (and at most `2 * lag`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def in_effect(posts: list[tuple[int, int]], start: int, t: int) -> list[int]:
    """Prices in effect at some moment of [start, t], from `posts` = [(time, price), ...] in order.

    A price is in effect from its post to the next post, both included: a transaction in the
    block of the next post, before it, still sees it.
    """
    prices = []
    for i, (posted, price) in enumerate(posts):
        ended = posts[i + 1][0] if i + 1 < len(posts) else None
        if posted <= t and (ended is None or ended >= start):
            prices.append(price)
    return prices


def reference_band(posts: list[tuple[int, int]], lag: int, t: int) -> tuple[int, int]:
    prices = in_effect(posts, max(t // lag - 1, 0) * lag, t)
    return min(prices), max(prices)


@dataclass
class Band:
    """The contract's band state: the low/high of the last post's period and of the one before."""

    lag: int
    price: int = 0
    at: int = 0
    low: int = 0
    high: int = 0
    prev_low: int = 0
    prev_high: int = 0
    posts: list[tuple[int, int]] = field(default_factory=list)

    def post(self, t: int, price: int) -> None:
        if self.price == 0:
            self.low = self.high = self.prev_low = self.prev_high = price
        elif t // self.lag == self.at // self.lag:
            self.low, self.high = min(self.low, price), max(self.high, price)
        else:
            if t // self.lag == self.at // self.lag + 1:
                self.prev_low, self.prev_high = self.low, self.high
            else:
                self.prev_low = self.prev_high = self.price
            self.low, self.high = min(self.price, price), max(self.price, price)
        self.price, self.at = price, t
        self.posts.append((t, price))

    def ends(self, t: int) -> tuple[int, int]:
        """(low, high) at time `t`: what `priceBand` returns, and what mints and redemptions use."""
        last, now = self.at // self.lag, t // self.lag
        if now == last:
            return min(self.low, self.prev_low), max(self.high, self.prev_high)
        if now == last + 1:
            return self.low, self.high
        return self.price, self.price
