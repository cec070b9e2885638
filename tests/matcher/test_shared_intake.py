"""Attacks on intake across matcher processes sharing one Postgres store (chain: the test anvil).

A follower validates a provider's bid against the provider's stake, read through its own chain
cache, and the reservations of the provider's open bids, read from the shared store. The leader
applies a settlement's fills under the exclusive intake lock and invalidates its own cache only.
"""

from __future__ import annotations

import time

import pytest

from underbid.devnet.node import MATCHER, dev_account
from underbid.matcher.leadership import PERIOD
from underbid.matcher.store import MessageKind
from underbid.matcher.validation import Rejection

from ..conftest import HOUR, UBC
from .conftest import wait_until


def _sig(signature: bytes) -> str:
    return "0x" + signature.hex()


def test_a_followers_cached_stake_does_not_outlive_the_leaders_fills(market, accounts, chain, book_path,
                                                                     postgres_url):
    """Attack: the provider's bid for its 2 staked units is taken by a follower (which caches the
    stake it read); the leader settles a round that locks those 2 units and marks the bid filled
    (so it reserves nothing); the provider at once sends the follower another bid for 2 units.
    Stake read before the settlement beside reservations counted after it would admit, and
    receipt, a bid no stake backs: leaving it out of a round then makes the matcher slashable
    (the court excuses only a stake decrease, not collateral locked by leases). The follower must
    refuse it. (The follower's cache lifetime is raised so the attack does not depend on
    landing within the default 2 s.)"""
    from underbid.matcher.service import build_matcher

    provider, buyer = accounts[26], accounts[27]
    market.stake_provider(provider, 2)
    market.fund_buyer(buyer, 100 * UBC)
    leader = build_matcher(chain.provider.uri, book_path, postgres_url, dev_account(MATCHER))
    follower = build_matcher(chain.provider.uri, book_path, postgres_url, dev_account(MATCHER))
    follower.chain.cache.ttl = 600.0
    try:
        leader.leadership.start(on_elected=lambda: None, on_lost=lambda: None)
        wait_until("the leader elected", lambda: leader.leadership.is_leader, 10 + PERIOD)
        leader.reconcile()
        first, sig = market.bid(provider, capacity=2, price=int(1.5 * UBC))
        follower.accept(MessageKind.BID, first, _sig(sig))
        order, osig = market.order(buyer, units=2, duration=HOUR, max_price=2 * UBC)
        follower.accept(MessageKind.ORDER, order, _sig(osig))
        report = leader.close_round()
        assert report.state == "confirmed" and report.matches == 1, report
        stake = market.settlement.providers(provider)
        assert stake.staked - stake.locked == 0  # both units are collateral now

        second, sig2 = market.bid(provider, capacity=2, price=int(1.5 * UBC))
        started = time.monotonic()
        with pytest.raises(Rejection, match="available stake covers 0 units"):
            follower.accept(MessageKind.BID, second, _sig(sig2))
        assert time.monotonic() - started < 60
    finally:
        leader.shutdown()
        follower.shutdown()
